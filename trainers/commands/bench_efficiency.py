"""`stepcot bench-efficiency`: the command line over `trainers.paper.efficiency`.

The library is imported inside the functions, not at the top: `stepcot --help` then imports no torch.
"""

import argparse
import json
import sys

from trainers.console import print_command_error

HELP = "parameters, latency and peak memory of models and baselines (Table 11)"
EXAMPLES = [
    "stepcot bench-efficiency --tiny --in-process",
]



def add_arguments(parser: argparse.ArgumentParser) -> None:
    from trainers.choices import EFFICIENCY_DEFAULT_MODELS as DEFAULT_MODELS
    from trainers.choices import EFFICIENCY_PRESETS as PRESETS

    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help=f"presets {PRESETS}, hf:NAME (a real backbone as a baseline) or dir:PATH (a saved "
                             "Step-CoT model); default: " + " ".join(DEFAULT_MODELS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per batch (batch-1 latency: 4x)")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per measurement (default: torch's; 1 gives steadier numbers on a "
                             "shared machine)")
    parser.add_argument("--tiny", action="store_true", help="tiny random shapes (smoke test)")
    parser.add_argument("--in-process", action="store_true",
                        help="measure all models in this process (faster; peak RSS is then cumulative)")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # subprocess mode: print one JSON row


def run(args: argparse.Namespace) -> int:
    import torch

    from trainers.paper.efficiency import environment, markdown, measure, measure_all

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("stepcot bench-efficiency: --device cuda but CUDA is not available.", file=sys.stderr)
        return 1
    if args.only:
        print(json.dumps(measure(args.only, args.batch_size, args.repeats, args.device, args.tiny, args.threads)))
        return 0
    try:
        rows = measure_all(args.models, args.batch_size, args.repeats, args.device, args.tiny,
                           isolate=not args.in_process, threads=args.threads)
    except (ValueError, RuntimeError, OSError) as error:
        print_command_error("bench-efficiency", error)
        return 1
    print(markdown(rows, args.batch_size, args.device, args.threads))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump({"device": args.device, "environment": environment(args.device, args.threads),
                       "torch": torch.__version__,
                       "batch_size": args.batch_size, "repeats": args.repeats, "tiny": args.tiny, "rows": rows},
                      handle, indent=2)
    return 0
