"""Temperature scaling (Guo et al., 2017) per step: one temperature T_s per step, fitted on a validation split by
minimising the negative log-likelihood of softmax(logits / T_s) plus a weak prior on log T_s (a small validation
split answered without error would otherwise drive T_s to the search bound); the argmax (the predictions) never
changes.

    >>> from trainers.evaluation.calibration import calibrate_checkpoint
    >>> calibrate_checkpoint("outputs/demo/student", "outputs/demo/dataset", split="validation")

stores `{"method": "temperature", "temperatures": [...], "split": ..., "nll_before": [...], ...}` as
`config.calibration` in the model's config.json, which the `stepcot-vqa` pipeline reads.
"""

from __future__ import annotations

import math

import numpy as np

from modeling_stepcot.configuration_stepcot import IGNORE_INDEX
from trainers.evaluation.evaluate_model import ImagePreprocessor, load_split, predict
from trainers.evaluation.report import new_figure
from trainers.model_loading import load_model

# Search range of the inverse temperature 1/T.
INVERSE_TEMPERATURE_RANGE = (0.02, 20.0)
GOLDEN = (math.sqrt(5) - 1) / 2
# Prior on the temperature, log T ~ Normal(0, LOG_TEMPERATURE_PRIOR_STD^2): on a validation split the model gets
# entirely right (common with ~70 films), the likelihood keeps rising as T -> 0 and a maximum-likelihood fit runs
# to the search bound, making every later answer certain. The prior holds T near 1 when the data say little and
# gives way to them as the split grows (its weight is one observation's worth, not one per example).
LOG_TEMPERATURE_PRIOR_STD = 1.0


def _nll(logits: np.ndarray, labels: np.ndarray, inverse_temperature: float) -> float:
    scaled = logits * inverse_temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(scaled).sum(axis=1))
    return float(np.mean(log_norm - scaled[np.arange(len(labels)), labels]))


def _negative_log_posterior(logits, labels, log_inverse_temperature: float) -> float:
    nll = len(labels) * _nll(logits, labels, math.exp(log_inverse_temperature))
    return nll + log_inverse_temperature ** 2 / (2 * LOG_TEMPERATURE_PRIOR_STD ** 2)


def fit_temperature(logits, labels, iterations: int = 60) -> float:
    """The temperature T of softmax(logits / T) with the highest posterior on valid labels (-100 ignored): the
    likelihood times the prior on log T (`LOG_TEMPERATURE_PRIOR_STD`); 1.0 when fewer than 2 labels are valid.
    A grid over log(1/T) finds the best bracket, golden-section search refines it."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    valid = labels != IGNORE_INDEX
    if valid.sum() < 2:
        return 1.0
    logits, labels = logits[valid], labels[valid]
    grid = np.linspace(math.log(INVERSE_TEMPERATURE_RANGE[0]), math.log(INVERSE_TEMPERATURE_RANGE[1]), 121)
    values = [_negative_log_posterior(logits, labels, u) for u in grid]
    best = int(np.argmin(values))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    a, b = high - GOLDEN * (high - low), low + GOLDEN * (high - low)
    fa, fb = _negative_log_posterior(logits, labels, a), _negative_log_posterior(logits, labels, b)
    for _ in range(iterations):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - GOLDEN * (high - low)
            fa = _negative_log_posterior(logits, labels, a)
        else:
            low, a, fa = a, b, fb
            b = low + GOLDEN * (high - low)
            fb = _negative_log_posterior(logits, labels, b)
    return math.exp(-(low + high) / 2)


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
        if not np.isfinite(np.asarray(logits, dtype=np.float64)).all():
            raise ValueError(f"step {step + 1}: the model gives non-finite logits; no temperature can be fitted")
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
            "log_temperature_prior_std": LOG_TEMPERATURE_PRIOR_STD,
            "nll_before": nll_before, "nll_after": nll_after, "ece_before": ece_before, "ece_after": ece_after}


def step_logits_of(padded_logits, num_classes_per_step) -> list[np.ndarray]:
    """Per-step (N, C_s) logits from padded (N, steps, max_classes) logits (the trainer's predictions)."""
    padded = np.asarray(padded_logits, dtype=np.float64)
    return [padded[:, step, :classes] for step, classes in enumerate(num_classes_per_step)]


def calibrate_models(models: dict, role_logits: dict, labels, split: str = "validation") -> dict:
    """Fit each role's per-step temperatures on its `split` predictions (padded logits, as the trainer returns them)
    and store them as `model.config.calibration`, so that the exported model's probabilities are calibrated.
    Returns {role: calibration dict}."""
    fitted = {}
    for role, model in models.items():
        step_logits = step_logits_of(role_logits[role], model.config.num_classes_per_step)
        model.config.calibration = fitted[role] = fit_calibration(step_logits, labels, split=split)
    return fitted


def reliability_bins(logits, labels, temperature: float = 1.0, bins: int = 10) -> dict:
    """Per equal-width confidence bin: count, mean top-1 confidence and accuracy (None for an empty bin)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    valid = labels != IGNORE_INDEX
    scaled = logits[valid] / temperature
    probabilities = np.exp(scaled - scaled.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == labels[valid]
    edges = np.linspace(0, 1, bins + 1)
    rows = {"edges": edges.tolist(), "count": [], "confidence": [], "accuracy": []}
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        rows["count"].append(int(in_bin.sum()))
        rows["confidence"].append(float(confidence[in_bin].mean()) if in_bin.any() else None)
        rows["accuracy"].append(float(correct[in_bin].mean()) if in_bin.any() else None)
    return rows


def calibration_summary(step_logits, labels, temperatures, step_names) -> list[dict]:
    """Per labelled step of a scored split: the stored temperature and ECE without and with it."""
    labels = np.asarray(labels, dtype=np.int64)
    rows = []
    for step, (logits, temperature, name) in enumerate(zip(step_logits, temperatures, step_names)):
        target = labels[:, step]
        if not (target != IGNORE_INDEX).any():
            continue
        rows.append({"step": step + 1, "name": name, "temperature": float(temperature),
                     "n": int((target != IGNORE_INDEX).sum()),
                     "ece_uncalibrated": expected_calibration_error(logits, target),
                     "ece_calibrated": expected_calibration_error(logits, target, temperature)})
    return rows


def calibration_markdown(summaries: dict, split: str, fitted_on: str | None = "validation") -> str:
    """'Calibration' section: per role and labelled step, T and the ECE on `split` without and with it
    (`fitted_on` None: the model stores no temperatures, T = 1)."""
    how = f"temperature scaling fitted on {fitted_on}" if fitted_on else "none stored (T = 1)"
    lines = [f"Calibration: {how}; scored on {split} "
             "(expected calibration error of the top-1 probability, 10 bins, in %; lower is better):", "",
             "| Model | Step | n | Temperature | ECE uncalibrated | ECE calibrated |", "|---|---|---|---|---|---|"]
    for role, rows in summaries.items():
        for row in rows:
            lines.append(f"| {role} | {row['name']} | {row['n']} | {row['temperature']:.3g} | "
                         f"{100 * row['ece_uncalibrated']:.1f} | {100 * row['ece_calibrated']:.1f} |")
    return "\n".join(lines) + "\n"


def plot_reliability(step_logits, labels, temperatures, step_names, path, title: str | None = None):
    """Reliability diagram of each labelled step: accuracy against mean confidence per bin, uncalibrated and with
    the stored temperature, beside the diagonal of perfect calibration."""
    from pathlib import Path

    labels = np.asarray(labels, dtype=np.int64)
    steps = [s for s in range(len(step_logits)) if (labels[:, s] != IGNORE_INDEX).any()]
    if not steps:
        return None
    figure = new_figure(3.6 * len(steps), 3.6)
    axes = figure.subplots(1, len(steps), squeeze=False)[0]
    for axis, step in zip(axes, steps):
        axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        for temperature, label, marker in ((1.0, "uncalibrated", "o"),
                                           (temperatures[step], f"T = {temperatures[step]:.2g}", "s")):
            bins = reliability_bins(step_logits[step], labels[:, step], temperature)
            points = [(c, a) for c, a in zip(bins["confidence"], bins["accuracy"]) if c is not None]
            ece = expected_calibration_error(step_logits[step], labels[:, step], temperature)
            axis.plot(*zip(*points), marker=marker, label=f"{label} (ECE {100 * ece:.1f})")
        axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=step_names[step])
        axis.legend(fontsize=7, loc="upper left")
    if title:
        figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def calibrate_run(models: dict, validation_prediction, eval_prediction, eval_split: str, output_dir=None,
                  write: bool = True) -> tuple[dict, str]:
    """The end of a training run: fit each model's temperatures on the validation predictions (stored in its
    config, so the exported model answers with calibrated probabilities), then score them on the evaluation split's
    predictions: ECE without and with the temperatures, and a reliability diagram per model
    (OUTPUT_DIR/metrics/ROLE/reliability.png). `*_prediction`: `Trainer.predict` outputs whose `predictions`
    hold one padded logits array per role, in the order of `models`. Returns ({role: summary}, Markdown)."""
    roles = list(models)

    def by_role(prediction):
        predictions = prediction.predictions
        predictions = predictions if isinstance(predictions, (tuple, list)) else (predictions,)
        return dict(zip(roles, predictions[:len(roles)]))

    fitted = calibrate_models(models, by_role(validation_prediction), validation_prediction.label_ids)
    eval_logits, summaries = by_role(eval_prediction), {}
    for role, model in models.items():
        config = model.config
        step_logits = step_logits_of(eval_logits[role], config.num_classes_per_step)
        temperatures = fitted[role]["temperatures"]
        rows = calibration_summary(step_logits, eval_prediction.label_ids, temperatures, config.step_names)
        summaries[role] = {"fitted_on": "validation", "scored_on": eval_split, "temperatures": temperatures,
                           "validation_ece_before": fitted[role]["ece_before"],
                           "validation_ece_after": fitted[role]["ece_after"], "steps": rows}
        if write and output_dir is not None:
            from pathlib import Path

            plot_reliability(step_logits, eval_prediction.label_ids, temperatures, config.step_names,
                             Path(output_dir) / "metrics" / role / "reliability.png",
                             title=f"{role.capitalize()}: reliability on {eval_split}")
    markdown = calibration_markdown({role.capitalize(): s["steps"] for role, s in summaries.items()}, eval_split)
    return summaries, markdown


def calibrate(model, data, preprocess=None, split: str | None = None, batch_size: int = 32, device: str = "cpu"):
    """Fit per-step temperatures of `model` on `data` (a `datasets` split with `image` and `labels` columns) and
    store them as `model.config.calibration`. Returns the calibration dict."""
    if preprocess is None:
        preprocess = ImagePreprocessor(getattr(model, "name_or_path", "") or "", model.config)
    step_logits, labels = predict(model, data, preprocess, batch_size, device)
    calibration = fit_calibration(step_logits, labels, split=split)
    model.config.calibration = calibration
    return calibration


def calibrate_checkpoint(model_dir, dataset, split: str = "validation", batch_size: int = 32,
                         device: str = "cpu") -> dict:
    """Calibrate a saved model on a dataset split and write the temperatures into its config.json."""
    model = load_model(model_dir)
    data, split = load_split(dataset, split)
    calibration = calibrate(model, data, ImagePreprocessor(model_dir, model.config), split=f"{dataset}:{split}",
                            batch_size=batch_size, device=device)
    model.config.save_pretrained(model_dir)
    return calibration


__all__ = ["calibrate", "calibrate_checkpoint", "calibrate_models", "calibrate_run", "calibration_markdown",
           "calibration_summary", "expected_calibration_error", "fit_calibration", "fit_temperature",
           "plot_reliability", "reliability_bins", "step_logits_of"]
