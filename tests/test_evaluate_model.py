"""`stepcot eval` end to end: a tiny random model on the synthetic demo data, checked against a hand-run forward."""

import json

import numpy as np
import pytest
import torch
from tiny_models import tiny_student, tiny_teacher

from modeling_stepcot.configuration_stepcot import IGNORE_INDEX
from trainers import cli
from trainers.evaluation import report
from trainers.evaluation.metrics import METRIC_NAMES, compute_step_metrics


@pytest.fixture(scope="module")
def saved_teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    tiny_teacher(seed=3, use_memory=False).save_pretrained(folder)
    return folder


def _test_split(hub_dataset):
    from datasets import load_dataset

    return load_dataset(str(hub_dataset), split="test")


def test_eval_command_writes_a_report_that_matches_a_hand_run_forward(hub_dataset, saved_teacher, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    from modeling_stepcot import StepCoTProcessor
    from trainers.training.offline_encoders import offline_text_encoder_path

    out = tmp_path / "report"
    code = cli.main(["eval", "--model", str(saved_teacher), "--dataset", str(hub_dataset), "--split", "test",
                     "--out", str(out), "--num-bootstrap", "50", "--batch-size", "4"])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {
        "metrics.json", "metrics.md", "step_metrics.png", "confusion_matrices.png", "reliability.png",
        "predictions.npz"
    }
    data = json.loads((out / "metrics.json").read_text())
    assert data["model"] == "Teacher w/o Memory" and data["split"] == "test"

    # Independent path: the data layer's processor (with a real tokenizer) and a plain forward pass.
    test = _test_split(hub_dataset)
    model = AutoModel.from_pretrained(saved_teacher).eval()
    tokenizer = AutoTokenizer.from_pretrained(offline_text_encoder_path())
    processor = StepCoTProcessor.from_model_config(model.config, tokenizer)
    with torch.no_grad():
        logits = model(pixel_values=processor.preprocess_images(list(test["image"]))).step_logits
    labels = np.asarray(test["labels"])
    assert data["num_examples"] == len(test)
    for step, parsed in enumerate(data["steps"]):
        valid = labels[:, step] != IGNORE_INDEX
        assert parsed["count"] == int(valid.sum())
        predicted = logits[step].argmax(-1).numpy()
        accuracy = float(np.mean(predicted[valid] == labels[valid, step])) if valid.any() else None
        assert parsed["metrics"]["accuracy"]["value"] == pytest.approx(accuracy, abs=1e-9)
        assert parsed["options"] == test[0]["vqa_chain"][step]["options"]

    # predictions.npz recomputes the same metrics without the model.
    saved = np.load(out / "predictions.npz")
    recomputed = compute_step_metrics([saved[f"step{i}_logits"] for i in range(1, 8)], saved["labels"],
                                      scores="logits", num_bootstrap=50, seed=0)
    np.testing.assert_allclose(
        [v for v in recomputed.flat(True).values()],
        [v for v in report.load_metrics(out).flat(True).values()],
        rtol=1e-6,
    )


def test_fallback_image_preprocessing_equals_the_processor(hub_dataset, saved_teacher):
    from transformers import AutoTokenizer

    from modeling_stepcot import StepCoTProcessor
    from trainers.evaluation.evaluate_model import ImagePreprocessor
    from trainers.training.offline_encoders import offline_text_encoder_path

    images = list(_test_split(hub_dataset).select(range(3))["image"])
    fallback = ImagePreprocessor(saved_teacher, tiny_teacher().config)
    assert fallback.source == "model config"  # the checkpoint has no saved processor
    processor = StepCoTProcessor.from_model_config(
        tiny_teacher().config, AutoTokenizer.from_pretrained(offline_text_encoder_path())
    )
    torch.testing.assert_close(fallback(images), processor.preprocess_images(images), rtol=0, atol=0)


def test_student_eval_with_report_comparison(hub_dataset, saved_teacher, tmp_path):
    from trainers.evaluation.evaluate_model import evaluate

    student_dir = tmp_path / "student"
    tiny_student(seed=1).save_pretrained(student_dir)
    student = evaluate(student_dir, str(hub_dataset), split="val", out=tmp_path / "s", num_bootstrap=0, plots=False)
    assert student.metadata["model"] == "Student" and student.metadata["split"] == "validation"
    assert all(np.isnan(student.mean[name].ci_low) for name in METRIC_NAMES)  # no bootstrap asked
    evaluate(saved_teacher, str(hub_dataset), split="validation", out=tmp_path / "t", num_bootstrap=0, plots=False,
             max_examples=5)
    assert report.load_metrics(tmp_path / "t").num_examples == 5
    assert cli.main(["report", str(tmp_path / "t"), str(tmp_path / "s"), "--out", str(tmp_path / "cmp.md")]) == 0
    assert "| Student |" in (tmp_path / "cmp.md").read_text()


def test_eval_errors_name_the_problem(hub_dataset, saved_teacher, demo_release_dir, tmp_path, capsys):
    args = ["eval", "--model", str(saved_teacher), "--out", str(tmp_path / "x")]
    assert cli.main(args + ["--dataset", str(hub_dataset), "--split", "holdout"]) == 1
    assert "cannot load split 'holdout'" in capsys.readouterr().err
    # A release folder is validated and built like `stepcot train` does (dataset_script.sources); a folder that is
    # neither a release nor a build is named.
    (tmp_path / "empty").mkdir()
    assert cli.main(args + ["--dataset", str(tmp_path / "empty")]) == 1
    assert "neither a Step-CoT release folder" in capsys.readouterr().err
