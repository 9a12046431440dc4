"""`stepcot baseline`: the command line over `trainers.paper.baselines`.

The library is imported inside the functions, not at the top: `stepcot --help` then imports no torch.
"""

import argparse
import sys
from pathlib import Path

from trainers.commands.options import add_evaluation_arguments

HELP = "the paper's Table 3/8 baselines: vision-language backbones (CLIP, BLIP, ...) with/without Step-CoT"
DESCRIPTION = """\
The paper's Table 3/8 baselines. Each --backbone is a frozen vision-language model (CLIP, SigLIP, BLIP, FLAVA,
BiomedCLIP, ...) whose pooled image and question embeddings feed a 2-layer MLP, trained on all seven steps ('with'
Step-CoT) or on the diagnosis alone ('without'); --settings probe and majority add a logistic-regression probe and
the most frequent answer on the same backbone's image embeddings.

The linear probe on the Step-CoT models' own frozen image features is not here: `stepcot train` fits it at the end
of every run (OUTPUT_DIR/metrics/linear_probe, its row in the results table, "baselines" in results.json, and the
model - probe accuracy differences in OUTPUT_DIR/metrics/paired_differences.txt)."""
EXAMPLES = [
    "stepcot baseline --backbone openai/clip-vit-base-patch32 --dataset outputs/demo/dataset "
    "--output-dir outputs/baselines --epochs 5",
]



def add_arguments(parser: argparse.ArgumentParser) -> None:
    from trainers.choices import BASELINE_SETTINGS as SETTINGS
    from trainers.choices import BASELINE_TRAINING_DEFAULTS as DEFAULTS
    from trainers.model_loading import add_trust_remote_code_argument

    parser.add_argument("--backbone", nargs="+", required=True,
                        help="Hub ids or folders of vision-language models (CLIP, SigLIP, BLIP, FLAVA, ...); "
                             "open_clip models as hf-hub:ORG/NAME (BiomedCLIP); efficientnet_lite0: the offline "
                             "encoders of `stepcot train` (EfficientNet-Lite0 images, MiniLM questions)")
    parser.add_argument("--dataset", required=True,
                        help="'demo', a release folder (built under $STEPCOT_CACHE), a built folder "
                             "(`stepcot data build` output) or a Hub id")
    parser.add_argument("--output-dir", "--out", dest="out", metavar="DIR", required=True, type=Path,
                        help="output folder")
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS),
                        default=["with", "without", "probe", "majority"],
                        help="with: one MLP on all seven steps; without: the diagnosis step only; probe: logistic "
                             "regression per step on the image embedding (C chosen on validation); majority: the "
                             "most frequent training answer (default: all four)")
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="images per batch (default 8)")
    parser.add_argument("--lr", type=float, default=DEFAULTS["learning_rate"],
                        help="AdamW learning rate (paper's value unknown)")
    parser.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"],
                        help="AdamW weight decay (paper's value unknown)")
    parser.add_argument("--hidden-size", type=int, default=DEFAULTS["hidden_size"],
                        help="MLP hidden width (paper: 768)")
    parser.add_argument("--max-grad-norm", type=float, default=DEFAULTS["max_grad_norm"])
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--val-split", default="validation", help="split for picking the best epoch")
    parser.add_argument("--eval-split", default="test")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="embedding cache (default OUT/cache); with --backbone efficientnet_lite0, the "
                             "OUTPUT_DIR/cache of a `stepcot train` run on the same dataset is read, not encoded "
                             "again")
    parser.add_argument("--embed-batch-size", type=int, default=32)
    parser.add_argument("--max-examples", type=int, default=None, help="use only the first N examples of each split")
    add_evaluation_arguments(parser, seed_help="seed of training and bootstrap")
    add_trust_remote_code_argument(parser)


def run(args: argparse.Namespace) -> int:
    from trainers.paper.baselines import BaselineTrainingConfig, run_baselines

    training = BaselineTrainingConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                                      weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
                                      hidden_size=args.hidden_size, seed=args.seed)
    try:
        table, written = run_baselines(
            args.backbone, args.dataset, args.out, training, num_bootstrap=args.num_bootstrap,
            confidence_level=args.confidence, seed=args.seed, settings=args.settings,
            splits=(args.train_split, args.val_split, args.eval_split), cache_dir=args.cache_dir or args.out / "cache",
            device=args.device, max_examples=args.max_examples, embed_batch_size=args.embed_batch_size,
            plots=not args.no_plots, trust_remote_code=args.trust_remote_code)
    except ValueError as error:
        print(f"stepcot baseline: {error}", file=sys.stderr)
        return 1
    print(table)
    print(f"reports in {args.out} ({', '.join(written)}, one folder per backbone and setting)")
    return 0
