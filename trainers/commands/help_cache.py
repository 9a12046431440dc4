"""The `--help` of the training commands, which `HfArgumentParser` builds from `TrainingArguments` (importing
transformers' trainer stack takes seconds): rendered once, then served from a cache file.

The file is keyed by everything the text depends on: the Python, transformers and stepcot versions, the source of
the modules that define the arguments, and the terminal width. A stale or damaged entry is never shown; the text is
rendered again (and the cache rewritten) when any of them changes. The cache lives in `$STEPCOT_CACHE/help`
(default `~/.cache/stepcot/help`); a cache that cannot be written only costs the speed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
# The modules whose dataclasses, defaults and docstrings make up the training commands' --help.
ARGUMENT_SOURCES = ("trainers/run_distill.py", "trainers/run_teacher.py", "trainers/training/run_arguments.py",
                    "trainers/training/distillation_config.py", "trainers/commands/train.py",
                    "trainers/commands/train_teacher.py")


def help_requested(argv: list[str]) -> bool:
    """`-h` / `--help` before any bare `--`."""
    for arg in argv:
        if arg == "--":
            return False
        if arg in ("-h", "--help"):
            return True
    return False


def help_cache_dir() -> Path:
    return Path(os.environ.get("STEPCOT_CACHE") or Path.home() / ".cache" / "stepcot") / "help"


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "none"


def help_key(name: str) -> str:
    digest = hashlib.sha256()
    for part in (name, sys.version, _version("transformers"), _version("stepcot"),
                 str(shutil.get_terminal_size().columns)):
        digest.update(part.encode() + b"\0")
    for relative in ARGUMENT_SOURCES:
        path = _ROOT / relative
        digest.update(path.read_bytes() if path.is_file() else b"missing")
    return digest.hexdigest()[:24]


def print_cached_help(name: str, render: Callable[[], None]) -> None:
    """Print the `--help` of command `name` from the cache, or call `render` (which prints it and exits, as argparse
    does), keep what it printed and print that; then exit with status 0, as argparse does."""
    path = help_cache_dir() / f"{name}-{help_key(name)}.txt"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = None
    if not text or not text.startswith("usage:"):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit):
            render()
        text = buffer.getvalue()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(text, encoding="utf-8")
            os.replace(partial, path)  # a reader sees the whole text or none
        except OSError:
            pass
    sys.stdout.write(text)
    raise SystemExit(0)
