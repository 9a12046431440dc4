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


def reserved_flags_in(train_args: list[str]) -> list[str]:
    """The RESERVED_TRAIN_FLAGS that `train_args` sets, however spelled: `stepcot train` (HfArgumentParser)
    accepts `--output_dir`, `--output-dir`, `--output-dir=X` and any unambiguous abbreviation (`--output`)."""
    reserved = {flag[2:]: flag for flag in RESERVED_TRAIN_FLAGS}
    found = []
    for arg in train_args:
        if not arg.startswith("--") or arg == "--":
            continue
        name = arg[2:].split("=", 1)[0].replace("-", "_")
        found += [flag for full, flag in reserved.items() if name and full.startswith(name) and flag not in found]
    return found


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
    from trainers.evaluation.report import format_estimate, step_label

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
