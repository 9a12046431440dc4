r"""Teacher-only training (the paper's supervised pre-training stage), then test-split evaluation and export.

    stepcot train-teacher --output_dir outputs/teacher --num_train_epochs 2
    stepcot train --teacher_model outputs/teacher/teacher --teacher_pretrain_epochs 0 --output_dir outputs/joint
    accelerate launch trainers/run_teacher.py ...

Same data, model and training arguments as `stepcot train` (trainers/run_distill.py), minus the student and the
distillation terms (a `StepCoTTeacherTrainingConfig`; `--help-all` lists every option). The best epoch by mean
validation accuracy over steps is kept.
"""

import sys
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as a file (`accelerate launch trainers/run_teacher.py`): find the project
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import Trainer

from trainers.console import quiet_progress
from trainers.evaluation.calibration import calibrate_run
from trainers.evaluation.metrics import build_compute_metrics
from trainers.training.distillation_config import StepCoTTeacherTrainingConfig
from trainers.training.lora import add_vision_lora
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
from trainers.training.run_models import build_processor, build_teacher
from trainers.training.run_scoring import finish_run, record_training_facts, score_and_report

# Output fields that are not predictions (so EvalPrediction.predictions is the padded logits alone).
NON_PREDICTION_KEYS = [
    "step_logits", "step_losses", "image_features", "image_embeds", "step_features", "gat_attentions"
]


DEFAULT_OUTPUT_DIR = StepCoTTeacherTrainingConfig.output_dir


def parse_args(argv=None, prog=None):
    return parse_run_args((ModelArguments, DataArguments, StepCoTTeacherTrainingConfig), argv, help_text=__doc__,
                          prog=prog)


def main(argv=None, prog=None) -> int:
    model_args, data_args, training_args = parse_args(argv, prog)
    output_dir = start_run(training_args, built_from("run_teacher", model_args, data_args),
                           overwrite=data_args.overwrite_output_dir)
    splits, eval_split = prepare_splits(data_args, training_args, output_dir)

    # the release's own steps: names (as the build recorded them), questions and options
    teacher = build_teacher(model_args, dataset_schema(splits["train"], getattr(splits, "step_names", None)),
                            standardize=standardizes_image_embeds(model_args))
    if model_args.lora_r:
        add_vision_lora(teacher, model_args.lora_r)
    processor = build_processor(teacher)
    datasets_by_split, data_collator, use_cache = training_datasets(
        splits, {"teacher": teacher}, processor, data_args, training_args, output_dir
    )
    fit_image_standardization({"teacher": teacher}, splits, datasets_by_split, processor, training_args, use_cache,
                              fresh_roles=() if model_args.teacher_model else ("teacher",))

    trainer = Trainer(
        model=teacher,
        args=training_args,
        train_dataset=datasets_by_split["train"],
        eval_dataset=datasets_by_split["validation"],
        data_collator=data_collator,
        compute_metrics=build_compute_metrics(config=teacher.config),
        callbacks=early_stopping_callbacks(data_args, training_args),
    )
    quiet_progress(trainer)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint,
                  ignore_keys_for_eval=NON_PREDICTION_KEYS)
    prediction = trainer.predict(datasets_by_split[eval_split], ignore_keys=NON_PREDICTION_KEYS,
                                 metric_key_prefix=eval_split)
    results, table = score_and_report({"teacher": prediction.predictions}, prediction.label_ids, eval_split,
                                      output_dir, data_args.num_bootstrap, teacher.config,
                                      write=trainer.is_world_process_zero())
    validation_prediction = trainer.predict(datasets_by_split["validation"], ignore_keys=NON_PREDICTION_KEYS,
                                            metric_key_prefix="validation")
    results["calibration"], calibration_table = calibrate_run(
        {"teacher": teacher}, validation_prediction, prediction, eval_split, output_dir,
        trainer.is_world_process_zero())
    table += "\n" + calibration_table
    record_training_facts({"teacher": teacher}, splits, datasets_by_split if use_cache else None)
    run_args = {"model": asdict(model_args), "data": asdict(data_args), "eval_split": eval_split,
                "feature_cache": use_cache, "stage": "teacher only",
                "training": {k: getattr(training_args, k) for k in (
                    "per_device_train_batch_size", "num_train_epochs", "learning_rate", "seed", "max_grad_norm",
                    "lr_scheduler_type", "weight_decay")}}
    if trainer.is_world_process_zero():
        finish_run({"teacher": teacher}, processor, output_dir, eval_split, results, run_args, table)
        remove_checkpoints(output_dir, training_args.keep_checkpoints)
    trainer.accelerator.end_training()  # process group down before exit: left to shutdown, a gloo rank can abort
    return 0


if __name__ == "__main__":
    sys.exit(main())
