"""`stepcot baseline`: vision-foundation-model baselines of the paper's Table 3 / Table 8 (protocol of App. C.1).

    stepcot baseline --backbone openai/clip-vit-base-patch32 Salesforce/blip-itm-base-coco \
        --dataset step_cot_hub --output-dir reports/baselines

Protocol. A frozen vision-language backbone (any Hub id or folder that `AutoModel` loads and that has
`get_image_features` / `get_text_features`: CLIP, SigLIP, ALIGN, BLIP, FLAVA, ...; open_clip models such as
BiomedCLIP as `hf-hub:ORG/NAME`) gives a pooled image embedding per radiograph and a pooled text embedding per
step question, asked as "Question: [text]". The two are concatenated and fed to a 2-layer MLP (hidden 768, ReLU).
AdamW, cosine schedule without warm-up, gradient clipping 1.0, batch 8 images, 50 epochs (the paper's learning
rate and weight decay did not survive extraction: defaults here are 1e-4 and 0.01).

- "with Step-CoT": ONE shared MLP is trained on all seven steps. Each (image, step) pair is one input
  [image ; question-of-that-step]; the output layer is 9-way (the widest step, the paper's uniform A-I -> 0-8
  mapping) and is masked to the step's own classes (the other logits are set to -1e4, so they get zero
  probability and zero gradient). The question embedding tells the MLP which step it answers.
- "without Step-CoT": the same MLP trained on the final diagnosis step only.
Both are selected by validation accuracy (mean over the trained steps, checked after every epoch) and evaluated on
the test split with `trainers.evaluation.metrics` (bootstrap CIs); `table3.md` sets the diagnosis rows side by side
with the paired-bootstrap difference (with - without), the "(+x)" of the paper's Table 3.

Embeddings are computed once per dataset split and backbone and cached (safetensors, keyed by the dataset
fingerprint, the backbone's weights and its preprocessing); only the small MLP trains.

Writes OUT/<backbone>/{with_stepcot,without_stepcot}/ (metrics.json, metrics.md, plots, predictions.npz, the MLP
as head.safetensors + baseline.json, loadable with `load_baseline` and usable by `stepcot eval-transfer`), and
OUT/table3.md, OUT/table3.csv, OUT/table8.md.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from modeling_stepcot.configuration_stepcot import DEFAULT_STEP_QUESTIONS, StepCoTSchemaConfig
from trainers.evaluation.evaluate_model import dataset_step_options, load_split
from trainers.evaluation.linear_probe import baseline_scores
from trainers.evaluation.metrics import compute_step_metrics, paired_difference, softmax
from trainers.evaluation.report import markdown_table, write_report
from trainers.paper.baselines.backbones import (
    QUESTION_PREFIX,
    SplitEmbeddings,
    backbone_display_name,
    backbone_slug,
    embed_split,
    load_backbone,
    pooled_output,
    step_question_texts,
)
from trainers.paper.baselines.heads import (
    FEATURE_BASELINES,
    SETTING_LABELS,
    SETTINGS,
    BaselineModel,
    BaselineSpec,
    BaselineTrainingConfig,
    StepBaselineHead,
    is_baseline_folder,
    load_baseline,
    save_baseline,
    step_logits,
    train_head,
)
from trainers.paper.baselines.tables import table3_csv, table3_markdown

PREDICTIONS_FILENAME = "predictions.npz"


# ---------------------------------------------------------------------------------------------------------------
# The command


def _feature_baselines(settings, embeddings, splits, schema, step_options, backbone_name, out, metadata,
                       num_bootstrap, confidence_level, seed, plots) -> dict:
    """The majority class and the linear probe (C chosen on validation) on the image embeddings, every step."""

    train, validation, evaluation = (embeddings[split] for split in splits)
    num_classes = [len(options) for options in step_options]
    scores = baseline_scores(train.image_embeds.numpy(), train.labels.numpy(), validation.image_embeds.numpy(),
                             validation.labels.numpy(), evaluation.image_embeds.numpy(), num_classes, seed=seed)
    labels = evaluation.labels.numpy()
    results = {}
    for setting in settings:
        probabilities, info = scores[FEATURE_BASELINES[setting]]
        name = f"{backbone_display_name(backbone_name)} ({SETTING_LABELS[setting]})"
        result = compute_step_metrics(
            probabilities, labels, step_names=schema.step_names, step_options=step_options, scores="probabilities",
            num_bootstrap=num_bootstrap, confidence_level=confidence_level, seed=seed,
            metadata={"model": name, "backbone": backbone_name, "setting": SETTING_LABELS[setting],
                      "trained_steps": [s + 1 for s in range(schema.num_steps)], "split": splits[2], **metadata,
                      **info})
        folder = Path(out) / backbone_slug(backbone_name) / SETTINGS[setting]
        write_report(result, folder, model_name=name, plots=plots)
        log_probabilities = [np.log(np.clip(p, 1e-12, None)) for p in probabilities]  # softmax gives p back
        np.savez_compressed(folder / PREDICTIONS_FILENAME, labels=labels,
                            trained_steps=np.arange(1, schema.num_steps + 1),
                            **{f"step{s + 1}_logits": scores for s, scores in enumerate(log_probabilities)})
        results[setting] = (result, log_probabilities, labels)
    return results


def run_baseline(backbone_name: str, dataset: str, out: Path, settings=("with", "without"),
                 training: BaselineTrainingConfig | None = None, splits=("train", "validation", "test"),
                 cache_dir: Path | None = None, device: str | None = None, num_bootstrap: int = 1000,
                 confidence_level: float = 0.95, seed: int = 0, max_examples: int | None = None,
                 embed_batch_size: int = 32, plots: bool = True, log=print, trust_remote_code: bool = False) -> dict:
    """Train and evaluate one backbone in the requested settings; returns {setting: (EvaluationMetrics, logits,
    labels)} and writes each setting's report under OUT/<backbone slug>/."""
    training = training or BaselineTrainingConfig()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    schema = StepCoTSchemaConfig()
    train_split, validation_split, eval_split = splits
    backbone = load_backbone(backbone_name, device, trust_remote_code=trust_remote_code)
    embeddings, datasets = {}, {}
    for split in dict.fromkeys(splits):
        data, resolved = load_split(dataset, split, max_examples)
        datasets[split] = data
        started = time.perf_counter()
        embeddings[split], path, hit = embed_split(data, backbone, resolved, schema.num_steps,
                                                   cache_dir=cache_dir, batch_size=embed_batch_size)
        log(f"{backbone_name} {resolved}: {len(data)} images, embeddings {'read from' if hit else 'written to'} "
            f"{path or '(no cache)'} ({time.perf_counter() - started:.1f} s)")
    step_options, notes = dataset_step_options(datasets[eval_split], schema)
    last = schema.num_steps - 1
    results = {}
    feature_settings = [s for s in settings if s in FEATURE_BASELINES]
    if feature_settings:
        results.update(_feature_baselines(feature_settings, embeddings, splits, schema, step_options, backbone_name,
                                          out, dict(dataset=str(dataset), max_examples=max_examples, notes=notes),
                                          num_bootstrap, confidence_level, seed, plots))
    for setting in [s for s in settings if s not in FEATURE_BASELINES]:
        steps = list(range(schema.num_steps)) if setting == "with" else [last]
        num_classes = [len(step_options[s]) for s in steps]
        started = time.perf_counter()
        head, history = train_head(embeddings[train_split], embeddings[validation_split], steps, num_classes,
                                   training, device)
        best = next((e for e in reversed(history) if e.get("best")), history[-1] if history else {})
        log(f"{backbone_name} {SETTING_LABELS[setting]}: trained {training.epochs} epochs in "
            f"{time.perf_counter() - started:.1f} s; kept epoch {best.get('epoch')} "
            f"(validation mean accuracy {best.get('validation_mean_accuracy', math.nan):.3f})")
        evaluation = embeddings[eval_split]
        logits = step_logits(head, evaluation, steps, num_classes, device)
        labels = evaluation.labels[:, steps].numpy()
        name = f"{backbone_display_name(backbone_name)} ({SETTING_LABELS[setting]})"
        result = compute_step_metrics(
            logits, labels, step_names=[schema.step_names[s] for s in steps],
            step_options=[step_options[s] for s in steps], scores="logits", num_bootstrap=num_bootstrap,
            confidence_level=confidence_level, seed=seed,
            metadata={"model": name, "backbone": backbone_name, "setting": SETTING_LABELS[setting],
                      "trained_steps": [s + 1 for s in steps], "dataset": str(dataset),
                      "split": eval_split, "max_examples": max_examples, "training": asdict(training),
                      "selected_epoch": best.get("epoch"), "notes": notes},
        )
        folder = Path(out) / backbone_slug(backbone_name) / SETTINGS[setting]
        write_report(result, folder, model_name=name, plots=plots)
        np.savez_compressed(folder / PREDICTIONS_FILENAME, labels=labels, trained_steps=np.asarray(steps) + 1,
                            **{f"step{s + 1}_logits": scores for s, scores in zip(steps, logits)})
        # The questions the MLP saw (the dataset's own wording), asked again when predicting from images.
        first_record = step_question_texts(datasets[eval_split].select(range(min(1, len(datasets[eval_split])))),
                                           schema.num_steps)
        asked = first_record[0] if first_record else [QUESTION_PREFIX + q for q in DEFAULT_STEP_QUESTIONS]
        questions = [asked[s] for s in steps]
        save_baseline(folder, head, BaselineSpec(
            backbone=backbone_name, setting=setting, steps=steps, step_names=[schema.step_names[s] for s in steps],
            step_options=[step_options[s] for s in steps], step_questions=questions,
            image_dim=evaluation.image_embeds.shape[1], text_dim=evaluation.text_embeds.shape[1],
            training=asdict(training), history=history))
        results[setting] = (result, logits, labels)
    return results


def run_baselines(backbones: list[str], dataset: str, out: Path, training: BaselineTrainingConfig,
                  num_bootstrap: int = 1000, confidence_level: float = 0.95, seed: int = 0, log=print,
                  **run_kwargs) -> tuple[str, list[str]]:
    """`stepcot baseline`: every backbone in every setting (`run_baseline`), then OUT/table3.md + .csv (diagnosis
    rows and the paired with-minus-without difference) and OUT/table8.md (all steps, with Step-CoT). Returns the
    Table 3 Markdown and the names of the table files written. A failing backbone raises ValueError naming it."""
    table_rows, with_runs = [], []
    for backbone_name in backbones:
        try:
            results = run_baseline(backbone_name, dataset, out, training=training, num_bootstrap=num_bootstrap,
                                   confidence_level=confidence_level, seed=seed, log=log, **run_kwargs)
        except (ValueError, FileNotFoundError, ModuleNotFoundError, OSError) as error:
            raise ValueError(f"error with backbone {backbone_name}: {error}") from error
        model = backbone_display_name(backbone_name)
        for setting in ("with", "without", "probe", "majority"):
            if setting in results:
                table_rows.append({"kind": "metrics", "model": model, "setting": SETTING_LABELS[setting],
                                   "result": results[setting][0]})
        if "with" in results:
            with_runs.append((results["with"][0].metadata["model"], results["with"][0]))
        if "with" in results and "without" in results:
            (_, with_logits, with_labels), (_, without_logits, _) = results["with"], results["without"]
            table_rows.append({"kind": "difference", "model": model, "difference": paired_difference(
                softmax(with_logits[-1]), softmax(without_logits[-1]), with_labels[:, -1], num_bootstrap,
                seed, confidence_level)})
        if "with" in results and "probe" in results:
            (_, with_logits, with_labels), (_, probe_logits, _) = results["with"], results["probe"]
            table_rows.append({"kind": "difference", "model": model, "label": "Δ with − linear probe",
                               "difference": paired_difference(
                                   softmax(with_logits[-1]), softmax(probe_logits[-1]), with_labels[:, -1],
                                   num_bootstrap, seed, confidence_level)})
    out.mkdir(parents=True, exist_ok=True)
    table = table3_markdown(table_rows, confidence_level, num_bootstrap, seed)
    (out / "table3.md").write_text(table, encoding="utf-8")
    (out / "table3.csv").write_text(table3_csv(table_rows), encoding="utf-8")
    written = ["table3.md", "table3.csv"]
    if with_runs:
        (out / "table8.md").write_text(markdown_table(with_runs), encoding="utf-8")
        written.append("table8.md")
    return table, written


__all__ = [
    "PREDICTIONS_FILENAME",
    "QUESTION_PREFIX",
    "SETTINGS",
    "SETTING_LABELS",
    "BaselineModel",
    "BaselineSpec",
    "BaselineTrainingConfig",
    "SplitEmbeddings",
    "StepBaselineHead",
    "backbone_display_name",
    "backbone_slug",
    "embed_split",
    "is_baseline_folder",
    "load_backbone",
    "load_baseline",
    "paired_difference",
    "pooled_output",
    "run_baseline",
    "run_baselines",
    "step_logits",
    "table3_csv",
    "table3_markdown",
    "train_head",
]
