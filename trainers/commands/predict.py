"""`stepcot predict`: the command line over `trainers.inference.predict`.

The library is imported inside the functions, not at the top: `stepcot --help` then imports no torch.
"""

import argparse
import sys
from pathlib import Path

from trainers.console import print_command_error

HELP = "answer the seven steps for chest X-ray images, with attention maps"
EXAMPLES = [
    "stepcot predict outputs/demo/demo-release/images --model outputs/demo/student --maps maps/ --consistent",
]



def add_arguments(parser: argparse.ArgumentParser) -> None:
    from trainers.choices import EVAL_BATCH_SIZE, MAPS_BATCH_SIZE
    from trainers.model_loading import add_trust_remote_code_argument

    parser.add_argument("images", nargs="+", help="chest X-ray image files (PNG, JPEG, ...) or folders of them")
    parser.add_argument("--model", required=True, help="a Step-CoT teacher or student folder (save_pretrained)")
    parser.add_argument("--maps", metavar="OUT", help="write per-step Grad-CAM PNGs and a summary PNG per image here")
    parser.add_argument("--consistent", action="store_true",
                        help="also show a chain without contradictions: only answers with p < 0.9 may change, steps "
                             "without training labels are never used (changes are flagged)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"images per forward pass (default {EVAL_BATCH_SIZE}, as stepcot eval; "
                             f"{MAPS_BATCH_SIZE} with --maps, whose Grad-CAM keeps each image's encoder activations)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    add_trust_remote_code_argument(parser)


def run(args: argparse.Namespace) -> int:
    from trainers.evaluation.report import strict_json
    from trainers.inference.predict import (
        build_pipeline,
        check_images,
        expand_images,
        format_table,
        json_ready,
        predict_images,
    )
    from trainers.model_loading import load_model

    if args.batch_size is not None and args.batch_size < 1:
        print(f"stepcot predict: error: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    try:
        paths = expand_images(args.images)
        check_images(paths)
        model = load_model(args.model, trust_remote_code=args.trust_remote_code)
        pipe = build_pipeline(model, device=args.device)
        maps_dir = Path(args.maps) if args.maps else None
        outputs = predict_images(pipe, paths, maps_dir, args.consistent, args.batch_size)
    except (OSError, ValueError, RuntimeError) as error:  # each names its file (image, model or output folder)
        print_command_error("predict", error)
        return 2
    model_label = "student" if model.config.model_type == "stepcot_student" else "teacher"
    if args.json:
        print(strict_json([json_ready(r, p, m) for (r, m), p in zip(outputs, paths)], indent=2))
    else:
        for (result, written), path in zip(outputs, paths):
            print(format_table(str(path), result, model_label))
            if written:
                print(f"Maps: {written['summary'].parent}/ (step1..{len(written['steps'])} + summary.png)")
            print()
    return 0
