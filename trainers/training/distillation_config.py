"""`StepCoTDistillationConfig`: the `TrainingArguments` of a Step-CoT distillation run (paper App. D.6 defaults).

The distillation hyper-parameters live next to the Trainer's own arguments, in one object that the trainer requires,
that `HfArgumentParser` turns into command-line flags with help text, and that is written (as JSON, never pickled)
into every checkpoint as `distillation_config.json`, so that resuming with different values fails instead of
silently changing the recipe half-way.
"""

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType

from trainers.training.checkpoints import TrainingError

DISTILLATION_CONFIG_NAME = "distillation_config.json"

# The reference's optimiser settings (AdamW with torch's default weight decay, a constant rate) instead of the
# Trainer's (no decay, linear decay to 0): on the README main job the linear decay cost the student 7.4 points of
# mean test accuracy (89.8 -> 97.2 %) and the teacher 1.0 (benchmarks/RESULTS.md).
PAPER_OPTIMIZER_DEFAULTS = {"weight_decay": 0.01, "lr_scheduler_type": "constant"}


@dataclass
class StepCoTDistillationConfig(TrainingArguments):
    """`TrainingArguments` plus the Step-CoT distillation recipe. `num_train_epochs` counts the distillation epochs
    *after* the teacher-only ones (the training script adds `teacher_pretrain_epochs`); `learning_rate` is unused:
    teacher and student have their own rates. `max_grad_norm` clips the teacher's and the student's gradients
    separately (each to that norm), as the reference's two optimizers do."""

    weight_decay: float = field(
        default=PAPER_OPTIMIZER_DEFAULTS["weight_decay"],
        metadata={"help": "AdamW weight decay of both models, biases and LayerNorm weights excepted (reference: "
                          "torch's default 0.01)"},
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
        default=5e-5, metadata={"help": "AdamW learning rate of the teacher (paper: 5e-5)"}
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
        metadata={"help": "let the teacher-side CH projection train with the student (the behaviour before the CH "
                          "fix, kept only for before/after studies); default: frozen, as in the paper and reference"},
    )

    def __post_init__(self):
        super().__post_init__()
        # a learning rate of 0 is allowed: it freezes that model (e.g. distilling from a finished teacher)
        bounds = [(name, 0, False) for name in ("alpha_kd", "alpha_ch", "teacher_pretrain_epochs",
                                                "teacher_learning_rate", "student_learning_rate")]
        bounds += [("temperature", 0, True)]
        bounds += [("relation_dim", 2, False)]
        for name, bound, strict in bounds:
            value = getattr(self, name)
            if not (value > bound if strict else value >= bound):  # also catches NaN
                raise TrainingError(f"--{name} {value}: must be {'>' if strict else '>='} {bound}")

    def distillation_values(self) -> dict:
        """The fields this class adds to `TrainingArguments` (what a checkpoint records and a resume must match)."""
        return {f.name: getattr(self, f.name) for f in fields(StepCoTDistillationConfig)
                if f.name not in TRAINING_ARGUMENT_NAMES}

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
        saved = json.loads(path.read_text(encoding="utf-8"))
        current = self.distillation_values()
        changed = {name: (saved.get(name), value) for name, value in current.items() if saved.get(name) != value}
        if changed:
            listing = ", ".join(f"{name}: {old!r} in the checkpoint, {new!r} now"
                                for name, (old, new) in changed.items())
            raise ValueError(f"Cannot resume from {checkpoint} with other distillation settings ({listing}).")


TRAINING_ARGUMENT_NAMES = {f.name for f in fields(TrainingArguments)}

__all__ = ["DISTILLATION_CONFIG_NAME", "PAPER_OPTIMIZER_DEFAULTS", "StepCoTDistillationConfig"]
