"""Inference cost of the Step-CoT teacher and student against the bare vision encoder (paper's Table 11 sizes).

A thin wrapper around `trainers.paper.efficiency` (also `stepcot bench-efficiency`, which adds the baselines and CUDA):
random weights at the paper's shapes, CLIP ViT-B/32 image tower (+projection), BERT-base question encoder, teacher
hidden 768, student hidden 512, each model measured in its own subprocess so the peak resident memory is its own.

    python benchmarks/inference.py [--batch-size 32] [--repeats 5] [--out benchmarks/inference.json]

Targets: teacher <= 1.3x and student <= 1.05x the bare vision encoder's time per batch.
"""

import argparse
import json

import torch

from trainers.paper.efficiency import environment, measure_all

MODELS = ("vision_encoder", "teacher", "student")
TARGETS = {"teacher": 1.3, "student": 1.05}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    rows = measure_all(MODELS, batch_size=args.batch_size, repeats=args.repeats, device="cpu")
    header = list(rows[0])
    print(environment("cpu"))
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[key]) for key in header) + " |")
    ratios = {row["model"]: row["x_vision_encoder"] for row in rows}
    print(f"teacher {ratios['teacher']}x (target <= {TARGETS['teacher']}), student {ratios['student']}x "
          f"(target <= {TARGETS['student']}) the bare encoder per batch")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"device": "cpu", "torch": torch.__version__, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
