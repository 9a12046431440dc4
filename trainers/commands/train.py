"""`stepcot train`: `trainers/run_distill.py` (teacher + student, joint distillation); it parses its own arguments."""

import sys

HELP = "train teacher and student jointly (distillation)"


def main(argv: list[str]) -> int:
    from trainers.run_distill import main as run_distill  # imported when the command runs: keeps `--help` fast
    from trainers.training.checkpoints import TrainingError

    try:
        return run_distill(argv)
    except TrainingError as error:  # bad arguments, another run's folder, damaged checkpoint, NaN loss: one line
        print(f"stepcot train: error: {error}", file=sys.stderr)
        return 2
