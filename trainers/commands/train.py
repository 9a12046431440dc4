"""`stepcot train`: `trainers/run_distill.py` (teacher + student, joint distillation); it parses its own arguments."""

from functools import partial

HELP = "train teacher and student jointly (distillation)"
EXAMPLES = [
    "stepcot train --output-dir outputs/demo --num-train-epochs 10",
    "stepcot train --output-dir outputs/demo --num-train-epochs 10 "
    "--resume-from-checkpoint outputs/demo/checkpoint-380",
]


def main(argv: list[str]) -> int:
    from trainers.commands.help_cache import help_requested, print_cached_help

    if help_requested(argv):  # served from a cache: building it imports transformers' trainer stack
        return print_cached_help("train", lambda: _parse_args(argv))
    from trainers.console import print_command_error, run_interruptible
    from trainers.run_distill import DEFAULT_OUTPUT_DIR
    from trainers.run_distill import main as run_distill  # imported when the command runs: keeps `--help` fast
    from trainers.training.checkpoints import TrainingError

    try:
        return run_interruptible("train", partial(run_distill, prog="stepcot train"), argv, DEFAULT_OUTPUT_DIR)
    except TrainingError as error:  # bad arguments, another run's folder, damaged checkpoint, NaN loss: one line
        print_command_error("train", error)
        return 2


def _parse_args(argv: list[str]):
    from trainers.run_distill import parse_args

    return parse_args(argv, prog="stepcot train")
