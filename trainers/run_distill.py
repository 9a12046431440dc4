"""Train the Step-CoT teacher and distil the student jointly (paper App. D.5), then evaluate and export both.

    stepcot train --output_dir outputs/demo                         # offline demo: synthetic data, offline encoders
    accelerate launch trainers/run_distill.py --dataset fl-15o/Step-CoT \
        --vision_encoder openai/clip-vit-base-patch32 --text_encoder bert-base-uncased --output_dir outputs/paper
    torchrun --nproc_per_node 2 trainers/run_distill.py ...          # multi-process on CPU (gloo)

The distillation recipe (`--alpha_kd`, `--alpha_ch`, `--temperature`, `--relation_dim`, `--teacher_learning_rate`,
`--student_learning_rate`, `--teacher_pretrain_epochs`, ...) is a `StepCoTDistillationConfig`, a `TrainingArguments`
subclass: it is written into every checkpoint, and a resume with other values fails. Every `TrainingArguments` flag
works (`--per_device_train_batch_size`, `--bf16`, `--resume_from_checkpoint`, ...). `--num_train_epochs` counts the
distillation epochs; `--teacher_pretrain_epochs` teacher-only epochs come first.

Writes to OUTPUT_DIR: `teacher/` and `student/` (from_pretrained folders with processor and model card),
`metrics/{teacher,student}/` (metrics.json, Markdown table, plots for the evaluation split), `results.json`, and the
Trainer's checkpoints.
"""

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file (`accelerate launch trainers/run_distill.py`): find the project
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainers.hub.export import export
from trainers.training.distillation import (
    BestModelExportCallback,
    StepCoTDistillationPair,
    StepCoTDistillationTrainer,
    build_pair_compute_metrics,
)
from trainers.training.distillation_config import StepCoTDistillationConfig
from trainers.training.lora import add_vision_lora
from trainers.training.losses import inverse_frequency_class_weights
from trainers.training.run_setup import (
    DataArguments,
    ModelArguments,
    build_processor,
    build_student,
    build_teacher,
    dataset_schema,
    load_best,
    parse_run_args,
    prepare_splits,
    print_summary,
    score_and_report,
    start_run,
    training_datasets,
)

logger = logging.getLogger("stepcot.train")


def parse_args(argv=None):
    return parse_run_args((ModelArguments, DataArguments, StepCoTDistillationConfig), argv)


def main(argv=None) -> int:
    model_args, data_args, training_args = parse_args(argv)
    distillation_epochs = training_args.num_train_epochs
    training_args.num_train_epochs = distillation_epochs + training_args.teacher_pretrain_epochs
    output_dir = start_run(training_args)
    splits, eval_split = prepare_splits(data_args, training_args, output_dir)

    schema = dataset_schema(splits["train"])  # the release's own questions and options
    teacher, student = build_teacher(model_args, schema), build_student(model_args, schema)
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

    class_weights = None
    if training_args.class_weights:
        labels = torch.as_tensor(splits["train"]["labels"], dtype=torch.long)
        class_weights = inverse_frequency_class_weights(labels, teacher.config.num_classes_per_step)

    trainer = StepCoTDistillationTrainer(
        model=pair,
        args=training_args,
        train_dataset=datasets_by_split["train"],
        eval_dataset=datasets_by_split["validation"],
        data_collator=data_collator,
        compute_metrics=build_pair_compute_metrics(teacher.config.num_classes_per_step),
        callbacks=[BestModelExportCallback(str(output_dir))],
        class_weights=class_weights,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    load_best(pair, output_dir)
    prediction = trainer.predict(datasets_by_split[eval_split], metric_key_prefix=eval_split)
    teacher_logits, student_logits = prediction.predictions[:2]
    results, table = score_and_report({"teacher": teacher_logits, "student": student_logits}, prediction.label_ids,
                                      eval_split, output_dir, data_args.num_bootstrap, teacher.config,
                                      write=trainer.is_world_process_zero())
    run_args = {
        "model": asdict(model_args), "data": asdict(data_args), "distillation": training_args.distillation_values(),
        "training": {k: getattr(training_args, k) for k in (
            "per_device_train_batch_size", "num_train_epochs", "seed", "max_grad_norm", "lr_scheduler_type")},
        "distillation_epochs": distillation_epochs, "eval_split": eval_split,
        "feature_cache": use_cache,
    }
    if trainer.is_world_process_zero():
        export({"teacher": pair.teacher, "student": pair.student}, processor, output_dir, results, run_args, table)
        summary = {"eval_split": eval_split, "results": results, "run_args": run_args,
                   "teacher": str(output_dir / "teacher"), "student": str(output_dir / "student")}
        (output_dir / "results.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
        print_summary(output_dir, eval_split, table, ("teacher", "student"))
    # every rank reports what it computed (multi-process runs must agree)
    print(f"[rank {training_args.process_index} of {training_args.world_size}] {eval_split} mean accuracy: "
          f"teacher {results['teacher']['mean_accuracy']:.6f} student {results['student']['mean_accuracy']:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
