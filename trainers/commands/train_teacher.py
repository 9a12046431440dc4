"""`stepcot train-teacher`: `trainers/run_teacher.py` (the teacher-only stage); it parses its own arguments."""

from functools import partial

HELP = "train the teacher alone (supervised pre-training stage)"
EXAMPLES = [
    "stepcot train-teacher --output_dir outputs/teacher --num_train_epochs 2",
]


def main(argv: list[str]) -> int:
    from trainers.commands.help_cache import help_requested, print_cached_help

    if help_requested(argv):  # served from a cache: building it imports transformers' trainer stack
        return print_cached_help("train-teacher", lambda: _parse_args(argv))
    from trainers.console import print_command_error, run_interruptible
    from trainers.run_teacher import DEFAULT_OUTPUT_DIR
    from trainers.run_teacher import main as run_teacher  # imported when the command runs: keeps `--help` fast
    from trainers.training.checkpoints import TrainingError

    try:
        return run_interruptible("train-teacher", partial(run_teacher, prog="stepcot train-teacher"), argv,
                                 DEFAULT_OUTPUT_DIR)
    except TrainingError as error:  # bad arguments, another run's folder, damaged checkpoint, NaN loss: one line
        print_command_error("train-teacher", error)
        return 2


def _parse_args(argv: list[str]):
    from trainers.run_teacher import parse_args

    return parse_args(argv, prog="stepcot train-teacher")
