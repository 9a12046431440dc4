"""`stepcot annotate-eval`: agreement of report annotation with the expert MeSH codes of Indiana University reports.

Protocol (the MeSH -> answer mapping is documented in `annotate_mesh.py`):

* every report with MeSH codes other than `No Indexing` is annotated from its findings + impression text;
* **Detection**: abnormal (any answer but "No abnormality") vs normal, and the four-way Step 1 answer;
* **Side**: the `laterality` of the location step, on reports whose primary MeSH lesion has a side. The primary
  lesion is chosen among the coded findings by the same priority as the chain (`FINDING_KINDS`; codes of one kind
  add up, so a left and a right opacity make a bilateral one), so in a multi-finding report the side compared is
  that of the lesion the chain's Step 4 is meant to locate. When the annotator's primary lesion is another
  finding (a different diagnosis, or a side-less one such as cardiomegaly) the report still counts, as a side
  miss: the chain then locates the wrong lesion. A costophrenic angle coded `obscured` is image quality, not a
  lesion (see `annotate_mesh.py`);
* **Zone**: the location step's answer, on reports whose primary MeSH lesion has a zone / region;
* **Diagnosis**: the Step 7 answer, on reports whose codes give a class in the taxonomy (reports coded only with
  findings outside it, e.g. hyperinflation, are left out); macro-F1 over the classes with at least
  `--min-class-count` reference reports in the evaluated set;
* reports are split into two halves by a hash of their uid (`dev` / `holdout`) so that rules developed on one half
  can be checked on the other; both halves and the whole set are reported;
* 95% percentile-bootstrap intervals over reports (`trainers.evaluation.bootstrap`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataset_script.annotate.mesh import parse_mesh
from modeling_stepcot.configuration_stepcot import DETECTION, DIAGNOSIS, LOCATION
from trainers.evaluation.bootstrap import percentile_interval, resample_weights

SPLITS = ("dev", "holdout", "all")
NOT_STATED = "(not stated)"


def split_of(uid: str) -> str:
    """'dev' or 'holdout': a fixed half of the reports by a hash of the uid."""
    return "dev" if hashlib.sha256(uid.encode("utf-8")).digest()[0] % 2 == 0 else "holdout"


@dataclass
class Estimate:
    value: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict:
        return {key: (None if np.isnan(v) else round(float(v), 4))
                for key, v in (("value", self.value), ("ci_low", self.ci_low), ("ci_high", self.ci_high))}

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}]"


def _scores_from_confusion(confusion: np.ndarray):
    """accuracy (b,), per-class precision / recall / F1 (b, K) from weighted confusion matrices (b, K, K)."""
    true_positive = np.diagonal(confusion, axis1=1, axis2=2)
    predicted = confusion.sum(axis=1)
    actual = confusion.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = true_positive.sum(axis=1) / confusion.sum(axis=(1, 2))
        precision = np.where(predicted > 0, true_positive / predicted, 0.0)
        recall = np.where(actual > 0, true_positive / actual, np.nan)
        denominator = predicted + actual
        f1 = np.where(actual > 0, 2 * true_positive / np.where(denominator > 0, denominator, 1), np.nan)
    return accuracy, precision, recall, f1


def agreement(true: list[str], predicted: list[str], *, macro_classes: list[str] | None = None,
              num_bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Accuracy, per-class F1 / precision / recall and macro-F1 (over `macro_classes`, default: all reference
    classes), each with a percentile-bootstrap interval over reports."""
    if len(true) != len(predicted):
        raise ValueError(f"{len(true)} reference labels but {len(predicted)} predictions")
    if not true:
        return {"count": 0}
    classes = sorted(set(true) | set(predicted))
    index = {name: i for i, name in enumerate(classes)}
    size = len(classes)
    cell = np.array([index[t] * size + index[p] for t, p in zip(true, predicted)])
    one_hot = np.zeros((len(true), size * size))
    one_hot[np.arange(len(true)), cell] = 1.0
    macro_classes = sorted(set(true)) if macro_classes is None else [c for c in macro_classes if c in index]
    macro_index = [index[c] for c in macro_classes]

    def evaluate(weights: np.ndarray):
        confusion = (weights @ one_hot).reshape(-1, size, size)
        accuracy, precision, recall, f1 = _scores_from_confusion(confusion)
        macro = np.nanmean(f1[:, macro_index], axis=1) if macro_index else np.full(len(weights), np.nan)
        return accuracy, precision, recall, f1, macro

    point = evaluate(np.ones((1, len(true))))
    resampled = [evaluate(block.astype(float)) for block in resample_weights(len(true), num_bootstrap, seed)]

    def estimate(which: int, column: int | None = None) -> Estimate:
        values = point[which][0] if column is None else point[which][0, column]
        if not resampled:
            return Estimate(float(values), np.nan, np.nan)
        samples = np.concatenate([r[which] if column is None else r[which][:, column] for r in resampled])
        low, high, _ = percentile_interval(samples, level)
        return Estimate(float(values), low, high)

    support = {name: true.count(name) for name in classes}
    return {
        "count": len(true),
        "accuracy": estimate(0),
        "macro_f1": estimate(4),
        "macro_f1_classes": macro_classes,
        "per_class": {
            name: {"support": support[name], "predicted": predicted.count(name), "f1": estimate(3, i),
                   "precision": estimate(1, i), "recall": estimate(2, i)}
            for i, name in enumerate(classes)
        },
    }


def load_reference(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"IU reports file not found: {path} (pass --reports)")
    reports = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    report = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
                for key in ("uid", "mesh_major"):
                    if key not in report:
                        raise ValueError(f"{path}:{line_number}: missing field {key!r}")
                reports.append(report)
    return reports


def collect_pairs(reports: list[dict], chains: dict[str, list[dict]]) -> dict[str, dict[str, tuple[list, list]]]:
    """split -> task -> (reference labels, predicted labels)."""
    tasks = ("detection", "detection_4way", "side", "zone", "diagnosis")
    pairs = {split: {task: ([], []) for task in tasks} for split in SPLITS}
    for report in reports:
        reference = parse_mesh(report["uid"], report["mesh_major"])
        if not reference.indexed:
            continue
        chain = chains[report["uid"]]
        no_abnormality = chain[DETECTION]["options"][0]
        items = {
            "detection": ("abnormal" if reference.detection_abnormal else "normal",
                          "abnormal" if chain[DETECTION]["answer"] != no_abnormality else "normal"),
            "detection_4way": (reference.detection, chain[DETECTION]["answer"]),
        }
        if reference.side:
            items["side"] = (reference.side, chain[LOCATION].get("laterality") or NOT_STATED)
        if reference.zone:
            items["zone"] = (reference.zone, chain[LOCATION]["answer"])
        if reference.diagnosis:
            items["diagnosis"] = (reference.diagnosis, chain[DIAGNOSIS]["answer"])
        for split in (split_of(report["uid"]), "all"):
            for task, (true, predicted) in items.items():
                pairs[split][task][0].append(true)
                pairs[split][task][1].append(predicted)
    return pairs


def evaluate(reports: list[dict], chains: dict[str, list[dict]], *, min_class_count: int = 20,
             num_bootstrap: int = 1000, seed: int = 0) -> dict:
    results = {}
    for split, tasks in collect_pairs(reports, chains).items():
        results[split] = {}
        for task, (true, predicted) in tasks.items():
            macro_classes = None
            if task == "diagnosis":
                macro_classes = sorted(c for c in set(true) if true.count(c) >= min_class_count)
            results[split][task] = agreement(true, predicted, macro_classes=macro_classes,
                                             num_bootstrap=num_bootstrap, seed=seed)
    return results


def _jsonable(value):
    if isinstance(value, Estimate):
        return value.to_dict()
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


def format_results(results: dict, min_class_count: int) -> str:
    lines = []
    for split, tasks in results.items():
        lines.append(f"== {split} ==")
        for task, result in tasks.items():
            if not result.get("count"):
                lines.append(f"{task:15s} n=0")
                continue
            line = f"{task:15s} n={result['count']:4d}  agreement {result['accuracy']}"
            if task == "diagnosis":
                line += (f"  macro-F1 (classes with >= {min_class_count} reports: "
                         f"{', '.join(result['macro_f1_classes'])}) {result['macro_f1']}")
            else:
                line += f"  macro-F1 {result['macro_f1']}"
            lines.append(line)
            if task in ("diagnosis", "side", "detection"):
                for name, scores in result["per_class"].items():
                    lines.append(f"    {name:22s} support {scores['support']:4d}  predicted {scores['predicted']:4d}"
                                 f"  F1 {scores['f1']}")
    return "\n".join(lines)
