"""Feature-extraction throughput for the training cache: the `datasets` transform path against the DataLoader path.

- before: `datasets` with the processor's transform (PIL image processor, decoding in the main process), fp32
  encoder in the default memory format;
- after: `trainers.training.extraction.extract_image_embeds` (decoding + tensor preprocessing in DataLoader
  workers, channels_last encoder), fp32 and with `--extraction_bf16`.

Each variant runs `--repeats` times, interleaved, on the same `--images` images; the best time of each is reported
with the ratios and the features' largest difference to the `datasets` path (max abs, min cosine).

    python benchmarks/extraction.py --dataset OUTPUT_DIR/dataset [--images 256] [--workers 2] [--json out.json]
"""

import argparse
import json
import platform
import time

import torch
from datasets import load_dataset

from trainers.training.extraction import extract_image_embeds
from trainers.training.run_arguments import ModelArguments
from trainers.training.run_models import build_processor, build_teacher


def before(model, dataset, processor, batch_size):
    """The pre-issue-14 path, kept here for comparison."""
    batches = torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(dataset), batch_size, drop_last=False)
    loader = torch.utils.data.DataLoader(dataset.with_transform(processor.dataset_transform), sampler=batches,
                                         batch_size=None, num_workers=0,
                                         collate_fn=lambda batch: batch["pixel_values"])
    with torch.no_grad():
        return torch.cat([model.encode_images(pixel_values).float() for pixel_values in loader])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="a built Step-CoT dataset folder (e.g. OUTPUT_DIR/dataset)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--vision-encoder", default=ModelArguments.vision_encoder)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    dataset = load_dataset(args.dataset)[args.split]
    dataset = dataset.select(range(min(args.images, len(dataset))))
    teacher = build_teacher(ModelArguments(vision_encoder=args.vision_encoder)).eval()
    processor = build_processor(teacher)
    variants = {
        "before (PIL processor, main process, fp32)": lambda: before(teacher, dataset, processor, args.batch_size),
        f"after (tensor ops, {args.workers} workers, channels_last, fp32)": lambda: extract_image_embeds(
            teacher, dataset, processor, args.batch_size, args.workers),
        "after + bf16 autocast (--extraction_bf16)": lambda: extract_image_embeds(
            teacher, dataset, processor, args.batch_size, args.workers, bf16=True),
    }
    seconds, outputs = {name: [] for name in variants}, {}
    for _ in range(args.repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            outputs[name] = run()
            seconds[name].append(time.perf_counter() - start)
    reference = outputs[next(iter(variants))]
    rows = []
    for name in variants:
        best = min(seconds[name])
        difference = (outputs[name] - reference).abs().max().item()
        cosine = torch.nn.functional.cosine_similarity(outputs[name], reference).min().item()
        rows.append({"variant": name, "images_per_s": len(dataset) / best, "seconds": best,
                     "max_abs_diff": difference, "min_cosine": cosine})
    base = rows[0]["images_per_s"]
    lines = ["| variant | images/s | × before | max abs diff | min cosine |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['images_per_s']:.1f} | {row['images_per_s'] / base:.2f} | "
                     f"{row['max_abs_diff']:.1e} | {row['min_cosine']:.6f} |")
    table = "\n".join(lines)
    environment = (f"{len(dataset)} images of {args.dataset} ({args.split}), {args.vision_encoder}, batch "
                   f"{args.batch_size}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
                   f"{platform.machine()}, best of {args.repeats}")
    print(table + "\n\n" + environment)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"rows": rows, "environment": environment}, handle, indent=2)


if __name__ == "__main__":
    main()
