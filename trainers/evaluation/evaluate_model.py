"""`stepcot eval`: run a saved Step-CoT model on a dataset split and write metrics, tables and plots.

    stepcot eval --model runs/best/teacher --dataset step_cot_hub --split test --output-dir reports/teacher

writes into OUT: metrics.json (every number with its definition and bootstrap CI), metrics.md (the paper's
Table 8/9 layout, per-class tables, calibration), step_metrics.png, confusion_matrices.png, reliability.png
and predictions.npz (per-step logits and labels, so metrics can be recomputed without the model). Several OUT
folders compare with `stepcot report`.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np

import modeling_stepcot  # noqa: F401  (registers the Step-CoT classes with AutoModel)
from dataset_script.records import StepCoTDataError
from dataset_script.sources import load_source
from modeling_stepcot.processing_stepcot import image_processor_for_config, pixel_values_from_images
from trainers.evaluation.metrics import compute_step_metrics
from trainers.evaluation.report import write_report
from trainers.model_loading import load_model, load_processor

SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation"}
WHOLE_SET = "all"  # every split of the dataset, scored as one
PREDICTIONS_FILENAME = "predictions.npz"
RELIABILITY_FILENAME = "reliability.png"


def model_display_name(config) -> str:
    """"Teacher" / "Student", with the paper's ablation names ("w/o Memory", "w/o Text")."""
    if config.model_type == "stepcot_student":
        return "Student"
    ablations = [name for flag, name in (("use_memory", "w/o Memory"), ("use_text", "w/o Text"))
                 if not getattr(config, flag, True)]
    return "Teacher " + ", ".join(ablations) if ablations else "Teacher"


class ImagePreprocessor:
    """`images -> pixel_values` for a model: its saved processor when the checkpoint has one, otherwise the same
    resize/normalisation built from the model config.

    The fallback exists because `StepCoTProcessor` requires a tokenizer, which a student (and a teacher whose
    question tokens are stored in its buffers) does not need for inference; it uses the processor's own image half
    (`image_processor_for_config`).
    """

    def __init__(self, model_dir, config):
        self.source = "model config"
        self._processor = load_processor(model_dir)
        if self._processor is not None:
            self.source = "saved processor"
        else:
            self._image_processor = image_processor_for_config(config)
            self._size = int(config.image_size)

    def __call__(self, images):
        if self._processor is not None:
            return self._processor.preprocess_images(images)

        processor = self._image_processor
        return pixel_values_from_images(images, self._size, processor.image_mean, processor.image_std)


def load_split(dataset: str, split: str, max_examples: int | None = None):
    """One split of "demo", a release folder (validated and built under $STEPCOT_CACHE), a built folder
    (`stepcot data build` output) or a Hub dataset id (`dataset_script.sources`); `split` "all": every split
    concatenated, scored as one."""

    split = SPLIT_ALIASES.get(split, split)
    try:
        if split == WHOLE_SET:
            from datasets import concatenate_datasets

            splits = load_source(dataset)
            data = concatenate_datasets([splits[name] for name in splits])
            split = f"{WHOLE_SET} ({' + '.join(f'{name} {len(splits[name])}' for name in splits)})"
        else:
            data = load_source(dataset, split=split)
    except ValueError as error:  # datasets says "Unknown split ..." and lists the splits
        if isinstance(error, StepCoTDataError):
            raise
        raise ValueError(f"cannot load split {split!r} of {dataset}: {error}") from error
    for column in ("image", "labels"):
        if column not in data.column_names:
            raise ValueError(f"{dataset} split {split!r} has no {column!r} column (columns: {data.column_names}).")
    if max_examples is not None:
        data = data.select(range(min(max_examples, len(data))))
    return data, split


def chain_schema(data, num_steps: int):
    """The step questions and option lists of a dataset's records (`vqa_chain`), the most common per step, and how
    many different option lists each step has. None when the data has no `vqa_chain` column."""
    if "vqa_chain" not in data.column_names:
        return None
    options_seen = [Counter() for _ in range(num_steps)]
    questions_seen = [Counter() for _ in range(num_steps)]
    for chain in data.select_columns(["vqa_chain"])["vqa_chain"]:
        for step, entry in enumerate(chain[:num_steps]):
            options_seen[step][tuple(entry["options"])] += 1
            questions_seen[step][entry.get("question") or ""] += 1
    return {
        "step_questions": [c.most_common(1)[0][0] if c else None for c in questions_seen],
        "step_options": [list(c.most_common(1)[0][0]) if c else None for c in options_seen],
        "variants": [len(c) for c in options_seen],
    }


def dataset_step_options(data, config) -> tuple[list[list[str]], list[str]]:
    """The option texts that the labels index, taken from the records' `vqa_chain` (most common list per step), and
    notes where they differ from the model's config. A different class count is an error: labels would be misread."""
    schema = chain_schema(data, config.num_steps)
    if schema is None:
        model_options = [list(options) for options in config.step_options]
        return model_options, ["dataset has no vqa_chain: option names from the model config"]
    options, notes = [], []
    for step, (most_common, variants) in enumerate(zip(schema["step_options"], schema["variants"])):
        model_options = list(config.step_options[step])
        if most_common is None:
            options.append(model_options)
            continue
        if len(most_common) != len(model_options):
            raise ValueError(f"Step {step + 1} ({config.step_names[step]!r}) has {len(most_common)} options in the "
                             f"dataset but {len(model_options)} classes in the model: {list(most_common)}.")
        if variants > 1:
            notes.append(f"step {step + 1}: {variants} different option lists in the dataset; "
                         "names from the most common")
        if [o.lower() for o in most_common] != [o.lower() for o in model_options]:
            notes.append(f"step {step + 1}: dataset options {list(most_common)} differ from the model's "
                         f"{model_options}")
        options.append(list(most_common))
    return options, notes


def predict(model, data, preprocess, batch_size: int, device: str):
    """Per-step logits (list of (N, C_s) float arrays) and labels (N, S)."""
    import torch

    batch_logits, labels = [], []
    model.to(device).eval()
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            batch = data[start : start + batch_size]
            pixel_values = preprocess(list(batch["image"])).to(device)
            output = model(pixel_values=pixel_values)
            batch_logits.append([logits.float().cpu().numpy() for logits in output.step_logits])
            labels.append(np.asarray(batch["labels"], dtype=np.int64))
    if not batch_logits:
        raise ValueError("the split is empty: nothing to evaluate.")
    num_steps = len(batch_logits[0])
    return [np.concatenate([b[s] for b in batch_logits]) for s in range(num_steps)], np.concatenate(labels)


def evaluate(model_dir, dataset, split="test", out=None, batch_size=32, num_bootstrap=1000, confidence_level=0.95,
             seed=0, name=None, device=None, max_examples=None, plots=True, trust_remote_code=False):
    """Evaluate a saved model on a split; writes the report into `out` (if given) and returns the metrics."""
    import torch

    started = time.perf_counter()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(model_dir, trust_remote_code=trust_remote_code)
    config = model.config
    data, split = load_split(dataset, split, max_examples)
    step_options, notes = dataset_step_options(data, config)
    preprocess = ImagePreprocessor(model_dir, config)
    logits, labels = predict(model, data, preprocess, batch_size, device)
    name = name or model_display_name(config)
    result = compute_step_metrics(
        logits,
        labels,
        step_names=list(config.step_names),
        step_options=step_options,
        scores="logits",
        num_bootstrap=num_bootstrap,
        confidence_level=confidence_level,
        seed=seed,
        metadata={
            "model": name,
            "model_path": str(model_dir),
            "model_type": config.model_type,
            "dataset": str(dataset),
            "split": split,
            "max_examples": max_examples,
            "image_preprocessing": preprocess.source,
            "notes": notes,
        },
    )
    # the pipeline module pulls in transformers' pipeline machinery, needed only here
    from modeling_stepcot.pipeline_stepcot import step_temperatures

    # calibration imports this module
    from trainers.evaluation.calibration import calibration_markdown, calibration_summary, plot_reliability

    temperatures, method = step_temperatures(config)
    calibration_rows = calibration_summary(logits, labels, temperatures, list(config.step_names))
    result.metadata["calibration"] = {"method": method, "steps": calibration_rows}
    result.metadata["seconds"] = round(time.perf_counter() - started, 2)  # model loading, inference, bootstrap
    if out is not None:
        out = Path(out)
        written = write_report(result, out, model_name=name, plots=plots)
        stored = getattr(config, "calibration", None)
        fitted_on = (stored.get("split") or "a held-out split") if isinstance(stored, dict) else None
        with open(written["table"], "a", encoding="utf-8") as table:
            table.write("\n" + calibration_markdown({name: calibration_rows}, split, fitted_on))
        if plots:
            plot_reliability(logits, labels, temperatures, list(config.step_names), out / RELIABILITY_FILENAME,
                             title=f"{name}: reliability on {split} ({method})")
        np.savez_compressed(out / PREDICTIONS_FILENAME, labels=labels,
                            **{f"step{index + 1}_logits": step for index, step in enumerate(logits)})
    return result
