"""The `evaluate` metric module gives exactly the numbers `stepcot eval` writes for the same predictions."""

import json
import math

import numpy as np
import pytest
from tiny_models import tiny_student

from trainers import cli
from trainers.evaluation.metrics import METRIC_NAMES

evaluate = pytest.importorskip("evaluate")


def _padded(step_logits: list[np.ndarray]) -> np.ndarray:
    width = max(step.shape[1] for step in step_logits)
    padded = np.full((step_logits[0].shape[0], len(step_logits), width), np.nan)
    for index, step in enumerate(step_logits):
        padded[:, index, : step.shape[1]] = step
    return padded


def _expected(metrics_json: dict) -> dict[str, float]:
    groups = [(f"step{step['index'] + 1}", step["metrics"]) for step in metrics_json["steps"]]
    groups.append(("mean", metrics_json["mean"]))
    return {f"{prefix}_{name}": metrics[name]["value"] for prefix, metrics in groups for name in METRIC_NAMES}


@pytest.mark.parametrize("source", ["script", "exported_folder"])
def test_evaluate_metric_matches_stepcot_eval(source, hub_dataset, tmp_path, monkeypatch):
    from trainers.evaluation.metric_export import METRIC_SCRIPT, export_evaluate_metric

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))  # the module is copied there, not here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_dir = tmp_path / "student"
    tiny_student(seed=5).save_pretrained(model_dir)
    out = tmp_path / "report"
    assert cli.main(["eval", "--model", str(model_dir), "--dataset", str(hub_dataset), "--split", "test",
                     "--out", str(out), "--num-bootstrap", "20"]) == 0
    written = json.loads((out / "metrics.json").read_text())
    saved = np.load(out / "predictions.npz")
    step_logits = [saved[f"step{index + 1}_logits"] for index in range(len(written["steps"]))]
    labels = saved["labels"]

    location = METRIC_SCRIPT if source == "script" else str(export_evaluate_metric(tmp_path / "export"))
    metric = evaluate.load(location)
    computed = metric.compute(predictions=_padded(step_logits), references=labels,
                              num_classes_per_step=[s.shape[1] for s in step_logits])

    expected = _expected(written)
    assert set(computed) == set(expected)
    for key, value in expected.items():
        if value is None:  # metrics.json writes NaN (undefined) as null
            assert math.isnan(computed[key]), key
        else:
            assert computed[key] == value, key  # exactly, not approximately


def test_evaluate_metric_leaves_out_missing_answers(tmp_path, monkeypatch):
    from trainers.evaluation.metric_export import METRIC_SCRIPT

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    rng = np.random.default_rng(0)
    classes = [4, 3]
    logits = [rng.normal(size=(30, count)) for count in classes]
    labels = np.stack([rng.integers(0, count, 30) for count in classes], 1)
    labels[:10, 0] = -100  # missing answers at step 1
    labels[:, 1] = -100  # no answer at all at step 2
    computed = evaluate.load(METRIC_SCRIPT).compute(predictions=_padded(logits), references=labels,
                                                    num_classes_per_step=classes)
    kept = labels[:, 0] != -100
    assert computed["step1_accuracy"] == pytest.approx(np.mean(logits[0][kept].argmax(1) == labels[kept, 0]))
    assert all(math.isnan(computed[f"step2_{name}"]) for name in METRIC_NAMES)
    assert computed["mean_accuracy"] == computed["step1_accuracy"]  # undefined steps leave the mean
