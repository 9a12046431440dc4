"""Scoring at the end of a training run: the feature baselines (majority class, linear probe) and the paired
differences to them, the out-of-distribution statistics stored in the configs, the metrics reports, and the
export with results.json."""

import logging
from pathlib import Path

import numpy as np

from modeling_stepcot.configuration_stepcot import (
    IGNORE_INDEX,
)
from modeling_stepcot.ood_stepcot import embedding_statistics
from trainers.evaluation.linear_probe import baseline_scores
from trainers.evaluation.metrics import compute_step_metrics, paired_difference, to_step_probabilities
from trainers.evaluation.report import markdown_table, strict_json, write_report
from trainers.model_export.export import export

logger = logging.getLogger("stepcot.train")


DIFFERENCES_FILENAME = "paired_differences.txt"  # under OUTPUT_DIR/metrics: model − linear probe per step


def score_and_report(role_logits: dict, labels, split, output_dir, num_bootstrap, config, write=True,
                     extra_runs=()):
    """Metrics with bootstrap CIs for each role's padded logits; reports under OUTPUT_DIR/metrics/ROLE. The table
    also lists `extra_runs` ((name, EvaluationMetrics) pairs: the baselines) under the roles."""
    results, runs = {}, []
    for role, logits in role_logits.items():
        metrics = compute_step_metrics(
            np.asarray(logits), np.asarray(labels), step_names=config.step_names, step_options=config.step_options,
            scores="logits", num_bootstrap=num_bootstrap, metadata={"model": role, "split": split},
        )
        if write:
            write_report(metrics, output_dir / "metrics" / role, model_name=role.capitalize())
        runs.append((role.capitalize(), metrics))
        results[role] = metrics.flat()
    return results, markdown_table(runs + list(extra_runs))


def feature_baselines(datasets_by_split, eval_split, config, num_bootstrap, output_dir, write=True, seed=0):
    """Majority class and linear probe on the cached (frozen) image features the heads trained on, scored like
    the models. Returns ({name: flat metrics}, [(name, EvaluationMetrics)], {name: per-step probabilities})."""

    train, validation, evaluation = (datasets_by_split[s] for s in ("train", "validation", eval_split))
    scores = baseline_scores(train.image_embeds.numpy(), train.labels.numpy(), validation.image_embeds.numpy(),
                             validation.labels.numpy(), evaluation.image_embeds.numpy(), config.num_classes_per_step,
                             seed=seed)
    results, runs, probabilities = {}, [], {}
    for name, (step_scores, info) in scores.items():
        metrics = compute_step_metrics(
            step_scores, evaluation.labels.numpy(), step_names=config.step_names, step_options=config.step_options,
            scores="probabilities", num_bootstrap=num_bootstrap,
            metadata={"model": name, "split": eval_split, "features": "the teacher's frozen image embeddings", **info})
        slug = name.lower().replace(" ", "_")
        if write:
            write_report(metrics, output_dir / "metrics" / slug, model_name=name)
        results[slug], probabilities[name] = metrics.flat(), step_scores
        runs.append((name, metrics))
    return results, runs, probabilities


def paired_differences_text(role_logits: dict, baseline_probabilities, labels, config, num_bootstrap, seed=0) -> str:
    """Lines 'Teacher − Linear probe, Diagnosis: accuracy -2.8 pp [-8.3, +1.4]' for every labelled step."""

    labels = np.asarray(labels)
    lines = []
    for role, logits in role_logits.items():
        role_probabilities = to_step_probabilities(np.asarray(logits), config.num_classes_per_step, scores="logits")
        for step, name in enumerate(config.step_names):
            if not (labels[:, step] != IGNORE_INDEX).any():
                continue
            difference = paired_difference(role_probabilities[step], baseline_probabilities[step], labels[:, step],
                                           num_bootstrap, seed, 0.95)["accuracy"]
            lines.append(f"{role.capitalize()} − linear probe, {name} accuracy: {100 * difference['value']:+.1f} pp "
                         f"[{100 * difference['ci_low']:+.1f}, {100 * difference['ci_high']:+.1f}] (paired "
                         "bootstrap 95%)")
    return "\n".join(lines)


def record_training_facts(models: dict, splits, datasets_by_split=None, share_encoder=False):
    """Store in each model's config what predict needs to know about its training: per step, how many training
    labels it had (`step_training_counts`), and with cached features, the training embeddings' statistics for the
    out-of-distribution check (`embedding_statistics`, threshold from the validation split)."""

    labels = np.asarray(splits["train"]["labels"])
    counts = [int(c) for c in (labels != IGNORE_INDEX).sum(0)]
    for role, model in models.items():
        model.config.step_training_counts = counts
        if datasets_by_split is None:
            continue
        train, validation = datasets_by_split["train"], datasets_by_split["validation"]
        own = role == "student" and not share_encoder and train.student_image_embeds is not None
        train_embeds = train.student_image_embeds if own else train.image_embeds
        validation_embeds = validation.student_image_embeds if own else validation.image_embeds
        model.config.embedding_statistics = embedding_statistics(train_embeds.numpy(), validation_embeds.numpy())
    untrained = [name for name, count in zip(next(iter(models.values())).config.step_names, counts) if not count]
    if untrained:
        logger.warning("no training labels for %s: exported as untrained (shown as unknown by predict)",
                       ", ".join(untrained))


def finish_run(models: dict, processor, output_dir: Path, eval_split: str, results: dict, run_args: dict, table: str):
    """The end of a training script on the main process: export each model (OUTPUT_DIR/ROLE), write
    OUTPUT_DIR/results.json and print the table with where everything is."""
    export(models, processor, output_dir, results, run_args, table)
    summary = {"eval_split": eval_split, "results": results, "run_args": run_args,
               **{role: str(output_dir / role) for role in models}}
    (output_dir / "results.json").write_text(strict_json(summary, indent=2, default=str), encoding="utf-8")
    print("\n" + table)
    folders = " and ".join(str(output_dir / role) for role in models)
    print(f"\nCheckpoints: {folders} (load with AutoModel.from_pretrained(..., trust_remote_code=True))")
    print(f"Metrics ({eval_split} split): {output_dir / 'metrics'}; summary: {output_dir / 'results.json'}")
