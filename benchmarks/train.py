"""Training cost of Step-CoT distillation at the paper's sizes (random weights): CLIP ViT-B/32 image tower,
BERT-base question encoder, teacher H=768, student 512, batch 32.

Three ways to run one distillation update (teacher CE + student CE/KD/CH, one AdamW step):
- cached: heads on cached image features (what `stepcot train` does when the encoders are frozen);
- images: one shared frozen encoder pass per image per update (no cache);
- reference: the public reference code's structure: the frozen encoder re-run inside the teacher for each of the
  7 steps, again for the fresh no-grad teacher forward (7), for the CH features (7) and for the student (1).

Epoch times are extrapolated from `--steps` timed updates (median) to `--samples` samples; feature extraction is
timed on `--extract-batches` batches and extrapolated the same way.

    python benchmarks/train.py [--samples 7000] [--epochs 40] [--steps 6] [--out benchmarks/train.json]

Target: with the cache, 40 distillation epochs on 7,000 samples in under 10 minutes after extraction.
"""

import argparse
import json
import math
import platform
import statistics
import time

import torch

from modeling_stepcot import StepCoTConfig, StepCoTStudent, StepCoTStudentConfig, StepCoTTeacher
from trainers.training.distillation import StepCoTDistillationPair
from trainers.training.losses import distillation_losses

REFERENCE_ENCODER_PASSES = 7 + 7 + 7 + 1


def build_pair():
    torch.manual_seed(0)
    teacher = StepCoTTeacher(StepCoTConfig())
    teacher.question_input_ids.random_(1000, 20000)
    teacher.question_attention_mask.fill_(1)
    student = StepCoTStudent(StepCoTStudentConfig())
    student.vision_encoder.load_state_dict(teacher.vision_encoder.state_dict())  # one shared frozen encoder
    return StepCoTDistillationPair.from_models(teacher, student).train()


def make_update(pair, batch_size, mode, bf16=False):
    trainable = [p for p in pair.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    pixels = torch.randn(batch_size, 3, 224, 224)
    with torch.no_grad():
        cached = pair.teacher.encode_images(pixels)
    labels = torch.stack([torch.randint(0, n, (batch_size,)) for n in pair.teacher.config.num_classes_per_step], 1)

    def loss():
        if mode == "cached":
            out = pair(image_embeds=cached)
        elif mode == "images":
            out = pair(pixel_values=pixels)
        else:  # reference structure: the extra encoder passes it makes, then the same heads
            with torch.no_grad():
                for _ in range(REFERENCE_ENCODER_PASSES - 1):
                    pair.teacher.encode_images(pixels)
            out = pair(pixel_values=pixels)
        terms = distillation_losses(out.teacher_step_logits, out.student_step_logits, labels,
                                    out.teacher_relation, out.student_relation)
        return terms["teacher_ce"] + terms["student"]

    def update():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            value = loss()
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()

    return update


def median_seconds(function, repeats, warmup=1):
    for _ in range(warmup):
        function()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=7000)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="timed updates per mode")
    parser.add_argument("--extract-batches", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["cached", "images", "reference"])
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (what --bf16 does in stepcot train)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    pair = build_pair()
    steps_per_epoch = math.ceil(args.samples / args.batch_size)
    pixels = torch.randn(args.batch_size, 3, 224, 224)
    with torch.no_grad():
        extract = median_seconds(lambda: pair.teacher.encode_images(pixels), args.extract_batches)
    rows = {"feature_extraction_s": round(extract * steps_per_epoch, 1)}
    for mode in args.modes:
        seconds = median_seconds(make_update(pair, args.batch_size, mode, args.bf16), args.steps)
        rows[mode] = {
            "s_per_update": round(seconds, 3),
            "s_per_epoch": round(seconds * steps_per_epoch, 1),
            f"min_for_{args.epochs}_epochs": round(seconds * steps_per_epoch * args.epochs / 60, 1),
        }
        print(mode, rows[mode], flush=True)

    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}; "
          f"{args.samples} samples, batch {args.batch_size}, {steps_per_epoch} updates/epoch")
    print(f"feature extraction (once): {rows['feature_extraction_s']} s")
    print("| mode | s/update | s/epoch | min for %d epochs |" % args.epochs)
    print("|---|---|---|---|")
    for mode in args.modes:
        row = rows[mode]
        print(f"| {mode} | {row['s_per_update']} | {row['s_per_epoch']} | {row[f'min_for_{args.epochs}_epochs']} |")
    if "cached" in rows:
        minutes = rows["cached"][f"min_for_{args.epochs}_epochs"]
        print(f"cached: {minutes} min for {args.epochs} epochs (target < 10 min)")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"samples": args.samples, "batch_size": args.batch_size, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
