"""One output folder, one run: record what a run was built from and refuse to mix runs in one folder.

A training run leaves `dataset/` (built from `--dataset`), `teacher/`, `student/`, `metrics/` and `results.json` in
OUTPUT_DIR, and `checkpoint-*` while it trains (removed once the models are exported, unless `--keep_checkpoints`).
Reusing the folder for another configuration would otherwise reuse the old `dataset/` whatever `--dataset` says,
export the previous run's best model when the new run never evaluates, and let the checkpoint rotation delete the
previous run's checkpoints. `run.json` records what the folder's run was built
from; a run whose inputs differ, or a fresh run over another run's checkpoints, stops with one line
(`--overwrite_output_dir` starts over, `--resume_from_checkpoint` continues).
"""

import fcntl
import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from pathlib import Path

from dataset_script.user_files import read_json_file
from trainers.training.checkpoints import CHECKPOINT_INPUTS_NAME, TrainingError, resolve_resume_checkpoint

logger = logging.getLogger("stepcot.train")

RUN_RECORD = "run.json"
LOCK_FILE = ".stepcot-run.lock"  # flock-ed by the run writing into the folder, for the run's whole life
_held_locks = {}  # resolved folder -> open lock file (closing it, or the process ending, releases the lock)
# what a training run writes into its output folder (the feature cache is keyed by content and stays reusable)
RUN_OUTPUTS = ("dataset", "demo-release", "best", "teacher", "student", "metrics", "results.json", RUN_RECORD)
# arguments that do not change what a run is built from
NOT_INPUTS = {"cache_dir", "num_bootstrap", "eval_split", "feature_cache", "overwrite_output_dir",
              "extraction_workers"}


def built_from(script: str, *argument_objects) -> dict:
    """The inputs that define a run's data and models: script, dataset source and data/model arguments."""
    record = {"script": script}
    for arguments in argument_objects:
        values = asdict(arguments) if is_dataclass(arguments) else dict(arguments)
        for key, value in values.items():
            if key in NOT_INPUTS:
                continue
            if key in ("dataset", "teacher_model", "student_model") and value and Path(value).exists():
                value = str(Path(value).resolve())
            record[key] = value
    return record


def _checkpoints(folder: Path):
    return sorted(p for p in folder.glob("checkpoint-*") if p.is_dir())


def remove_checkpoints(folder, keep: bool) -> None:
    """A finished run's checkpoints, once its models are exported: removed unless `keep` (`--keep_checkpoints`)."""
    if keep:
        return
    for checkpoint in _checkpoints(Path(folder)):
        shutil.rmtree(checkpoint, ignore_errors=True)
    if _checkpoints(Path(folder)):
        logger.warning("could not remove every checkpoint in %s", folder)


def check_writable(folder: Path):
    """Create `folder` and prove a file can be written there, or fail in one line naming it."""
    probe = folder / f".stepcot-write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
    except OSError as error:
        raise TrainingError(f"cannot write to the output folder {folder}: {error.strerror or error}") from error
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass  # the folder itself is the problem, already reported


def start_over(folder: Path):
    """Remove what an earlier run wrote (never anything else in the folder)."""
    for name in RUN_OUTPUTS:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for checkpoint in _checkpoints(folder):
        shutil.rmtree(checkpoint)


def claim_output_dir(folder: Path, inputs: dict, resume_from_checkpoint=None, overwrite=False) -> str:
    """Check that the run described by `inputs` may write into `folder`; record it there. Returns the run id."""
    folder = Path(folder)
    check_writable(folder)
    record_path = folder / RUN_RECORD
    if overwrite:
        if resume_from_checkpoint:
            raise TrainingError("--overwrite_output_dir and --resume_from_checkpoint contradict each other")
        start_over(folder)
    previous = None
    if record_path.is_file():
        try:
            previous = read_json_file(record_path)
        except ValueError as error:
            raise TrainingError(f"{error}: pass --overwrite_output_dir to start over") from None
    remedy = "use another --output_dir, or pass --overwrite_output_dir to start over"
    if previous is None:
        leftovers = [name for name in RUN_OUTPUTS if (folder / name).exists()] + [p.name for p in _checkpoints(folder)]
        if leftovers and not resume_from_checkpoint:
            raise TrainingError(f"{folder} holds another run's outputs ({', '.join(sorted(leftovers)[:4])}) without "
                                f"a record of what it was built from: {remedy}")
    else:
        changed = sorted(key for key in set(inputs) | set(previous.get("built_from", {}))
                         if inputs.get(key) != previous.get("built_from", {}).get(key))
        if changed:
            before, now = previous.get("built_from", {}), inputs
            details = ", ".join(f"{key}={before.get(key)!r} (now {now.get(key)!r})" for key in changed[:3])
            raise TrainingError(f"{folder} belongs to a run built from other inputs: {details}; {remedy}")
        if not resume_from_checkpoint and _checkpoints(folder):
            raise TrainingError(
                f"{folder} holds checkpoints of an earlier run ({_checkpoints(folder)[-1].name}): pass "
                "--resume_from_checkpoint to continue it, or --overwrite_output_dir to start over"
            )
    if resume_from_checkpoint and previous is not None:
        run_id = previous["run_id"]
    else:
        run_id = uuid.uuid4().hex[:12]
        if (folder / "best").exists():  # a finished run's intermediate bests: never export them as this run's
            shutil.rmtree(folder / "best")
            logger.info("removed best/ of the previous run in %s (its exports were teacher/ and student/)", folder)
    record = {"run_id": run_id, "built_from": inputs,
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    temporary = record_path.with_name(f".{RUN_RECORD}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    os.replace(temporary, record_path)
    return run_id


def lock_output_dir(folder) -> None:
    """Take an exclusive lock on `folder` for the rest of this process (a second run into it refuses in one line,
    naming the holder). Re-entrant within one process; released when the process ends, however it ends."""
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _held_locks:
        return
    path = folder / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the run's life
    except OSError as error:
        raise TrainingError(f"cannot write to the output folder {folder}: {error.strerror or error}") from error
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip()[:80]
        handle.close()
        raise TrainingError(f"{folder} is in use by another training run ({holder or 'holder unknown'}): wait for it "
                            "to finish, or use another --output_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} since {datetime.now(timezone.utc).isoformat(timespec='seconds')}\n")
    handle.flush()
    _held_locks[key] = handle


def release_output_dir(folder) -> None:
    handle = _held_locks.pop(str(Path(folder).resolve()), None)
    if handle is not None:
        handle.close()


def check_checkpoint_inputs(checkpoint, inputs: dict) -> None:
    """Refuse to resume `checkpoint` with data or model arguments other than the ones it was trained with (its own
    copy of the run's inputs, which an edited run.json does not change)."""
    path = Path(checkpoint) / CHECKPOINT_INPUTS_NAME
    if not path.is_file():
        return  # a checkpoint written without a run record (a library Trainer): nothing to compare
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(recorded, dict):
            raise ValueError("not an object")
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise TrainingError(f"damaged checkpoint: {path} is unreadable ({error})") from None
    changed = sorted(key for key in set(inputs) | set(recorded) if inputs.get(key) != recorded.get(key))
    if changed:
        details = ", ".join(f"{key}={recorded.get(key)!r} (now {inputs.get(key)!r})" for key in changed)
        raise TrainingError(f"cannot resume from {checkpoint}: it was trained with other data or model arguments: "
                            f"{details}; resume with the same arguments, or start a new run")


def open_run(folder, inputs: dict, resume_from_checkpoint=None, overwrite=False):
    """Lock `folder` for this run, resolve `--resume_from_checkpoint` (`true`: the last complete checkpoint), check a
    resume against the checkpoint's recorded inputs and claim the folder (`claim_output_dir`). Returns the
    checkpoint to resume from, or None."""
    folder = Path(folder)
    check_writable(folder)
    lock_output_dir(folder)
    if overwrite and resume_from_checkpoint:
        raise TrainingError("--overwrite_output_dir and --resume_from_checkpoint contradict each other")
    checkpoint = resolve_resume_checkpoint(folder, resume_from_checkpoint)
    if checkpoint is not None:
        check_checkpoint_inputs(checkpoint, inputs)
    claim_output_dir(folder, inputs, checkpoint, overwrite)
    return checkpoint
