"""Joint teacher/student training (paper App. D.5) as a `transformers.Trainer` subclass.

`StepCoTDistillationPair` holds the teacher, the student and the two learnable CH projections in one
`PreTrainedModel`, so checkpoints, resume, DDP and mixed precision come from the Trainer. One forward runs both
models; the image is encoded once when teacher and student share the same frozen encoder, or not at all when
the batch carries cached `image_embeds`.

Deliberate difference from the reference loop: the KD/CH targets are the teacher's outputs of the same forward
(detached) instead of a second teacher forward after the teacher's optimizer step. The teacher therefore lags the
target by one optimizer step; in exchange each batch costs one teacher forward and the whole update is one
backward pass that DDP can synchronise.
"""

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from transformers import PreTrainedConfig, PreTrainedModel, Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import ModelOutput

from modeling_stepcot import StepCoTConfig, StepCoTStudent, StepCoTStudentConfig, StepCoTTeacher
from trainers.evaluation.metrics import compute_step_metrics
from trainers.training.checkpoints import (
    TRAINABLE_WEIGHTS_NAME,
    LeanCheckpointMixin,
    TrainingError,
    frozen_parameter_names,
    raise_if_not_finite,
    resolve_resume_checkpoint,
    trainable_state_dict,
)
from trainers.training.distillation_config import DISTILLATION_CONFIG_NAME, StepCoTDistillationConfig
from trainers.training.feature_cache import save_file_atomically
from trainers.training.losses import distillation_losses


class StepCoTPairConfig(PreTrainedConfig):
    r"""Teacher and student configs plus the width of the CH (channel/relation) projections (256 in the paper) and
    the seed of the frozen teacher-side projection."""

    model_type = "stepcot_pair"
    sub_configs_defaults = {"teacher_config": StepCoTConfig, "student_config": StepCoTStudentConfig}

    teacher_config: dict | StepCoTConfig | None = None
    student_config: dict | StepCoTStudentConfig | None = None
    relation_dim: int = 256
    relation_seed: int = 0


@dataclass
class StepCoTPairOutput(ModelOutput):
    r"""
    teacher_logits / student_logits (`(batch, steps, max_classes)`): padded per-step logits.
    teacher_step_logits / student_step_logits: the unpadded per-step logits.
    teacher_relation (`(batch, steps, relation_dim)`): the frozen CH projection of each step's (detached) teacher
        image feature. student_relation (`(batch, relation_dim)`): the trainable CH projection of the student's.
    """

    teacher_logits: torch.FloatTensor | None = None
    student_logits: torch.FloatTensor | None = None
    teacher_step_logits: tuple | None = None
    student_step_logits: tuple | None = None
    teacher_relation: torch.FloatTensor | None = None
    student_relation: torch.FloatTensor | None = None


class StepCoTDistillationPair(PreTrainedModel):
    """Teacher + student + CH projections, trained together. Export each model with `pair.teacher.save_pretrained`.

    The teacher-side CH projection is frozen (paper D.5 (3b): the CH targets come from a no-grad teacher forward; the
    reference never trains it): initialised from `config.relation_seed`, saved with the pair. Only the student-side
    projection learns."""

    config: StepCoTPairConfig
    base_model_prefix = "pair"
    main_input_name = "pixel_values"
    accepts_loss_kwargs = False  # the loss is computed by the trainer as a per-batch mean

    def __init__(self, config: StepCoTPairConfig):
        super().__init__(config)
        self.teacher = StepCoTTeacher._from_config(config.teacher_config)
        self.student = StepCoTStudent._from_config(config.student_config)
        self.teacher_relation_projection = nn.Linear(config.teacher_config.hidden_size, config.relation_dim)
        self.student_relation_projection = nn.Linear(config.student_config.hidden_size, config.relation_dim)
        self._shares_image_encoder = None  # decided on first use, once the weights are loaded
        self.post_init()
        self._seed_teacher_relation_projection()
        self.teacher_relation_projection.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        pair = super().from_pretrained(*args, **kwargs)
        model = pair[0] if isinstance(pair, tuple) else pair
        model.teacher_relation_projection.requires_grad_(False)  # loading re-creates the parameters
        return pair

    def _seed_teacher_relation_projection(self):
        """The frozen teacher-side projection, reproducible from the seed (saved weights, when loaded, override it)."""
        generator = torch.Generator().manual_seed(self.config.relation_seed)
        weight = self.teacher_relation_projection.weight
        std = self.config.teacher_config.initializer_range
        with torch.no_grad():
            weight.copy_(torch.randn(weight.shape, generator=generator) * std)
            self.teacher_relation_projection.bias.zero_()

    @classmethod
    def from_models(cls, teacher: StepCoTTeacher, student: StepCoTStudent, relation_dim: int = 256,
                    relation_seed: int = 0):
        """Start from two built (e.g. pretrained-encoder) models; their weights, buffers and freezing are kept."""
        if teacher.config.step_options != student.config.step_options:
            raise ValueError("Teacher and student must answer the same steps with the same options.")
        pair = cls(StepCoTPairConfig(teacher_config=teacher.config, student_config=student.config,
                                     relation_dim=relation_dim, relation_seed=relation_seed))
        pair.teacher.load_state_dict(teacher.state_dict())
        pair.student.load_state_dict(student.state_dict())
        pair.teacher._apply_freezing()
        pair.student._apply_freezing()
        return pair

    def shares_image_encoder(self) -> bool:
        """True when teacher and student use the same frozen image encoder (same backbone and weights): then one
        encoder pass (or one feature cache) serves both."""
        if self._shares_image_encoder is None:
            t, s = self.teacher, self.student
            same = (
                not t.vision_encoder_is_trainable()
                and not s.vision_encoder_is_trainable()
                and t.config.vision_backbone == s.config.vision_backbone
                and t.config.image_size == s.config.image_size
            )
            if same:
                t_params, s_params = list(t.vision_encoder.parameters()), list(s.vision_encoder.parameters())
                same = len(t_params) == len(s_params) and all(
                    a.shape == b.shape and torch.equal(a, b) for a, b in zip(t_params, s_params)
                )
            self._shares_image_encoder = bool(same)
        return self._shares_image_encoder

    def encode_images(self, pixel_values):
        """(teacher image_embeds, student image_embeds); the encoder runs once when it is shared."""
        teacher_embeds = self.teacher.encode_images(pixel_values)
        if self.shares_image_encoder():
            return teacher_embeds, teacher_embeds
        return teacher_embeds, self.student.encode_images(pixel_values)

    def forward(
        self,
        pixel_values=None,
        labels=None,
        image_embeds=None,
        student_image_embeds=None,
        question_input_ids=None,
        question_attention_mask=None,
    ) -> StepCoTPairOutput:
        r"""
        pixel_values (`(batch, 3, H, W)`), or cached `image_embeds` (teacher encoder) and `student_image_embeds`
        (only needed when the student's encoder differs). `labels` are accepted for the Trainer's bookkeeping; the
        loss itself is computed by [`StepCoTDistillationTrainer`].
        """
        if image_embeds is None:
            if pixel_values is None:
                raise ValueError("Pass `pixel_values` or cached `image_embeds`.")
            image_embeds, student_image_embeds = self.encode_images(pixel_values)
        elif student_image_embeds is None:
            if not self.shares_image_encoder():
                raise ValueError(
                    "Teacher and student use different image encoders: pass `student_image_embeds` too."
                )
            student_image_embeds = image_embeds
        teacher = self.teacher(
            image_embeds=image_embeds,
            question_input_ids=question_input_ids,
            question_attention_mask=question_attention_mask,
        )
        student = self.student(image_embeds=student_image_embeds)
        return StepCoTPairOutput(
            teacher_logits=teacher.logits,
            student_logits=student.logits,
            teacher_step_logits=teacher.step_logits,
            student_step_logits=student.step_logits,
            teacher_relation=self.teacher_relation_projection(teacher.image_features.detach()),
            student_relation=self.student_relation_projection(student.image_features),
        )


class BestModelExportCallback(TrainerCallback):
    """Keeps the best teacher and the best student *separately*, each by its mean validation accuracy over steps
    (paper App. D.5). Their trainable weights and buffers are held in memory (`restore(pair)` puts them back, before
    the export) and written only into the checkpoints (`best/ROLE/trainable_weights.safetensors`), so that a resumed
    run keeps them; nothing else is written for them."""

    def __init__(self, metric="mean_accuracy"):
        self.metric = metric
        self.best = {"teacher": -math.inf, "student": -math.inf}
        self.states = {}  # role -> the best model's trainable state (CPU tensors)

    def on_train_begin(self, args, state, control, **kwargs):
        # resumed runs: the bests recorded in the checkpoint's log history, so a worse later epoch never replaces them
        for role in self.best:
            recorded = [entry[f"best_{role}_{self.metric}"] for entry in state.log_history
                        if f"best_{role}_{self.metric}" in entry]
            self.best[role] = max(recorded, default=-math.inf)

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if not metrics or model is None:
            return
        for role in ("teacher", "student"):
            value = metrics.get(f"eval_{role}_{self.metric}")
            if value is None or not value > self.best[role]:
                continue
            self.best[role] = value
            state.log_history.append({f"best_{role}_{self.metric}": value, "step": state.global_step})
            self.states[role] = {key: tensor.to("cpu", copy=True)
                                 for key, tensor in trainable_state_dict(getattr(model, role)).items()}

    def save_into_checkpoint(self, folder):
        for role, state in self.states.items():
            save_file_atomically(state, Path(folder) / "best" / role / TRAINABLE_WEIGHTS_NAME,
                                 metadata={"format": "pt"})

    def load_from_checkpoint(self, folder):
        self.states = {}
        for role in ("teacher", "student"):
            weights = Path(folder) / "best" / role / TRAINABLE_WEIGHTS_NAME
            if weights.is_file():
                try:
                    self.states[role] = load_file(weights)
                except (SafetensorError, OSError) as error:
                    raise TrainingError(f"damaged checkpoint: {weights} is unreadable ({error})") from error

    def restore(self, pair):
        """Put the best teacher and student (where an evaluation picked one) back into `pair`."""
        for role, state in self.states.items():
            model = getattr(pair, role)
            result = model.load_state_dict(state, strict=False)
            missing = set(result.missing_keys) - frozen_parameter_names(model)
            if missing or result.unexpected_keys:
                raise TrainingError(f"the best {role} does not match the model ({len(missing)} weights missing, "
                                    f"{len(result.unexpected_keys)} unexpected)")


class DistillationConfigCheckpointCallback(TrainerCallback):
    """Writes the run's distillation settings (JSON) into every checkpoint folder the Trainer saves."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, DISTILLATION_CONFIG_NAME)):
                args.save_distillation_values(folder)  # (a staged checkpoint holds it already)


class StepCoTDistillationTrainer(LeanCheckpointMixin, Trainer):
    r"""`Trainer` whose `compute_loss` is the Step-CoT joint objective:

    loss = teacher CE + [student CE + alpha_kd * KD + alpha_ch * CH]   (each summed over steps)

    The bracket is switched off for the first `teacher_pretrain_epochs` epochs (teacher-only pre-training), and the
    student's parameters then get no gradient at all, so its AdamW state starts fresh when distillation begins.
    Teacher and student get separate learning rates through parameter groups and their gradients are clipped
    separately (each to `max_grad_norm`), so the KD and CH weights cannot change the teacher's trajectory. Each term
    is logged separately. Per-epoch checkpoints are lean (trainable weights + a digest of the frozen encoders, see
    `checkpoints.py`).

    Args:
        model ([`StepCoTDistillationPair`]):
            Teacher, student and CH projections (`StepCoTDistillationPair.from_models(teacher, student)`).
        args ([`StepCoTDistillationConfig`], *optional*):
            The recipe (weights, temperature, rates, epochs); written into each checkpoint and checked on resume.
            Default: `StepCoTDistillationConfig()` (the paper's recipe) with the pair's `relation_dim`.
        compute_metrics (*optional*):
            Default: [`build_pair_compute_metrics`] (teacher and student accuracy, F1, ... per evaluation).
        class_weights (list of tensors, *optional*):
            Per-step CE class weights (e.g. `losses.inverse_frequency_class_weights`).

        Every other argument is [`~transformers.Trainer`]'s.

    Example:

    ```python
    pair = StepCoTDistillationPair.from_models(teacher, student)
    trainer = StepCoTDistillationTrainer(model=pair, train_dataset=train, eval_dataset=validation)
    trainer.train()
    pair.student.save_pretrained("outputs/student")
    ```
    """

    loss_is_scaled_for_ga = False  # our loss is a per-batch mean: let the Trainer divide by accumulation steps

    def __init__(self, model=None, args=None, *positional, class_weights=None, compute_metrics=None, **kwargs):
        if args is None and model is not None:
            args = StepCoTDistillationConfig(relation_dim=model.config.relation_dim)
        elif args is None:
            args = StepCoTDistillationConfig()
        if not isinstance(args, StepCoTDistillationConfig):
            raise TypeError(
                "StepCoTDistillationTrainer needs args=StepCoTDistillationConfig(...) (the distillation recipe), "
                f"got {type(args).__name__}."
            )
        if compute_metrics is None and model is not None:
            compute_metrics = build_pair_compute_metrics(model.teacher.config.num_classes_per_step)
        super().__init__(model, args, *positional, compute_metrics=compute_metrics, **kwargs)
        config = self.args
        self.class_weights = class_weights
        pair = self.model
        if pair.config.relation_dim != config.relation_dim:
            raise ValueError(f"The pair's CH projections are {pair.config.relation_dim} wide but the distillation "
                             f"config says relation_dim={config.relation_dim}.")
        pair.teacher_relation_projection.requires_grad_(config.ch_train_teacher_projection)
        self.add_callback(DistillationConfigCheckpointCallback())
        self._teacher_pretrain_steps = None
        self._term_sums = {}
        self._term_count = 0

    # the recipe's values are read from `self.args` when used, so that a hyper-parameter search trial's take effect
    temperature = property(lambda self: self.args.temperature)
    alpha_kd = property(lambda self: self.args.alpha_kd)
    alpha_ch = property(lambda self: self.args.alpha_ch)
    teacher_learning_rate = property(lambda self: self.args.teacher_learning_rate)
    student_learning_rate = property(lambda self: self.args.student_learning_rate)
    teacher_pretrain_epochs = property(lambda self: self.args.teacher_pretrain_epochs)

    def set_initial_training_values(self, args, dataloader):
        """The Trainer's epoch and step counts for the whole run: `num_train_epochs` counts the distillation epochs,
        so the run is `teacher_pretrain_epochs` longer."""
        whole_run = copy.copy(args)
        whole_run.num_train_epochs = args.total_epochs()
        return super().set_initial_training_values(whole_run, dataloader)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        checkpoint = resolve_resume_checkpoint(self.args.output_dir, resume_from_checkpoint)
        if checkpoint:
            self.args.check_matches_checkpoint(checkpoint)
        self._teacher_pretrain_steps = None  # a search trial may change the epochs or the batch size
        return super().train(checkpoint, *args, **kwargs)

    # -- schedule ------------------------------------------------------------------------------------------

    def teacher_pretrain_steps(self) -> int:
        if self._teacher_pretrain_steps is None:
            batches = len(self.get_train_dataloader())
            per_epoch = max(1, batches // self.args.gradient_accumulation_steps)
            self._teacher_pretrain_steps = self.teacher_pretrain_epochs * per_epoch
        return self._teacher_pretrain_steps

    def in_teacher_pretraining(self) -> bool:
        return self.model.training and self.state.global_step < self.teacher_pretrain_steps()

    # -- optimisation --------------------------------------------------------------------------------------

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        model = model if model is not None else self.model
        decay = set(self.get_decay_parameter_names(model))
        groups = []
        for role, lr in (("teacher", self.teacher_learning_rate), ("student", self.student_learning_rate)):
            for with_decay in (True, False):
                params = [
                    p for n, p in model.named_parameters()
                    if p.requires_grad and n.startswith("teacher.") == (role == "teacher")
                    and (n in decay) == with_decay
                ]
                if params:
                    groups.append({
                        "params": params, "lr": lr, "role": role,
                        "weight_decay": self.args.weight_decay if with_decay else 0.0,
                    })
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        self.optimizer.register_step_pre_hook(self._skip_student_in_pretraining)
        return self.optimizer

    def _role_parameters(self, role):
        return [p for group in self.optimizer.param_groups if group["role"] == role for p in group["params"]]

    def _skip_student_in_pretraining(self, optimizer, args, kwargs):
        """During teacher-only epochs the student's (zero) gradients are dropped before the optimizer step: AdamW
        then skips those parameters entirely instead of counting steps with empty moments."""
        if self.in_teacher_pretraining():
            for group in optimizer.param_groups:
                if group["role"] == "student":
                    for parameter in group["params"]:
                        parameter.grad = None

    def _clip_grad_norm(self, model):
        """Clip the teacher's and the student's gradients separately, each to `max_grad_norm` (the reference clips each
        model on its own); returns the norm of both together, before clipping, for the logs."""
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED or self.is_fsdp_enabled:
            return super()._clip_grad_norm(model)
        self.accelerator.unscale_gradients()  # mixed precision (fp16): once, before both clips
        norms = [
            torch.nn.utils.clip_grad_norm_(self._role_parameters(role), self.args.max_grad_norm)
            for role in ("teacher", "student")
        ]
        return torch.linalg.vector_norm(torch.stack([norm.float() for norm in norms]))

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The configured schedule for every group, with the student's groups held at 0 during pre-training."""
        if self.lr_scheduler is None:
            optimizer = optimizer if optimizer is not None else self.optimizer
            base = super().create_scheduler(num_training_steps, optimizer)
            base_lambda = base.lr_lambdas[0] if hasattr(base, "lr_lambdas") else (lambda step: 1.0)
            pretrain = self.teacher_pretrain_steps()

            def student_lambda(step):
                return 0.0 if step < pretrain else base_lambda(step)

            lambdas = [base_lambda if g["role"] == "teacher" else student_lambda for g in optimizer.param_groups]
            for group in optimizer.param_groups:  # undo the base scheduler's scaling before replacing it
                group["lr"] = group["initial_lr"]
            self.lr_scheduler = LambdaLR(optimizer, lambdas)
        return self.lr_scheduler

    # -- loss ----------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        outputs = model(**inputs)
        class_weights = self.class_weights
        terms = distillation_losses(
            outputs.teacher_step_logits,
            outputs.student_step_logits,
            labels,
            outputs.teacher_relation,
            outputs.student_relation,
            temperature=self.temperature,
            alpha_kd=self.alpha_kd,
            alpha_ch=self.alpha_ch,
            class_weights=class_weights,
            ch_standardize=self.args.ch_standardize,
            label_smoothing=self.args.label_smoothing_factor,
        )
        student_weight = 0.0 if self.in_teacher_pretraining() else 1.0
        loss = terms["teacher_ce"] + student_weight * terms["student"]
        if model.training:
            raise_if_not_finite(loss, terms, self)
            terms["teacher_pretraining"] = torch.tensor(1.0 - student_weight)
            for name in ("teacher_ce", "student_ce", "kd", "ch", "teacher_pretraining"):
                self._term_sums[name] = self._term_sums.get(name, 0.0) + terms[name].detach().float()
            self._term_count += 1
        if return_outputs:
            return loss, {"loss": loss, "teacher_logits": outputs.teacher_logits,
                          "student_logits": outputs.student_logits}
        return loss

    def log(self, logs, start_time=None):
        if self._term_count and "loss" in logs:  # a training log: add the mean of each term since the last one
            for name, total in self._term_sums.items():
                mean = self.accelerator.reduce(total / self._term_count, reduction="mean")
                logs[name] = round(float(mean), 4)
            self._term_sums, self._term_count = {}, 0
        super().log(logs, start_time)


def build_pair_compute_metrics(num_classes_per_step, num_bootstrap=0, per_step="accuracy"):
    """`compute_metrics` for the pair: EvalPrediction.predictions = (teacher_logits, student_logits).
    Returns `teacher_mean_<metric>` for every metric and `teacher_step<i>_<metric>` for the metrics named in
    `per_step` ("accuracy" keeps the per-epoch logs readable; "all" for everything), and the same for the student."""
    import numpy as np

    def compute_metrics(eval_pred):
        teacher_logits, student_logits = eval_pred.predictions[:2]
        labels = np.asarray(eval_pred.label_ids)
        result = {}
        for role, logits in (("teacher", teacher_logits), ("student", student_logits)):
            metrics = compute_step_metrics(
                np.asarray(logits), labels, num_classes_per_step=num_classes_per_step,
                scores="logits", num_bootstrap=num_bootstrap,
            )
            result.update({
                f"{role}_{key}": value for key, value in metrics.flat().items()
                if key.startswith("mean_") or per_step == "all" or key.endswith(f"_{per_step}")
            })
        return result

    return compute_metrics


__all__ = [
    "BestModelExportCallback",
    "DistillationConfigCheckpointCallback",
    "StepCoTDistillationPair",
    "StepCoTDistillationConfig",
    "StepCoTDistillationTrainer",
    "StepCoTPairConfig",
    "StepCoTPairOutput",
    "build_pair_compute_metrics",
]
