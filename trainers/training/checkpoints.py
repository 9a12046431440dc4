"""Lean per-epoch checkpoints: only what training changes.

A frozen CLIP + BERT is ~0.8 GB that no optimizer step touches; saving it at every epoch multiplied the bytes a run
writes by the number of epochs. A lean checkpoint folder holds `trainable_weights.safetensors` (every trainable
parameter and every buffer) with a digest of the frozen parameters in its metadata, plus the Trainer's usual
optimizer, scheduler, RNG and `trainer_state.json`. Resume rebuilds the model the same way (same encoders), checks the
digest (a clear error when the frozen encoders differ) and loads the trainable part: bit-identical to resuming from a
full checkpoint. The exported `teacher/` and `student/` folders stay complete `from_pretrained` checkpoints.
"""

import json
import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from transformers.trainer import TRAINER_STATE_NAME

from trainers.training.feature_cache import save_file_atomically, tensors_fingerprint

logger = logging.getLogger(__name__)

TRAINABLE_WEIGHTS_NAME = "trainable_weights.safetensors"


class TrainingError(ValueError):
    """A training run cannot start or go on; the message is one line naming the file, argument or value."""


def frozen_parameter_names(model) -> set:
    return {name for name, param in model.named_parameters(remove_duplicate=False) if not param.requires_grad}


def frozen_digest(model) -> str:
    """Digest of every frozen parameter (names and values): what a lean checkpoint relies on being rebuilt equal."""
    frozen = frozen_parameter_names(model)
    return tensors_fingerprint(sorted((n, p) for n, p in model.named_parameters() if n in frozen), "frozen")


def trainable_state_dict(model) -> dict:
    """The state dict without frozen parameters: trainable weights and all buffers (a frozen BatchNorm in train
    mode still updates its running statistics)."""
    frozen = frozen_parameter_names(model)
    return {key: tensor.detach().contiguous() for key, tensor in model.state_dict().items() if key not in frozen}


def save_lean_checkpoint(model, folder, digest=None):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {key: tensor.clone() for key, tensor in trainable_state_dict(model).items()}  # no shared storage
    save_file_atomically(state, folder / TRAINABLE_WEIGHTS_NAME, metadata={
        "format": "pt", "frozen_digest": digest or frozen_digest(model),
        "frozen_parameters": str(len(frozen_parameter_names(model))),
    })
    if hasattr(model, "config"):
        model.config.to_json_file(str(folder / "config.json"))  # what the run was built from, for reading only


def is_lean_checkpoint(folder) -> bool:
    return (Path(folder) / TRAINABLE_WEIGHTS_NAME).is_file()


def check_checkpoint_folder(folder):
    """Fail in one line when a checkpoint to resume from is missing or damaged (before any training starts)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TrainingError(f"checkpoint folder {folder} does not exist")
    state_file = folder / TRAINER_STATE_NAME
    try:
        json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TrainingError(f"damaged checkpoint: {state_file} is unreadable ({error.__class__.__name__}: {error})")
    weights = folder / TRAINABLE_WEIGHTS_NAME
    if weights.is_file():
        try:
            with safe_open(str(weights), framework="pt") as reader:
                reader.metadata()
        except (SafetensorError, OSError) as error:
            raise TrainingError(f"damaged checkpoint: {weights} is unreadable ({error})")


def load_lean_checkpoint(model, folder, digest=None):
    """Load a lean checkpoint into a model rebuilt like the one that was trained; checks the frozen digest."""
    weights = Path(folder) / TRAINABLE_WEIGHTS_NAME
    try:
        with safe_open(str(weights), framework="pt") as reader:
            expected = (reader.metadata() or {}).get("frozen_digest")
        state = load_file(weights)
    except (SafetensorError, OSError) as error:
        raise TrainingError(f"damaged checkpoint: {weights} is unreadable ({error})")
    actual = digest or frozen_digest(model)
    if expected != actual:
        raise TrainingError(
            f"{weights} was trained with other frozen encoder weights (digest {expected}, now {actual}): resume with "
            "the same --vision_encoder/--text_encoder/--teacher_model/--student_model as the interrupted run"
        )
    result = model.load_state_dict(state, strict=False)
    missing = set(result.missing_keys) - frozen_parameter_names(model)
    if missing or result.unexpected_keys:
        raise TrainingError(
            f"{weights} does not match the model: {len(missing)} trainable weights missing "
            f"({sorted(missing)[:3]}), {len(result.unexpected_keys)} unexpected ({result.unexpected_keys[:3]})"
        )


class LeanCheckpointMixin:
    """For a `Trainer` subclass: per-step/epoch checkpoints are lean; `save_model` still writes a full model."""

    _saving_checkpoint = False
    _frozen_digest = None

    def _lean_checkpoints_apply(self) -> bool:
        return not (self.is_deepspeed_enabled or self.is_fsdp_enabled)

    def _model_frozen_digest(self, model):
        if self._frozen_digest is None:  # frozen weights do not change during training: hash them once
            self._frozen_digest = frozen_digest(model)
        return self._frozen_digest

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        self._frozen_digest = None
        if isinstance(resume_from_checkpoint, (str, os.PathLike)):
            check_checkpoint_folder(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _save_checkpoint(self, model, trial):
        self._saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        except OSError as error:  # a full disk or a folder turned read-only mid-run
            where = error.filename or os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
            raise TrainingError(f"cannot write the checkpoint {where}: {error.strerror or error}") from error
        finally:
            self._saving_checkpoint = False

    def _save(self, output_dir=None, state_dict=None):
        if not (self._saving_checkpoint and self._lean_checkpoints_apply()):
            return super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
            # (no pickled training_args.bin: trainer_state.json and config.json say what the run was)
            save_lean_checkpoint(model, output_dir or self.args.output_dir, self._model_frozen_digest(model))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not is_lean_checkpoint(resume_from_checkpoint):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        model = self.accelerator.unwrap_model(model if model is not None else self.model, keep_torch_compile=False)
        load_lean_checkpoint(model, resume_from_checkpoint, self._model_frozen_digest(model))

    def _load_optimizer_and_scheduler(self, checkpoint):
        try:
            return super()._load_optimizer_and_scheduler(checkpoint)
        except (RuntimeError, OSError, EOFError, KeyError, ValueError) as error:
            if isinstance(error, TrainingError):
                raise
            raise TrainingError(
                f"damaged checkpoint: the optimizer or scheduler state in {checkpoint} is unreadable "
                f"({error.__class__.__name__}: {str(error).splitlines()[0] if str(error) else ''})"
            ) from error


def raise_if_not_finite(loss, terms: dict, trainer):
    """Stop at the first non-finite training loss, naming the step, every loss term and the usual causes (one
    host sync per step: cheap next to the update, and far cheaper than epochs of NaN weights)."""
    if bool(torch.isfinite(loss.detach())):
        return
    values = ", ".join(f"{name}={float(value.detach()):.4g}" for name, value in terms.items()
                       if torch.is_tensor(value) and value.numel() == 1)
    groups = trainer.optimizer.param_groups if trainer.optimizer is not None else []
    rates = ", ".join(f"{role} {rate:.3g}" for role, rate in {g.get("role", "all"): g["lr"] for g in groups}.items())
    temperature = getattr(trainer, "temperature", None)
    raise TrainingError(
        f"non-finite training loss {float(loss.detach()):.4g} at step {trainer.state.global_step + 1} ({values}): "
        f"lower the learning rates (now {rates or 'not set'}), check --temperature ({temperature}) and the inputs "
        "for NaN/inf features; resume from the last checkpoint once fixed"
    )
