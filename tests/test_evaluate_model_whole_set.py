"""Scoring a labelled set as a whole: `stepcot data import --split all|none` makes the whole set one split,
`stepcot eval --split all` scores every split of a dataset as one, with per-class precision / recall / F1 and a
confusion matrix (table and plot); `--split-seed` changes the data split (`--seed` does not)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from tiny_models import tiny_student

from trainers.evaluation.report import per_class_markdown, per_class_scores

CLASSES = ("NORMAL", "BACTERIA", "VIRUS")


def _folders(root, patients=6):
    rng = np.random.default_rng(0)
    for label_index, label in enumerate(CLASSES):
        (root / label).mkdir(parents=True)
        for patient in range(patients):
            pixels = rng.integers(0, 80, (40, 40)) + 80 * label_index
            Image.fromarray(pixels.astype(np.uint8)).save(root / label / f"person{patient}{label}_0.png")
    return root


def _one_step_student(folder):
    model = tiny_student(step_names=["Diagnosis"], step_questions=["What is the diagnosis?"],
                         step_options=[sorted(CLASSES)])
    model.save_pretrained(folder)
    return folder


def test_per_class_scores_from_a_confusion_matrix():
    confusion = np.array([[8, 2, 0, 0], [1, 5, 4, 0], [0, 0, 0, 0], [0, 0, 0, 0]])  # classes 3, 4: no examples
    rows = per_class_scores(confusion)
    assert [row["support"] for row in rows] == [10, 10, 0, 0]
    assert rows[0]["precision"] == pytest.approx(8 / 9) and rows[0]["recall"] == pytest.approx(0.8)
    assert rows[1]["f1"] == pytest.approx(2 * 5 / (10 + 7))
    assert rows[2]["precision"] == 0 and rows[2]["recall"] is None  # predicted, never true
    assert rows[3]["precision"] is None and rows[3]["recall"] is None and rows[3]["f1"] is None


@pytest.mark.parametrize("split", ["all", "none"])
def test_import_whole_set_and_eval_it_as_one_split(tmp_path, split, capsys):
    from trainers import cli

    folders = _folders(tmp_path / "folders")
    assert cli.main(["data", "import", "folders", "--source", str(folders), "--out", str(tmp_path / "release"),
                     "--split", split]) == 0
    assert (tmp_path / "release" / "test.csv").is_file()
    model = _one_step_student(tmp_path / "student")
    capsys.readouterr()
    report = tmp_path / "eval"
    assert cli.main(["eval", "--model", str(model), "--dataset", str(tmp_path / "release"), "--split", "all",
                     "--out", str(report), "--num-bootstrap", "5"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["num_examples"] == 18 == metrics["steps"][0]["count"]  # every image, none held back
    confusion = np.asarray(metrics["steps"][0]["confusion_matrix"])
    assert confusion.sum() == 18 and sorted(confusion.sum(1)) == [6, 6, 6]
    table = (report / "metrics.md").read_text()
    for text in (table, printed):
        assert "Diagnosis step per class (n = 18)" in text and "| Class | n | Precision | Recall | F1 |" in text
        assert "Confusion matrix (rows: true class, columns: predicted)" in text
    assert (report / "confusion_matrices.png").stat().st_size > 0 and (report / "reliability.png").is_file()
    assert "Calibration: none stored (T = 1); scored on all" in table
    assert metrics["calibration"]["method"] == "softmax (uncalibrated)"


def test_eval_all_pools_every_split_of_a_seeded_release(tmp_path):
    from dataset_script.importers import import_folders
    from trainers.evaluation.evaluate_model import load_split

    import_folders(_folders(tmp_path / "folders", patients=10), tmp_path / "release")  # split 70/15/15 at build
    data, split = load_split(str(tmp_path / "release"), "all")
    test, _ = load_split(str(tmp_path / "release"), "test")
    assert len(data) == 30 > len(test) and split.startswith("all (train ")


def test_import_rejects_an_unknown_split_mode(tmp_path):
    from dataset_script.importers import import_folders
    from dataset_script.records import StepCoTDataError

    with pytest.raises(StepCoTDataError, match="--split 'half'"):
        import_folders(_folders(tmp_path / "folders"), tmp_path / "release", split="half")


def test_split_seed_changes_the_split_and_seed_does_not(tmp_path):
    from dataset_script.importers import import_folders

    release = tmp_path / "release"
    import_folders(_folders(tmp_path / "folders", patients=10), release)

    first = load_test_ids(release, tmp_path, 0)
    assert load_test_ids(release, tmp_path / "again", 0) == first
    assert load_test_ids(release, tmp_path, 1) != first


def load_test_ids(release, tmp_path, split_seed):
    from trainers.training.run_data import load_splits

    args = SimpleNamespace(dataset=str(release), lenient=False, split_seed=split_seed, demo_size=10,
                           demo_image_size=32, demo_difficulty="easy")
    splits = load_splits(args, tmp_path / f"out{split_seed}")
    return sorted(splits["test"]["patient_id"])


def test_per_class_markdown_of_the_last_labelled_step_only_by_default():
    from trainers.evaluation.metrics import compute_step_metrics

    labels = np.array([[0, 1], [1, 0], [0, 1], [1, 1]])
    logits = [np.eye(2)[[0, 1, 1, 1]].astype(float), np.eye(2)[[1, 0, 1, 0]].astype(float)]
    result = compute_step_metrics(logits, labels, step_names=["First", "Second"], step_options=[["a", "b"]] * 2,
                                  scores="logits", num_bootstrap=0)
    last = per_class_markdown([("M", result)])
    assert "Second step per class" in last and "First step per class" not in last
    assert "First step per class" in per_class_markdown([("M", result)], steps="all")


def test_eval_of_a_one_class_set_says_the_auc_is_undefined(tmp_path, capsys):
    """A held-out set of one class (e.g. only normal films): AUC cannot be computed; the command says so in words
    rather than printing "nan%", and the macro-F1 line counts one class."""
    from trainers import cli

    folders = _folders(tmp_path / "folders")
    for label in CLASSES[1:]:
        for image in (folders / label).iterdir():
            image.unlink()
        (folders / label).rmdir()
    mapping = {"steps": [{"name": "Diagnosis", "question": "What is the diagnosis?", "options": sorted(CLASSES)}],
               "labels": {label: {"Diagnosis": label} for label in CLASSES}}
    (tmp_path / "mapping.json").write_text(json.dumps(mapping))
    assert cli.main(["data", "import", "folders", "--source", str(folders), "--out", str(tmp_path / "release"),
                     "--mapping", str(tmp_path / "mapping.json"), "--split", "all"]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--model", str(_one_step_student(tmp_path / "student")), "--dataset",
                     str(tmp_path / "release"), "--split", "all", "--out", str(tmp_path / "eval"),
                     "--num-bootstrap", "5", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "AUC undefined (fewer than two classes in the labels)" in printed and "nan" not in printed.lower()
    assert "Macro-F1 over the 1 class present:" in printed
