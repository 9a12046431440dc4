"""The `stepcot` command line: dispatches to the subcommand modules registered in `trainers.commands`.

Flag style: words joined by hyphens (`--num-bootstrap`, `--output-dir`), on every command; the underscore spelling
of every flag (`--num_bootstrap`, `--output_dir`) works too. The training commands get both from
`HfArgumentParser`; for the others the dispatcher rewrites underscores to hyphens before parsing. A command that
writes a folder takes `--output-dir` (alias `--out`); one that writes a single file takes `--out FILE`.
"""

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


def hyphenate_flags(argv: list[str]) -> list[str]:
    """`--num_bootstrap 5` -> `--num-bootstrap 5` (also `--flag_name=value`); values and everything after a bare
    `--` (arguments passed on to another command) are left alone."""
    out = list(argv)
    for index, arg in enumerate(out):
        if arg == "--":
            break
        if arg.startswith("--") and len(arg) > 2:
            name, sep, value = arg[2:].partition("=")
            out[index] = "--" + name.replace("_", "-") + sep + value
    return out


def command_parser(name: str) -> argparse.ArgumentParser:
    """The argument parser of an `add_arguments` command."""
    description = getattr(COMMANDS[name], "DESCRIPTION", COMMANDS[name].HELP)  # a longer text where one is needed
    parser = argparse.ArgumentParser(prog=f"stepcot {name}", description=description,
                                     epilog=examples_epilog(COMMANDS[name]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    COMMANDS[name].add_arguments(parser)
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
    return int(module.run(command_parser(name).parse_args(hyphenate_flags(rest))) or 0)


if __name__ == "__main__":
    sys.exit(main())
