"""`stepcot report`: the command line over `trainers.evaluation.report`.

The library is imported inside the functions, not at the top: `stepcot --help` then imports no torch.
"""

import argparse
import sys
from pathlib import Path

HELP = "collect several evaluation runs into one comparison table"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="OUT_DIR",
                        help="run folders holding metrics.json (or metrics.json files themselves)")
    parser.add_argument("--out", type=Path, default=None,
                        help="Markdown file to write; the CSV goes next to it with a .csv suffix (default: print)")
    parser.add_argument("--names", nargs="+", default=None,
                        help="model names, one per run (default: the name stored in metrics.json, else the folder)")
    parser.add_argument("--decimals", type=int, default=1, help="decimals of the percentages (default: 1)")
    parser.add_argument("--no-mean", action="store_true", help="leave out the mean-over-steps rows")


def _default_name(source: Path, result) -> str:
    from trainers.evaluation.report import METRICS_FILENAME

    folder = source.parent if source.name == METRICS_FILENAME else source
    return str(result.metadata.get("model") or folder.name)


def run(args: argparse.Namespace) -> int:
    from trainers.evaluation.report import load_metrics, markdown_table, write_comparison

    if args.names is not None and len(args.names) != len(args.runs):
        print(f"stepcot report: --names has {len(args.names)} names for {len(args.runs)} runs.", file=sys.stderr)
        return 2
    runs, sources = [], []
    for index, source in enumerate(args.runs):
        try:
            result = load_metrics(source)
        except (FileNotFoundError, ValueError) as error:
            print(f"stepcot report: {error}", file=sys.stderr)
            return 2
        name = args.names[index] if args.names else _default_name(Path(source), result)
        runs.append((name, result))
        sources.append(str(source))
    names = [name for name, _ in runs]
    if len(set(names)) < len(names):  # two runs of the same model: tell them apart by folder
        runs = [(f"{name} ({Path(src).name})", result) for (name, result), src in zip(runs, sources)]
    include_mean = not args.no_mean
    if args.out is None:
        sys.stdout.write(markdown_table(runs, decimals=args.decimals, include_mean=include_mean, sources=sources))
        return 0
    markdown_path, csv_path = write_comparison(runs, args.out, sources, args.decimals, include_mean)
    print(f"wrote {markdown_path} and {csv_path}")
    return 0
