"""`stepcot bench-ablations`: the paper's Table 6, trained and evaluated by one command.

    stepcot bench-ablations --dataset demo --out reports/ablations
    stepcot bench-ablations --dataset step_cot_hub --out reports/ablations -- \
        --vision_encoder openai/clip-vit-base-patch32 --text_encoder bert-base-uncased --num_train_epochs 40

Runs `stepcot train` (trainers/run_distill.py) three times on the same data with the same seed and arguments:
`full` (teacher + distilled student), `no_memory` (`--use_memory False`: no memory node, no GRU write-back) and
`no_text` (`--use_text False`: learned step embeddings instead of encoded questions). Everything after `--` goes
to every run unchanged (any `stepcot train` / TrainingArguments flag). The dataset is prepared once (the demo is
rendered and built into OUT/data) and the image features are cached once in OUT/cache, so the three runs share
them. The ablation runs also train a student (`stepcot train` always trains both); only their teachers enter the
table, as in the paper.

Writes OUT/{full,no_memory,no_text}/ (each a complete `stepcot train` output), OUT/ablations.md + .csv (all six
metrics per step with CIs, written by `stepcot report`) and OUT/table6.md (accuracy per step and model, the
paper's Table 6 layout, with CIs).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

VARIANTS = {  # name -> (stepcot train flags, rows: (metrics folder under the run, model name))
    "full": ([], [("teacher", "Teacher"), ("student", "Student")]),
    "no_memory": (["--use_memory", "False"], [("teacher", "w/o Memory")]),
    "no_text": (["--use_text", "False"], [("teacher", "w/o Text")]),
}
# Flags this command sets itself; passing them after `--` would make the variants differ in more than the ablation.
RESERVED_TRAIN_FLAGS = ("--output_dir", "--dataset", "--cache_dir", "--use_memory", "--use_text", "--demo_size",
                        "--demo_image_size")
TABLE6_ORDER = ("w/o Memory", "w/o Text", "Teacher", "Student")


def prepare_dataset(dataset: str, data_dir: Path, demo_size: int, demo_image_size: int, lenient: bool = False,
                    log=print) -> str:
    """A built (Parquet) dataset folder or Hub id that all variants read: the demo is rendered and a release folder
    validated and built once, into `data_dir`."""
    from dataset_script.hub import build_hub_dataset

    source = Path(dataset)
    built = data_dir / "dataset"
    if dataset == "demo":
        from dataset_script.demo import write_demo_release

        source = data_dir / "demo-release"
        if not (source / "data.json").is_file():
            summary = write_demo_release(source, n=demo_size, image_size=demo_image_size)
            log(f"rendered {summary['records']} synthetic records into {source}")
    if (source / "data.json").is_file() or (source / "data.jsonl").is_file():
        if not (built / "README.md").is_file():
            summary = build_hub_dataset(source, built, strict=not lenient)
            if summary.get("records_skipped"):
                log(f"warning: {summary['records_skipped']} records skipped while building: see {summary['report']}")
        return str(built)
    return dataset


def _option_value(args: list[str], flag: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def train_variant(name: str, dataset: str, out: Path, train_args: list[str]) -> Path:
    from trainers.run_distill import main as train

    flags, _ = VARIANTS[name]
    output_dir = out / name
    code = train(["--dataset", dataset, "--output_dir", str(output_dir), "--cache_dir", str(out / "cache"),
                  *flags, *train_args])
    if code:
        raise RuntimeError(f"stepcot train for the {name!r} variant exited with {code}.")
    return output_dir


def table6_markdown(runs) -> str:
    """Accuracy per step (columns) and model (rows) with CIs, the paper's Table 6 layout."""
    from trainers.report import format_estimate, step_label

    steps = [step.name for step in runs[0][1].steps]
    lines = ["| Model | " + " | ".join(steps) + " | Mean |", "|" + "---|" * (len(steps) + 2)]
    for name, result in runs:
        cells = [format_estimate(step.metrics["accuracy"]) for step in result.steps]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {format_estimate(result.mean['accuracy'])} |")
    first = runs[0][1]
    lines += ["", f"Accuracy in % on the {first.metadata.get('split', 'evaluation')} split "
              f"({first.num_examples} examples); brackets: {100 * first.confidence_level:g}% percentile bootstrap CI "
              f"({first.num_bootstrap} resamples). Columns: {', '.join(step_label(s) for s in steps)}. All six "
              "metrics per step: ablations.md."]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="demo",
                        help="'demo' (synthetic), a release folder (data.json), a built folder or a Hub id")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="which runs (default: all three)")
    parser.add_argument("--demo_size", "--demo-size", type=int, default=1200, help="records of the synthetic demo")
    parser.add_argument("--demo_image_size", "--demo-image-size", type=int, default=224)
    parser.add_argument("--lenient", action="store_true", help="skip (and report) bad records of a release")
    parser.add_argument("--reuse", action="store_true",
                        help="keep a variant whose OUT/VARIANT/results.json exists instead of training it again")
    parser.add_argument("train_args", nargs=argparse.REMAINDER,
                        help="after `--`: arguments passed to every `stepcot train` run")


def run(args: argparse.Namespace) -> int:
    from trainers import report

    train_args = list(args.train_args)
    if train_args[:1] == ["--"]:
        train_args = train_args[1:]
    reserved = [flag for flag in RESERVED_TRAIN_FLAGS if _option_value(train_args, flag) is not None]
    if reserved:
        print(f"stepcot bench-ablations: {', '.join(reserved)} are set by this command (use --dataset / --out / "
              "--variants / --demo_size here, not after --).", file=sys.stderr)
        return 2
    try:
        dataset = prepare_dataset(args.dataset, args.out / "data", args.demo_size, args.demo_image_size, args.lenient)
        for name in args.variants:
            if args.reuse and (args.out / name / "results.json").is_file():
                print(f"reusing {args.out / name}")
                continue
            print(f"=== training variant {name!r} ===")
            train_variant(name, dataset, args.out, train_args)
        folders, names = [], []
        for name in args.variants:
            for role, label in VARIANTS[name][1]:
                folders.append(str(args.out / name / "metrics" / role))
                names.append(label)
        order = sorted(range(len(names)), key=lambda i: TABLE6_ORDER.index(names[i]))
        folders, names = [folders[i] for i in order], [names[i] for i in order]
        code = report.main([*folders, "--names", *names, "--out", str(args.out / "ablations.md")])
        if code:
            return code
        runs = [(name, report.load_metrics(folder)) for name, folder in zip(names, folders)]
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"stepcot bench-ablations: error: {error}", file=sys.stderr)
        return 1
    table = table6_markdown(runs)
    (args.out / "table6.md").write_text(table, encoding="utf-8")
    print(table)
    means = {name: result.mean["accuracy"].value for name, result in runs}
    print("mean accuracy: " + ", ".join(f"{name} {100 * v:.1f}%" for name, v in means.items() if not math.isnan(v)))
    print(f"reports: {args.out / 'table6.md'}, {args.out / 'ablations.md'} (+ .csv)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m trainers.bench`: the same as `stepcot bench-ablations`."""
    from trainers.cli import run_command

    return run_command("bench-ablations", argv)


if __name__ == "__main__":
    sys.exit(main())
