"""`stepcot eval-transfer`: the command line over `trainers.paper.transfer`.

The library is imported inside the functions, not at the top: `stepcot --help` then imports no torch.
"""

import argparse
import sys
from pathlib import Path

from trainers.commands.options import add_evaluation_arguments
from trainers.console import print_command_error

HELP = "zero-shot diagnosis on the NIH ChestX-ray8 bbox subset (Table 4)"
EXAMPLES = [
    "stepcot eval-transfer --model outputs/demo/teacher outputs/demo/student --nih-images NIH/images "
    "--bbox-csv ../shared/data/nih-chestxray8/BBox_List_2017.csv --output-dir outputs/transfer",
]



def add_arguments(parser: argparse.ArgumentParser) -> None:
    from trainers.choices import MULTI_FINDING_POLICIES
    from trainers.model_loading import add_trust_remote_code_argument

    parser.add_argument("--model", nargs="+", required=True,
                        help="saved Step-CoT teacher/student folders or Hub ids, or `stepcot baseline` output folders")
    parser.add_argument("--nih-images", required=True, type=Path,
                        help="folder with the ChestX-ray8 PNGs (searched recursively by file name)")
    parser.add_argument("--bbox-csv", type=Path, required=True,
                        help="NIH BBox_List_2017.csv (e.g. ../shared/data/nih-chestxray8/BBox_List_2017.csv)")
    parser.add_argument("--output-dir", "--out", dest="out", metavar="DIR", required=True, type=Path,
                        help="output folder")
    parser.add_argument("--names", nargs="+", default=None, help="model names in the tables, one per --model")
    parser.add_argument("--multi-finding", choices=MULTI_FINDING_POLICIES, default="exclude",
                        help="images with boxes of 2+ different findings: exclude them (default) or score each "
                             "(image, finding) pair")
    parser.add_argument("--batch-size", type=int, default=16)
    add_evaluation_arguments(parser)
    add_trust_remote_code_argument(parser)


def run(args: argparse.Namespace) -> int:
    from trainers.paper.transfer import (
        evaluate_transfer,
        index_images,
        load_diagnosis_model,
        model_folder_name,
        read_bbox_csv,
        single_label_subset,
        table4_csv,
        table4_markdown,
    )

    if args.names is not None and len(args.names) != len(args.model):
        print(f"stepcot eval-transfer: --names has {len(args.names)} names for {len(args.model)} models.",
              file=sys.stderr)
        return 2
    bbox_csv = args.bbox_csv
    try:
        subset = single_label_subset(read_bbox_csv(bbox_csv), args.multi_finding)
        image_paths = index_images(args.nih_images)
        runs, used = [], set()
        for index, model in enumerate(args.model):
            predictor = load_diagnosis_model(model, args.device or _default_device(),
                                             trust_remote_code=args.trust_remote_code)
            name = args.names[index] if args.names else predictor.name
            folder = model_folder_name(name)
            while folder in used:  # two models with the same display name
                folder += "_"
            used.add(folder)
            result = evaluate_transfer(predictor, image_paths, subset, out=args.out / folder, bbox_csv=bbox_csv,
                                       name=name, batch_size=args.batch_size, num_bootstrap=args.num_bootstrap,
                                       confidence_level=args.confidence, seed=args.seed, plots=not args.no_plots,
                                       device=args.device or _default_device(), model_path=str(model))
            runs.append((name, result))
            missing = result.metadata["missing_images"]
            unreadable = result.metadata["unreadable_images"]
            if missing or unreadable:
                print(f"warning: {name}: {missing} images missing and {unreadable} unreadable, not scored; "
                      f"see {args.out / folder}/missing_images.txt and unreadable_images.txt", file=sys.stderr)
    except (ValueError, FileNotFoundError, OSError) as error:
        print_command_error("eval-transfer", error)
        return 1
    table = table4_markdown(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table4.md").write_text(table, encoding="utf-8")
    (args.out / "table4.csv").write_text(table4_csv(runs), encoding="utf-8")
    print(table)
    print(f"reports in {args.out} (table4.md, table4.csv, one folder per model)")
    return 0


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
