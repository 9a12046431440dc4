"""`stepcot bench-ablations`: the command line over `trainers.paper.ablations`.

The library is imported inside the functions, not at the top: `stepcot --help` then imports no torch.
"""

import argparse
import math
import sys
from pathlib import Path

from trainers.console import print_command_error

HELP = "train full, w/o Memory and w/o Text teachers and tabulate them (Table 6)"
EXAMPLES = [
    "stepcot bench-ablations --output-dir outputs/ablations --demo-size 300 -- --num_train_epochs 5",
]



def add_arguments(parser: argparse.ArgumentParser) -> None:
    from trainers.choices import ABLATION_VARIANTS as VARIANTS

    parser.add_argument("--dataset", default="demo",
                        help="'demo' (synthetic), a release folder (data.json), a built folder or a Hub id")
    parser.add_argument("--output-dir", "--out", dest="out", metavar="DIR", required=True, type=Path,
                        help="output folder")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="which runs (default: all three)")
    parser.add_argument("--demo-size", type=int, default=1200, help="records of the synthetic demo")
    parser.add_argument("--demo-image-size", type=int, default=224)
    parser.add_argument("--lenient", action="store_true", help="skip (and report) bad records of a release")
    parser.add_argument("--reuse", action="store_true",
                        help="keep a variant whose OUT/VARIANT/results.json exists instead of training it again")
    parser.add_argument("train_args", nargs=argparse.REMAINDER,
                        help="after `--`: arguments passed to every `stepcot train` run")


def run(args: argparse.Namespace) -> int:
    from dataset_script.sources import prepare_source
    from trainers.paper.ablations import reserved_flags_in, run_ablations

    train_args = list(args.train_args)
    if train_args[:1] == ["--"]:
        train_args = train_args[1:]
    reserved = reserved_flags_in(train_args)
    if reserved:
        print(f"stepcot bench-ablations: {', '.join(reserved)} are set by this command (use --dataset / "
              "--output-dir / --variants / --demo-size here, not after --).", file=sys.stderr)
        return 2
    try:
        dataset = prepare_source(args.dataset, args.out / "data", lenient=args.lenient, demo_size=args.demo_size,
                                 demo_image_size=args.demo_image_size, log=print)
        runs = run_ablations(dataset, args.out, args.variants, train_args, reuse=args.reuse)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print_command_error("bench-ablations", error)
        return 1
    print((args.out / "table6.md").read_text(encoding="utf-8"))
    means = {name: result.mean["accuracy"].value for name, result in runs}
    print("mean accuracy: " + ", ".join(f"{name} {100 * v:.1f}%" for name, v in means.items() if not math.isnan(v)))
    print(f"reports: {args.out / 'table6.md'}, {args.out / 'ablations.md'} (+ .csv)")
    return 0
