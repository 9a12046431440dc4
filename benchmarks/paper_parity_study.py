"""Distillation-term study on the hard synthetic demo: student accuracy per step with CH on / off and KD
on / off, over several seeds (mean and 95 % t-interval), with the CH term as fixed (frozen teacher-side projection,
standardised projections) and as trained raw CH (teacher-side projection trained with the student, raw
softmax). Every other part of the recipe (per-step teacher projections, separate clipping, fresh student optimizer
after pre-training) is the same in all rows.

Runs `stepcot train` (trainers/run_distill.py) in-process, once per variant and seed, on one rendered hard demo
and one shared feature cache (offline encoders: EfficientNet-Lite0 images, MiniLM questions).

    nice -n 10 python benchmarks/paper_parity_study.py --work /tmp/parity-study \
        --out benchmarks/paper_parity_study.json [any stepcot train flag, e.g. --teacher_hidden_size 128]
"""

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {  # name -> extra flags
    "CH+KD (fixed CH)": [],
    "KD only": ["--alpha_ch", "0"],
    "CH only (fixed CH)": ["--alpha_kd", "0"],
    "CE only": ["--alpha_kd", "0", "--alpha_ch", "0"],
    "CH+KD (trained raw CH)": ["--ch_train_teacher_projection", "--no_ch_standardize"],
    "CH only (trained raw CH)": ["--alpha_kd", "0", "--ch_train_teacher_projection", "--no_ch_standardize"],
}
T_95 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776}  # two-sided 95 % t quantiles by sample count


def mean_ci(values):
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, T_95.get(len(values), 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def prepare_data(work: Path, n: int, image_size: int) -> Path:
    from dataset_script.parquet_export import build_hub_dataset
    from dataset_script.synthetic import write_demo_release

    release, built = work / "release", work / "dataset"
    if not (release / "data.json").is_file():
        summary = write_demo_release(release, n=n, image_size=image_size, difficulty="hard")
        print(f"rendered {summary['records']} hard demo records in {summary['seconds']:.0f} s", flush=True)
    if not (built / "README.md").is_file():
        build_hub_dataset(release, built)
    return built


def majority_rates(built: Path, split: str = "test"):
    from datasets import load_dataset

    labels = np.asarray(load_dataset(str(built))[split]["labels"])
    rates = []
    for step in range(labels.shape[1]):
        column = labels[:, step][labels[:, step] >= 0]
        rates.append(float(np.bincount(column).max() / len(column)))
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/stepcot-parity-study")
    parser.add_argument("--n", type=int, default=1200, help="hard demo records")
    parser.add_argument("--image_size", type=int, default=224, help="demo image size, also the encoder's input size")
    parser.add_argument("--epochs", type=int, default=8, help="distillation epochs (after the pre-training ones)")
    parser.add_argument("--pretrain_epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default=None, help="write all per-run results as JSON here")
    parser.add_argument("--collect", action="store_true",
                        help="train nothing: tabulate the runs already finished under --work")
    args, extra = parser.parse_known_args()  # anything else goes to every `stepcot train` run

    from trainers import run_distill

    work = Path(args.work)
    built = prepare_data(work, args.n, args.image_size)
    majority = majority_rates(built)
    runs = []
    for seed in args.seeds:  # every variant of a seed before the next seed: an interrupted study stays comparable
        for variant in args.variants:
            output = work / "runs" / f"{variant.replace(' ', '_').replace('(', '').replace(')', '')}-seed{seed}"
            argv = ["--dataset", str(built), "--cache_dir", str(work / "cache"), "--output_dir", str(output),
                    "--num_train_epochs", str(args.epochs), "--teacher_pretrain_epochs", str(args.pretrain_epochs),
                    "--seed", str(seed), "--image_size", str(args.image_size), "--num_bootstrap", "0",
                    "--save_strategy", "no", "--logging_steps", "50", "--disable_tqdm", "True",
                    *extra, *VARIANTS[variant]]
            started = time.perf_counter()
            if not (args.collect and (output / "results.json").is_file()):
                if args.collect:
                    continue
                run_distill.main(argv)
            result = json.loads((output / "results.json").read_text())["results"]
            student = result["student"]
            steps = [student[f"step{i}_accuracy"] for i in range(1, 8)]
            runs.append({"variant": variant, "seed": seed, "student_step_accuracy": steps,
                         "student_mean_accuracy": student["mean_accuracy"],
                         "teacher_mean_accuracy": result["teacher"]["mean_accuracy"],
                         "seconds": time.perf_counter() - started})
            print(f"{variant} seed {seed}: student mean {student['mean_accuracy']:.4f} "
                  f"({runs[-1]['seconds']:.0f} s)", flush=True)

    header = "| Variant | " + " | ".join(f"Step {i}" for i in range(1, 8)) + " | Mean | Teacher mean |"
    lines = [header, "|" + "---|" * 10,
             "| Majority rate (test) | " + " | ".join(f"{r:.3f}" for r in majority)
             + f" | {statistics.fmean(majority):.3f} | |"]
    for variant in args.variants:
        chosen = [r for r in runs if r["variant"] == variant]
        if not chosen:
            continue
        cells = []
        for step in range(7):
            mean, ci = mean_ci([r["student_step_accuracy"][step] for r in chosen])
            cells.append(f"{mean:.3f} ± {ci:.3f}")
        mean, ci = mean_ci([r["student_mean_accuracy"] for r in chosen])
        t_mean, t_ci = mean_ci([r["teacher_mean_accuracy"] for r in chosen])
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {mean:.3f} ± {ci:.3f} | {t_mean:.3f} ± {t_ci:.3f} |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        summary = {"args": vars(args), "train_flags": extra, "majority": majority, "runs": runs, "table": table}
        Path(args.out).write_text(json.dumps(summary, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
