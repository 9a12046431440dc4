"""Per-step classification metrics for Step-CoT, with bootstrap confidence intervals.

Every step is a multi-class question with its own number of options. For each step this module computes
Accuracy, AUC, Sensitivity, Specificity, F1 and Precision (definitions in `metric_definitions.py`), the confusion
matrix and a percentile-bootstrap confidence interval for every number, plus the unweighted mean over steps.

All metrics are computed from a (weighted) confusion matrix and a weighted rank statistic, so the point estimate and
every bootstrap resample go through the same code: a resample is just a vector of per-example multiplicities. The
tests check this code path against scikit-learn on explicitly resampled arrays.

Inputs are per-step scores, either a list of `(N, C_s)` arrays or a padded `(N, S, C_max)` array (the models'
`.logits`, whose padded classes hold a very negative number), and integer labels `(N, S)` where `-100` marks a
missing answer. Missing answers are left out of that step's metrics only.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# numpy (and its siblings bootstrap.py and metric_definitions.py) only: `export_evaluate_metric` ships this file
# verbatim as the `evaluate` module's maths, so a user's `evaluate.load(folder)` needs neither this package nor the
# models' code.
from .bootstrap import percentile_interval, resample_weights
from .metric_definitions import (
    CONFIDENCE_INTERVAL_DEFINITION,
    CONFUSION_MATRIX_DEFINITION,
    COUNT_DEFINITION,
    MEAN_DEFINITION,
    METRIC_DEFINITIONS,
    WILSON_DEFINITION,
)

IGNORE_INDEX = -100  # a missing answer: the models' label padding (modeling_stepcot.IGNORE_INDEX, checked by a test)

METRIC_NAMES = ("accuracy", "auc", "sensitivity", "specificity", "f1", "precision")

# Below this many labelled examples a step's figures are flagged as unreliable in reports.
FEW_EXAMPLES = 30

# A padded class column holds a value at or below this (or -inf / NaN) in every example.
PADDING_THRESHOLD = -1e4

@dataclass
class MetricEstimate:
    """One number with its confidence interval; `note` says why it is undefined or what it is restricted to."""

    value: float
    ci_low: float = math.nan
    ci_high: float = math.nan
    valid_resamples: int = 0
    note: str | None = None
    wilson_low: float = math.nan  # accuracy only: Wilson score interval (`wilson_interval`)
    wilson_high: float = math.nan

    @property
    def zero_width(self) -> bool:
        """A bootstrap interval with no width: every resample agreed (e.g. all correct), not certainty."""
        return not math.isnan(self.ci_low) and self.ci_low == self.ci_high

    def to_dict(self, definition: str) -> dict[str, Any]:
        result = {
            "value": _json_float(self.value),
            "ci_low": _json_float(self.ci_low),
            "ci_high": _json_float(self.ci_high),
            "valid_resamples": self.valid_resamples,
            "note": self.note,
            "definition": definition,
        }
        if not math.isnan(self.wilson_low):
            result.update(wilson_ci_low=self.wilson_low, wilson_ci_high=self.wilson_high,
                          wilson_definition=WILSON_DEFINITION)
        return result

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetricEstimate:
        return cls(
            value=_float_or_nan(data.get("value")),
            ci_low=_float_or_nan(data.get("ci_low")),
            ci_high=_float_or_nan(data.get("ci_high")),
            valid_resamples=int(data.get("valid_resamples") or 0),
            note=data.get("note"),
            wilson_low=_float_or_nan(data.get("wilson_ci_low")),
            wilson_high=_float_or_nan(data.get("wilson_ci_high")),
        )


@dataclass
class StepMetrics:
    """Metrics of one step. `confusion_matrix[true, predicted]` counts labelled examples."""

    index: int
    name: str
    options: list[str]
    count: int
    classes_evaluated: list[int]
    metrics: dict[str, MetricEstimate]
    confusion_matrix: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.options)


@dataclass
class EvaluationMetrics:
    """Per-step metrics, their mean over steps, and how the confidence intervals were made."""

    steps: list[StepMetrics]
    mean: dict[str, MetricEstimate]
    num_examples: int
    num_bootstrap: int
    confidence_level: float
    seed: int | None
    metadata: dict[str, Any] = field(default_factory=dict)

    def flat(self, include_ci: bool = False) -> dict[str, float]:
        """`{"step1_accuracy": ..., "mean_accuracy": ...}` (plus `_ci_low` / `_ci_high` keys if asked)."""
        result: dict[str, float] = {}
        groups = [(f"step{step.index + 1}", step.metrics) for step in self.steps] + [("mean", self.mean)]
        for prefix, metrics in groups:
            for name in METRIC_NAMES:
                estimate = metrics[name]
                result[f"{prefix}_{name}"] = float(estimate.value)
                if include_ci:
                    result[f"{prefix}_{name}_ci_low"] = float(estimate.ci_low)
                    result[f"{prefix}_{name}_ci_high"] = float(estimate.ci_high)
        return result

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN becomes null) in which every number carries its definition."""
        return {
            "format": "stepcot-metrics/1",
            **self.metadata,
            "num_examples": self.num_examples,
            "confidence_interval": {
                "level": self.confidence_level,
                "method": "percentile bootstrap over examples",
                "num_resamples": self.num_bootstrap,
                "seed": self.seed,
                "definition": CONFIDENCE_INTERVAL_DEFINITION,
            },
            "steps": [
                {
                    "index": step.index,
                    "name": step.name,
                    "options": list(step.options),
                    "count": step.count,
                    "count_definition": COUNT_DEFINITION,
                    "classes_evaluated": list(step.classes_evaluated),
                    "metrics": {name: step.metrics[name].to_dict(METRIC_DEFINITIONS[name]) for name in METRIC_NAMES},
                    "confusion_matrix": step.confusion_matrix.astype(int).tolist(),
                    "confusion_matrix_definition": CONFUSION_MATRIX_DEFINITION,
                }
                for step in self.steps
            ],
            "mean": {
                name: self.mean[name].to_dict(f"{MEAN_DEFINITION} Per step: {METRIC_DEFINITIONS[name]}")
                for name in METRIC_NAMES
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationMetrics:
        """Inverse of `to_dict` (e.g. for a parsed `metrics.json`)."""
        if "steps" not in data or "mean" not in data:
            raise ValueError("Not a Step-CoT metrics dict: it needs the keys 'steps' and 'mean'.")
        known = {"format", "num_examples", "confidence_interval", "steps", "mean"}
        interval = data.get("confidence_interval", {})
        steps = [
            StepMetrics(
                index=int(step["index"]),
                name=step["name"],
                options=list(step["options"]),
                count=int(step["count"]),
                classes_evaluated=[int(c) for c in step.get("classes_evaluated", [])],
                metrics={name: MetricEstimate.from_dict(step["metrics"][name]) for name in METRIC_NAMES},
                confusion_matrix=np.asarray(step["confusion_matrix"], dtype=np.int64),
            )
            for step in data["steps"]
        ]
        return cls(
            steps=steps,
            mean={name: MetricEstimate.from_dict(data["mean"][name]) for name in METRIC_NAMES},
            num_examples=int(data.get("num_examples", 0)),
            num_bootstrap=int(interval.get("num_resamples", 0)),
            confidence_level=float(interval.get("level", 0.95)),
            seed=interval.get("seed"),
            metadata={key: value for key, value in data.items() if key not in known},
        )


# ----------------------------------------------------------------------------------------------------------------
# Input handling


def infer_num_classes(padded_scores: np.ndarray, threshold: float = PADDING_THRESHOLD) -> list[int]:
    """Class count per step of a padded `(N, S, C_max)` score array: trailing columns that are padding
    (<= `threshold`, -inf or NaN) in every example are dropped."""
    padded_scores = np.asarray(padded_scores, dtype=np.float64)
    if padded_scores.ndim != 3:
        raise ValueError(f"padded scores must have shape (N, S, C_max), got {padded_scores.shape}.")
    is_padding = np.all(np.isnan(padded_scores) | (padded_scores <= threshold), axis=0)  # (S, C_max)
    counts = []
    for step, column_is_padding in enumerate(is_padding):
        real = np.flatnonzero(~column_is_padding)
        counts.append(int(real[-1]) + 1 if real.size else 0)
        if counts[-1] < 2:
            raise ValueError(
                f"Cannot infer the class count of step {step + 1} from padding (found {counts[-1]} real columns); "
                "pass num_classes_per_step."
            )
    return counts


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits (max-shifted, so large logits do not overflow)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _looks_like_probabilities(scores: np.ndarray) -> bool:
    return bool(np.all(scores >= 0) and np.all(scores <= 1) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-4))


def to_step_probabilities(
    predictions: np.ndarray | Sequence[np.ndarray],
    num_classes_per_step: Sequence[int] | None = None,
    scores: str = "auto",
) -> list[np.ndarray]:
    """Turn predictions into one `(N, C_s)` float array of class probabilities per step.

    Args:
        predictions: a padded `(N, S, C_max)` array, or a list of `(N, C_s)` arrays (one per step).
        num_classes_per_step: the class counts; required for padded probabilities, otherwise inferred from padding.
        scores: `"logits"` (softmax is applied per step), `"probabilities"` (used as given) or `"auto"`
            (probabilities if every row lies in [0, 1] and sums to 1, logits otherwise). The choice matters for
            AUC, which ranks each class's score across examples.
    """
    if scores not in ("auto", "logits", "probabilities"):
        raise ValueError(f"scores must be 'auto', 'logits' or 'probabilities', got {scores!r}.")
    if isinstance(predictions, (list, tuple)):
        steps = [np.asarray(step, dtype=np.float64) for step in predictions]
        for index, step in enumerate(steps):
            if step.ndim != 2:
                raise ValueError(f"predictions[{index}] must have shape (N, C_s), got {step.shape}.")
        if num_classes_per_step is not None:
            widths = [step.shape[1] for step in steps]
            if list(num_classes_per_step) != widths:
                raise ValueError(f"predictions have {widths} classes per step, num_classes_per_step says "
                                 f"{list(num_classes_per_step)}.")
    else:
        padded = np.asarray(predictions, dtype=np.float64)
        if padded.ndim != 3:
            raise ValueError(
                "predictions must be a padded (N, S, C_max) array or a list of (N, C_s) arrays, "
                f"got shape {padded.shape}."
            )
        if num_classes_per_step is None:
            num_classes_per_step = infer_num_classes(padded)
        if len(num_classes_per_step) != padded.shape[1]:
            raise ValueError(
                f"predictions have {padded.shape[1]} steps, num_classes_per_step has {len(num_classes_per_step)}."
            )
        if max(num_classes_per_step) > padded.shape[2]:
            raise ValueError(
                f"predictions have C_max={padded.shape[2]} classes, fewer than num_classes_per_step "
                f"{list(num_classes_per_step)} needs."
            )
        steps = [padded[:, step, :count] for step, count in enumerate(num_classes_per_step)]
    if len({step.shape[0] for step in steps}) > 1:
        raise ValueError(f"All steps need the same number of examples, got {[step.shape[0] for step in steps]}.")
    probabilities = []
    for index, step in enumerate(steps):
        if not np.all(np.isfinite(step)):
            raise ValueError(f"Step {index + 1} predictions contain NaN or infinite values.")
        if scores == "logits" or (scores == "auto" and not _looks_like_probabilities(step)):
            step = softmax(step)
        probabilities.append(step)
    return probabilities


def _check_labels(labels: np.ndarray, num_classes_per_step: Sequence[int], num_examples: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 1 and len(num_classes_per_step) == 1:
        labels = labels[:, None]
    if labels.shape != (num_examples, len(num_classes_per_step)):
        raise ValueError(
            f"labels must have shape (N, S) = ({num_examples}, {len(num_classes_per_step)}) to match the "
            f"predictions, got {labels.shape}."
        )
    if labels.size and not np.all(np.equal(np.mod(labels, 1), 0)):
        raise ValueError("labels must be integer option indices (or -100 for missing).")
    labels = labels.astype(np.int64)
    for step, count in enumerate(num_classes_per_step):
        column = labels[:, step]
        bad = column[(column != IGNORE_INDEX) & ((column < 0) | (column >= count))]
        if bad.size:
            raise ValueError(
                f"labels[:, {step}] (step {step + 1}, {count} classes) contains {sorted(set(bad.tolist()))[:5]}; "
                f"labels must be in [0, {count - 1}] or {IGNORE_INDEX}."
            )
    return labels


# ----------------------------------------------------------------------------------------------------------------
# Metric computation on weighted examples


def _weighted_auc(class_scores: np.ndarray, is_positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC of one class for each row of `weights` (B, n): the Mann-Whitney statistic with
    multiplicities, ties counting 1/2. NaN where a resample has no positive or no negative."""
    order = np.argsort(class_scores, kind="mergesort")
    sorted_scores = class_scores[order]
    group_starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # runs of tied scores
    sorted_weights = weights[:, order]
    positive_sorted = is_positive[order]
    positive_per_group = np.add.reduceat(sorted_weights * positive_sorted, group_starts, axis=1)
    negative_per_group = np.add.reduceat(sorted_weights * ~positive_sorted, group_starts, axis=1)
    negatives_below = np.cumsum(negative_per_group, axis=1) - negative_per_group
    wins = (positive_per_group * (negatives_below + 0.5 * negative_per_group)).sum(axis=1)
    pairs = positive_per_group.sum(axis=1) * negative_per_group.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / np.where(pairs > 0, pairs, 1), np.nan)


def _macro_mean(per_class: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Mean over the present classes of each row; NaN for a row without present classes."""
    total = np.where(present, per_class, 0.0).sum(axis=1)
    count = present.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def weighted_step_metrics(probabilities: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """All metrics of one step for each row of `weights`.

    Args:
        probabilities: `(n, C)` class scores of the labelled examples.
        labels: `(n,)` labels in [0, C).
        weights: `(B, n)` multiplicity of each example in each of B resamples (all ones for the point estimate).

    Returns: metric name -> `(B,)` values (NaN where undefined).
    """
    num_classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    one_hot_cells = np.zeros((labels.size, num_classes * num_classes))
    one_hot_cells[np.arange(labels.size), labels * num_classes + predicted] = 1.0
    confusion = (weights @ one_hot_cells).reshape(-1, num_classes, num_classes)  # (B, true, predicted)

    total = confusion.sum(axis=(1, 2))
    true_positive = np.diagonal(confusion, axis1=1, axis2=2)
    support = confusion.sum(axis=2)  # examples of each true class
    predicted_count = confusion.sum(axis=1)
    present = support > 0
    two_or_more_classes = present.sum(axis=1) >= 2

    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(total > 0, true_positive.sum(axis=1) / np.maximum(total, 1e-300), np.nan)
        recall = true_positive / np.where(present, support, 1.0)
        predicted_at_all = predicted_count > 0
        precision = np.where(predicted_at_all, true_positive / np.where(predicted_at_all, predicted_count, 1), 0.0)
        f1 = np.where(present, 2 * true_positive / np.maximum(support + predicted_count, 1e-300), 0.0)
        negatives = total[:, None] - support
        true_negative = negatives - (predicted_count - true_positive)
        specificity = true_negative / np.where(negatives > 0, negatives, 1.0)

    auc_per_class = np.full(present.shape, np.nan)
    for cls in range(num_classes):
        is_positive = labels == cls
        if is_positive.any() and not is_positive.all():
            auc_per_class[:, cls] = _weighted_auc(probabilities[:, cls], is_positive, weights)
    auc_defined = present & ~np.isnan(auc_per_class)

    return {
        "accuracy": accuracy,
        "auc": np.where(two_or_more_classes, _macro_mean(auc_per_class, auc_defined), np.nan),
        "sensitivity": _macro_mean(recall, present),
        "specificity": np.where(two_or_more_classes, _macro_mean(specificity, present), np.nan),
        "f1": _macro_mean(f1, present),
        "precision": _macro_mean(precision, present),
    }


def _undefined_reason(name: str, count: int, present_classes: list[int], options: list[str]) -> str | None:
    if count == 0:
        return "no labelled examples at this step"
    if name in ("auc", "specificity") and len(present_classes) < 2:
        return f"needs at least two classes in the labels; only {options[present_classes[0]]!r} occurs"
    return None


def wilson_interval(successes: int, count: int, confidence_level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion successes / count ((NaN, NaN) when count is 0). It stays
    inside [0, 1], has width > 0 at 0 and count successes, and keeps close to nominal coverage for small counts,
    where the percentile bootstrap (and the Wald interval) collapse to a point at 0 % or 100 %."""
    if count <= 0:
        return math.nan, math.nan
    if not 0 <= successes <= count:
        raise ValueError(f"successes must be in [0, {count}], got {successes}")
    z = statistics.NormalDist().inv_cdf(0.5 + confidence_level / 2)
    proportion = successes / count
    denominator = 1 + z * z / count
    centre = (proportion + z * z / (2 * count)) / denominator
    half_width = z * math.sqrt(proportion * (1 - proportion) / count + z * z / (4 * count * count)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half_width)  # exact ends, not rounding noise
    high = 1.0 if successes == count else min(1.0, centre + half_width)
    return low, high


def paired_difference(probabilities_a: np.ndarray, probabilities_b: np.ndarray, labels: np.ndarray,
                      num_bootstrap: int, seed: int | None, confidence_level: float) -> dict[str, dict]:
    """Metric of A minus metric of B on the same labelled examples, with a paired percentile-bootstrap CI (each
    resample draws examples once and scores both models on them)."""
    valid = labels != IGNORE_INDEX
    probabilities_a, probabilities_b, labels = probabilities_a[valid], probabilities_b[valid], labels[valid]
    point = np.ones((1, labels.size))
    value_a = weighted_step_metrics(probabilities_a, labels, point)
    value_b = weighted_step_metrics(probabilities_b, labels, point)
    differences = {name: [] for name in METRIC_NAMES}
    for weights in resample_weights(labels.size, num_bootstrap, seed):
        resampled_a = weighted_step_metrics(probabilities_a, labels, weights.astype(float))
        resampled_b = weighted_step_metrics(probabilities_b, labels, weights.astype(float))
        for name in METRIC_NAMES:
            differences[name].append(resampled_a[name] - resampled_b[name])
    result = {}
    for name in METRIC_NAMES:
        values = np.concatenate(differences[name]) if differences[name] else np.empty(0)
        low, high, valid_resamples = percentile_interval(values, confidence_level)
        result[name] = {"value": float(value_a[name][0] - value_b[name][0]), "ci_low": low,
                        "ci_high": high, "valid_resamples": valid_resamples}
    return result


def compute_step_metrics(
    predictions: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray,
    *,
    num_classes_per_step: Sequence[int] | None = None,
    step_names: Sequence[str] | None = None,
    step_options: Sequence[Sequence[str]] | None = None,
    scores: str = "auto",
    num_bootstrap: int = 1000,
    confidence_level: float = 0.95,
    seed: int | None = 0,
    metadata: dict[str, Any] | None = None,
) -> EvaluationMetrics:
    """Per-step metrics with percentile-bootstrap confidence intervals.

    Args:
        predictions: per-step logits or probabilities: a padded `(N, S, C_max)` array or a list of `(N, C_s)` arrays.
        labels: `(N, S)` option indices, `-100` for a missing answer.
        num_classes_per_step: class counts (default: from `step_options`, the list widths, or the padding).
        step_names, step_options: used in reports (default: "Step 1", ... and "option 0", ...).
        scores: "logits", "probabilities" or "auto" (see `to_step_probabilities`).
        num_bootstrap: number of resamples (0: no intervals).
        confidence_level: e.g. 0.95 for a 95% interval.
        seed: seed of the resampling (same seed, same intervals).
        metadata: extra JSON-ready fields stored in `metrics.json` (model name, dataset, split, ...).
    """
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}.")
    if num_bootstrap < 0:
        raise ValueError(f"num_bootstrap must be >= 0, got {num_bootstrap}.")
    if num_classes_per_step is None and step_options is not None:
        num_classes_per_step = [len(options) for options in step_options]
    probabilities = to_step_probabilities(predictions, num_classes_per_step, scores=scores)
    num_classes_per_step = [p.shape[1] for p in probabilities]
    num_steps, num_examples = len(probabilities), probabilities[0].shape[0]
    labels = _check_labels(labels, num_classes_per_step, num_examples)
    step_names = list(step_names) if step_names is not None else [f"Step {i + 1}" for i in range(num_steps)]
    step_options = (
        [list(o) for o in step_options] if step_options is not None else [[f"option {c}" for c in range(n)]
                                                                          for n in num_classes_per_step]
    )
    if len(step_names) != num_steps or len(step_options) != num_steps:
        raise ValueError(
            f"step_names ({len(step_names)}) and step_options ({len(step_options)}) need one entry per step "
            f"({num_steps})."
        )
    for name, options, count in zip(step_names, step_options, num_classes_per_step):
        if len(options) != count:
            raise ValueError(f"Step {name!r} has {len(options)} options but {count} predicted classes.")

    point = np.ones((1, num_examples))
    resampled_blocks = list(resample_weights(num_examples, num_bootstrap, seed)) if num_examples else []
    steps, resampled_per_step = [], []
    for step in range(num_steps):
        valid = labels[:, step] != IGNORE_INDEX
        step_labels, step_probabilities = labels[valid, step], probabilities[step][valid]
        count = int(valid.sum())
        num_classes = num_classes_per_step[step]
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        np.add.at(confusion, (step_labels, step_probabilities.argmax(axis=1)), 1)
        present_classes = np.flatnonzero(np.bincount(step_labels, minlength=num_classes)).tolist()

        if count:
            point_values = weighted_step_metrics(step_probabilities, step_labels, point[:, valid])
            resampled = {name: [] for name in METRIC_NAMES}
            for weights in resampled_blocks:
                block_values = weighted_step_metrics(step_probabilities, step_labels, weights[:, valid])
                for name in METRIC_NAMES:
                    resampled[name].append(block_values[name])
            resampled = {
                name: np.concatenate(blocks) if blocks else np.empty(0) for name, blocks in resampled.items()
            }
        else:
            point_values = {name: np.array([np.nan]) for name in METRIC_NAMES}
            resampled = {name: np.full(num_bootstrap, np.nan) for name in METRIC_NAMES}
        resampled_per_step.append(resampled)

        estimates = {}
        for name in METRIC_NAMES:
            low, high, valid_resamples = percentile_interval(resampled[name], confidence_level)
            estimates[name] = MetricEstimate(
                value=float(point_values[name][0]),
                ci_low=low,
                ci_high=high,
                valid_resamples=valid_resamples,
                note=_undefined_reason(name, count, present_classes, step_options[step]),
            )
        estimates["accuracy"].wilson_low, estimates["accuracy"].wilson_high = wilson_interval(
            int(np.trace(confusion)), count, confidence_level)
        steps.append(
            StepMetrics(
                index=step,
                name=step_names[step],
                options=step_options[step],
                count=count,
                classes_evaluated=present_classes,
                metrics=estimates,
                confusion_matrix=confusion,
            )
        )

    mean = {}
    for name in METRIC_NAMES:
        per_step = np.array([step.metrics[name].value for step in steps])
        defined = ~np.isnan(per_step)
        if num_bootstrap and num_examples:
            # Resamples are shared across steps, so the mean is recomputed per resample (over its defined steps).
            stacked = np.stack([resampled_per_step[s][name] for s in range(num_steps)])
            with warnings.catch_warnings():
                # A resample in which every step is undefined has no mean: NaN, skipped by percentile_interval.
                warnings.filterwarnings("ignore", message="Mean of empty slice", category=RuntimeWarning)
                resampled_mean = np.nanmean(stacked, axis=0)
            low, high, valid_resamples = percentile_interval(resampled_mean, confidence_level)
        else:
            low, high, valid_resamples = math.nan, math.nan, 0
        if defined.all():
            note = None
        elif defined.any():
            skipped = [steps[s].name for s in np.flatnonzero(~defined)]
            note = f"mean over {int(defined.sum())} of {num_steps} steps; undefined at {', '.join(skipped)}"
        else:
            note = "undefined at every step"
        mean[name] = MetricEstimate(
            value=float(per_step[defined].mean()) if defined.any() else math.nan,
            ci_low=low,
            ci_high=high,
            valid_resamples=valid_resamples,
            note=note,
        )
    return EvaluationMetrics(
        steps=steps,
        mean=mean,
        num_examples=num_examples,
        num_bootstrap=num_bootstrap,
        confidence_level=confidence_level,
        seed=seed,
        metadata=dict(metadata or {}),
    )


# ----------------------------------------------------------------------------------------------------------------
# transformers.Trainer integration


def _predictions_from_eval_output(predictions: Any) -> np.ndarray | list[np.ndarray]:
    """Pick the step scores out of `EvalPrediction.predictions`: the padded logits array itself, or the first
    element of the tuple a Trainer builds from a model output with several tensors, or a list of per-step arrays."""
    if isinstance(predictions, (list, tuple)):
        if predictions and getattr(predictions[0], "ndim", None) == 3:
            return np.asarray(predictions[0])
        if predictions and all(getattr(item, "ndim", None) == 2 for item in predictions):
            return [np.asarray(item) for item in predictions]
        shapes = [getattr(item, "shape", type(item).__name__) for item in predictions]
        raise ValueError(
            "EvalPrediction.predictions is a tuple whose first element is not padded (N, S, C_max) logits and that "
            f"is not a list of per-step (N, C_s) arrays; element shapes: {shapes}."
        )
    return np.asarray(predictions)


def build_compute_metrics(
    num_classes_per_step: Sequence[int] | None = None,
    *,
    config: Any = None,
    scores: str = "logits",
    num_bootstrap: int = 0,
    seed: int | None = 0,
) -> Callable[[Any], dict[str, float]]:
    """A `compute_metrics` for `transformers.Trainer`: returns flat float keys `step1_accuracy`, ...,
    `mean_accuracy` (with `_ci_low` / `_ci_high` keys when `num_bootstrap` > 0).

    The class counts come from `num_classes_per_step`, else from `config.num_classes_per_step`, else from the
    padding of the logits. Bootstrap is off by default: it is for final reports, not every evaluation.
    """
    if num_classes_per_step is None and config is not None:
        num_classes_per_step = list(config.num_classes_per_step)

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        predictions = getattr(eval_pred, "predictions", None)
        label_ids = getattr(eval_pred, "label_ids", None)
        if predictions is None and isinstance(eval_pred, (tuple, list)):
            predictions, label_ids = eval_pred[0], eval_pred[1]
        if label_ids is None:
            raise ValueError("compute_metrics needs EvalPrediction.label_ids of shape (N, S); got None.")
        result = compute_step_metrics(
            _predictions_from_eval_output(predictions),
            np.asarray(label_ids),
            num_classes_per_step=num_classes_per_step,
            scores=scores,
            num_bootstrap=num_bootstrap,
            seed=seed,
        )
        return result.flat(include_ci=num_bootstrap > 0)

    return compute_metrics


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _json_float(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _float_or_nan(value: Any) -> float:
    return math.nan if value is None else float(value)


__all__ = [
    "METRIC_NAMES",
    "EvaluationMetrics",
    "MetricEstimate",
    "StepMetrics",
    "build_compute_metrics",
    "compute_step_metrics",
    "infer_num_classes",
    "softmax",
    "to_step_probabilities",
    "weighted_step_metrics",
]
