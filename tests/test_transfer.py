"""`stepcot eval-transfer`: the NIH bbox list, the single-label subset, missing images, and the zero-shot diagnosis
metrics (Normal counts as wrong, AUC over the 8 findings) against hand computation and scikit-learn."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import precision_score, recall_score, roc_auc_score
from tiny_models import tiny_teacher

from trainers import cli
from trainers.evaluation.report import load_metrics
from trainers.paper import transfer

HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
BOXES = [  # (image, finding as NIH spells it); the same image twice = two boxes
    ("00013118_008.png", "Atelectasis"),
    ("00014716_007.png", "Infiltrate"),
    ("00029817_009.png", "Effusion"),
    ("00014687_001.png", "Cardiomegaly"),
    ("00014687_001.png", "Cardiomegaly"),  # second box, same finding: still one single-label sample
    ("00010575_002.png", "Effusion"),
    ("00010575_002.png", "Atelectasis"),  # two different findings: not single-label
    ("00000001_000.png", "Mass"),  # no image file: missing
    ("00000002_000.png", "Nodule"),  # corrupt file: unreadable
    ("00000003_000.png", "Pneumonia"),
    ("00000004_000.png", "Pneumothorax"),
    ("00000005_000.png", "Nodule"),
]


def write_bbox_csv(path, boxes=BOXES):
    lines = [f"{image},{finding},{100.5 + i},{200.25},{80.0},{60.0}\n" for i, (image, finding) in enumerate(boxes)]
    path.write_text(HEADER + "".join(lines) + "\n", encoding="utf-8")  # NIH's file ends with a blank line
    return path


def write_nih_images(folder, names, size=48):
    """Grayscale PNGs (one RGBA, as some NIH files are) in NIH's images_001/images/ layout; image i is uniform grey
    with value 20 * i + 10, so a test predictor can tell them apart."""
    folder = folder / "images_001" / "images"
    folder.mkdir(parents=True)
    for index, name in enumerate(names):
        array = np.full((size, size), 20 * index + 10, dtype=np.uint8)
        image = Image.fromarray(array)
        (image.convert("RGBA") if index == 1 else image).save(folder / name)
    return folder.parent.parent


@pytest.fixture
def nih(tmp_path):
    present = [image for image, _ in dict.fromkeys(BOXES) if image not in ("00000001_000.png", "00000002_000.png")]
    root = write_nih_images(tmp_path / "nih", list(dict.fromkeys(present)))
    (root / "images_001" / "images" / "00000002_000.png").write_bytes(b"not a png")
    return write_bbox_csv(tmp_path / "BBox_List_2017.csv"), root


def test_bbox_csv_and_single_label_subset(nih):
    csv_path, _ = nih
    boxes = transfer.read_bbox_csv(csv_path)
    assert len(boxes) == len(BOXES) and boxes[0] == (2, "00013118_008.png", "Atelectasis")
    assert boxes[1][2] == "Infiltration"  # NIH's "Infiltrate"
    excluded = transfer.single_label_subset(boxes, "exclude")
    assert excluded.images == 10 and excluded.boxes == 12
    assert excluded.multi_finding_images == {"00010575_002.png": ["Effusion", "Atelectasis"]}
    assert ("00014687_001.png", "Cardiomegaly") in excluded.samples and len(excluded.samples) == 9
    assert all(image != "00010575_002.png" for image, _ in excluded.samples)
    each = transfer.single_label_subset(boxes, "each")
    assert len(each.samples) == 11 and each.samples[4:6] == [("00010575_002.png", "Effusion"),
                                                            ("00010575_002.png", "Atelectasis")]


def test_bbox_csv_errors_name_file_line_and_field(tmp_path):
    bad = write_bbox_csv(tmp_path / "bad.csv", BOXES[:2] + [("00000009_000.png", "Hernia")])
    with pytest.raises(ValueError, match=r"bad.csv, line 4: 'Finding Label' 'Hernia'"):
        transfer.read_bbox_csv(bad)
    (tmp_path / "header.csv").write_text("Image,Label\n00000001_000.png,Mass\n")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['Image Index', 'Finding Label'\]"):
        transfer.read_bbox_csv(tmp_path / "header.csv")
    with pytest.raises(FileNotFoundError, match="--bbox-csv"):
        transfer.read_bbox_csv(tmp_path / "absent.csv")


def test_real_bbox_list_subset_sizes(shared_data_dir):
    boxes = transfer.read_bbox_csv(shared_data_dir / "nih-chestxray8" / "BBox_List_2017.csv")
    each = transfer.single_label_subset(boxes, "each").summary()
    assert (each["boxes"], each["images"], each["samples"]) == (984, 880, 984)
    assert each["samples_per_finding"] == {"Atelectasis": 180, "Cardiomegaly": 146, "Effusion": 153,
                                           "Infiltration": 123, "Mass": 85, "Nodule": 79, "Pneumonia": 120,
                                           "Pneumothorax": 98}
    excluded = transfer.single_label_subset(boxes, "exclude").summary()
    assert excluded["multi_finding_images"] == 93 and excluded["samples"] == 880 - 93


class GreyLevelPredictor:
    """Returns fixed logits per image, recognised by its grey level (see write_nih_images)."""

    name = "fixed logits"
    options = ["Normal", "Nodule", "Atelectasis", "Infiltration", "Effusion", "Pneumonia", "Cardiomegaly", "Mass",
               "Pneumothorax"]

    def __init__(self, logits_by_level):
        self.logits_by_level = logits_by_level

    def logits(self, images):
        return np.stack([self.logits_by_level[int(np.asarray(image.convert("L"))[0, 0])] for image in images])


def test_metrics_count_normal_as_wrong_and_restrict_auc_to_the_findings(nih, tmp_path):
    csv_path, root = nih
    subset = transfer.single_label_subset(transfer.read_bbox_csv(csv_path))
    paths = transfer.index_images(root)
    names = list(dict.fromkeys(image for image, _ in BOXES if image not in ("00000001_000.png", "00000002_000.png")))
    rng = np.random.default_rng(0)
    logits_by_level = {20 * i + 10: rng.normal(size=9) for i in range(len(names))}
    logits_by_level[10][0] = 9.0  # image 0 (Atelectasis): Normal wins -> wrong,
    logits_by_level[10][2] = 5.0  # but among the findings Atelectasis leads: AUC(Atelectasis) = 1 only if restricted
    logits_by_level[30][3] = 9.0  # image 1 (Infiltrate, RGBA): Infiltration wins -> right
    predictor = GreyLevelPredictor(logits_by_level)
    result = transfer.evaluate_transfer(predictor, paths, subset, out=tmp_path / "out", bbox_csv=csv_path,
                                        num_bootstrap=50, plots=False)

    scored = [(image, finding) for image, finding in subset.samples
              if image not in ("00000001_000.png", "00000002_000.png")]
    assert result.num_examples == len(scored) == 7
    logits = np.stack([logits_by_level[20 * names.index(image) + 10] for image, _ in scored])
    labels = np.array([predictor.options.index(finding) for _, finding in scored])
    predicted = logits.argmax(1)
    assert predicted[0] == 0 and result.metadata["predicted_normal"] == int((predicted == 0).sum())
    metrics = result.steps[0].metrics
    assert metrics["accuracy"].value == pytest.approx(np.mean(predicted == labels))
    present = sorted(set(labels))
    assert metrics["sensitivity"].value == pytest.approx(
        recall_score(labels, predicted, labels=present, average="macro", zero_division=0))
    assert metrics["precision"].value == pytest.approx(
        precision_score(labels, predicted, labels=present, average="macro", zero_division=0))
    columns = [predictor.options.index(name) for name in transfer.NIH_FINDINGS]
    restricted = torch.tensor(logits[:, columns]).softmax(-1).numpy()
    expected_auc = np.mean([roc_auc_score(labels == predictor.options.index(name), restricted[:, k])
                            for k, name in enumerate(transfer.NIH_FINDINGS)
                            if predictor.options.index(name) in present])
    assert metrics["auc"].value == pytest.approx(expected_auc)
    nine_way = torch.tensor(logits).softmax(-1).numpy()
    atelectasis = transfer.NIH_FINDINGS.index("Atelectasis")
    assert roc_auc_score(labels == 2, restricted[:, atelectasis]) == 1.0
    assert roc_auc_score(labels == 2, nine_way[:, 2]) < 0.5  # the Normal logit drags it down
    assert "8 finding logits" in metrics["auc"].note
    assert metrics["auc"].ci_low <= metrics["auc"].value <= metrics["auc"].ci_high

    out = tmp_path / "out"
    saved = load_metrics(out)
    assert saved.metadata["missing_images"] == 1 and saved.metadata["unreadable_images"] == 1
    assert (out / "missing_images.txt").read_text().splitlines()[1:] == ["00000001_000.png"]
    assert "00000002_000.png" in (out / "unreadable_images.txt").read_text()
    assert "00010575_002.png\tEffusion, Atelectasis" in (out / "multi_finding_images.txt").read_text()
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [(row["image"], row["finding"]) for row in rows] == scored
    assert [row["predicted"] for row in rows] == [predictor.options[i] for i in predicted]
    assert json.loads((out / "subset.json").read_text())["samples_scored"] == 7


def test_eval_transfer_command_on_a_saved_teacher(nih, tmp_path):
    from transformers import AutoTokenizer

    from modeling_stepcot import StepCoTProcessor
    from trainers.training.offline_encoders import offline_text_encoder_path

    csv_path, root = nih
    model_dir = tmp_path / "teacher"
    tiny_teacher(seed=2, use_memory=False).save_pretrained(model_dir)
    out = tmp_path / "transfer"
    code = cli.main(["eval-transfer", "--model", str(model_dir), "--nih-images", str(root), "--bbox-csv",
                     str(csv_path), "--out", str(out), "--multi-finding", "each", "--num-bootstrap", "30",
                     "--no-plots"])
    assert code == 0
    result = load_metrics(out / "Teacher_w_o_Memory")
    assert result.metadata["subset"]["samples"] == 11 and result.num_examples == 9  # 2 samples lack images
    # Independent forward: the data layer's processor and the diagnosis head.
    model = tiny_teacher(seed=2, use_memory=False).eval()
    tokenizer = AutoTokenizer.from_pretrained(offline_text_encoder_path())
    processor = StepCoTProcessor.from_model_config(model.config, tokenizer)
    rows = list(csv.DictReader((out / "Teacher_w_o_Memory" / "predictions.csv").open()))
    images = [Image.open(root / "images_001" / "images" / row["image"]) for row in rows]
    with torch.no_grad():
        logits = model(pixel_values=processor.preprocess_images(images)).step_logits[6].numpy()
    options = list(model.config.step_options[6])
    labels = np.array([options.index(row["finding"]) for row in rows])
    assert result.steps[0].metrics["accuracy"].value == pytest.approx(np.mean(logits.argmax(1) == labels))
    table = (out / "table4.md").read_text()
    assert table.startswith("| Model | Accuracy | mAUC |") and "| Teacher w/o Memory |" in table


def test_eval_transfer_errors(nih, tmp_path, capsys):
    csv_path, root = nih
    model_dir = tmp_path / "teacher"
    tiny_teacher(use_memory=False).save_pretrained(model_dir)
    args = ["--model", str(model_dir), "--bbox-csv", str(csv_path), "--out", str(tmp_path / "o")]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["eval-transfer", *args, "--nih-images", str(empty)]) == 1
    assert "none of the 9 samples' images was found" in capsys.readouterr().err
    assert cli.main(["eval-transfer", *args, "--nih-images", str(tmp_path / "nowhere")]) == 1
    assert "NIH image folder not found" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"lack \['Mass'\]"):
        transfer.finding_columns(["Normal", "Nodule", "Atelectasis", "Infiltration", "Effusion", "Pneumonia",
                                  "Cardiomegaly", "Pneumothorax"])
