"""The `TrainingArguments` of the Step-CoT recipe: `StepCoTDistillationConfig` (teacher + student, joint distillation,
paper App. D.5/D.6) and `StepCoTTeacherTrainingConfig` (the teacher alone, the supervised pre-training stage).

Every default of the recipe lives on these classes, so a run built in Python (`StepCoTDistillationConfig(output_dir=
...)` and `StepCoTDistillationTrainer`) trains exactly what `stepcot train` trains: the command line is
`HfArgumentParser` over the same classes, with no defaults of its own. The distillation values are written (as JSON,
never pickled) into every checkpoint as `distillation_config.json`, so that resuming with other values fails instead
of silently changing the recipe half-way.
"""

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from transformers import TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType

from trainers.training.checkpoints import TrainingError

DISTILLATION_CONFIG_NAME = "distillation_config.json"

# The reference's optimiser settings (AdamW with torch's default weight decay, a constant rate) instead of the
# Trainer's (no decay, linear decay to 0); benchmarks/RESULTS.md ("The README's main command") compares the two.
PAPER_OPTIMIZER_DEFAULTS = {"weight_decay": 0.01, "lr_scheduler_type": "constant"}
# The teacher's AdamW rate (paper App. D.6), in both configs: joint distillation and the teacher-only stage
PAPER_TEACHER_LEARNING_RATE = 5e-5


def _no_accelerator() -> bool:
    return not (torch.cuda.is_available() or torch.backends.mps.is_available())


@dataclass
class StepCoTRecipeArguments(TrainingArguments):
    r"""The `TrainingArguments` defaults both Step-CoT configs share (each differs from `TrainingArguments`'s):
    batch sizes 32/64, one evaluation per epoch and one kept checkpoint (removed by the command once the models
    are exported unless `keep_checkpoints`), `report_to="none"`, the Step-CoT batches
    (`remove_unused_columns=False`, `label_names=["labels"]`), AdamW with weight decay 0.01 at a constant rate, and
    CPU training (DDP over gloo under a multi-process launch) on a machine without an accelerator."""

    # TrainingArguments fields whose defaults the recipe changes
    per_device_train_batch_size: int = field(default=32, metadata={"help": "batch size per device (paper: 32)"})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "evaluation batch size per device"})
    eval_strategy: IntervalStrategy | str = field(
        default="epoch", metadata={"help": "when to evaluate on the validation split: 'no', 'steps' or 'epoch'"}
    )
    save_strategy: SaveStrategy | str = field(
        default="epoch", metadata={"help": "when to save a checkpoint: 'no', 'steps', 'epoch' or 'best'"}
    )
    save_total_limit: int | None = field(default=1, metadata={"help": "checkpoints kept in OUTPUT_DIR"})
    logging_steps: float = field(default=10, metadata={"help": "log the training losses every N optimizer steps"})
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "experiment trackers to report to ('none', 'all', 'tensorboard', ...)"}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "keep every dataset column (the Step-CoT batches need them all)"}
    )
    label_names: list[str] | None = field(
        default_factory=lambda: ["labels"], metadata={"help": "the batch keys holding the labels"}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "DDP's unused-parameter search (off: every trained weight gets a gradient)"}
    )
    use_cpu: bool | None = field(
        default=None,
        metadata={"help": "train on the CPU; default: when no GPU/MPS is present (then a multi-process launch is "
                          "DDP over gloo)"},
    )
    weight_decay: float = field(
        default=PAPER_OPTIMIZER_DEFAULTS["weight_decay"],
        metadata={"help": "AdamW weight decay, biases and LayerNorm weights excepted (reference: torch's default "
                          "0.01)"},
    )
    lr_scheduler_type: SchedulerType | str = field(
        default=PAPER_OPTIMIZER_DEFAULTS["lr_scheduler_type"],
        metadata={"help": "learning-rate schedule (reference: constant)"},
    )
    keep_checkpoints: bool = field(
        default=False,
        metadata={"help": "keep the checkpoints once the models are exported (default: the command removes them "
                          "then; the exported folders are the run's result)"},
    )

    def __post_init__(self):
        if self.use_cpu is None:
            self.use_cpu = _no_accelerator()
        super().__post_init__()
        for name, bound in (("per_device_train_batch_size", 1), ("per_device_eval_batch_size", 1),
                            ("gradient_accumulation_steps", 1)):
            if not getattr(self, name) >= bound:
                raise TrainingError(f"--{name} {getattr(self, name)}: must be >= {bound}")
        if not self.num_train_epochs > 0:  # also catches NaN
            raise TrainingError(f"--num_train_epochs {self.num_train_epochs}: must be > 0")


@dataclass
class StepCoTDistillationConfig(StepCoTRecipeArguments):
    r"""Configuration of [`StepCoTDistillationTrainer`]: the Step-CoT joint teacher/student recipe (paper App. D.5,
    hyper-parameters of App. D.6) on top of [`~transformers.TrainingArguments`].

    This class lists the parameters the recipe adds, and the `TrainingArguments` parameters whose defaults or meaning
    it changes; every other `TrainingArguments` parameter works as documented there. `HfArgumentParser` turns it
    into the flags of `stepcot train` (`stepcot train --help-all` lists them all).

    Parameters:
        > Distillation loss

        alpha_kd (`float`, *optional*, defaults to `0.5`):
            Weight of the soft-label KD term in each student step loss.
        alpha_ch (`float`, *optional*, defaults to `1.0`):
            Weight of the channel/relation (CH) term in each student step loss.
        temperature (`float`, *optional*, defaults to `2.0`):
            Softmax temperature `T` of the KD and CH terms; KD is scaled by `T²`.
        relation_dim (`int`, *optional*, defaults to `256`):
            Width of the two CH projections of the image features; must equal the pair's `config.relation_dim`.
        class_weights (`bool`, *optional*, defaults to `False`):
            Inverse-frequency class weights in the CE terms (the command line computes them from the training
            labels; in Python pass `class_weights=` to the trainer).
        ch_standardize (`bool`, *optional*, defaults to `True`):
            Standardise each projected CH feature vector before the softmax (`False`: the paper as written).
        ch_train_teacher_projection (`bool`, *optional*, defaults to `False`):
            Let the teacher-side CH projection train (for ablation studies); the paper keeps it frozen.

        > Checkpoints

        teacher_schedule (`str`, *optional*, defaults to `"joint"`):
            `"plateau"`: `stepcot train` first trains the teacher alone as the reference's separate stage does
            (`trainers.training.teacher_stage`); the joint run follows.
        hp_search_trials (`int`, *optional*, defaults to `0`):
            `stepcot train` first searches the learning rates, weight decay, label smoothing, dropout and epochs with
            this many optuna trials on the validation split (`trainers.training.hp_search`); 0: no search.
        checkpoint_every_minutes (`float`, *optional*, defaults to `10`):
            A checkpoint the `save_strategy` asks for is written only once this many minutes of training have passed
            since the last one (or the start); `0` writes one at every `save_strategy` time. Bounds the bytes a long
            run writes, and what a kill can lose.
        keep_checkpoints (`bool`, *optional*, defaults to `False`):
            Keep the checkpoints after `stepcot train` has exported `teacher/` and `student/` (default: removed).

        > Schedule and optimisation

        teacher_learning_rate (`float`, *optional*, defaults to `5e-5`):
            AdamW learning rate of the teacher (0 freezes it, e.g. to distil from a finished teacher).
        student_learning_rate (`float`, *optional*, defaults to `1e-4`):
            AdamW learning rate of the student and its CH projection.
        teacher_pretrain_epochs (`int`, *optional*, defaults to `2`):
            Teacher-only epochs before distillation; the student's optimizer does not step in them.
        num_train_epochs (`float`, *optional*, defaults to `40`):
            Distillation epochs, counted *after* the `teacher_pretrain_epochs`: the trainer runs
            `teacher_pretrain_epochs + num_train_epochs` epochs in all (`max_steps`, when set, counts every step).
        learning_rate:
            Not used (each model has its own rate above); setting it is an error.
        max_grad_norm (`float`, *optional*, defaults to `1.0`):
            Clips the teacher's and the student's gradients separately, each to this norm, as the reference's two
            optimizers do.

        > Changed `TrainingArguments` defaults

        output_dir (`str`, defaults to `"outputs/stepcot"`), per_device_train_batch_size (`32`),
        per_device_eval_batch_size (`64`), eval_strategy and save_strategy (`"epoch"`, saves thinned by
        `checkpoint_every_minutes`), save_total_limit (`1`),
        logging_steps (`10`), report_to (`"none"`), remove_unused_columns (`False`), label_names (`["labels"]`),
        ddp_find_unused_parameters (`False`), weight_decay (`0.01`), lr_scheduler_type (`"constant"`), use_cpu
        (`True` on a machine without GPU or MPS).

    Example:

    ```python
    from trainers.training.distillation import StepCoTDistillationConfig, StepCoTDistillationTrainer

    config = StepCoTDistillationConfig(output_dir="outputs/python", num_train_epochs=10, alpha_kd=0.3)
    trainer = StepCoTDistillationTrainer(model=pair, args=config, train_dataset=train, eval_dataset=validation)
    trainer.train()
    ```
    """

    output_dir: str | None = field(
        default="outputs/stepcot", metadata={"help": "where checkpoints, models and metrics are written"}
    )
    num_train_epochs: float = field(
        default=40,
        metadata={"help": "distillation epochs, after the teacher-only ones (paper: 40); the run trains "
                          "teacher_pretrain_epochs + num_train_epochs epochs"},
    )
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "not used: set --teacher_learning_rate and --student_learning_rate"},
    )
    lr_scheduler_type: SchedulerType | str = field(
        default=PAPER_OPTIMIZER_DEFAULTS["lr_scheduler_type"],
        metadata={"help": "learning-rate schedule of both models (reference: constant); the student's rate is 0 "
                          "during the teacher-only epochs whatever the schedule"},
    )

    alpha_kd: float = field(
        default=0.5, metadata={"help": "weight of the soft-label KD term in each student step loss (paper: 0.5)"}
    )
    alpha_ch: float = field(
        default=1.0, metadata={"help": "weight of the channel/relation (CH) term in each student step loss "
                                       "(paper: 1.0)"}
    )
    temperature: float = field(
        default=2.0, metadata={"help": "softmax temperature T of the KD and CH terms; KD is scaled by T^2 (paper: 2)"}
    )
    relation_dim: int = field(
        default=256, metadata={"help": "width of the two CH projections of the image features (paper: 256)"}
    )
    teacher_learning_rate: float = field(
        default=PAPER_TEACHER_LEARNING_RATE, metadata={"help": "AdamW learning rate of the teacher (paper: 5e-5)"}
    )
    student_learning_rate: float = field(
        default=1e-4, metadata={"help": "AdamW learning rate of the student and its CH projection (paper: 1e-4)"}
    )
    teacher_pretrain_epochs: int = field(
        default=2,
        metadata={"help": "teacher-only epochs before distillation; the student's optimizer does not step in them "
                          "(paper: 2)"},
    )
    class_weights: bool = field(
        default=False, metadata={"help": "inverse-frequency class weights in the CE terms (paper: optional)"}
    )
    ch_standardize: bool = field(
        default=True,
        metadata={"help": "standardise each projected CH feature vector (zero mean, unit variance over its "
                          "relation_dim features) before the softmax, so the teacher's target stays informative "
                          "instead of near-uniform; False: softmax of the raw projections (paper as written)"},
    )
    ch_train_teacher_projection: bool = field(
        default=False,
        metadata={"help": "let the teacher-side CH projection train with the student (for ablation studies); "
                          "default: frozen, as in the paper and reference"},
    )
    teacher_schedule: str = field(
        default="joint",
        metadata={"help": "joint: the teacher-only epochs run inside the joint trainer (--teacher_pretrain_epochs); "
                          "plateau: first the reference's separate teacher stage (at most 10 epochs, "
                          "ReduceLROnPlateau factor 0.5 patience 2, early stopping patience 3, on the validation "
                          "loss), then the joint run", "choices": ["joint", "plateau"]},
    )
    hp_search_trials: int = field(
        default=0,
        metadata={"help": "hyper-parameter search before the run (needs the feature cache and `pip install "
                          "stepcot[search]`): N optuna trials over the learning rates, weight decay, label smoothing, "
                          "dropout and epochs, each one training run on the cached features scored on the validation "
                          "split (best teacher and student mean accuracy); budget: about N + 1 runs' training time. "
                          "0: off"},
    )
    checkpoint_every_minutes: float = field(
        default=10.0,
        metadata={"help": "write a checkpoint the save_strategy asks for only once this many minutes of training "
                          "have passed since the last one (0: at every save_strategy time)"},
    )

    def __post_init__(self):
        if self.learning_rate is not None:
            raise TrainingError(f"--learning_rate {self.learning_rate}: not used by the distillation recipe; set "
                                "--teacher_learning_rate and --student_learning_rate instead")
        super().__post_init__()
        # a learning rate of 0 is allowed: it freezes that model (e.g. distilling from a finished teacher)
        bounds = [(name, 0, False) for name in ("alpha_kd", "alpha_ch", "teacher_pretrain_epochs",
                                                "teacher_learning_rate", "student_learning_rate")]
        bounds += [("temperature", 0, True), ("checkpoint_every_minutes", 0, False), ("hp_search_trials", 0, False)]
        bounds += [("relation_dim", 2, False)]
        if self.teacher_schedule not in ("joint", "plateau"):
            raise TrainingError(f"--teacher_schedule {self.teacher_schedule}: must be 'joint' or 'plateau'")
        for name, bound, strict in bounds:
            value = getattr(self, name)
            if not (value > bound if strict else value >= bound):  # also catches NaN
                raise TrainingError(f"--{name} {value}: must be {'>' if strict else '>='} {bound}")

    def distillation_values(self) -> dict:
        """The fields this class adds to `TrainingArguments` (what a checkpoint records and a resume must match)."""
        return {f.name: getattr(self, f.name) for f in fields(StepCoTDistillationConfig)
                if f.name not in TRAINING_ARGUMENT_NAMES and f.name not in NOT_RECIPE}

    def total_epochs(self) -> float:
        """Epochs of the whole run: the teacher-only ones, then `num_train_epochs` distillation epochs."""
        return self.teacher_pretrain_epochs + self.num_train_epochs

    def save_distillation_values(self, folder) -> Path:
        path = Path(folder) / DISTILLATION_CONFIG_NAME
        path.write_text(json.dumps(self.distillation_values(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    def check_matches_checkpoint(self, checkpoint) -> None:
        """Refuse to resume from `checkpoint` with distillation values other than the ones it was trained with."""
        path = Path(checkpoint) / DISTILLATION_CONFIG_NAME
        if not path.is_file():
            raise ValueError(
                f"{checkpoint} has no {DISTILLATION_CONFIG_NAME}: it does not record its distillation settings, so "
                "resuming from it could silently change them. Start a new run (or copy the file in by hand)."
            )
        from dataset_script.user_files import read_json_file  # the config module stays import-light

        saved = read_json_file(path)
        if not isinstance(saved, dict):
            raise ValueError(f"{path}: expected a JSON object of distillation settings")
        current = self.distillation_values()
        changed = {name: (saved.get(name), value) for name, value in current.items() if saved.get(name) != value}
        if changed:
            listing = ", ".join(f"{name}: {old!r} in the checkpoint, {new!r} now"
                                for name, (old, new) in changed.items())
            raise ValueError(f"Cannot resume from {checkpoint} with other distillation settings ({listing}).")


@dataclass
class StepCoTTeacherTrainingConfig(StepCoTRecipeArguments):
    r"""Configuration of the teacher-only stage (`stepcot train-teacher`, a plain `transformers.Trainer` on a
    `StepCoTTeacher`): the recipe's `TrainingArguments` with the teacher's rate and the best epoch kept.

    Parameters:
        learning_rate (`float`, *optional*, defaults to `5e-5`):
            AdamW learning rate of the teacher (paper: 5e-5).
        num_train_epochs (`float`, *optional*, defaults to `2`):
            Teacher-only epochs (the paper's pre-training stage).
        load_best_model_at_end (`bool`, *optional*):
            Keep the epoch with the best mean validation accuracy over steps (`metric_for_best_model=
            "mean_accuracy"`); default: whenever checkpoints are saved at the evaluation times.

        The other changed defaults are [`StepCoTDistillationConfig`]'s, with `output_dir="outputs/teacher"`.

    Example:

    ```python
    from transformers import Trainer

    config = StepCoTTeacherTrainingConfig(output_dir="outputs/teacher")
    trainer = Trainer(model=teacher, args=config, train_dataset=train, eval_dataset=validation,
                      compute_metrics=build_compute_metrics(config=teacher.config))
    ```
    """

    output_dir: str | None = field(default="outputs/teacher", metadata={"help": "where checkpoints, the model "
                                                                               "and its metrics are written"})
    num_train_epochs: float = field(default=2, metadata={"help": "teacher-only epochs (paper: 2)"})
    learning_rate: float = field(default=PAPER_TEACHER_LEARNING_RATE,
                                 metadata={"help": "AdamW learning rate of the teacher (paper: 5e-5)"})
    load_best_model_at_end: bool | None = field(
        default=None,
        metadata={"help": "keep the epoch with the best mean validation accuracy; default: when checkpoints are "
                          "saved at the evaluation times"},
    )
    metric_for_best_model: str | None = field(
        default="mean_accuracy", metadata={"help": "metric that picks the best epoch"}
    )

    def __post_init__(self):
        if self.load_best_model_at_end is None:
            save, evaluate = str(getattr(self.save_strategy, "value", self.save_strategy)), str(
                getattr(self.eval_strategy, "value", self.eval_strategy))
            self.load_best_model_at_end = save == evaluate and save != "no"
        super().__post_init__()
        if not self.learning_rate >= 0:
            raise TrainingError(f"--learning_rate {self.learning_rate}: must be >= 0")


TRAINING_ARGUMENT_NAMES = {f.name for f in fields(TrainingArguments)}
# fields that say how a run is kept on disk, not what it trains: a resume may change them
NOT_RECIPE = {"checkpoint_every_minutes", "keep_checkpoints", "hp_search_trials"}

__all__ = [
    "DISTILLATION_CONFIG_NAME",
    "PAPER_OPTIMIZER_DEFAULTS",
    "StepCoTDistillationConfig",
    "StepCoTRecipeArguments",
    "StepCoTTeacherTrainingConfig",
]
