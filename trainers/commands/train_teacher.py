"""`stepcot train-teacher`: `trainers/run_teacher.py` (the teacher-only stage); it parses its own arguments."""

HELP = "train the teacher alone (supervised pre-training stage)"


def main(argv: list[str]) -> int:
    from trainers.run_teacher import main as run_teacher  # imported when the command runs: keeps `--help` fast

    return run_teacher(argv)
