"""The reference's separate teacher stage (`stepcot train --teacher_schedule plateau`): before distillation the
teacher trains alone for at most 10 epochs at `--teacher_learning_rate`, with `ReduceLROnPlateau` (factor 0.5,
patience 2) and early stopping (patience 3), both on the validation loss; the epoch with the lowest validation loss
is kept (in memory: the stage writes no checkpoint). A plain `transformers.Trainer` on the pair's teacher and the
run's (cached-feature or image) datasets.
"""

import contextlib
import logging
import math
from pathlib import Path

from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, default_data_collator

from trainers.training.checkpoints import trainable_state_dict
from trainers.training.distillation_config import StepCoTTeacherTrainingConfig

logger = logging.getLogger("stepcot.train")

MAX_EPOCHS = 10
PLATEAU = {"factor": 0.5, "patience": 2}
STOPPING_PATIENCE = 3
# keys a pair's batch may hold that the teacher does not take
_PAIR_ONLY_KEYS = ("student_image_embeds", "student_pixel_values")


class _KeepLowestValidationLoss(TrainerCallback):
    def __init__(self):
        self.best, self.state, self.epoch = math.inf, None, None

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is not None and model is not None and loss < self.best:
            self.best, self.epoch = loss, state.epoch
            self.state = {key: tensor.to("cpu", copy=True) for key, tensor in trainable_state_dict(model).items()}


class _StopOnValidationLoss(EarlyStoppingCallback):
    """Early stopping alone (the best epoch is kept by `_KeepLowestValidationLoss`, not `load_best_model_at_end`)."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.early_stopping_patience_counter = 0


def _teacher_collator(data_collator):
    collate = data_collator or default_data_collator

    def collator(features):
        batch = collate(features)
        for key in _PAIR_ONLY_KEYS:
            batch.pop(key, None)
        return batch

    return collator


def train_teacher_stage(teacher, training_args, train_dataset, eval_dataset, data_collator=None, quiet=None) -> dict:
    """Train `teacher` in place (see the module docstring); returns what the stage did, for results.json."""
    args = StepCoTTeacherTrainingConfig(
        output_dir=str(Path(training_args.output_dir) / "teacher_stage"), num_train_epochs=MAX_EPOCHS,
        learning_rate=training_args.teacher_learning_rate, weight_decay=training_args.weight_decay,
        lr_scheduler_type="reduce_lr_on_plateau", lr_scheduler_kwargs=dict(PLATEAU), eval_strategy="epoch",
        save_strategy="no", load_best_model_at_end=False, metric_for_best_model="loss", greater_is_better=False,
        prediction_loss_only=True, per_device_train_batch_size=training_args.per_device_train_batch_size,
        per_device_eval_batch_size=training_args.per_device_eval_batch_size, seed=training_args.seed,
        data_seed=training_args.data_seed, max_grad_norm=training_args.max_grad_norm,
        logging_steps=training_args.logging_steps, disable_tqdm=training_args.disable_tqdm,
        use_cpu=training_args.use_cpu, report_to="none", remove_unused_columns=False,
    )
    keep = _KeepLowestValidationLoss()
    trainer = Trainer(model=teacher, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                      data_collator=_teacher_collator(data_collator),
                      callbacks=[keep, _StopOnValidationLoss(early_stopping_patience=STOPPING_PATIENCE)])
    if quiet is not None:
        quiet(trainer)
    trainer.train()
    if keep.state is not None:
        teacher.load_state_dict(keep.state, strict=False)
    with_history = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    with contextlib.suppress(OSError):  # the stage saves nothing; the Trainer may have made the folder
        Path(args.output_dir).rmdir()
    record = {"schedule": "plateau", "max_epochs": MAX_EPOCHS, "plateau": PLATEAU,
              "stopping_patience": STOPPING_PATIENCE, "epochs_run": len(with_history),
              "best_epoch": keep.epoch, "best_validation_loss": None if keep.state is None else keep.best,
              "last_learning_rate": trainer.optimizer.param_groups[0]["lr"]}
    logger.info("teacher stage: %d epochs, lowest validation loss %.4f at epoch %s", record["epochs_run"],
                keep.best, keep.epoch)
    return record
