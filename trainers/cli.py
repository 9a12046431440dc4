"""The `stepcot` command line: dispatches to the subcommand modules registered in `trainers.commands`."""

import argparse
import sys

from trainers.commands import COMMANDS


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stepcot")
    except PackageNotFoundError:
        return "unknown (not installed)"


def examples_epilog(module) -> str:
    """The command's runnable examples (every command module has `EXAMPLES`) for the end of its --help."""
    return "examples:\n" + "\n".join(f"  {line}" for line in module.EXAMPLES)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stepcot", description="Step-CoT: stepwise chest X-ray VQA.")
    parser.add_argument("--version", action="version", version=f"stepcot {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        subparsers.add_parser(name, help=module.HELP, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # handles --help, --version and unknown commands
        parser.print_help()
        return 2
    name, rest = argv[0], argv[1:]
    module = COMMANDS[name]
    if not hasattr(module, "add_arguments"):
        return int(module.main(rest) or 0)
    sub = argparse.ArgumentParser(prog=f"stepcot {name}", description=module.HELP, epilog=examples_epilog(module),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(sub)
    return int(module.run(sub.parse_args(rest)) or 0)


if __name__ == "__main__":
    sys.exit(main())
