r"""Train the Step-CoT teacher and distil the student jointly (paper App. D.5), then evaluate and export both.

    stepcot train --output-dir outputs/demo --num-train-epochs 10   # offline demo: synthetic data, offline encoders
    stepcot train --output-dir outputs/demo --num-train-epochs 10 --resume-from-checkpoint outputs/demo/checkpoint-380
    accelerate launch trainers/run_distill.py --dataset fl-15o/Step-CoT \
        --vision_encoder openai/clip-vit-base-patch32 --text_encoder bert-base-uncased --output_dir outputs/paper
    torchrun --nproc_per_node 2 trainers/run_distill.py ...          # multi-process on CPU (gloo)

The distillation recipe (`--alpha_kd`, `--alpha_ch`, `--temperature`, `--relation_dim`, `--teacher_learning_rate`,
`--student_learning_rate`, `--teacher_pretrain_epochs`, ...) is a `StepCoTDistillationConfig`, a `TrainingArguments`
subclass: it is written into every checkpoint, and a resume with other values fails. Every `TrainingArguments` flag
works (`--help-all` lists them). `--num_train_epochs` counts the distillation epochs; `--teacher_pretrain_epochs`
teacher-only epochs come first. `--learning_rate` is not used (each model has its own rate).

Writes to OUTPUT_DIR: `teacher/` and `student/` (from_pretrained folders with processor and model card),
`metrics/{teacher,student}/` (metrics.json, Markdown table, plots for the evaluation split), `results.json`, and,
while it trains, lean checkpoints: trainable weights, optimizer state and the best models so far, at most every
`--checkpoint_every_minutes` (10), removed once the models are exported unless `--keep_checkpoints`.
"""

import logging
import sys
from dataclasses import asdict
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file (`accelerate launch trainers/run_distill.py`): find the project
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainers import console
from trainers.console import quiet_progress
from trainers.evaluation.calibration import calibrate_run
from trainers.training.checkpoints import TrainingError
from trainers.training.distillation import (
    BestModelExportCallback,
    StepCoTDistillationPair,
    StepCoTDistillationTrainer,
    build_pair_compute_metrics,
)
from trainers.training.distillation_config import StepCoTDistillationConfig
from trainers.training.hp_search import apply_best, search_hyperparameters, search_table
from trainers.training.lora import add_vision_lora
from trainers.training.losses import inverse_frequency_class_weights
from trainers.training.run_arguments import (
    DataArguments,
    ModelArguments,
    early_stopping_callbacks,
    parse_run_args,
    standardizes_image_embeds,
    start_run,
)
from trainers.training.run_data import (
    dataset_schema,
    fit_image_standardization,
    prepare_splits,
    training_datasets,
)
from trainers.training.run_folder import built_from, remove_checkpoints
from trainers.training.run_models import build_processor, build_student, build_teacher
from trainers.training.run_scoring import (
    DIFFERENCES_FILENAME,
    feature_baselines,
    finish_run,
    paired_differences_text,
    record_training_facts,
    score_and_report,
)
from trainers.training.teacher_stage import train_teacher_stage

logger = logging.getLogger("stepcot.train")


DEFAULT_OUTPUT_DIR = StepCoTDistillationConfig.output_dir


def parse_args(argv=None, prog=None):
    return parse_run_args((ModelArguments, DataArguments, StepCoTDistillationConfig), argv, help_text=__doc__,
                          prog=prog)


def main(argv=None, prog=None) -> int:
    return train(*parse_args(argv, prog))


def train(model_args, data_args, training_args) -> int:
    """One distillation run from parsed arguments (`training_args` is a `StepCoTDistillationConfig`): the library
    entry behind `stepcot train` and the ablation bench, which sets its variant on the parsed dataclasses."""
    # arguments and the run folder (run_arguments), the data (run_data)
    inputs = built_from("run_distill", model_args, data_args)
    output_dir = start_run(training_args, inputs, overwrite=data_args.overwrite_output_dir)
    splits, eval_split = prepare_splits(data_args, training_args, output_dir)

    # the models (run_models) around the release's own steps: names (as the build recorded them), questions, options
    schema = dataset_schema(splits["train"], getattr(splits, "step_names", None))
    standardize = standardizes_image_embeds(model_args)
    teacher = build_teacher(model_args, schema, standardize=standardize)
    student = build_student(model_args, schema, standardize=standardize)
    processor = build_processor(teacher)
    pair = StepCoTDistillationPair.from_models(teacher, student, relation_dim=training_args.relation_dim)
    if model_args.lora_r:
        for role in ("teacher", "student"):
            count = add_vision_lora(getattr(pair, role), model_args.lora_r)
            logger.info("LoRA rank %d on the %s's image encoder: %d trainable weights", model_args.lora_r, role, count)
    datasets_by_split, data_collator, use_cache = training_datasets(
        splits, {"teacher": pair.teacher, "student": pair.student}, processor, data_args, training_args, output_dir,
        share_encoder=pair.shares_image_encoder(),
    )
    fresh = [role for role, saved in (("teacher", model_args.teacher_model), ("student", model_args.student_model))
             if not saved]
    fitted = fit_image_standardization({"teacher": pair.teacher, "student": pair.student}, splits, datasets_by_split,
                                       processor, training_args, use_cache, fresh_roles=fresh)
    if fitted:
        logger.info("image embeddings standardised with the training split's statistics (%s)", ", ".join(fitted))

    # training: teacher-only epochs, then joint distillation
    class_weights = None
    if training_args.class_weights:
        labels = torch.as_tensor(splits["train"]["labels"], dtype=torch.long)
        class_weights = inverse_frequency_class_weights(labels, teacher.config.num_classes_per_step)

    stopping = early_stopping_callbacks(data_args, training_args)
    teacher_stage = None
    if training_args.teacher_schedule == "plateau" and not training_args.resume_from_checkpoint:
        teacher_stage = train_teacher_stage(pair.teacher, training_args, datasets_by_split["train"],
                                            datasets_by_split["validation"], data_collator, quiet=quiet_progress)
    search = None
    if training_args.hp_search_trials:  # trials on the cached features, scored on the validation split (hp_search)
        if not use_cache or model_args.lora_r:
            raise TrainingError("--hp_search_trials trains on the feature cache: keep the encoders frozen, "
                                "--feature_cache on and --lora_r 0")
        if training_args.resume_from_checkpoint:
            raise TrainingError("--hp_search_trials starts a new run: resume without it, passing the chosen values "
                                "(results.json, hp_search.best)")
        search = search_hyperparameters(
            StepCoTDistillationTrainer, pair, training_args, training_args.hp_search_trials,
            train_dataset=datasets_by_split["train"], eval_dataset=datasets_by_split["validation"],
            data_collator=data_collator,
            compute_metrics=build_pair_compute_metrics(teacher.config.num_classes_per_step),
            callbacks=early_stopping_callbacks(data_args, training_args), class_weights=class_weights,
            quiet=quiet_progress)
        pair = apply_best(search, pair, training_args)
        logger.info("hyper-parameter search: trial %d chosen, %s", search["best"]["number"], search["best"]["values"])

    best = BestModelExportCallback()
    trainer = StepCoTDistillationTrainer(
        model=pair,
        args=training_args,
        train_dataset=datasets_by_split["train"],
        eval_dataset=datasets_by_split["validation"],
        data_collator=data_collator,
        compute_metrics=build_pair_compute_metrics(teacher.config.num_classes_per_step),
        callbacks=[best, *stopping],
        class_weights=class_weights,
    )
    quiet_progress(trainer)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    # scoring (run_scoring): the best models on the evaluation split, the baselines, calibration, export
    best.restore(pair)
    prediction = trainer.predict(datasets_by_split[eval_split], metric_key_prefix=eval_split)
    teacher_logits, student_logits = prediction.predictions[:2]
    role_logits = {"teacher": teacher_logits, "student": student_logits}
    write = trainer.is_world_process_zero()
    baseline_runs, differences = [], ""
    if use_cache:  # the same frozen features the heads saw: does Step-CoT beat a linear probe on them?
        baseline_results, baseline_runs, baseline_probabilities = feature_baselines(
            datasets_by_split, eval_split, teacher.config, data_args.num_bootstrap, output_dir, write,
            seed=training_args.seed)
        differences = paired_differences_text(role_logits, baseline_probabilities["Linear probe"],
                                              prediction.label_ids, teacher.config, data_args.num_bootstrap)
    results, table = score_and_report(role_logits, prediction.label_ids, eval_split, output_dir,
                                      data_args.num_bootstrap, teacher.config, write=write, extra_runs=baseline_runs)
    validation_prediction = trainer.predict(datasets_by_split["validation"], metric_key_prefix="validation")
    results["calibration"], calibration_table = calibrate_run(
        {"teacher": pair.teacher, "student": pair.student}, validation_prediction, prediction, eval_split,
        output_dir, write)
    table += "\n" + calibration_table
    if teacher_stage is not None:
        results["teacher_stage"] = teacher_stage
    if search is not None:
        results["hp_search"] = search
        table += "\n" + search_table(search) + "\n"
    if baseline_runs:
        table += "\n" + differences + "\n"
        results["baselines"] = baseline_results
        if write:
            (output_dir / "metrics" / DIFFERENCES_FILENAME).write_text(differences + "\n", encoding="utf-8")
    record_training_facts({"teacher": pair.teacher, "student": pair.student}, splits,
                          datasets_by_split if use_cache else None, share_encoder=pair.shares_image_encoder())
    run_args = {
        "model": asdict(model_args), "data": asdict(data_args), "distillation": training_args.distillation_values(),
        "training": {k: getattr(training_args, k) for k in (
            "per_device_train_batch_size", "num_train_epochs", "seed", "max_grad_norm", "lr_scheduler_type",
            "weight_decay", "label_smoothing_factor")},
        "distillation_epochs": training_args.num_train_epochs, "eval_split": eval_split,
        "feature_cache": use_cache,
    }
    if trainer.is_world_process_zero():
        finish_run({"teacher": pair.teacher, "student": pair.student}, processor, output_dir, eval_split, results,
                   run_args, table)
        remove_checkpoints(output_dir, training_args.keep_checkpoints)
    if training_args.world_size > 1 or console.VERBOSE:  # every rank reports what it computed (they must agree)
        print(f"[rank {training_args.process_index} of {training_args.world_size}] {eval_split} mean accuracy: "
              f"teacher {results['teacher']['mean_accuracy']:.6f} student {results['student']['mean_accuracy']:.6f}")
    trainer.accelerator.end_training()  # process group down before exit: left to shutdown, a gloo rank can abort
    return 0


if __name__ == "__main__":
    sys.exit(main())
