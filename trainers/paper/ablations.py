"""`stepcot bench-ablations`: the paper's Table 6, trained and evaluated by one command.

    stepcot bench-ablations --dataset demo --output-dir reports/ablations
    stepcot bench-ablations --dataset step_cot_hub --output-dir reports/ablations -- \
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

from trainers.choices import ABLATION_VARIANTS
from trainers.evaluation.report import format_estimate, load_metrics, step_label, write_comparison
from trainers.run_distill import parse_args, train

VARIANTS = ABLATION_VARIANTS
# Flags this command sets itself; passing them after `--` would make the variants differ in more than the ablation.
RESERVED_TRAIN_FLAGS = ("--output_dir", "--dataset", "--cache_dir", "--use_memory", "--use_text", "--demo_size",
                        "--demo_image_size")
TABLE6_ORDER = ("w/o Memory", "w/o Text", "Teacher", "Student")


def reserved_flags_in(train_args: list[str]) -> list[str]:
    """The RESERVED_TRAIN_FLAGS that `train_args` sets, however spelled: `stepcot train` (HfArgumentParser)
    accepts `--output_dir`, `--output-dir`, `--output-dir=X` and any unambiguous abbreviation (`--output`)."""
    names = {arg[2:].split("=", 1)[0].replace("-", "_") for arg in train_args if arg.startswith("--")} - {""}
    return [flag for flag in RESERVED_TRAIN_FLAGS if any(flag[2:].startswith(name) for name in names)]


def train_variant(name: str, dataset: str, out: Path, train_args: list[str]) -> Path:
    """One `stepcot train` run of the variant. `train_args` are the user's `stepcot train` flags (after `--`), so
    they are parsed as the command parses them; the settings this bench owns are then set on the parsed
    arguments (the output folder goes through the parser: TrainingArguments derives other fields from it)."""
    ablation, _ = VARIANTS[name]
    output_dir = out / name
    model_args, data_args, training_args = parse_args(["--output_dir", str(output_dir), *train_args])
    data_args.dataset, data_args.cache_dir = dataset, str(out / "cache")
    for field_name, value in ablation.items():
        setattr(model_args, field_name, value)
    code = train(model_args, data_args, training_args)
    if code:
        raise RuntimeError(f"stepcot train for the {name!r} variant exited with {code}.")
    return output_dir


def run_ablations(dataset: str, out: Path, variants, train_args: list[str], reuse: bool = False,
                  log=print) -> list:
    """Train every variant (skipping one whose OUT/VARIANT/results.json exists when `reuse`) on the prepared
    `dataset`, then write OUT/ablations.md + .csv and OUT/table6.md. Returns the (model name, metrics) rows in
    Table 6 order."""
    for name in variants:
        if reuse and (out / name / "results.json").is_file():
            log(f"reusing {out / name}")
            continue
        log(f"=== training variant {name!r} ===")
        train_variant(name, dataset, out, train_args)
    folders, names = [], []
    for name in variants:
        for role, label in VARIANTS[name][1]:
            folders.append(str(out / name / "metrics" / role))
            names.append(label)
    order = sorted(range(len(names)), key=lambda i: TABLE6_ORDER.index(names[i]))
    folders, names = [folders[i] for i in order], [names[i] for i in order]
    runs = [(name, load_metrics(folder)) for name, folder in zip(names, folders)]
    write_comparison(runs, out / "ablations.md", sources=folders)
    (out / "table6.md").write_text(table6_markdown(runs), encoding="utf-8")
    return runs


def table6_markdown(runs) -> str:
    """Accuracy per step (columns) and model (rows) with CIs, the paper's Table 6 layout."""
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
