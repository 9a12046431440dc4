"""`stepcot baseline`: backbone embeddings, the masked shared MLP, training, the paired difference, the report, on a
tiny random CLIP saved to a folder with a tokenizer built from a small vocabulary (no Hub access)."""

import csv
import json

import numpy as np
import pytest
import torch

from modeling_stepcot.configuration_stepcot import IGNORE_INDEX
from trainers import cli
from trainers.evaluation.metrics import weighted_step_metrics
from trainers.evaluation.report import load_metrics
from trainers.paper import baselines
from trainers.paper.baselines import backbones as baseline_backbones
from trainers.paper.baselines import heads as baseline_heads


@pytest.fixture(scope="module")
def baseline_run(tiny_clip_dir, hub_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("baselines")
    code = cli.main(["baseline", "--backbone", str(tiny_clip_dir), "--dataset", str(hub_dataset), "--out", str(out),
                           "--epochs", "4", "--num-bootstrap", "40", "--no-plots"])
    assert code == 0
    return out / baselines.backbone_slug(str(tiny_clip_dir)), out


def test_pooled_embedding_from_tensors_model_outputs_and_per_token_projections():
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    flat = torch.randn(2, 5)
    assert baselines.pooled_output(flat) is flat
    per_token = torch.randn(2, 4, 5)  # FLAVA projects every token: its embedding is the CLS token's
    assert torch.equal(baselines.pooled_output(BaseModelOutputWithPooling(pooler_output=per_token)), per_token[:, 0])
    with pytest.raises(ValueError, match="pooler_output"):
        baselines.pooled_output(BaseModelOutputWithPooling(last_hidden_state=per_token))


def test_shared_head_masks_each_step_to_its_own_classes():
    torch.manual_seed(0)  # seeded and 32 wide: with 8 unseeded ReLU units all could be inactive for the one sample
    head = baselines.StepBaselineHead(image_dim=3, text_dim=2, num_classes_per_step=[4, 6, 9], hidden_size=32)
    images, texts = torch.randn(3, 3, requires_grad=True), torch.randn(3, 2)
    logits = head(images, texts, torch.tensor([0, 1, 2]))
    assert logits.shape == (3, 9)
    assert torch.all(logits[0, 4:] == -1e4) and torch.all(logits[1, 6:] == -1e4)
    assert torch.all(logits[0, :4] > -1e3) and torch.all(logits[2] > -1e3)
    probabilities = logits.softmax(-1)
    assert probabilities[0, 4:].sum() == 0 and probabilities[0, :4].sum().item() == pytest.approx(1.0)
    # A masked class gets no gradient: the loss of a step-0 pair does not depend on its output units 4..8.
    torch.nn.functional.cross_entropy(logits[:1], torch.tensor([2])).backward()
    output_layer = head.mlp[2]
    assert torch.all(output_layer.weight.grad[4:] == 0) and torch.any(output_layer.weight.grad[:4] != 0)


def test_pairs_are_the_labelled_image_step_combinations():
    labels = torch.tensor([[0, IGNORE_INDEX, 2], [IGNORE_INDEX, IGNORE_INDEX, 1], [3, 1, IGNORE_INDEX]])
    question_index = torch.tensor([[0, 1, 2], [0, 1, 5], [0, 4, 2]])
    split = baselines.SplitEmbeddings(torch.randn(3, 2), torch.randn(6, 2), question_index, labels)
    image_rows, text_rows, position, pair_labels = baseline_heads._pairs(split, torch.tensor([2, 0, 1]), [0, 1, 2])
    expected = [(2, 0, 0, 3), (2, 4, 1, 1), (0, 0, 0, 0), (0, 2, 2, 2), (1, 5, 2, 1)]
    assert list(zip(image_rows.tolist(), text_rows.tolist(), position.tolist(), pair_labels.tolist())) == expected
    # Training on the diagnosis only sees the last column, position 0.
    image_rows, _, position, pair_labels = baseline_heads._pairs(split, torch.tensor([0, 1, 2]), [2])
    assert image_rows.tolist() == [0, 1] and position.tolist() == [0, 0] and pair_labels.tolist() == [2, 1]


def test_training_learns_steps_that_depend_on_the_question():
    # Step 0's label is the sign of image feature 0, step 1's that of feature 1: only the question embedding tells
    # the shared MLP which feature to read, so learning both shows the [image ; question] input works.
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(200, 4, generator=generator)
    labels = torch.stack([(images[:, 0] > 0).long(), (images[:, 1] > 0).long() + 1], dim=1)
    labels[::7, 1] = IGNORE_INDEX
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    split = baselines.SplitEmbeddings(images, texts, torch.tensor([[0, 1]]).repeat(200, 1), labels)
    config = baselines.BaselineTrainingConfig(epochs=15, batch_size=16, learning_rate=3e-3, hidden_size=32)
    head, history = baselines.train_head(split, split, [0, 1], [2, 3], config)
    logits = baselines.step_logits(head, split, [0, 1], [2, 3])
    assert [scores.shape for scores in logits] == [(200, 2), (200, 3)]
    for position in (0, 1):
        valid = labels[:, position] != IGNORE_INDEX
        accuracy = (logits[position][valid.numpy()].argmax(1) == labels[valid, position].numpy()).mean()
        assert accuracy > 0.9
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    best = [entry for entry in history if entry.get("best")][-1]
    assert best["validation_mean_accuracy"] == max(entry["validation_mean_accuracy"] for entry in history)


def test_paired_difference_matches_separately_scored_models():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 40)
    labels[:5] = IGNORE_INDEX
    a, b = rng.dirichlet(np.ones(3), 40), rng.dirichlet(np.ones(3), 40)
    result = baselines.paired_difference(a, b, labels, num_bootstrap=200, seed=1, confidence_level=0.9)
    valid = labels != IGNORE_INDEX
    accuracy_a = np.mean(a[valid].argmax(1) == labels[valid])
    accuracy_b = np.mean(b[valid].argmax(1) == labels[valid])
    assert result["accuracy"]["value"] == pytest.approx(accuracy_a - accuracy_b)
    ones = np.ones((1, valid.sum()))
    auc = (weighted_step_metrics(a[valid], labels[valid], ones)["auc"]
           - weighted_step_metrics(b[valid], labels[valid], ones)["auc"])[0]
    assert result["auc"]["value"] == pytest.approx(auc)
    for name, entry in result.items():
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], name
    same = baselines.paired_difference(a, a, labels, num_bootstrap=50, seed=1, confidence_level=0.9)
    assert all(entry["ci_low"] == entry["ci_high"] == 0 for entry in same.values())


def test_baseline_command_writes_reports_that_match_its_predictions(baseline_run, tiny_clip_dir, hub_dataset):
    folder, out = baseline_run
    with_metrics = load_metrics(folder / "with_stepcot")
    without_metrics = load_metrics(folder / "without_stepcot")
    assert len(with_metrics.steps) == 7 and [s.name for s in without_metrics.steps] == ["Diagnosis"]
    assert with_metrics.metadata["trained_steps"] == [1, 2, 3, 4, 5, 6, 7]
    assert without_metrics.metadata["trained_steps"] == [7]
    for metrics, setting in ((with_metrics, "with_stepcot"), (without_metrics, "without_stepcot")):
        saved = np.load(folder / setting / baselines.PREDICTIONS_FILENAME)
        for position, step in enumerate(metrics.steps):
            logits = saved[f"step{saved['trained_steps'][position]}_logits"]
            labels = saved["labels"][:, position]
            valid = labels != IGNORE_INDEX
            assert step.count == valid.sum()
            accuracy = np.mean(logits[valid].argmax(1) == labels[valid])
            assert step.metrics["accuracy"].value == pytest.approx(accuracy)

    # Labels are the test split's, in order; the "without" table row is the diagnosis column.
    from datasets import load_dataset

    test = load_dataset(str(hub_dataset), split="test")
    saved = np.load(folder / "with_stepcot" / baselines.PREDICTIONS_FILENAME)
    np.testing.assert_array_equal(saved["labels"], np.asarray(test["labels"]))

    name = baselines.backbone_display_name(str(tiny_clip_dir))
    table = (out / "table3.md").read_text()
    assert f"| {name} | with Step-CoT |" in table and f"| {name} | without Step-CoT |" in table
    assert "Δ with − without" in table
    rows = list(csv.DictReader((out / "table3.csv").open()))
    difference = next(row for row in rows if row["setting"].startswith("difference"))
    expected = with_metrics.steps[-1].metrics["accuracy"].value - without_metrics.steps[-1].metrics["accuracy"].value
    assert float(difference["accuracy"]) == pytest.approx(expected)
    assert f"| {name} (with Step-CoT) |" in (out / "table8.md").read_text()
    spec = json.loads((folder / "with_stepcot" / baseline_heads.BASELINE_FILENAME).read_text())
    assert spec["steps"] == list(range(7)) and spec["step_questions"][0].startswith("Question: ")
    assert len(spec["history"]) == 4 and spec["training"]["batch_size"] == 8


def test_cached_embeddings_equal_the_backbone_run_directly(baseline_run, tiny_clip_dir, hub_dataset):
    from datasets import load_dataset
    from safetensors.torch import load_file
    from transformers import CLIPModel, CLIPProcessor

    _, out = baseline_run
    test = load_dataset(str(hub_dataset), split="test")
    backbone = baselines.load_backbone(str(tiny_clip_dir))
    path = baseline_backbones._cache_path(out / "cache", test, "test", backbone)
    assert path.is_file()
    stored = load_file(path)

    # Independently: CLIP's own processor and the pooled projection of the vision / text towers.
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip_dir)
    images = [image.convert("RGB") for image in test["image"]]
    with torch.no_grad():
        vision = model.vision_model(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"])
        expected_images = model.visual_projection(vision.pooler_output)
    torch.testing.assert_close(stored["image_embeds"], expected_images, rtol=1e-5, atol=1e-5)
    question = "Question: " + test[0]["vqa_chain"][6]["question"]
    row = stored["question_index"][0, 6]
    tokens = processor.tokenizer([question], return_tensors="pt")
    with torch.no_grad():
        text = model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        expected_text = model.text_projection(text.pooler_output)
    torch.testing.assert_close(stored["text_embeds"][row : row + 1], expected_text, rtol=1e-5, atol=1e-5)

    # A second embedding pass reads the same file instead of running the backbone.
    again, again_path, hit = baselines.embed_split(test, backbone, "test", 7, cache_dir=out / "cache")
    assert hit and again_path == path and torch.equal(again.image_embeds, stored["image_embeds"])
    # Changed weights under the same name never read those embeddings.
    changed = baselines.load_backbone(str(tiny_clip_dir))
    with torch.no_grad():
        changed.model.visual_projection.weight[0, 0] += 1.0
    assert baseline_backbones._cache_path(out / "cache", test, "test", changed) != path


def test_saved_baseline_predicts_the_same_logits_from_images(baseline_run, hub_dataset):
    from datasets import load_dataset

    folder, _ = baseline_run
    test = load_dataset(str(hub_dataset), split="test")
    model = baselines.load_baseline(folder / "without_stepcot")
    assert model.display_name.endswith(" (without Step-CoT)")
    logits = model.step_logits(list(test["image"]), step=6)
    saved = np.load(folder / "without_stepcot" / baselines.PREDICTIONS_FILENAME)
    np.testing.assert_allclose(logits, saved["step7_logits"], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="trained on steps"):
        model.step_logits(list(test["image"])[:1], step=0)


def test_backbone_errors_name_the_problem(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_open_clip(name, *args, **kwargs):  # as if open_clip were not installed
        if name == "open_clip":
            raise ModuleNotFoundError("No module named 'open_clip'", name="open_clip")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_open_clip)
    with pytest.raises(ModuleNotFoundError, match="pip install open_clip_torch"):
        baselines.load_backbone("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
    monkeypatch.setattr(builtins, "__import__", real_import)

    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                       image_size=16, patch_size=8)).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match="no get_image_features / get_text_features|no get_text_features"):
        baselines.load_backbone(str(tmp_path / "vit"))
    assert cli.main(["baseline", "--backbone", str(tmp_path / "missing"), "--dataset", str(tmp_path), "--out",
                           str(tmp_path / "o")]) == 1


def test_a_baseline_folder_runs_in_eval_transfer(baseline_run, tmp_path):
    from PIL import Image

    folder, _ = baseline_run
    names = ["00013118_008.png", "00014716_007.png", "00029817_009.png"]
    images_dir = tmp_path / "nih"
    images_dir.mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(images_dir / name)
    (tmp_path / "bbox.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                                       f"{names[0]},Mass,1,2,3,4\n{names[1]},Infiltrate,1,2,3,4\n"
                                       f"{names[2]},Nodule,1,2,3,4\n")
    out = tmp_path / "transfer"
    assert cli.main(["eval-transfer", "--model", str(folder / "with_stepcot"), "--nih-images", str(images_dir),
                     "--bbox-csv", str(tmp_path / "bbox.csv"), "--out", str(out), "--num-bootstrap", "0",
                     "--no-plots"]) == 0
    model = baselines.load_baseline(folder / "with_stepcot")
    logits = model.step_logits([Image.open(images_dir / name) for name in names], step=6)
    rows = list(csv.DictReader(next(out.glob("*/predictions.csv")).open()))
    assert [row["predicted"] for row in rows] == [model.spec.step_options[6][i] for i in logits.argmax(1)]
    assert "(with Step-CoT) |" in (out / "table4.md").read_text()
