"""`stepcot baseline`: the command line over `trainers.paper.baselines`.

The library is imported inside the functions, not at the top: `stepcot --help` then imports no torch.
"""

import argparse
import sys
from pathlib import Path

HELP = "train and evaluate vision-language baselines with/without Step-CoT (Table 3/8)"



def add_arguments(parser: argparse.ArgumentParser) -> None:
    from trainers.paper.baselines import SETTINGS

    parser.add_argument("--backbone", nargs="+", required=True,
                        help="Hub ids or folders of vision-language models (CLIP, SigLIP, BLIP, FLAVA, ...); "
                             "open_clip models as hf-hub:ORG/NAME (BiomedCLIP)")
    parser.add_argument("--dataset", required=True, help="dataset folder (`stepcot data build` output) or Hub id")
    parser.add_argument("--output-dir", "--out", dest="out", metavar="DIR", required=True, type=Path,
                        help="output folder")
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["with", "without"],
                        help="with: all seven steps; without: the diagnosis step only (default: both)")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (paper's value unknown)")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (paper's value unknown)")
    parser.add_argument("--hidden-size", type=int, default=768, help="MLP hidden width (paper: 768)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--val-split", default="validation", help="split for picking the best epoch")
    parser.add_argument("--eval-split", default="test")
    parser.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (default OUT/cache)")
    parser.add_argument("--embed-batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--num-bootstrap", type=int, default=1000)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0, help="seed of training and bootstrap")
    parser.add_argument("--max-examples", type=int, default=None, help="use only the first N examples of each split")
    parser.add_argument("--no-plots", action="store_true")


def run(args: argparse.Namespace) -> int:
    from trainers.evaluation.metrics import softmax
    from trainers.evaluation.report import markdown_table
    from trainers.paper.baselines import (
        SETTING_LABELS,
        BaselineTrainingConfig,
        backbone_display_name,
        paired_difference,
        run_baseline,
        table3_csv,
        table3_markdown,
    )

    training = BaselineTrainingConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                                      weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
                                      hidden_size=args.hidden_size, seed=args.seed)
    cache_dir = args.cache_dir or args.out / "cache"
    table_rows, with_runs = [], []
    for backbone_name in args.backbone:
        try:
            results = run_baseline(
                backbone_name, args.dataset, args.out, settings=args.settings, training=training,
                splits=(args.train_split, args.val_split, args.eval_split), cache_dir=cache_dir, device=args.device,
                num_bootstrap=args.num_bootstrap, confidence_level=args.confidence, seed=args.seed,
                max_examples=args.max_examples, embed_batch_size=args.embed_batch_size, plots=not args.no_plots)
        except (ValueError, FileNotFoundError, ModuleNotFoundError, OSError) as error:
            print(f"stepcot baseline: error with backbone {backbone_name}: {error}", file=sys.stderr)
            return 1
        model = backbone_display_name(backbone_name)
        for setting in ("with", "without"):
            if setting in results:
                table_rows.append({"kind": "metrics", "model": model, "setting": SETTING_LABELS[setting],
                                   "result": results[setting][0]})
        if "with" in results:
            with_runs.append((results["with"][0].metadata["model"], results["with"][0]))
        if "with" in results and "without" in results:
            (_, with_logits, with_labels), (_, without_logits, _) = results["with"], results["without"]
            table_rows.append({"kind": "difference", "model": model, "difference": paired_difference(
                softmax(with_logits[-1]), softmax(without_logits[-1]), with_labels[:, -1], args.num_bootstrap,
                args.seed, args.confidence)})
    args.out.mkdir(parents=True, exist_ok=True)
    table = table3_markdown(table_rows, args.confidence, args.num_bootstrap, args.seed)
    (args.out / "table3.md").write_text(table, encoding="utf-8")
    (args.out / "table3.csv").write_text(table3_csv(table_rows), encoding="utf-8")
    if with_runs:
        (args.out / "table8.md").write_text(markdown_table(with_runs), encoding="utf-8")
    print(table)
    print(f"reports in {args.out} (table3.md, table3.csv{', table8.md' if with_runs else ''}, one folder per "
          "backbone and setting)")
    return 0
