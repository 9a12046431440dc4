"""The `stepcot` command line.

Each subcommand lives in its own module, which exposes `add_arguments(parser)` and `run(args) -> int`, or
`main(argv) -> int` when it parses its own arguments (the training scripts use HfArgumentParser).
Modules are imported only when their command runs, so `stepcot --help` stays fast.
"""

import argparse
import importlib
import sys

# command name -> (module, one-line help)
COMMANDS = {
    "info": ("trainers.cli_info", "describe a saved Step-CoT model folder"),
    "data": ("dataset_script.cli", "build, validate, publish Step-CoT datasets and render the synthetic demo"),
    "annotate": ("dataset_script.annotate_cli", "turn radiology reports into seven-step Step-CoT records"),
    "annotate-eval": ("dataset_script.annotate_eval", "score report annotation against IU X-Ray MeSH codes"),
    "train": ("trainers.run_distill", "train teacher and student jointly (distillation)"),
    "train-teacher": ("trainers.run_teacher", "train the teacher alone (supervised pre-training stage)"),
    "report": ("trainers.report", "collect several evaluation runs into one comparison table"),
    "eval": ("trainers.evaluate", "evaluate a model on a dataset split: metrics, tables, plots"),
    "predict": ("trainers.predict", "answer the seven steps for chest X-ray images, with attention maps"),
    "baseline": ("trainers.baselines", "train and evaluate vision-language baselines with/without Step-CoT (Table 3/8)"),
    "eval-transfer": ("trainers.transfer", "zero-shot diagnosis on the NIH ChestX-ray8 bbox subset (Table 4)"),
    "bench-ablations": ("trainers.bench", "train full, w/o Memory and w/o Text teachers and tabulate them (Table 6)"),
    "bench-efficiency": ("trainers.efficiency", "parameters, latency and peak memory of models and baselines (Table 11)"),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stepcot")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stepcot", description="Step-CoT: stepwise chest X-ray VQA.")
    parser.add_argument("--version", action="version", version=f"stepcot {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # handles --help, --version and unknown commands
        parser.print_help()
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            print(f"stepcot {name}: this command is not available in this version.", file=sys.stderr)
            return 2
        raise
    if not hasattr(module, "add_arguments"):
        return int(module.main(rest) or 0)
    sub = argparse.ArgumentParser(prog=f"stepcot {name}", description=help_text)
    module.add_arguments(sub)
    return int(module.run(sub.parse_args(rest)) or 0)


def run_command(name: str, argv: list[str] | None = None) -> int:
    """Run one subcommand as `stepcot NAME ARGV...` (for `python -m MODULE` and for tests)."""
    return main([name, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
