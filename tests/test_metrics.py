"""Per-step metrics checked against scikit-learn and hand-computable cases."""

import math

import numpy as np
import pytest
from scipy.special import softmax as scipy_softmax
from sklearn import metrics as skm

from modeling_stepcot.configuration_stepcot import IGNORE_INDEX
from trainers.evaluation.metrics import (
    METRIC_NAMES,
    EvaluationMetrics,
    build_compute_metrics,
    compute_step_metrics,
    infer_num_classes,
    to_step_probabilities,
    weighted_step_metrics,
)

NUM_CLASSES = [4, 4, 6, 7, 5, 7, 9]


def _softmax(logits):  # an independent reference for the library's softmax
    return scipy_softmax(logits, axis=1)


def _sklearn_reference(probabilities, labels, num_classes):
    """The documented definitions, built from scikit-learn on the labelled examples of one step."""
    valid = labels != IGNORE_INDEX
    y_true, scores = labels[valid], probabilities[valid]
    y_pred = scores.argmax(axis=1)
    present = sorted(set(y_true.tolist()))
    per_class = skm.multilabel_confusion_matrix(y_true, y_pred, labels=present)  # [[tn, fp], [fn, tp]] per class
    specificity = np.mean([cm[0, 0] / (cm[0, 0] + cm[0, 1]) for cm in per_class]) if len(present) > 1 else math.nan
    auc = (
        np.mean([skm.roc_auc_score(y_true == c, scores[:, c]) for c in present]) if len(present) > 1 else math.nan
    )
    return {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "auc": auc,
        "sensitivity": skm.recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0),
        "specificity": specificity,
        "f1": skm.f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0),
        "precision": skm.precision_score(y_true, y_pred, labels=present, average="macro", zero_division=0),
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=list(range(num_classes))),
        "count": int(valid.sum()),
    }


@pytest.fixture
def mixed_case():
    """Seven steps with informative but noisy logits, missing labels, absent classes, tied scores, an empty step."""
    rng = np.random.default_rng(7)
    n = 300
    labels = np.stack([rng.integers(0, c, n) for c in NUM_CLASSES], axis=1)
    logits = []
    for step, c in enumerate(NUM_CLASSES):
        step_logits = rng.normal(size=(n, c))
        step_logits[np.arange(n), labels[:, step]] += 1.0
        logits.append(step_logits)
    labels[rng.random(labels.shape) < 0.15] = IGNORE_INDEX
    # Step 2: classes 1 and 3 never occur in the labels, but the model still predicts them.
    labels[:, 1] = np.where(labels[:, 1] == 1, 0, labels[:, 1])
    labels[:, 1] = np.where(labels[:, 1] == 3, 2, labels[:, 1])
    # Step 3: coarse logits give tied probabilities, which AUC must count as 1/2.
    logits[2] = np.round(logits[2])
    # Step 5: nobody answered.
    labels[:, 4] = IGNORE_INDEX
    return logits, labels


def test_every_metric_matches_sklearn(mixed_case):
    logits, labels = mixed_case
    result = compute_step_metrics(logits, labels, num_bootstrap=0)
    for step, c in enumerate(NUM_CLASSES):
        if step == 4:
            continue
        expected = _sklearn_reference(_softmax(logits[step]), labels[:, step], c)
        got = result.steps[step]
        assert got.count == expected["count"]
        np.testing.assert_array_equal(got.confusion_matrix, expected["confusion_matrix"])
        for name in METRIC_NAMES:
            assert got.metrics[name].value == pytest.approx(expected[name], abs=1e-12), (step, name)


def test_auc_equals_sklearn_multiclass_ovr_when_all_classes_present():
    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(5), 40)
    probabilities = _softmax(rng.normal(size=(200, 5)) + 2 * np.eye(5)[labels])
    result = compute_step_metrics([probabilities], labels[:, None], scores="probabilities", num_bootstrap=0)
    expected = skm.roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")
    assert result.steps[0].metrics["auc"].value == pytest.approx(expected, abs=1e-12)


def test_a_bootstrap_resample_matches_sklearn_on_the_resampled_examples(mixed_case):
    logits, labels = mixed_case
    rng = np.random.default_rng(3)
    drawn = rng.integers(0, labels.shape[0], labels.shape[0])
    multiplicity = np.bincount(drawn, minlength=labels.shape[0])
    for step in (0, 1, 2, 6):
        valid = labels[:, step] != IGNORE_INDEX
        probabilities = _softmax(logits[step])
        values = weighted_step_metrics(probabilities[valid], labels[valid, step], multiplicity[None, valid])
        expected = _sklearn_reference(probabilities[drawn], labels[drawn, step], NUM_CLASSES[step])
        for name in METRIC_NAMES:
            assert values[name][0] == pytest.approx(expected[name], abs=1e-12), (step, name)


def test_all_missing_step_is_nan_with_count_zero_and_left_out_of_the_mean(mixed_case):
    logits, labels = mixed_case
    result = compute_step_metrics(logits, labels, num_bootstrap=20)
    empty = result.steps[4]
    assert empty.count == 0
    assert empty.confusion_matrix.sum() == 0
    for name in METRIC_NAMES:
        assert math.isnan(empty.metrics[name].value)
        assert math.isnan(empty.metrics[name].ci_low) and empty.metrics[name].valid_resamples == 0
        assert "no labelled examples" in empty.metrics[name].note
        others = [s.metrics[name].value for s in result.steps if s.index != 4]
        assert result.mean[name].value == pytest.approx(np.mean(others))
        assert "6 of 7" in result.mean[name].note


def test_single_class_step_has_undefined_auc_and_specificity_but_defined_accuracy():
    labels = np.array([[2], [2], [2], [IGNORE_INDEX]])
    logits = np.array([[0.0, 0.0, 5.0], [5.0, 0.0, 0.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    step = compute_step_metrics([logits], labels, step_options=[["a", "b", "c"]], num_bootstrap=0).steps[0]
    assert step.metrics["accuracy"].value == pytest.approx(2 / 3)
    assert step.metrics["sensitivity"].value == pytest.approx(2 / 3)
    for name in ("auc", "specificity"):
        assert math.isnan(step.metrics[name].value)
        assert "'c'" in step.metrics[name].note


def test_perfect_predictor_scores_one_everywhere():
    rng = np.random.default_rng(1)
    labels = np.stack([rng.permutation(np.arange(60) % c) for c in NUM_CLASSES], axis=1)
    logits = [10.0 * np.eye(c)[labels[:, step]] for step, c in enumerate(NUM_CLASSES)]
    result = compute_step_metrics(logits, labels, num_bootstrap=50)
    for metrics in [step.metrics for step in result.steps] + [result.mean]:
        for name in METRIC_NAMES:
            assert metrics[name].value == pytest.approx(1.0)
            assert metrics[name].ci_low == pytest.approx(1.0) and metrics[name].ci_high == pytest.approx(1.0)


@pytest.mark.parametrize("num_classes", [2, 4, 9])
def test_constant_predictor_has_sensitivity_one_over_num_classes(num_classes):
    rng = np.random.default_rng(num_classes)
    labels = rng.permutation(np.arange(10 * num_classes) % num_classes)
    logits = np.tile(np.arange(num_classes, dtype=float), (labels.size, 1))  # always predicts the last class
    step = compute_step_metrics([logits], labels[:, None], num_bootstrap=0).steps[0]
    assert step.metrics["sensitivity"].value == pytest.approx(1 / num_classes)
    assert step.metrics["specificity"].value == pytest.approx(1 - 1 / num_classes)  # (C-1) classes at 1, one at 0
    assert step.metrics["auc"].value == pytest.approx(0.5)  # identical scores for everyone: every pair is a tie
    # Never-predicted classes score precision 0 (zero_division=0); the predicted class has precision 1/C, recall 1.
    assert step.metrics["precision"].value == pytest.approx(1 / num_classes**2)
    assert step.metrics["f1"].value == pytest.approx(2 / (num_classes + 1) / num_classes)


def _noisy_problem(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    logits = rng.normal(size=(n, 4)) + 1.5 * np.eye(4)[labels]
    return [logits], labels[:, None]


def test_bootstrap_interval_contains_estimate_narrows_with_data_and_is_seeded():
    small = compute_step_metrics(*_noisy_problem(150, 0), num_bootstrap=300, seed=5)
    large = compute_step_metrics(*_noisy_problem(3000, 0), num_bootstrap=300, seed=5)
    for name in METRIC_NAMES:
        for result in (small, large):
            estimate = result.steps[0].metrics[name]
            assert estimate.ci_low <= estimate.value <= estimate.ci_high, name
            assert estimate.valid_resamples == 300
        small_width = small.steps[0].metrics[name].ci_high - small.steps[0].metrics[name].ci_low
        large_width = large.steps[0].metrics[name].ci_high - large.steps[0].metrics[name].ci_low
        assert large_width < small_width / 2, name  # width ~ 1/sqrt(n): 20x the data, ~4.5x narrower

    again = compute_step_metrics(*_noisy_problem(150, 0), num_bootstrap=300, seed=5)
    other_seed = compute_step_metrics(*_noisy_problem(150, 0), num_bootstrap=300, seed=6)
    assert again.steps[0].metrics["auc"].ci_low == small.steps[0].metrics["auc"].ci_low
    assert other_seed.steps[0].metrics["auc"].ci_low != small.steps[0].metrics["auc"].ci_low


def test_confidence_level_widens_the_interval():
    problem = _noisy_problem(300, 1)
    narrow = compute_step_metrics(*problem, num_bootstrap=300, confidence_level=0.5).steps[0].metrics["f1"]
    wide = compute_step_metrics(*problem, num_bootstrap=300, confidence_level=0.99).steps[0].metrics["f1"]
    assert wide.ci_low < narrow.ci_low and wide.ci_high > narrow.ci_high


def _pad(logits, width, fill=-1e9):
    padded = np.full((logits[0].shape[0], len(logits), width), fill)
    for step, step_logits in enumerate(logits):
        padded[:, step, : step_logits.shape[1]] = step_logits
    return padded


def test_padded_logits_give_the_same_metrics_as_per_step_arrays(mixed_case):
    logits, labels = mixed_case
    padded = _pad(logits, 9)
    assert infer_num_classes(padded) == NUM_CLASSES
    from_list = compute_step_metrics(logits, labels, num_bootstrap=30).flat(include_ci=True)
    from_padded = compute_step_metrics(padded, labels, num_bootstrap=30).flat(include_ci=True)
    np.testing.assert_equal(from_padded, from_list)


def test_probabilities_are_detected_and_logits_are_softmaxed(mixed_case):
    logits, _ = mixed_case
    probabilities = [_softmax(step) for step in logits]
    for converted, expected in zip(to_step_probabilities(logits), probabilities):
        np.testing.assert_allclose(converted, expected)
    for converted, expected in zip(to_step_probabilities(probabilities), probabilities):
        np.testing.assert_array_equal(converted, expected)
    with pytest.raises(ValueError, match="scores must be"):
        to_step_probabilities(logits, scores="log-probs")


def test_trainer_compute_metrics_reads_padded_logits_from_eval_prediction(mixed_case):
    from transformers import EvalPrediction

    logits, labels = mixed_case
    padded = _pad(logits, 9)
    step_logits = tuple(logits)
    compute_metrics = build_compute_metrics(NUM_CLASSES)
    expected = compute_step_metrics(logits, labels, num_bootstrap=0).flat()
    for predictions in (padded, (padded, step_logits)):  # alone, or as a Trainer tuple with .step_logits
        metrics = compute_metrics(EvalPrediction(predictions=predictions, label_ids=labels))
        assert set(metrics) == {f"step{i}_{m}" for i in range(1, 8) for m in METRIC_NAMES} | {
            f"mean_{m}" for m in METRIC_NAMES
        }
        assert all(type(value) is float for value in metrics.values())
        np.testing.assert_equal(metrics, expected)
    assert metrics["step1_accuracy"] == pytest.approx(
        np.mean(logits[0].argmax(1)[labels[:, 0] != IGNORE_INDEX] == labels[labels[:, 0] != IGNORE_INDEX, 0])
    )
    with_ci = build_compute_metrics(NUM_CLASSES, num_bootstrap=20)(EvalPrediction(padded, labels))
    assert with_ci["mean_f1_ci_low"] <= with_ci["mean_f1"] <= with_ci["mean_f1_ci_high"]


def test_to_dict_round_trip_keeps_values_and_turns_nan_into_null(mixed_case):
    import json

    logits, labels = mixed_case
    result = compute_step_metrics(logits, labels, num_bootstrap=20, metadata={"model": "Teacher"})
    text = json.dumps(result.to_dict(), allow_nan=False)  # strict JSON: NaN must have become null
    parsed = json.loads(text)
    assert parsed["steps"][4]["metrics"]["auc"]["value"] is None
    assert parsed["steps"][0]["metrics"]["auc"]["definition"].startswith("Macro one-vs-rest ROC AUC")
    restored = EvaluationMetrics.from_dict(parsed)
    assert restored.metadata["model"] == "Teacher"
    np.testing.assert_equal(restored.flat(include_ci=True), result.flat(include_ci=True))
    np.testing.assert_array_equal(restored.steps[2].confusion_matrix, result.steps[2].confusion_matrix)


def test_bad_inputs_raise_errors_that_name_the_problem(mixed_case):
    logits, labels = mixed_case
    bad_labels = labels.copy()
    bad_labels[0, 3] = 7  # step 4 has 7 classes: 0..6
    with pytest.raises(ValueError, match=r"labels\[:, 3\] \(step 4, 7 classes\) contains \[7\]"):
        compute_step_metrics(logits, bad_labels)
    with pytest.raises(ValueError, match=r"labels must have shape \(N, S\) = \(300, 7\)"):
        compute_step_metrics(logits, labels[:, :6])
    with pytest.raises(ValueError, match=r"predictions\[1\] must have shape \(N, C_s\)"):
        compute_step_metrics([logits[0], logits[1][0]], labels[:, :2])
    with pytest.raises(ValueError, match="fewer than num_classes_per_step"):
        compute_step_metrics(_pad(logits, 9)[:, :, :8], labels, num_classes_per_step=NUM_CLASSES)
    nan_logits = [step.copy() for step in logits]
    nan_logits[6][0, 0] = np.nan
    with pytest.raises(ValueError, match="Step 7 predictions contain NaN"):
        compute_step_metrics(nan_logits, labels)
