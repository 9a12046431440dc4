"""`stepcot eval`: the command line over `trainers.evaluation.evaluate_model`.

The library is imported inside the functions, not at the top: `stepcot --help` then imports no torch.
"""

import argparse
import math
import sys
from pathlib import Path

from trainers.commands.options import add_evaluation_arguments
from trainers.console import print_command_error

HELP = "evaluate a model on a dataset split: metrics, tables, plots"
EXAMPLES = [
    "stepcot eval --model outputs/demo/student --dataset outputs/demo/dataset --split test "
    "--output-dir reports/student",
    "stepcot eval --model outputs/run/student --dataset my_labelled_release --split all --output-dir reports/held_out",
]



def add_arguments(parser: argparse.ArgumentParser) -> None:
    from trainers.choices import EVAL_BATCH_SIZE
    from trainers.model_loading import add_trust_remote_code_argument

    parser.add_argument("--model", required=True, help="saved Step-CoT teacher or student (folder or Hub id)")
    parser.add_argument("--dataset", required=True,
                        help="'demo', a release folder (built under $STEPCOT_CACHE), a built folder "
                             "(`stepcot data build` output) or a Hub id")
    parser.add_argument("--split", default="test",
                        help="split to evaluate (default: test; 'val' = validation; 'all' = every split as one, "
                             "e.g. a labelled set imported with `stepcot data import --split all`)")
    parser.add_argument("--output-dir", "--out", dest="out", metavar="DIR", required=True, type=Path,
                        help="output folder for metrics.json, tables and plots")
    parser.add_argument("--name", default=None,
                        help="model name in the tables (default: Teacher / Student / ablation)")
    parser.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE)
    parser.add_argument("--max-examples", type=int, default=None, help="evaluate only the first N examples")
    add_evaluation_arguments(parser)
    add_trust_remote_code_argument(parser)


def run(args: argparse.Namespace) -> int:
    from trainers.evaluation.evaluate_model import evaluate
    from trainers.evaluation.report import per_class_markdown

    try:
        result = evaluate(args.model, args.dataset, split=args.split, out=args.out, batch_size=args.batch_size,
                          num_bootstrap=args.num_bootstrap, confidence_level=args.confidence, seed=args.seed,
                          name=args.name, device=args.device, max_examples=args.max_examples,
                          plots=not args.no_plots, trust_remote_code=args.trust_remote_code)
    except (ValueError, FileNotFoundError) as error:
        print_command_error("eval", error)
        return 1
    for note in result.metadata.get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    mean = result.mean
    auc = mean["auc"].value
    auc_text = ("AUC undefined (fewer than two classes in the labels)" if math.isnan(auc)
                else f"mean AUC {100 * auc:.1f}%")
    print(f"{result.metadata['model']} on {result.metadata['split']} ({result.num_examples} examples): "
          f"mean accuracy {100 * mean['accuracy'].value:.1f}%, {auc_text}; "
          f"report in {args.out} ({result.metadata['seconds']} s)")
    print(per_class_markdown([(result.metadata["model"], result)]), end="")
    return 0
