"""Start-up time of the commands that should answer at once: `stepcot info MODEL` and every `--help`.

Each command runs as its own process (as a user runs it), `--repeats` times; the table gives the median and the
slowest wall-clock seconds. `--stepcot` picks the console script (another checkout's `.venv/bin/stepcot` measures
that tree). The training commands' `--help` is served from a cache after its first rendering: the first call of
each is reported separately (`STEPCOT_CACHE` points at a fresh folder for the run).

    python benchmarks/commands.py --model outputs/demo/teacher [--stepcot .venv/bin/stepcot] [--repeats 3]

Target: every figure under 1 s.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def commands() -> list[str]:
    from trainers.cli import COMMANDS

    return [f"{name} --help" for name in COMMANDS] + ["--help", "data build --help", "data import --help"]


def timed(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed: {result.stderr.decode()[-500:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a saved Step-CoT model folder for `stepcot info`")
    parser.add_argument("--stepcot", default=str(Path(sys.executable).with_name("stepcot")))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "STEPCOT_CACHE": tempfile.mkdtemp(prefix="stepcot-bench-commands-")}
    rows = []
    for command in [f"info {args.model}"] + commands():
        argv = [args.stepcot, *command.split()]
        if command.startswith(("train --help", "train-teacher --help")):
            rows.append((command + " (first call)", [timed(argv, env)]))
        rows.append((command, [timed(argv, env) for _ in range(args.repeats)]))
    print(f"{args.stepcot}, {args.repeats} runs each")
    print("| command | median s | slowest s |\n|---|---|---|")
    for command, times in rows:
        print(f"| `stepcot {command}` | {statistics.median(times):.2f} | {max(times):.2f} |")
    slowest = max(max(times) for command, times in rows if "first call" not in command)
    print(f"slowest (after the first call): {slowest:.2f} s (target < 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
