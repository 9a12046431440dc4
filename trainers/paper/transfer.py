"""`stepcot eval-transfer`: zero-shot cross-dataset evaluation of the diagnosis step on NIH ChestX-ray8 (Table 4).

    stepcot eval-transfer --model runs/demo/teacher runs/demo/student reports/baselines/clip/with_stepcot \
        --nih-images /data/ChestX-ray8/images --output-dir reports/transfer

The evaluation set is the "single-label subset" defined by the NIH bounding-box list `BBox_List_2017.csv` (984
boxes over 880 images, 8 findings; default path ../shared/data/nih-chestxray8/BBox_List_2017.csv):

- Each CSV row is (image, finding, box). "Infiltrate" in the CSV is the model's "Infiltration".
- Several boxes of the same finding on one image count once: an image is one sample.
- 93 images carry boxes of two or more different findings; they are not single-label. `--multi-finding exclude`
  (default) leaves them out (787 images remain) and lists them in multi_finding_images.txt;
  `--multi-finding each` keeps every (image, finding) pair as its own sample (984 samples: the paper's count), so
  such an image is scored once per finding and can be right at most once.
- Images listed in the CSV but absent from --nih-images (searched recursively by file name, so the NIH
  images_001/images/... layout works) or unreadable are reported: counted in metrics.json and listed in
  missing_images.txt / unreadable_images.txt, never silently dropped. The metrics cover the images found.

Prediction: the argmax over all the model's diagnosis classes (9 for Step-CoT: Normal + the 8 findings). A
"Normal" prediction is wrong for every sample (each has a finding). Accuracy, sensitivity, specificity, F1 and
precision are macro averages over the 8 findings (trainers/evaluation/metrics.py), computed from that 9-way argmax.
AUC ranks the probabilities of the softmax restricted to the 8 finding logits (Normal's logit dropped): a
one-vs-rest AUC needs a score per finding, and Normal is no class of this set. Every number has a
percentile-bootstrap CI over samples (the same resamples for all metrics).

Writes OUT/<model>/ (metrics.json, metrics.md, plots, predictions.csv, missing/unreadable/multi-finding lists,
subset.json) and OUT/table4.md + table4.csv with one row per model. A model is a saved Step-CoT teacher/student
folder (or Hub id) or a `stepcot baseline` output folder (its diagnosis-trained MLP).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import modeling_stepcot  # noqa: F401  (registers the Step-CoT classes with AutoModel)
from trainers.choices import MULTI_FINDING_POLICIES
from trainers.evaluation.evaluate_model import ImagePreprocessor, model_display_name
from trainers.evaluation.metric_definitions import METRIC_DISPLAY_NAMES
from trainers.evaluation.metrics import METRIC_NAMES, EvaluationMetrics, compute_step_metrics
from trainers.evaluation.report import format_estimate, write_report
from trainers.model_loading import load_model
from trainers.paper.baselines import is_baseline_folder, load_baseline

NIH_FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                "Pneumothorax")
# NIH's bbox list spells one finding differently from its Data_Entry labels and from Step-CoT's diagnosis options.
CSV_FINDING_NAMES = {"infiltrate": "Infiltration"}
IMAGE_COLUMN, FINDING_COLUMN = "Image Index", "Finding Label"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
AUC_NOTE = ("restricted to the 8 findings: one-vs-rest AUC of the softmax over the 8 finding logits (the model's "
            "Normal logit is dropped); the other metrics use the argmax over all the model's diagnosis classes")


# ---------------------------------------------------------------------------------------------------------------
# The bbox list and the single-label subset


def canonical_finding(label: str) -> str | None:
    """The Step-CoT name of an NIH finding label, or None if it is none of the 8."""
    key = label.strip().lower()
    key = CSV_FINDING_NAMES.get(key, key)
    return next((name for name in NIH_FINDINGS if name.lower() == str(key).lower()), None)


def read_bbox_csv(path) -> list[tuple[int, str, str]]:
    """(line number, image name, finding) per box of `BBox_List_2017.csv` (header `Image Index,Finding Label,Bbox
    [x,y,w,h],,,` with trailing empty columns); blank lines are skipped, anything else malformed is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"bbox list not found: {path} (pass --bbox-csv PATH to NIH's BBox_List_2017.csv).")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        lines = list(csv.reader(handle))
    if not lines:
        raise ValueError(f"{path} is empty.")
    header = [cell.strip() for cell in lines[0]]
    missing = [name for name in (IMAGE_COLUMN, FINDING_COLUMN) if name not in header]
    if missing:
        raise ValueError(f"{path}: header {lines[0]} lacks the column(s) {missing}.")
    image_column, finding_column = header.index(IMAGE_COLUMN), header.index(FINDING_COLUMN)
    boxes = []
    for line_number, row in enumerate(lines[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(image_column, finding_column):
            raise ValueError(f"{path}, line {line_number}: {len(row)} fields, too few for {IMAGE_COLUMN!r} and "
                             f"{FINDING_COLUMN!r}: {row}")
        image, label = row[image_column].strip(), row[finding_column].strip()
        if not image:
            raise ValueError(f"{path}, line {line_number}: empty {IMAGE_COLUMN!r}.")
        finding = canonical_finding(label)
        if finding is None:
            raise ValueError(f"{path}, line {line_number}: {FINDING_COLUMN!r} {label!r} is none of "
                             f"{list(NIH_FINDINGS)} (or 'Infiltrate').")
        boxes.append((line_number, image, finding))
    return boxes


@dataclass
class TransferSubset:
    """The samples to score, (image name, finding), and how they were chosen from the boxes."""

    samples: list[tuple[str, str]]
    policy: str
    boxes: int
    images: int
    multi_finding_images: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "boxes": self.boxes, "images": self.images, "multi_finding_policy": self.policy,
            "multi_finding_images": len(self.multi_finding_images), "samples": len(self.samples),
            "samples_per_finding": dict(sorted(Counter(finding for _, finding in self.samples).items())),
        }


def single_label_subset(boxes, policy: str = "exclude") -> TransferSubset:
    """Group the boxes by image. `exclude`: images with two or more distinct findings are left out; `each`: every
    distinct (image, finding) pair is a sample. Order: first appearance in the CSV."""
    if policy not in MULTI_FINDING_POLICIES:
        raise ValueError(f"multi-finding policy must be one of {MULTI_FINDING_POLICIES}, got {policy!r}.")
    findings_of = OrderedDict()
    for _, image, finding in boxes:
        findings_of.setdefault(image, [])
        if finding not in findings_of[image]:
            findings_of[image].append(finding)
    multi = {image: findings for image, findings in findings_of.items() if len(findings) > 1}
    samples = [(image, finding) for image, findings in findings_of.items()
               for finding in findings if policy == "each" or image not in multi]
    return TransferSubset(samples, policy, len(boxes), len(findings_of), multi)


def index_images(folder) -> dict[str, Path]:
    """File name -> path of every image under `folder` (recursive; the first one wins for a repeated name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"NIH image folder not found: {folder}")
    found = {}
    for root, _, files in os.walk(folder):
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES and name not in found:
                found[name] = Path(root) / name
    return found


# ---------------------------------------------------------------------------------------------------------------
# Models: diagnosis logits from images


class StepCoTDiagnosis:
    """A saved Step-CoT teacher or student: the logits of its diagnosis step."""

    def __init__(self, model_dir, device: str, trust_remote_code: bool = False):
        self.model = load_model(model_dir, device, trust_remote_code=trust_remote_code).eval()
        config = self.model.config
        names = [name.lower() for name in config.step_names]
        self.step = names.index("diagnosis") if "diagnosis" in names else config.num_steps - 1
        self.options = list(config.step_options[self.step])
        self.name = model_display_name(config)
        self.preprocess = ImagePreprocessor(model_dir, config)
        self.device = device

    def logits(self, images) -> np.ndarray:
        import torch

        with torch.inference_mode():
            output = self.model(pixel_values=self.preprocess(images).to(self.device))
        return output.step_logits[self.step].float().cpu().numpy()


class BaselineDiagnosis:
    """A `stepcot baseline` output folder: its MLP asked the diagnosis question."""

    def __init__(self, folder, device: str, trust_remote_code: bool = False):
        self.baseline = load_baseline(folder, device, trust_remote_code=trust_remote_code)
        spec = self.baseline.spec
        names = [name.lower() for name in spec.step_names]
        if "diagnosis" not in names:
            raise ValueError(f"the baseline in {folder} was not trained on the diagnosis step "
                             f"(steps {spec.step_names}).")
        self.step = spec.steps[names.index("diagnosis")]
        self.options = list(spec.step_options[names.index("diagnosis")])
        self.name = self.baseline.display_name

    def logits(self, images) -> np.ndarray:
        return self.baseline.step_logits(images, self.step)


def load_diagnosis_model(model, device: str, trust_remote_code: bool = False):
    kind = BaselineDiagnosis if is_baseline_folder(model) else StepCoTDiagnosis
    return kind(model, device, trust_remote_code=trust_remote_code)


def finding_columns(options: list[str]) -> list[int]:
    """The index of each of the 8 findings among a model's diagnosis options (case-insensitive)."""
    lowered = [option.strip().lower() for option in options]
    missing = [name for name in NIH_FINDINGS if name.lower() not in lowered]
    if missing:
        raise ValueError(f"the model's diagnosis options {options} lack {missing}: cannot score ChestX-ray8.")
    return [lowered.index(name.lower()) for name in NIH_FINDINGS]


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


def _load_image(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image


def predict_subset(predictor, subset: TransferSubset, image_paths: dict[str, Path], batch_size: int):
    """Logits per found sample; the images that are missing or unreadable. An image scored for several findings
    (policy `each`) is run once."""
    missing = sorted({image for image, _ in subset.samples if image not in image_paths})
    unreadable, logits_of = {}, {}
    names = [image for image in dict.fromkeys(image for image, _ in subset.samples) if image in image_paths]
    for start in range(0, len(names), batch_size):
        batch, loaded = names[start:start + batch_size], []
        for name in batch:
            try:
                loaded.append((name, _load_image(image_paths[name])))
            except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for corrupt or truncated files
                unreadable[name] = f"{image_paths[name]}: {error}"
        if loaded:
            scores = predictor.logits([image for _, image in loaded])
            logits_of.update({name: row for (name, _), row in zip(loaded, scores)})
    kept = [(image, finding) for image, finding in subset.samples if image in logits_of]
    return kept, logits_of, missing, unreadable


def transfer_metrics(logits: np.ndarray, findings: list[str], options: list[str], num_bootstrap: int,
                     confidence_level: float, seed: int, metadata: dict) -> EvaluationMetrics:
    """Metrics of the 9-way argmax, with AUC replaced by the one of the softmax over the 8 finding logits (same
    seed and sample count, so both use the same bootstrap resamples)."""
    columns = finding_columns(options)
    labels = np.array([columns[NIH_FINDINGS.index(finding)] for finding in findings], dtype=np.int64)
    step_name = "Diagnosis (ChestX-ray8 transfer)"
    common = dict(scores="logits", num_bootstrap=num_bootstrap, confidence_level=confidence_level, seed=seed)
    result = compute_step_metrics([logits], labels[:, None], step_names=[step_name], step_options=[list(options)],
                                  metadata=metadata, **common)
    restricted_labels = np.array([NIH_FINDINGS.index(finding) for finding in findings], dtype=np.int64)
    restricted = compute_step_metrics([logits[:, columns]], restricted_labels[:, None], step_names=[step_name],
                                      step_options=[list(NIH_FINDINGS)], **common)
    for target, source in ((result.steps[0].metrics, restricted.steps[0].metrics), (result.mean, restricted.mean)):
        target["auc"] = source["auc"]
        target["auc"].note = AUC_NOTE if not math.isnan(source["auc"].value) else source["auc"].note
    result.metadata.setdefault("notes", []).append(f"AUC {AUC_NOTE}.")
    return result


def _write_lines(path: Path, header: str, lines) -> Path:
    path.write_text(f"# {header}\n" + "".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def write_predictions_csv(path: Path, kept, logits_of, options) -> None:
    probabilities = {}
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "finding", "predicted", "correct"] + [f"p_{option}" for option in options])
        for image, finding in kept:
            if image not in probabilities:
                scores = logits_of[image] - logits_of[image].max()
                probabilities[image] = np.exp(scores) / np.exp(scores).sum()
            predicted = options[int(np.argmax(logits_of[image]))]
            writer.writerow([image, finding, predicted, int(predicted.lower() == finding.lower())]
                            + [f"{p:.6f}" for p in probabilities[image]])


def evaluate_transfer(model, image_paths: dict[str, Path], subset: TransferSubset, out: Path | None = None,
                      bbox_csv=None, name: str | None = None, batch_size: int = 16, num_bootstrap: int = 1000,
                      confidence_level: float = 0.95, seed: int = 0, device: str | None = None,
                      plots: bool = True, model_path: str | None = None) -> EvaluationMetrics:
    """Score one model (folder / Hub id, or an already loaded predictor) on the subset; write its report to `out`."""
    started = time.perf_counter()
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    predictor = load_diagnosis_model(model, device) if isinstance(model, (str, Path)) else model
    finding_columns(predictor.options)  # fail before running the images
    kept, logits_of, missing, unreadable = predict_subset(predictor, subset, image_paths, batch_size)
    if not kept:
        raise ValueError(f"none of the {len(subset.samples)} samples' images was found or readable "
                         f"({len(missing)} missing, {len(unreadable)} unreadable): check --nih-images.")
    logits = np.stack([logits_of[image] for image, _ in kept])
    name = name or predictor.name
    predicted_normal = int(sum(predictor.options[int(np.argmax(row))].lower() == "normal" for row in logits))
    metadata = {
        "model": name, "model_path": str(model) if isinstance(model, (str, Path)) else model_path,
        "dataset": "NIH ChestX-ray8 bbox single-label subset", "split": "zero-shot transfer",
        "bbox_csv": str(bbox_csv) if bbox_csv else None, "subset": subset.summary(),
        "samples_scored": len(kept), "missing_images": len(missing), "unreadable_images": len(unreadable),
        "predicted_normal": predicted_normal,
        "notes": ["a 'Normal' prediction counts as wrong (every sample has a finding)",
                  f"multi-finding images: {subset.policy}"],
    }
    if missing or unreadable:
        metadata["notes"].append(f"{len(missing)} missing and {len(unreadable)} unreadable images are not scored "
                                 "(listed in missing_images.txt / unreadable_images.txt)")
    result = transfer_metrics(logits, [finding for _, finding in kept], predictor.options, num_bootstrap,
                              confidence_level, seed, metadata)
    result.metadata["seconds"] = round(time.perf_counter() - started, 2)
    if out is not None:
        out = Path(out)
        write_report(result, out, model_name=name, plots=plots)
        write_predictions_csv(out / "predictions.csv", kept, logits_of, predictor.options)
        _write_lines(out / "missing_images.txt", f"{len(missing)} images of the bbox list not found", missing)
        _write_lines(out / "unreadable_images.txt", f"{len(unreadable)} images that could not be read",
                     unreadable.values())
        treatment = "left out" if subset.policy == "exclude" else "one sample per finding"
        _write_lines(out / "multi_finding_images.txt",
                     f"{len(subset.multi_finding_images)} images with two or more distinct findings "
                     f"(policy {subset.policy}: {treatment})",
                     (f"{image}\t{', '.join(findings)}" for image, findings in subset.multi_finding_images.items()))
        (out / "subset.json").write_text(json.dumps({**subset.summary(), "samples_scored": len(kept),
                                                     "missing_images": len(missing),
                                                     "unreadable_images": len(unreadable)}, indent=2) + "\n",
                                         encoding="utf-8")
    return result


TABLE4_METRICS = ("accuracy", "auc", "sensitivity", "specificity", "f1", "precision")


def table4_markdown(runs: list[tuple[str, EvaluationMetrics]]) -> str:
    header = ["Model"] + [METRIC_DISPLAY_NAMES[name] if name != "auc" else "mAUC" for name in TABLE4_METRICS]
    header += ["n", "missing", "predicted Normal"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, result in runs:
        metrics = result.steps[0].metrics
        cells = [model] + [format_estimate(metrics[name]) for name in TABLE4_METRICS]
        cells += [str(result.num_examples), str(result.metadata.get("missing_images", 0)),
                  str(result.metadata.get("predicted_normal", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    first = runs[0][1]
    subset = first.metadata.get("subset", {})
    lines += [
        "",
        f"Zero-shot on the NIH ChestX-ray8 bbox subset ({subset.get('boxes')} boxes, {subset.get('images')} images; "
        f"multi-finding images: {subset.get('multi_finding_policy')}, {subset.get('multi_finding_images')} such "
        f"images; {subset.get('samples')} samples listed). Values in %; brackets: "
        f"{100 * first.confidence_level:g}% percentile bootstrap CI over samples ({first.num_bootstrap} resamples, "
        f"seed {first.seed}).",
        "Prediction = argmax over the model's diagnosis classes; 'Normal' counts as wrong. Sensitivity, "
        "specificity, F1, precision: macro averages over the 8 findings. mAUC: " + AUC_NOTE + ".",
    ]
    return "\n".join(lines) + "\n"


def table4_csv(runs: list[tuple[str, EvaluationMetrics]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["model", "n", "missing_images", "predicted_normal"]
    for name in METRIC_NAMES:
        header += [name, f"{name}_ci_low", f"{name}_ci_high"]
    writer.writerow(header)
    for model, result in runs:
        row = [model, result.num_examples, result.metadata.get("missing_images"),
               result.metadata.get("predicted_normal")]
        for name in METRIC_NAMES:
            estimate = result.steps[0].metrics[name]
            bounds = (estimate.value, estimate.ci_low, estimate.ci_high)
            row += ["" if math.isnan(v) else repr(float(v)) for v in bounds]
        writer.writerow(row)
    return buffer.getvalue()


def model_folder_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"
