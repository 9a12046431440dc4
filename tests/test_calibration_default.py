"""Calibrated probabilities by default: temperatures fitted on the validation split are stored in every exported
model's config and used by the pipeline; the run reports ECE without and with them and draws a reliability diagram;
on held-out data the fitted temperature lowers the ECE of an over-confident model."""

import json

import numpy as np
import pytest
from PIL import Image

from trainers.evaluation.calibration import (
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    plot_reliability,
    reliability_bins,
)


def _overconfident(n, seed, sharpness=4.0, classes=3):
    """Logits of a model whose true class probabilities are softmax(z) but which reports softmax(sharpness * z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.2, (n, classes))
    probabilities = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = np.array([rng.choice(classes, p=p) for p in probabilities])
    return sharpness * z, labels


@pytest.mark.parametrize("n_fit", [40, 120, 400])
def test_temperature_fitted_on_validation_lowers_held_out_ece(n_fit):
    fit_logits, fit_labels = _overconfident(n_fit, seed=n_fit)
    test_logits, test_labels = _overconfident(2000, seed=1)
    temperature = fit_temperature(fit_logits, fit_labels)
    assert temperature > 1.5  # over-confidence is softened
    before = expected_calibration_error(test_logits, test_labels)
    after = expected_calibration_error(test_logits, test_labels, temperature)
    assert after <= before and after < 0.5 * before


def test_a_validation_split_without_errors_does_not_make_every_answer_certain():
    """72 films all answered right: the likelihood alone keeps rising as T -> 0 (the maximum-likelihood fit ends at
    the search bound, 0.05); the prior on log T keeps the fitted temperature moderate."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 72)
    logits = np.zeros((72, 2))
    logits[np.arange(72), labels] = rng.uniform(1.0, 4.0, 72)  # right, with margins of 1-4
    assert _nll_only_fit(logits, labels) < 0.06
    temperature = fit_temperature(logits, labels)
    assert 0.2 < temperature < 1.0
    held_out, held_out_labels = _overconfident(2000, seed=5, sharpness=1.0, classes=2)
    assert expected_calibration_error(held_out, held_out_labels, temperature) < expected_calibration_error(
        held_out, held_out_labels, _nll_only_fit(logits, labels))


def _nll_only_fit(logits, labels):
    from trainers.evaluation.calibration import INVERSE_TEMPERATURE_RANGE, _nll

    grid = np.geomspace(*INVERSE_TEMPERATURE_RANGE, 400)
    return 1.0 / grid[int(np.argmin([_nll(logits, labels, beta) for beta in grid]))]


def test_reliability_bins_and_summary_skip_unlabelled_steps(tmp_path):
    logits, labels = _overconfident(300, seed=3)
    bins = reliability_bins(logits, labels)
    assert sum(bins["count"]) == 300 and len(bins["accuracy"]) == 10
    step_labels = np.stack([labels, np.full(300, -100)], 1)
    rows = calibration_summary([logits, logits], step_labels, [2.0, 1.0], ["Diagnosis", "Unlabelled"])
    assert [row["name"] for row in rows] == ["Diagnosis"] and rows[0]["n"] == 300
    assert rows[0]["ece_calibrated"] < rows[0]["ece_uncalibrated"]
    path = plot_reliability([logits, logits], step_labels, [2.0, 1.0], ["Diagnosis", "Unlabelled"],
                            tmp_path / "reliability.png")
    assert Image.open(path).size[0] > 100


@pytest.mark.slow
def test_training_stores_validation_temperatures_and_the_pipeline_uses_them(tmp_path):
    from transformers import AutoModel

    from dataset_script.importers import import_folders
    from modeling_stepcot.pipeline_stepcot import StepCoTVQAPipeline
    from trainers.run_distill import main

    rng = np.random.default_rng(0)
    for label_index, label in enumerate(("NORMAL", "BACTERIA", "VIRUS")):
        (tmp_path / "folders" / label).mkdir(parents=True)
        for patient in range(14):
            pixels = rng.integers(0, 120, (24, 24)) + 60 * label_index
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "folders" / label / f"person{patient}_0.png")
    import_folders(tmp_path / "folders", tmp_path / "release")
    out = tmp_path / "run"
    assert main(["--dataset", str(tmp_path / "release"), "--output_dir", str(out), "--image_size", "32",
                 "--teacher_hidden_size", "16", "--student_hidden_size", "16", "--relation_dim", "8",
                 "--num_train_epochs", "2", "--teacher_pretrain_epochs", "0", "--save_strategy", "no",
                 "--num_bootstrap", "0", "--disable_tqdm", "true"]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    for role in ("teacher", "student"):
        config = json.loads((out / role / "config.json").read_text())
        calibration = config["calibration"]
        assert calibration["method"] == "temperature" and calibration["split"] == "validation"
        assert len(calibration["temperatures"]) == 1 and calibration["temperatures"][0] > 0
        assert results["calibration"][role]["scored_on"] == "test"
        assert (out / "metrics" / role / "reliability.png").is_file()
    vqa = StepCoTVQAPipeline(model=AutoModel.from_pretrained(out / "student"), device="cpu")
    answer = vqa(str(next((tmp_path / "release").rglob("*.png"))))
    assert answer["probability_method"] == "temperature scaling (fitted on validation)"
