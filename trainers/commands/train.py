"""`stepcot train`: `trainers/run_distill.py` (teacher + student, joint distillation); it parses its own arguments."""

HELP = "train teacher and student jointly (distillation)"


def main(argv: list[str]) -> int:
    from trainers.run_distill import main as run_distill  # imported when the command runs: keeps `--help` fast

    return run_distill(argv)
