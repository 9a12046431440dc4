"""A quiet, friendly console for the long-running commands: one line per stage, progress bars for long work, the
final table, and the warnings that mean something. `--verbose` shows everything the libraries print.

Hidden unless verbose: transformers' weight-loading reports that list only expected differences (e.g. a pooler the
encoder does not use), its "layers were not sharded" list, the torchvision notice for CLIP's image processor, the
"Loading weights" / "Writing model shards" bars, `datasets`' Parquet/split bars and the Trainer's raw metric dicts
(replaced by one line per evaluation). A loading report that names missing or mismatched weights is kept, as one
line.

Ctrl-C during training ends with one line naming the last saved checkpoint and the command that resumes from it.
"""

from __future__ import annotations

import logging
import re
import shlex
import sys
from pathlib import Path

VERBOSE_FLAG = "--verbose"
VERBOSE = False  # set by `pop_verbose_flag`
NOISE = ("layers were not sharded", "requires torchvision (not installed)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def pop_verbose_flag(argv: list[str]) -> list[str]:
    """`argv` without `--verbose`; remembers whether it was there."""
    global VERBOSE
    VERBOSE = VERBOSE_FLAG in argv
    return [arg for arg in argv if arg != VERBOSE_FLAG]


class LibraryNoiseFilter(logging.Filter):
    """Drops the library messages listed in the module docstring; shortens a loading report with real problems."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(noise in message for noise in NOISE):
            return False
        if "LOAD REPORT" in message:
            if not any(problem in message for problem in ("MISSING", "MISMATCH", "CONVERSION")):
                return False  # only UNEXPECTED keys: weights the model does not use
            first_line = _ANSI.sub("", message.splitlines()[0])
            record.msg, record.args = (f"{first_line}: some weights are missing or mismatched and were newly "
                                       "initialised (--verbose shows the report)"), ()
        return True


def configure_console(verbose: bool | None = None) -> None:
    """Logging for a training run: our stage lines as plain text (timestamps when verbose), library noise off."""
    verbose = VERBOSE if verbose is None else verbose
    fmt = "%(asctime)s %(name)s: %(message)s" if verbose else "%(message)s"
    logging.basicConfig(format=fmt, level=logging.INFO, stream=sys.stdout)
    for noisy in ("httpx", "datasets", "transformers.modeling_utils"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)
    if verbose:
        return
    import datasets
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    transformers_logging.get_logger("transformers")  # makes sure the library's own handler exists
    library_root = logging.getLogger("transformers")
    for handler in library_root.handlers + logging.getLogger().handlers:
        if not any(isinstance(f, LibraryNoiseFilter) for f in handler.filters):
            handler.addFilter(LibraryNoiseFilter())


def quiet_progress(trainer) -> None:
    """Replace the Trainer's progress printer (a raw dict per log) by one line per evaluation, unless verbose."""
    if VERBOSE:
        return
    from transformers.trainer_callback import ProgressCallback

    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(StageProgressCallback())


def _summarise_log(logs: dict) -> str | None:
    if "train_runtime" in logs:
        loss = logs.get("train_loss", float("nan"))
        return f"training finished in {logs['train_runtime']:.0f} s (mean training loss {loss:.4g})"
    if not any(key.endswith("_loss") and key != "loss" for key in logs) and not any(
            key.endswith("mean_accuracy") for key in logs):
        return None  # a training-loss log: shown on the progress bar instead
    epoch = logs.get("epoch")
    parts = []
    for key, value in logs.items():
        if key.endswith("mean_accuracy"):  # eval_mean_accuracy, eval_teacher_mean_accuracy, ...
            role = key.removesuffix("mean_accuracy").split("_", 1)[-1].strip("_")
            parts.append(f"{role} {100 * value:.1f}%".strip())
    loss = next((value for key, value in logs.items() if key.endswith("_loss")), None)
    text = f"epoch {epoch:g}: " if epoch is not None else ""
    text += "validation mean accuracy " + ", ".join(parts) if parts else "validation"
    return text + (f" (loss {loss:.4g})" if loss is not None else "")


def _stage_progress_callback_class():
    from transformers.trainer_callback import ProgressCallback

    class _StageProgressCallback(ProgressCallback):
        """The Trainer's bars; metrics as one readable line per evaluation instead of a dict."""

        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            if self.training_bar is not None:
                self.training_bar.set_description("training steps")

        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
            # the evaluation bar nests under the training bar with cursor-up escapes (`ESC[A`): a terminal only
            if sys.stderr.isatty():
                super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or self.training_bar is None or not logs:
                return
            if "loss" in logs:
                self.training_bar.set_postfix(loss=f"{logs['loss']:.4g}", refresh=False)
            line = _summarise_log(logs)
            if line:
                self.training_bar.write(line)

    return _StageProgressCallback


def StageProgressCallback():  # noqa: N802  (a factory: transformers is imported only when training)
    return _stage_progress_callback_class()()


# ---------------------------------------------------------------------------------------------------------------
# Ctrl-C


def _spellings(name: str) -> tuple[str, str]:
    """`--output_dir` and `--output-dir` (HfArgumentParser accepts both)."""
    return name, "--" + name[2:].replace("_", "-")


def _option(argv: list[str], name: str) -> str | None:
    spellings = _spellings(name)
    for index, arg in enumerate(argv):
        if arg in spellings and index + 1 < len(argv):
            return argv[index + 1]
        if arg.split("=", 1)[0] in spellings and "=" in arg:
            return arg.split("=", 1)[1]
    return None


def last_complete_checkpoint(output_dir) -> Path | None:
    """The newest complete `checkpoint-N` folder (what `--resume_from_checkpoint true` resumes), or None."""
    from trainers.training.checkpoints import last_complete_checkpoint as newest_complete  # only after a Ctrl-C

    return newest_complete(output_dir)[0]


def resume_command(command: str, argv: list[str], checkpoint: Path) -> str:
    """The same command line with `--resume-from-checkpoint CHECKPOINT` (replacing any earlier one)."""
    spellings = _spellings("--resume_from_checkpoint")
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in spellings:
            skip = True
            continue
        if arg.split("=", 1)[0] in spellings:
            continue
        kept.append(arg)
    return shlex.join(["stepcot", command, *kept, "--resume-from-checkpoint", str(checkpoint)])


def _close_progress_bars() -> None:
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def run_interruptible(command: str, script_main, argv: list[str], default_output_dir: str) -> int:
    """Run a training script's `main(argv)`; on Ctrl-C print one line (the last checkpoint and how to resume)."""
    try:
        return int(script_main(argv) or 0)
    except KeyboardInterrupt:
        _close_progress_bars()  # else they redraw themselves after our line when collected
        output_dir = _option(argv, "--output_dir") or default_output_dir
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint is not None:
            line = (f"stepcot {command}: interrupted. Last saved checkpoint: {checkpoint}. Resume with: "
                    f"{resume_command(command, argv, checkpoint)}")
        else:
            line = (f"stepcot {command}: interrupted before the first checkpoint was saved in {output_dir}; "
                    f"start again with: {shlex.join(['stepcot', command, *argv])}")
        print("\n" + line, file=sys.stderr, flush=True)
        return 130  # the shell's code for SIGINT


# Long enough for a path and a reason; a label or cell of 200 KB quoted in a message is cut here.
ERROR_LINE_CHARS = 600


def one_line(error: BaseException, limit: int = ERROR_LINE_CHARS) -> str:
    """The error as one line of at most `limit` characters; an OSError without its file name in the message gets it
    added."""
    message = " ".join(str(error).split()) or type(error).__name__
    filename = getattr(error, "filename", None)
    if filename and str(filename) not in message:
        message += f": {filename}"
    if len(message) > limit:
        message = f"{message[:limit]}… ({len(message) - limit} more characters)"
    return message


def print_command_error(command: str, error: BaseException) -> None:
    """`stepcot COMMAND: error: ONE LINE` on stderr."""
    print(f"stepcot {command}: error: {one_line(error)}", file=sys.stderr)


__all__ = ["configure_console", "last_complete_checkpoint", "one_line", "pop_verbose_flag", "print_command_error",
           "quiet_progress", "run_interruptible"]
