"""Honest baselines on the frozen image features the Step-CoT heads train on: the majority class and a linear probe.

A Step-CoT model whose heads do not beat a logistic regression on the same frozen embedding adds nothing but
complexity; `stepcot train` and `stepcot baseline` print both beside the teacher and student.

- Majority: per step, the most frequent training label, predicted for everyone (probabilities = training class
  frequencies, so its AUC is 0.5).
- Linear probe: per step, scikit-learn `LogisticRegression` (multinomial, lbfgs) on standardised embeddings; the
  inverse regularisation C is chosen on the validation split (best accuracy, ties to the stronger regularisation),
  then refitted on the training split alone. Steps without training labels get no probe (uniform scores).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from trainers.evaluation.metrics import IGNORE_INDEX

PROBE_C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


@dataclass
class StepProbe:
    """The fitted probe of one step (None where the step had fewer than two training classes)."""

    step: int
    c: float | None
    validation_accuracy: float
    classes: list[int] = field(default_factory=list)
    model: object = None


def _standardise(train: np.ndarray):
    mean = train.mean(0)
    scale = np.maximum(train.std(0), 1e-6)
    return lambda x: (np.asarray(x, dtype=np.float64) - mean) / scale


def fit_linear_probe(train_embeds, train_labels, validation_embeds=None, validation_labels=None,
                     c_grid=PROBE_C_GRID, seed: int = 0, max_iter: int = 2000) -> tuple[list[StepProbe], object]:
    """One logistic regression per step (labels (N, S), -100 = missing). Returns (probes, standardiser)."""
    from sklearn.linear_model import LogisticRegression

    train_embeds = np.asarray(train_embeds, dtype=np.float64)
    train_labels = np.asarray(train_labels)
    standardise = _standardise(train_embeds)
    x_train = standardise(train_embeds)
    x_val = standardise(validation_embeds) if validation_embeds is not None else None
    probes = []
    for step in range(train_labels.shape[1]):
        valid = train_labels[:, step] != IGNORE_INDEX
        classes = sorted(set(train_labels[valid, step].tolist()))
        if len(classes) < 2:
            probes.append(StepProbe(step, None, math.nan, classes))
            continue

        def fit(c, step=step, valid=valid):
            return LogisticRegression(C=c, max_iter=max_iter, random_state=seed).fit(
                x_train[valid], train_labels[valid, step])

        best = (None, -1.0, None)
        val_valid = (validation_labels[:, step] != IGNORE_INDEX) if x_val is not None else None
        if x_val is not None and val_valid.any():
            for c in c_grid:  # ascending: a tie keeps the stronger regularisation
                model = fit(c)
                accuracy = float(np.mean(model.predict(x_val[val_valid]) == validation_labels[val_valid, step]))
                if accuracy > best[1]:
                    best = (c, accuracy, model)
        else:  # no validation labels: scikit-learn's default
            best = (1.0, math.nan, fit(1.0))
        probes.append(StepProbe(step, best[0], best[1], classes, best[2]))
    return probes, standardise


def probe_scores(probes: list[StepProbe], standardise, embeds, num_classes_per_step) -> list[np.ndarray]:
    """Per step (N, C_s) class probabilities; classes the probe never saw get 0, an unfitted step is uniform."""
    x = standardise(embeds)
    scores = []
    for probe, num_classes in zip(probes, num_classes_per_step):
        probabilities = np.full((x.shape[0], num_classes), 1.0 / num_classes)
        if probe.model is not None:
            probabilities = np.zeros((x.shape[0], num_classes))
            probabilities[:, probe.model.classes_] = probe.model.predict_proba(x)
        scores.append(probabilities)
    return scores


def majority_scores(train_labels, num_examples: int, num_classes_per_step) -> list[np.ndarray]:
    """Per step (N, C_s): the training class frequencies for every example (argmax = the majority class)."""
    train_labels = np.asarray(train_labels)
    scores = []
    for step, num_classes in enumerate(num_classes_per_step):
        labels = train_labels[:, step]
        counts = np.bincount(labels[labels != IGNORE_INDEX], minlength=num_classes).astype(float)
        frequencies = counts / counts.sum() if counts.sum() else np.full(num_classes, 1.0 / num_classes)
        scores.append(np.tile(frequencies, (num_examples, 1)))
    return scores


def baseline_scores(train_embeds, train_labels, validation_embeds, validation_labels, eval_embeds,
                    num_classes_per_step, seed: int = 0) -> dict[str, tuple[list[np.ndarray], dict]]:
    """{"Majority": (scores, info), "Linear probe": (scores, info)} on `eval_embeds`; info records the chosen C."""
    probes, standardise = fit_linear_probe(train_embeds, train_labels, validation_embeds, validation_labels,
                                           seed=seed)
    probe_info = {"chosen_c": [p.c for p in probes], "c_grid": list(PROBE_C_GRID),
                  "validation_accuracy": [None if math.isnan(p.validation_accuracy) else p.validation_accuracy
                                          for p in probes]}
    return {
        "Majority": (majority_scores(train_labels, len(eval_embeds), num_classes_per_step), {}),
        "Linear probe": (probe_scores(probes, standardise, eval_embeds, num_classes_per_step), probe_info),
    }


__all__ = ["PROBE_C_GRID", "baseline_scores", "fit_linear_probe", "majority_scores", "probe_scores"]
