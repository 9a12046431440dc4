"""Lean per-epoch checkpoints: only what training changes.

A frozen CLIP + BERT is ~0.8 GB that no optimizer step touches; saving it at every epoch multiplied the bytes a run
writes by the number of epochs. A lean checkpoint folder holds `trainable_weights.safetensors` (every trainable
parameter and every buffer) with a digest of the frozen parameters in its metadata, plus the Trainer's usual
optimizer, scheduler, RNG and `trainer_state.json`. Resume rebuilds the model the same way (same encoders), checks the
digest (a clear error when the frozen encoders differ) and loads the trainable part: bit-identical to resuming from a
full checkpoint. The exported `teacher/` and `student/` folders stay complete `from_pretrained` checkpoints.

Every checkpoint is written into a hidden staging folder (`.checkpoint-N.partial/`) and renamed to `checkpoint-N` once
complete (weights, optimizer, scheduler, RNG, trainer state, distillation settings and the run's inputs): a full disk,
a file size limit or a kill mid-write never leaves a partial `checkpoint-N`, and any write failure is one line
("cannot write the checkpoint ..."). `--resume_from_checkpoint true` resumes from the last complete checkpoint.

A checkpoint the `save_strategy` asks for is written only once `checkpoint_every_minutes` of training have passed
since the last one (rank 0's clock decides for every rank), and a callback with `save_into_checkpoint(folder)` /
`load_from_checkpoint(folder)` adds its own state to each staged checkpoint and gets it back on resume (the best
models, `distillation.BestModelExportCallback`).
"""

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from dataset_script.user_files import read_json_file
from trainers.training.feature_cache import save_file_atomically, tensors_fingerprint

logger = logging.getLogger(__name__)

TRAINABLE_WEIGHTS_NAME = "trainable_weights.safetensors"
CHECKPOINT_INPUTS_NAME = "run_inputs.json"  # the data and model arguments the checkpoint was trained with
STAGING_SUFFIX = ".partial"
# what a checkpoint holds its model weights in: lean, full safetensors, sharded or adapter-only
WEIGHT_FILES = (TRAINABLE_WEIGHTS_NAME, "model.safetensors", "model.safetensors.index.json",
                "adapter_model.safetensors")
# `--resume_from_checkpoint` spellings meaning "the last complete checkpoint in --output_dir"
RESUME_LAST = {"true", "last", "latest"}
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
run_logger = logging.getLogger("stepcot.train")


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


def checkpoint_problem(folder) -> str | None:
    """Why `folder` is not a complete checkpoint to resume from (one phrase), or None when it is."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"checkpoint folder {folder} does not exist"
    state_file = folder / TRAINER_STATE_NAME
    try:
        json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        return f"damaged checkpoint: {state_file} is unreadable ({error.__class__.__name__}: {error})"
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        return f"damaged checkpoint: {folder} holds no model weights ({TRAINABLE_WEIGHTS_NAME})"
    return None


def last_complete_checkpoint(output_dir):
    """(the complete checkpoint with the highest step in `output_dir` or None, [(incomplete folder, why)] newer)."""
    found = []
    if Path(output_dir).is_dir():
        for path in Path(output_dir).iterdir():
            match = _CHECKPOINT_NAME.match(path.name)
            if match and path.is_dir():
                found.append((int(match.group(1)), path))
    skipped = []
    for _, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def wants_last_checkpoint(value) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in RESUME_LAST)


def resolve_resume_checkpoint(output_dir, value):
    """The checkpoint folder `--resume_from_checkpoint VALUE` means (None: no resume). `true`/`last` is the last
    complete checkpoint in `output_dir` (incomplete newer ones are named and passed over); a folder must be a
    complete checkpoint. One-line TrainingError otherwise."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in {"", "false", "none"}):
        return None
    if wants_last_checkpoint(value):
        found, skipped = last_complete_checkpoint(output_dir)
        for path, problem in skipped:
            run_logger.warning("passing over %s: %s", path.name, problem)
        if found is None:
            raise TrainingError(f"--resume_from_checkpoint {value}: {output_dir} holds no complete checkpoint to "
                                "resume from")
        run_logger.warning("resuming from %s, the last complete checkpoint in %s", found, output_dir)
        return str(found)
    check_checkpoint_folder(value)
    return str(value)


def check_checkpoint_folder(folder):
    """Fail in one line when a checkpoint to resume from is missing or damaged (before any training starts), naming
    the last complete checkpoint beside it when there is one."""
    folder = Path(folder)
    problem = checkpoint_problem(folder)
    if problem is not None:
        found, _ = last_complete_checkpoint(folder.parent)
        hint = (f"; the last complete checkpoint is {found} (--resume_from_checkpoint true picks it)"
                if found is not None and found != folder else "")
        raise TrainingError(problem + hint)
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


_OS_ERROR_NUMBER = re.compile(r"os error (\d+)")


def write_failure(error: BaseException) -> str | None:
    """What went wrong when a checkpoint write raised `error`, in a few words; None when `error` is not a write
    failure. torch.save reports a full disk as `RuntimeError: [enforce fail at inline_container.cc] ...` and
    safetensors a size limit as `SafetensorError: ... (os error 27)`: both are write failures."""
    if isinstance(error, TrainingError):
        return None
    if isinstance(error, OSError):
        return error.strerror or str(error)
    text = str(error)
    number = _OS_ERROR_NUMBER.search(text)
    if isinstance(error, SafetensorError) and number:
        return os.strerror(int(number.group(1)))
    if isinstance(error, (RuntimeError, SafetensorError)) and any(
            marker in text for marker in ("enforce fail", "inline_container", "unexpected pos", "file write failed",
                                          "PytorchStreamWriter", "os error", "Error while serializing")):
        first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
        return f"the disk is full or a file size limit was reached ({first[:160]})"
    return None


class LeanCheckpointMixin:
    """For a `Trainer` subclass: per-step/epoch checkpoints are lean and written atomically (staged, then renamed);
    `save_model` still writes a full model."""

    _saving_checkpoint = False
    _frozen_digest = None
    _staging_root = None
    _last_checkpoint_time = None

    def _lean_checkpoints_apply(self) -> bool:
        return not (self.is_deepspeed_enabled or self.is_fsdp_enabled)

    def _model_frozen_digest(self, model):
        if self._frozen_digest is None:  # frozen weights do not change during training: hash them once
            self._frozen_digest = frozen_digest(model)
        return self._frozen_digest

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        self._frozen_digest = None
        if isinstance(resume_from_checkpoint, (str, os.PathLike)) or resume_from_checkpoint is True:
            resume_from_checkpoint = resolve_resume_checkpoint(self.args.output_dir, resume_from_checkpoint)
        if self.args.should_save:  # what a killed run left half-written: never a checkpoint
            for leftover in Path(self.args.output_dir).glob(f".{PREFIX_CHECKPOINT_DIR}-*{STAGING_SUFFIX}"):
                shutil.rmtree(leftover, ignore_errors=True)
        if resume_from_checkpoint:
            for callback in self._checkpoint_state_callbacks():
                callback.load_from_checkpoint(resume_from_checkpoint)
        self._last_checkpoint_time = time.monotonic()
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _checkpoint_state_callbacks(self):
        return [c for c in self.callback_handler.callbacks if hasattr(c, "save_into_checkpoint")]

    def _checkpoint_due(self) -> bool:
        """Whether `checkpoint_every_minutes` have passed since the last checkpoint (or the start of training); every
        rank takes rank 0's answer, so that all of them save or none."""
        minutes = getattr(self.args, "checkpoint_every_minutes", 0) or 0
        if minutes <= 0 or self._last_checkpoint_time is None:
            return True
        due = [time.monotonic() - self._last_checkpoint_time >= 60 * minutes]
        if self.args.world_size > 1:
            broadcast_object_list(due, from_process=0)
        return bool(due[0])

    def _get_output_dir(self, trial):
        if self._staging_root is not None:  # the Trainer writes `checkpoint-N` under the staging folder
            return self._staging_root
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        if not self._checkpoint_due():
            return
        self._last_checkpoint_time = time.monotonic()
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final, staging_root = run_dir / name, run_dir / f".{name}{STAGING_SUFFIX}"
        self._saving_checkpoint = True
        try:
            if self.args.should_save:
                shutil.rmtree(staging_root, ignore_errors=True)
                staging_root.mkdir(parents=True)
            self.accelerator.wait_for_everyone()
            self._staging_root = str(staging_root)
            super()._save_checkpoint(model, trial)
            self._staging_root = None
            self.accelerator.wait_for_everyone()  # every rank's files (RNG states) are in the staging folder
            if self.args.should_save:
                self._finish_checkpoint(staging_root / name, final, run_dir)
        except Exception as error:
            if self.args.should_save:
                shutil.rmtree(staging_root, ignore_errors=True)
            failure = write_failure(error)
            if failure is None:
                raise
            raise TrainingError(f"cannot write the checkpoint {final}: {failure}; nothing of it was kept") from error
        finally:
            self._staging_root = None
            self._saving_checkpoint = False

    def _finish_checkpoint(self, staged: Path, final: Path, run_dir: Path):
        """Complete a staged checkpoint (records, trainer state naming final paths) and rename it into place."""
        if self.state.best_global_step:
            best = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}"
            if best == final or best.is_dir():
                self.state.best_model_checkpoint = str(best)
        if hasattr(self.args, "save_distillation_values"):
            self.args.save_distillation_values(staged)
        for callback in self._checkpoint_state_callbacks():
            callback.save_into_checkpoint(staged)
        self._record_run_inputs(staged)
        self.state.save_to_json(str(staged / TRAINER_STATE_NAME))  # with the final, not the staging, paths
        replaced = run_dir / f".{final.name}.replaced"
        if final.exists():  # the same step saved again (a resumed run): swap, then drop the old one
            shutil.rmtree(replaced, ignore_errors=True)
            os.replace(final, replaced)
        os.replace(staged, final)
        shutil.rmtree(replaced, ignore_errors=True)
        shutil.rmtree(staged.parent, ignore_errors=True)
        rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
                           best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)

    def _record_run_inputs(self, folder: Path):
        """The run's data and model arguments (from OUTPUT_DIR/run.json) into the checkpoint: a resume checks them."""
        from trainers.training.run_folder import RUN_RECORD  # run_folder imports this module

        record = Path(self.args.output_dir) / RUN_RECORD
        try:
            inputs = read_json_file(record).get("built_from")
        except (ValueError, AttributeError):
            return  # a Trainer used as a library, without a run record
        if inputs is not None:
            (folder / CHECKPOINT_INPUTS_NAME).write_text(json.dumps(inputs, indent=2, default=str), encoding="utf-8")

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
