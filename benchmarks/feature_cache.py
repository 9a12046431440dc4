"""One training epoch over cached image features at growing sizes: seconds and peak resident memory.

For each `--rows` count, synthetic float32 embeddings (`--width` 1280: EfficientNet-Lite0's features) are written
in the real cache format by `feature_cache.cached_image_embeds` (in a child process), then a second, measured child
reads them back through the same call (a cache hit, verified), wraps them in an `EmbeddingDataset` and runs one
shuffled epoch of the DataLoader alone (the cache's own cost), then, with `--model student` (default), one epoch of
the loop the Trainer runs for the EfficientNet-Lite0 student's heads (forward, backward, AdamW step), or with
`--model pair` one epoch of the real `StepCoTDistillationTrainer` on the teacher + student pair (slow on a few CPU
cores: the teacher's heads are ~27 M parameters). The child reports its seconds (cache open, loader epoch, heads
epoch) and its resident memory after the model is built and at its peak (`getrusage` ru_maxrss).

`--tree PATH` runs the children on another checkout's code (e.g. the main branch exported with
`git -C /work/main archive HEAD | tar -x -C /tmp/fc-before`) to compare loaders on the same benchmark.

    python benchmarks/feature_cache.py [--rows 10000 100000] [--width 1280] [--batch-size 256]
        [--model student] [--tree PATH] [--json out.json]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

WRITE = """
import inspect, sys, torch
from types import SimpleNamespace
from trainers.training.feature_cache import cached_image_embeds
rows, width, folder = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
model = SimpleNamespace(config=SimpleNamespace(vision_backbone="efficientnet_lite0"))

def block(start, stop):
    return torch.randn(stop - start, width, generator=torch.Generator().manual_seed(start))

if "encode_rows" in inspect.signature(cached_image_embeds).parameters:  # a sharded cache: written shard by shard
    cached_image_embeds(model, None, "bench", folder, encoder_digest="bench", num_rows=rows, encode_rows=block)
else:  # a one-file cache: written whole
    chunks = [block(start, min(start + 8192, rows)) for start in range(0, rows, 8192)]
    cached_image_embeds(model, None, "bench", folder, encoder_digest="bench", num_rows=rows,
                        compute=lambda: torch.cat(chunks))
"""

MEASURE = """
import json, resource, sys, tempfile, time, torch
from types import SimpleNamespace
rows, width, batch_size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[4])
folder, model_kind = sys.argv[3], sys.argv[5]
from torch.utils.data import DataLoader
from transformers import default_data_collator
from modeling_stepcot import StepCoTConfig, StepCoTStudent, StepCoTStudentConfig, StepCoTTeacher
from trainers.training.distillation import StepCoTDistillationPair, StepCoTDistillationTrainer
from trainers.training.distillation_config import StepCoTDistillationConfig
from trainers.training.feature_cache import EmbeddingDataset, cached_image_embeds

def resident_mib():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024

torch.manual_seed(0)
student = StepCoTStudent(StepCoTStudentConfig(vision_backbone="efficientnet_lite0"))
labels = torch.stack([torch.randint(0, n, (rows,), generator=torch.Generator().manual_seed(1))
                      for n in student.config.num_classes_per_step], 1)
built_mib = resident_mib()
started = time.perf_counter()
model = SimpleNamespace(config=SimpleNamespace(vision_backbone="efficientnet_lite0"))
embeds, _, hit = cached_image_embeds(model, None, "bench", folder, encoder_digest="bench", num_rows=rows)
assert hit and tuple(embeds.shape) == (rows, width), (hit, embeds.shape)
dataset = EmbeddingDataset(embeds, labels)
result = {"rows": rows, "open_s": round(time.perf_counter() - started, 2)}
loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=default_data_collator,
                    generator=torch.Generator().manual_seed(0))
started = time.perf_counter()
for batch in loader:  # the loader alone: what the cache costs per epoch
    assert batch["image_embeds"].shape[1] == width
result["loader_epoch_s"] = round(time.perf_counter() - started, 2)
if model_kind == "student":  # the loop the Trainer runs for the student heads: forward, backward, AdamW step
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-4)
    student.train()
    started = time.perf_counter()
    for batch in loader:
        student(image_embeds=batch["image_embeds"], labels=batch["labels"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    result["heads_epoch_s"] = round(time.perf_counter() - started, 2)
elif model_kind == "pair":  # the real Trainer: teacher + student sharing the frozen encoder, distillation
    text = dict(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64)
    teacher = StepCoTTeacher(StepCoTConfig(vision_backbone="efficientnet_lite0", text_config=text,
                                           question_max_length=12))
    teacher.question_input_ids.random_(5, 120)
    teacher.question_attention_mask.fill_(1)
    student.vision_encoder.load_state_dict(teacher.vision_encoder.state_dict())
    pair = StepCoTDistillationPair.from_models(teacher, student)
    with tempfile.TemporaryDirectory() as output_dir:
        args = StepCoTDistillationConfig(output_dir=output_dir, per_device_train_batch_size=batch_size,
                                         num_train_epochs=1, teacher_pretrain_epochs=0, eval_strategy="no",
                                         save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True,
                                         use_cpu=True, seed=0, relation_dim=pair.config.relation_dim)
        trainer = StepCoTDistillationTrainer(model=pair, args=args, train_dataset=dataset)
        started = time.perf_counter()
        trainer.train()
        result["heads_epoch_s"] = round(time.perf_counter() - started, 2)
timed = result.get("heads_epoch_s", result["loader_epoch_s"])
result.update(us_per_row=round(1e6 * timed / rows, 2), rss_built_mib=round(built_mib),
              peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
print(json.dumps(result))
"""


def child(script: str, args: list, tree: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=tree, env=env, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise SystemExit(f"feature_cache.py: a child failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--model", choices=["none", "student", "pair"], default="student",
                        help="after the loader-only pass: the student heads' loop (forward, backward, AdamW), "
                             "the real distillation Trainer on the teacher + student pair, or nothing")
    parser.add_argument("--tree", type=Path, default=REPO_ROOT, help="checkout whose code the children run")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    results = []
    for rows in args.rows:
        with tempfile.TemporaryDirectory(prefix="stepcot-fc-bench-") as folder:
            child(WRITE, [rows, args.width, folder], args.tree.resolve())
            results.append(json.loads(child(MEASURE, [rows, args.width, folder, args.batch_size, args.model],
                                            args.tree.resolve())))
        print(json.dumps(results[-1]), flush=True)
    base = results[0]
    for result in results:
        result["time_per_row_vs_first"] = round(result["us_per_row"] / base["us_per_row"], 2)
        result["peak_rss_growth_vs_first_mib"] = result["peak_rss_mib"] - base["peak_rss_mib"]
    keys = list(results[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for result in results:
        print("| " + " | ".join(str(result[key]) for key in keys) + " |")
    summary = {"tree": str(args.tree), "model": args.model, "machine": platform.platform(), "cpus": os.cpu_count(),
               "load_average": os.getloadavg(), "width": args.width, "batch_size": args.batch_size,
               "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


if __name__ == "__main__":
    main()
