"""Time a full paper-recipe distillation on cached features (part of the GPU runbook): 2 teacher-only + 40 joint epochs
on 7,000 samples, batch 32, the paper's sizes (CLIP ViT-B/32 image tower, BERT-base question encoder, teacher
H = 768, student 512; random weights: no Hub access needed), through `StepCoTDistillationTrainer` with lean
per-epoch checkpoints, as `stepcot train` runs it. Also times the feature extraction of `--samples` random 224 px
images with `extract_image_embeds` (what the cache costs once).

    python benchmarks/paper_recipe.py --device cuda [--bf16] [--out paper_recipe.json]
    python benchmarks/paper_recipe.py --tiny            # CPU dry run: tiny shapes, 64 samples, 1 + 1 epochs
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from datasets import Dataset, Features, Image

from modeling_stepcot import StepCoTConfig, StepCoTStudent, StepCoTStudentConfig, StepCoTTeacher
from modeling_stepcot.processing_stepcot import image_processor_for_config
from trainers.training.distillation import StepCoTDistillationPair, StepCoTDistillationTrainer
from trainers.training.distillation_config import StepCoTDistillationConfig
from trainers.training.extraction import extract_image_embeds
from trainers.training.feature_cache import EmbeddingDataset

TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                   patch_size=8, projection_dim=24)
TINY_TEXT = dict(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=64)


def build_pair(tiny: bool):
    torch.manual_seed(0)
    if tiny:
        teacher = StepCoTTeacher(StepCoTConfig(vision_config=TINY_VISION, text_config=TINY_TEXT, hidden_size=48,
                                               question_max_length=12))
        student = StepCoTStudent(StepCoTStudentConfig(vision_config=TINY_VISION, hidden_size=16))
    else:
        teacher, student = StepCoTTeacher(StepCoTConfig()), StepCoTStudent(StepCoTStudentConfig())
    teacher.question_input_ids.random_(5, teacher.config.text_config.vocab_size)
    teacher.question_attention_mask.fill_(1)
    student.vision_encoder.load_state_dict(teacher.vision_encoder.state_dict())  # one shared frozen encoder
    return StepCoTDistillationPair.from_models(teacher, student, relation_dim=16 if tiny else 256)


def random_images(count: int, size: int):
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (count, size, size), generator=generator, dtype=torch.uint8).numpy()
    return Dataset.from_dict({"image": list(pixels)}, features=Features({"image": Image()}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--samples", type=int, default=7000)
    parser.add_argument("--epochs", type=int, default=40, help="joint distillation epochs")
    parser.add_argument("--pretrain-epochs", type=int, default=2, help="teacher-only epochs first")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--extract-images", type=int, default=None, help="images to encode (default --samples)")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="dry run: tiny shapes, 64 samples, 1 + 1 epochs")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.tiny:
        args.samples, args.epochs, args.pretrain_epochs = min(args.samples, 64), 1, 1
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("paper_recipe.py: --device cuda but CUDA is not available")
    device = torch.device(args.device)

    pair = build_pair(args.tiny)
    config = pair.teacher.config
    processor = SimpleNamespace(image_processor=image_processor_for_config(config), image_size=int(config.image_size))
    images = random_images(args.extract_images or args.samples, int(config.image_size))
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    workers = min(4, os.cpu_count() or 1)
    embeds = extract_image_embeds(pair.teacher, images, processor, batch_size=256, num_workers=workers, device=device,
                                  bf16=args.bf16)
    if device.type == "cuda":
        torch.cuda.synchronize()
    extraction_seconds = time.perf_counter() - start

    generator = torch.Generator().manual_seed(1)
    rows = torch.cat([embeds] * (args.samples // len(embeds) + 1))[:args.samples].cpu()
    labels = torch.stack([torch.randint(0, n, (args.samples,), generator=generator)
                          for n in config.num_classes_per_step], 1)
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = StepCoTDistillationConfig(  # the paper's recipe: its defaults (alpha, T, rates)
            output_dir=output_dir, per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs,
            eval_strategy="no", logging_steps=50, disable_tqdm=True, bf16=args.bf16, use_cpu=device.type == "cpu",
            dataloader_pin_memory=device.type == "cuda", seed=0,
            teacher_pretrain_epochs=args.pretrain_epochs, relation_dim=pair.config.relation_dim,
            checkpoint_every_minutes=0,  # one checkpoint per epoch, so that its size is measured
        )
        trainer = StepCoTDistillationTrainer(model=pair, args=training_args, train_dataset=EmbeddingDataset(
            rows, labels))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        trainer.train()
        training_seconds = time.perf_counter() - start
        checkpoint = sorted(Path(output_dir).glob("checkpoint-*"))[-1]
        checkpoint_bytes = sum(f.stat().st_size for f in checkpoint.iterdir() if f.is_file())
    epochs = args.epochs + args.pretrain_epochs
    result = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "tiny": args.tiny, "bf16": args.bf16, "samples": args.samples,
        "epochs": f"{args.pretrain_epochs} + {args.epochs}",
        "batch_size": args.batch_size, "updates": trainer.state.global_step,
        "extraction_images_per_s": round(len(images) / extraction_seconds, 1),
        "training_minutes": round(training_seconds / 60, 2), "seconds_per_epoch": round(training_seconds / epochs, 2),
        "peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None,
        "checkpoint_mib": round(checkpoint_bytes / 2**20, 1),
    }
    table = "\n".join(["| " + " | ".join(result) + " |", "|" + "---|" * len(result),
                       "| " + " | ".join(str(v) for v in result.values()) + " |"])
    print(table)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
