"""Temperature scaling (Guo et al., 2017) per step: one temperature T_s per step, fitted on a validation split by
minimising the negative log-likelihood of softmax(logits / T_s); the argmax (the predictions) never changes.

    >>> from trainers.evaluation.calibration import calibrate_checkpoint
    >>> calibrate_checkpoint("outputs/demo/student", "outputs/demo/dataset", split="validation")

stores `{"method": "temperature", "temperatures": [...], "split": ..., "nll_before": [...], ...}` as
`config.calibration` in the model's config.json, which the `stepcot-vqa` pipeline reads.
"""

from __future__ import annotations

import math

import numpy as np

from modeling_stepcot.configuration_stepcot import IGNORE_INDEX

# Search range of the inverse temperature 1/T; NLL is convex in 1/T, so golden-section search finds the optimum.
INVERSE_TEMPERATURE_RANGE = (0.02, 20.0)
GOLDEN = (math.sqrt(5) - 1) / 2


def _nll(logits: np.ndarray, labels: np.ndarray, inverse_temperature: float) -> float:
    scaled = logits * inverse_temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(scaled).sum(axis=1))
    return float(np.mean(log_norm - scaled[np.arange(len(labels)), labels]))


def fit_temperature(logits, labels, iterations: int = 80) -> float:
    """The temperature T minimising the mean NLL of softmax(logits / T) on valid labels (-100 ignored); 1.0 when
    fewer than 2 labels are valid."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    valid = labels != IGNORE_INDEX
    if valid.sum() < 2:
        return 1.0
    logits, labels = logits[valid], labels[valid]
    low, high = INVERSE_TEMPERATURE_RANGE
    a, b = high - GOLDEN * (high - low), low + GOLDEN * (high - low)
    fa, fb = _nll(logits, labels, a), _nll(logits, labels, b)
    for _ in range(iterations):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - GOLDEN * (high - low)
            fa = _nll(logits, labels, a)
        else:
            low, a, fa = a, b, fb
            b = low + GOLDEN * (high - low)
            fb = _nll(logits, labels, b)
    return 1.0 / ((low + high) / 2)


def expected_calibration_error(logits, labels, temperature: float = 1.0, bins: int = 10) -> float:
    """ECE of the top-1 confidence over equal-width bins (valid labels only)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    valid = labels != IGNORE_INDEX
    logits, labels = logits[valid] / temperature, labels[valid]
    if not len(labels):
        return float("nan")
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            error += in_bin.mean() * abs(confidence[in_bin].mean() - correct[in_bin].mean())
    return float(error)


def fit_calibration(step_logits, labels, split: str | None = None) -> dict:
    """Per-step temperatures and before/after NLL and ECE from per-step logits [(N, C_s)] and labels (N, S)."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 2 or labels.shape[1] != len(step_logits):
        raise ValueError(f"labels must be (N, {len(step_logits)}), got shape {labels.shape}")
    temperatures, nll_before, nll_after, ece_before, ece_after = [], [], [], [], []
    for step, logits in enumerate(step_logits):
        target = labels[:, step]
        temperature = fit_temperature(logits, target)
        valid = target != IGNORE_INDEX
        temperatures.append(round(temperature, 6))
        if valid.sum():
            nll_before.append(round(_nll(np.asarray(logits)[valid], target[valid], 1.0), 6))
            nll_after.append(round(_nll(np.asarray(logits)[valid], target[valid], 1.0 / temperature), 6))
        else:
            nll_before.append(None)
            nll_after.append(None)
        ece_before.append(round(expected_calibration_error(logits, target), 6))
        ece_after.append(round(expected_calibration_error(logits, target, temperature), 6))
    return {"method": "temperature", "temperatures": temperatures, "split": split, "examples": int(len(labels)),
            "nll_before": nll_before, "nll_after": nll_after, "ece_before": ece_before, "ece_after": ece_after}


def calibrate(model, data, preprocess=None, split: str | None = None, batch_size: int = 32, device: str = "cpu"):
    """Fit per-step temperatures of `model` on `data` (a `datasets` split with `image` and `labels` columns) and
    store them as `model.config.calibration`. Returns the calibration dict."""
    from trainers.evaluation.evaluate_model import ImagePreprocessor, predict

    if preprocess is None:
        preprocess = ImagePreprocessor(getattr(model, "name_or_path", "") or "", model.config)
    step_logits, labels = predict(model, data, preprocess, batch_size, device)
    calibration = fit_calibration(step_logits, labels, split=split)
    model.config.calibration = calibration
    return calibration


def calibrate_checkpoint(model_dir, dataset, split: str = "validation", batch_size: int = 32,
                         device: str = "cpu") -> dict:
    """Calibrate a saved model on a dataset split and write the temperatures into its config.json."""
    from trainers.evaluation.evaluate_model import ImagePreprocessor, load_split
    from trainers.inference.predict import load_stepcot_model

    model = load_stepcot_model(model_dir)
    data, split = load_split(dataset, split)
    calibration = calibrate(model, data, ImagePreprocessor(model_dir, model.config), split=f"{dataset}:{split}",
                            batch_size=batch_size, device=device)
    model.config.save_pretrained(model_dir)
    return calibration


__all__ = ["calibrate", "calibrate_checkpoint", "expected_calibration_error", "fit_calibration", "fit_temperature"]
