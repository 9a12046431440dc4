"""Real-image study: majority, linear probe, teacher and student per step, and raw vs consistent chains.

    nice -n 10 python benchmarks/real_data_study.py --out /tmp/stepcot-study            # everything, ~40 min CPU
    nice -n 10 python benchmarks/real_data_study.py --datasets kermany --seeds 0 --out /tmp/s   # one run
    nice -n 10 python benchmarks/real_data_study.py --datasets kermany3 kermany2 --seeds 0 1 2 3 4 --epochs 10 --lean \
        --out /tmp/l   # the five-split study of both imported problems (RESULTS.md), ~25 min on two busy cores
    ... --hp-search-trials 8 --out /tmp/h   # the same with a search of 8 trials before each run

For each dataset (Kermany-480, the COVID case notes: `benchmarks/real_data_release.py`) and split seed: a
patient-grouped 70/15/15 split, `stepcot train` (offline encoders, feature cache) which itself fits the majority
and linear-probe baselines on the same frozen features, then on the test split: the chain decoded three ways
(raw per-step argmax; "unconstrained MAP": the most probable consistent chain over every step, trained or not,
without the repair's gates; "repair": `ChainChecker.repair` with untrained steps left out and
confident steps kept), scored on the diagnosis and detection labels. The demo (all seven steps labelled) is run once
for the chain comparison. With `--ood`, the Kermany teacher is also shown adult films (../shared/data/
actualmed-covid-cxr) and the share flagged out of distribution is compared with its own test images.

With `--lean`, per run only the diagnosis: accuracy, per-class recall, macro-F1, ECE before / after the validation
temperature (mean of splits, and all splits' test films pooled), OOD false flags on the run's own test images, and
each model paired with the linear probe on the same test examples (exact McNemar per seed and pooled over seeds);
then candidate answers (each model, two-model means) compared on the validation split only, the best one (ties: the
first listed) shown on test.

Writes OUT/summary.json and OUT/summary.md (the tables pasted into benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import numpy as np  # noqa: E402
from real_data_release import SHARED_DATA, write_release  # noqa: E402

CHAIN_MODES = ("raw", "unconstrained MAP", "repair")
SCORED_STEPS = ("Detection", "Diagnosis")


def train_run(dataset_dir: Path, out: Path, seed: int, epochs: int, extra=()) -> dict:
    from trainers.run_distill import main as run_distill

    if not (out / "results.json").is_file():
        argv = ["--dataset", str(dataset_dir), "--output_dir", str(out), "--seed", str(seed),
                "--num_train_epochs", str(epochs), "--save_strategy", "no", "--disable_tqdm", "true", *extra]
        run_distill(argv)
    return json.loads((out / "results.json").read_text())


def encode(model, images, batch_size=16):
    import torch

    from modeling_stepcot.processing_stepcot import image_processor_for_config, pixel_values_from_images

    processor = image_processor_for_config(model.config)
    chunks = []
    for start in range(0, len(images), batch_size):
        pixels = pixel_values_from_images(images[start:start + batch_size], model.config.image_size,
                                          processor.image_mean, processor.image_std)
        with torch.no_grad():
            chunks.append(model.encode_images(pixels))
    return torch.cat(chunks)


def step_log_probs(model, embeds) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        logits = model(image_embeds=embeds).step_logits
    return [torch.log_softmax(step.double(), -1).numpy() for step in logits]


def chain_accuracy(config, log_probs: list[np.ndarray], labels: np.ndarray) -> dict:
    """Accuracy of the detection and diagnosis steps under each chain decoding, and how many answers changed."""
    from modeling_stepcot.chain_stepcot import ChainChecker

    everything = ChainChecker(config.step_names, config.step_options)  # all steps, as before this change
    trained = ChainChecker.from_config(config)
    decoded = {mode: [] for mode in CHAIN_MODES}
    for row in range(labels.shape[0]):
        per_step = [lp[row] for lp in log_probs]
        decoded["raw"].append([int(np.argmax(lp)) for lp in per_step])
        decoded["unconstrained MAP"].append(everything.most_probable_consistent(per_step)[0])
        decoded["repair"].append(trained.repair(per_step)["labels"])
    result = {}
    for name in SCORED_STEPS:
        step = config.step_names.index(name)
        valid = labels[:, step] != -100
        if not valid.any():
            continue
        entry = {"n": int(valid.sum())}
        raw = np.asarray(decoded["raw"])[valid, step]
        for mode in CHAIN_MODES:
            predicted = np.asarray(decoded[mode])[valid, step]
            entry[mode] = float(np.mean(predicted == labels[valid, step]))
            entry[f"{mode} changed"] = int(np.sum(predicted != raw))
        result[name] = entry
    return result


def evaluate_chains(run_dir: Path, dataset_dir: Path, split="test") -> dict:
    from datasets import load_dataset
    from transformers import AutoModel

    import modeling_stepcot  # noqa: F401

    data = load_dataset(str(dataset_dir), split=split)
    images, labels = list(data["image"]), np.asarray(data["labels"])
    teacher = AutoModel.from_pretrained(run_dir / "teacher").eval()
    student = AutoModel.from_pretrained(run_dir / "student").eval()
    embeds = encode(teacher, images)
    student_embeds = embeds if student.config.vision_backbone == teacher.config.vision_backbone else encode(
        student, images)
    return {"teacher": chain_accuracy(teacher.config, step_log_probs(teacher, embeds), labels),
            "student": chain_accuracy(student.config, step_log_probs(student, student_embeds), labels)}


def ood_check(run_dir: Path, dataset_dir: Path) -> dict:
    """Share of images flagged by the pipeline: the model's own test split vs adult films (Actualmed COVID)."""
    from datasets import load_dataset

    from trainers.inference.predict import build_pipeline

    pipe = build_pipeline(str(run_dir / "teacher"))
    own = list(load_dataset(str(dataset_dir), split="test")["image"])
    adult_dir = SHARED_DATA / "actualmed-covid-cxr"
    adult = sorted(p for p in adult_dir.rglob("*.png"))
    result = {}
    for name, inputs in (("own test split", own), ("adult films (actualmed-covid-cxr)", [str(p) for p in adult])):
        outputs = pipe(inputs, batch_size=16)
        flagged = [o["out_of_distribution"]["flagged"] for o in outputs]
        distances = [o["out_of_distribution"]["distance"] for o in outputs]
        diagnoses = [o["steps"][-1]["answer"] for o in outputs]
        result[name] = {"n": len(outputs), "flagged": int(sum(flagged)),
                        "median_distance": float(np.median(distances)),
                        "diagnosis_answers": {a: diagnoses.count(a) for a in set(diagnoses)}}
    result["threshold"] = outputs[0]["out_of_distribution"]["threshold"]
    return result


FINE_TARGETS = {"kermany": ("Normal", "Bacterial", "Viral"), "covid": ("COVID-19", "other pneumonia")}

# The three- and two-class problems as a user imports them (README): the mapping files shipped in configs/mappings.
MAPPINGS_DIR = Path(__file__).resolve().parents[1] / "configs" / "mappings"
IMPORTED_MAPPINGS = {name: MAPPINGS_DIR / f"{name}.yaml" for name in ("kermany3", "kermany2")}



def cached_split_features(run_dir: Path, built: Path, teacher, labels_of) -> tuple[dict, dict]:
    """The run's cached image features of each split (read from its feature cache, never re-encoded) and
    `labels_of(split dataset)` beside them."""
    from datasets import load_dataset

    from modeling_stepcot.processing_stepcot import image_processor_for_config
    from trainers.training.feature_cache import (
        encoder_fingerprint,
        image_embeds_path,
        open_image_embeds,
        split_identity,
    )

    processor = image_processor_for_config(teacher.config)
    digest = encoder_fingerprint(teacher)
    features, labels = {}, {}
    for split in ("train", "validation", "test"):
        data = load_dataset(str(built), split=split)
        fingerprint, extra = split_identity(data, split, teacher.config.image_size, processor)
        folder = image_embeds_path(run_dir / "cache", fingerprint, digest, extra)
        features[split] = open_image_embeds(folder).to_tensor()
        labels[split] = labels_of(data)
    return features, labels

def write_imported_release(dataset: str, out: Path) -> None:
    """Kermany-480 imported as a user does (`stepcot data import table`) with the mapping of `dataset`."""
    from dataset_script.importers import import_table

    mapping = out.parent / f"{dataset}.yaml"
    mapping.write_text(IMPORTED_MAPPINGS[dataset].read_text(encoding="utf-8"), encoding="utf-8")
    import_table(SHARED_DATA / "kermany-pediatric-cxr-480" / "records.jsonl", out, mapping)


def diagnosis_record(run_dir: Path, built: Path) -> dict:
    """The diagnosis step of each model: accuracy, per-class recall, macro-F1 (test split); each model's
    calibration (ECE on test without / with the validation temperature) and the OOD false-flag rate of the
    teacher and student on their own unseen test images (in distribution: nominally 1 %)."""
    from datasets import load_dataset

    from trainers.evaluation.report import load_metrics, per_class_scores
    from trainers.inference.predict import build_pipeline

    record = {}
    for model in ("majority", "linear_probe", "teacher", "student"):
        step = [s for s in load_metrics(run_dir / "metrics" / model).steps if s.count][-1]
        rows = per_class_scores(step.confusion_matrix)
        present = [row for row in rows if row["support"]]
        record[model] = {"accuracy": float(np.trace(step.confusion_matrix) / step.count), "n": step.count,
                         "recall": {o: row["recall"] for o, row in zip(step.options, rows) if row["support"]},
                         "macro_f1": float(np.mean([row["f1"] or 0.0 for row in present]))}
    results = json.loads((run_dir / "results.json").read_text())["results"]
    test_images = list(load_dataset(str(built), split="test")["image"])
    for role in ("teacher", "student"):
        steps = results["calibration"][role]["steps"]
        record[role]["ece_before"] = steps[-1]["ece_uncalibrated"]
        record[role]["ece_after"] = steps[-1]["ece_calibrated"]
        record[role]["temperature"] = steps[-1]["temperature"]
        outputs = build_pipeline(str(run_dir / role))(test_images, batch_size=16)
        flagged = [o["out_of_distribution"]["flagged"] for o in outputs if "out_of_distribution" in o]
        record[role]["ood_flagged"], record[role]["ood_n"] = int(sum(flagged)), len(flagged)
    return record


def exact_mcnemar(model_only: int, probe_only: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs (right by one model only) under Binomial(n, 1/2)."""
    discordant = model_only + probe_only
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(model_only, probe_only) + 1)) / 2 ** discordant
    return min(1.0, 2 * tail)


def paired_correctness(run_dir: Path, built: Path, seed: int) -> dict:
    """Per test example, whether the linear probe, the teacher and the student answer the diagnosis right, and each
    model's validation and test probabilities, on the run's cached frozen features (the probe refitted as `stepcot
    train` fits it, with the run's seed); the accuracies equal the run's reported ones (`lean_summary` checks)."""
    import torch
    from transformers import AutoModel

    import modeling_stepcot  # noqa: F401
    from trainers.evaluation.linear_probe import baseline_scores

    teacher = AutoModel.from_pretrained(run_dir / "teacher").eval()
    student = AutoModel.from_pretrained(run_dir / "student").eval()
    features, labels = cached_split_features(run_dir, built, teacher, lambda data: np.asarray(data["labels"]))
    step = teacher.config.step_names.index("Diagnosis")
    result = {"probabilities": {}}
    for split in ("validation", "test"):  # validation: for choosing among variants without looking at test
        probe = baseline_scores(features["train"].numpy(), labels["train"], features["validation"].numpy(),
                                labels["validation"], features[split].numpy(), teacher.config.num_classes_per_step,
                                seed=seed)["Linear probe"][0][step]
        valid = labels[split][:, step] != -100
        truth = labels[split][valid, step]
        probabilities = {"linear_probe": np.asarray(probe)[valid]}
        with torch.no_grad():
            for role, model in (("teacher", teacher), ("student", student)):
                logits = model(image_embeds=features[split]).step_logits[step].double()
                probabilities[role] = torch.softmax(logits, -1).numpy()[valid]
        result["probabilities"][split] = {"labels": truth.tolist(),
                                          **{name: p.tolist() for name, p in probabilities.items()}}
    result["labels"] = truth.tolist()
    result.update({name: (p.argmax(1) == truth).astype(int).tolist() for name, p in probabilities.items()})
    return result


def paired_lines(chosen: list[dict]) -> list[str]:
    """Markdown: each model against the linear probe (and the student against the teacher), paired on the same test
    examples: mean over seeds of the accuracy difference, each seed's difference with its exact McNemar p, and the
    test pooled over the seeds' test predictions."""
    lines = ["| Comparison | mean paired difference, pp | per seed: pp (McNemar p) | pooled: right only by the "
             "first / only by the second | pooled exact McNemar p |", "|---|---|---|---|---|"]
    for first, second in (("teacher", "linear_probe"), ("student", "linear_probe"), ("student", "teacher")):
        gaps, cells, only_first, only_second = [], [], 0, 0
        for run in chosen:
            a, b = np.asarray(run["paired"][first]), np.asarray(run["paired"][second])
            b_only, c_only = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
            only_first, only_second = only_first + b_only, only_second + c_only
            gaps.append(100 * (a.mean() - b.mean()))
            cells.append(f"{gaps[-1]:+.1f} ({exact_mcnemar(b_only, c_only):.2f})")
        lines.append(f"| {first.replace('_', ' ')} − {second.replace('_', ' ')} | {np.mean(gaps):+.1f} | "
                     f"{' / '.join(cells)} | {only_first} / {only_second} | "
                     f"{exact_mcnemar(only_first, only_second):.3f} |")
    return lines


ENSEMBLES = {"teacher": ("teacher",), "student": ("student",), "teacher + student": ("teacher", "student"),
             "teacher + probe": ("teacher", "linear_probe"), "student + probe": ("student", "linear_probe")}


def ensemble_lines(chosen: list[dict]) -> list[str]:
    """Markdown: candidate ways of answering (each model, or the mean of two models' probabilities) scored on the
    VALIDATION split, mean over seeds beside the probe's; the candidate with the best mean validation accuracy is
    the one chosen, and only its test accuracy is shown (paired against the probe: exact McNemar, pooled). The
    probe's C and the models' best epochs are chosen on the same validation split, so its scores are optimistic."""
    def accuracy(run, split, members):
        record = run["paired"]["probabilities"][split]
        mean = np.mean([np.asarray(record[m]) for m in members], axis=0)
        return mean.argmax(1) == np.asarray(record["labels"])

    probe = np.mean([accuracy(run, "validation", ("linear_probe",)).mean() for run in chosen])
    lines = [f"Chosen on validation (mean over seeds; linear probe {100 * probe:.1f}):", "",
             "| Candidate | validation accuracy, mean | minus probe, pp |", "|---|---|---|"]
    scores = {}
    for name, members in ENSEMBLES.items():
        scores[name] = np.mean([accuracy(run, "validation", members).mean() for run in chosen])
        lines.append(f"| {name} | {100 * scores[name]:.1f} | {100 * (scores[name] - probe):+.1f} |")
    best = max(scores, key=scores.get)
    right = [accuracy(run, "test", ENSEMBLES[best]) for run in chosen]
    probe_right = [accuracy(run, "test", ("linear_probe",)) for run in chosen]
    only_best = sum(int(np.sum(a & ~b)) for a, b in zip(right, probe_right))
    only_probe = sum(int(np.sum(~a & b)) for a, b in zip(right, probe_right))
    gaps = [100 * (a.mean() - b.mean()) for a, b in zip(right, probe_right)]
    lines += ["", f"Chosen: {best}. On test: accuracy {100 * np.mean([a.mean() for a in right]):.1f} (mean), minus "
                  f"probe {' / '.join(f'{g:+.1f}' for g in gaps)} pp (mean {np.mean(gaps):+.1f}); pooled right only "
                  f"by it / only by the probe {only_best} / {only_probe}, exact McNemar p "
                  f"{exact_mcnemar(only_best, only_probe):.3f}."]
    return lines


def pooled_ece(chosen: list[dict], role: str) -> str:
    """"before / after" ECE (%) of one model over every split's test films together (each film scored with its own
    run's validation temperature): ~10x the films of one split, so far less noise than the mean of per-split ECEs."""
    from trainers.evaluation.calibration import expected_calibration_error

    if not all("probabilities" in run["paired"] and "temperature" in run["diagnosis"][role] for run in chosen):
        return "n/a"
    log_probs, scaled, labels = [], [], []
    for run in chosen:
        test = run["paired"]["probabilities"]["test"]
        log_p = np.log(np.clip(np.asarray(test[role], dtype=np.float64), 1e-300, 1.0))  # logits up to a constant
        log_probs.append(log_p)
        scaled.append(log_p / run["diagnosis"][role]["temperature"])
        labels.append(np.asarray(test["labels"]))
    labels = np.concatenate(labels)
    before = expected_calibration_error(np.concatenate(log_probs), labels)
    after = expected_calibration_error(np.concatenate(scaled), labels)
    return f"{100 * before:.1f} / {100 * after:.1f}"


def lean_summary(runs: list[dict]) -> str:
    """Per dataset: each model's diagnosis accuracy, macro-F1 and per-class recall (mean over split seeds, and the
    range), calibration and the OOD false-flag rate pooled over seeds (Wilson 95 %)."""
    from trainers.evaluation.metrics import wilson_interval

    lines = []
    for dataset in dict.fromkeys(run["dataset"] for run in runs):
        chosen = [run for run in runs if run["dataset"] == dataset and "diagnosis" in run]
        if not chosen:
            continue
        seeds = ", ".join(str(run["seed"]) for run in chosen)
        classes = list(chosen[0]["diagnosis"]["teacher"]["recall"])
        lines += [f"### {dataset}: split seeds {seeds} (test n = "
                  f"{', '.join(str(run['diagnosis']['teacher']['n']) for run in chosen)})", "",
                  "| Model | accuracy mean [min, max] | macro-F1 mean | " + " | ".join(f"recall {c}" for c in classes)
                  + " | minus probe, pp (per seed) |", "|---|---|---|" + "---|" * len(classes) + "---|"]
        for model in ("majority", "linear_probe", "teacher", "student"):
            acc = [run["diagnosis"][model]["accuracy"] for run in chosen]
            f1 = [run["diagnosis"][model]["macro_f1"] for run in chosen]
            recalls = [np.mean([run["diagnosis"][model]["recall"].get(c) or 0.0 for run in chosen]) for c in classes]
            gap = [100 * (run["diagnosis"][model]["accuracy"] - run["diagnosis"]["linear_probe"]["accuracy"])
                   for run in chosen]
            lines.append(f"| {model.replace('_', ' ')} | {100 * np.mean(acc):.1f} [{100 * min(acc):.1f}, "
                         f"{100 * max(acc):.1f}] | {100 * np.mean(f1):.1f} | "
                         + " | ".join(f"{100 * r:.1f}" for r in recalls)
                         + f" | {' / '.join(f'{g:+.1f}' for g in gap)} (mean {np.mean(gap):+.1f}) |")
        for run in chosen:  # the paired predictions reproduce the run's own scores
            for model in ("linear_probe", "teacher", "student"):
                recomputed, reported = np.mean(run["paired"][model]), run["diagnosis"][model]["accuracy"]
                if abs(recomputed - reported) > 1e-6:
                    raise SystemExit(f"{dataset} seed {run['seed']}: {model} paired accuracy {recomputed:.4f} is "
                                     f"not the reported {reported:.4f}")
        lines += ["", *paired_lines(chosen)]
        if all("probabilities" in run["paired"] for run in chosen):
            lines += ["", *ensemble_lines(chosen)]
        lines += ["", "| Model | ECE uncalibrated / with the validation temperature, mean of splits | the same, all "
                      "splits' test films pooled | validation temperature, median [min, max] | OOD flags on unseen "
                      "test images, pooled [Wilson 95 %] |", "|---|---|---|---|---|"]
        for role in ("teacher", "student"):
            before = np.mean([run["diagnosis"][role]["ece_before"] for run in chosen])
            after = np.mean([run["diagnosis"][role]["ece_after"] for run in chosen])
            pooled = pooled_ece(chosen, role)
            temperatures = [run["diagnosis"][role].get("temperature", float("nan")) for run in chosen]
            flagged = sum(run["diagnosis"][role]["ood_flagged"] for run in chosen)
            total = sum(run["diagnosis"][role]["ood_n"] for run in chosen)
            low, high = wilson_interval(flagged, total) if total else (float("nan"), float("nan"))
            lines.append(f"| {role} | {100 * before:.1f} / {100 * after:.1f} | {pooled} | "
                         f"{np.median(temperatures):.2f} [{min(temperatures):.2f}, {max(temperatures):.2f}] | "
                         f"{flagged} of {total} = {100 * flagged / max(total, 1):.1f} % [{100 * low:.1f}, "
                         f"{100 * high:.1f}] |")
        lines.append("")
    return "\n".join(lines)


def fine_label_baselines(dataset: str, run_dir: Path, built: Path, release: Path, seed: int) -> dict:
    """The finer question the default schema cannot ask (Kermany Normal / Bacterial / Viral; COVID-19 vs the other
    infectious findings), on the run's cached frozen features: majority class vs linear probe, test accuracy with
    its Wilson interval. Records are matched to their fine label by patient key."""
    from transformers import AutoModel

    import modeling_stepcot  # noqa: F401
    from trainers.evaluation.linear_probe import baseline_scores
    from trainers.evaluation.metrics import wilson_interval

    records = json.loads((release / "data.json").read_text())
    fine_of = {}  # one fine label per patient key (a patient's images share their finding)
    for record in records:
        fine_of.setdefault(record["patient_id"].strip(), record["fine_label"])  # the build strips ids
    targets = FINE_TARGETS[dataset]

    def target(fine):
        if dataset == "covid":
            infectious = fine not in ("No Finding", "unlabelled", "todo", "ARDS", "Lipoid")
            return 0 if fine == "COVID-19" else (1 if infectious else -100)
        return targets.index(fine)

    teacher = AutoModel.from_pretrained(run_dir / "teacher")
    features, labels = cached_split_features(
        run_dir, built, teacher, lambda data: np.array([[target(fine_of[patient])] for patient in data["patient_id"]]))
    scores = baseline_scores(features["train"].numpy(), labels["train"], features["validation"].numpy(),
                             labels["validation"], features["test"].numpy(), [len(targets)], seed=seed)
    valid = labels["test"][:, 0] != -100
    result = {"classes": list(targets), "n_test": int(valid.sum()),
              "test_counts": np.bincount(labels["test"][valid, 0], minlength=len(targets)).tolist()}
    for name, (probabilities, info) in scores.items():
        correct = int(np.sum(probabilities[0][valid].argmax(1) == labels["test"][valid, 0]))
        low, high = wilson_interval(correct, int(valid.sum()))
        result[name] = {"accuracy": correct / max(1, int(valid.sum())), "wilson": [low, high],
                        "chosen_c": info.get("chosen_c", [None])[0]}
    return result


def step_rows(results: dict, role_keys: dict) -> dict:
    """{model: {step metric: value}} from one run's results.json."""
    rows = {}
    for label, (group, key) in role_keys.items():
        source = results["results"][group] if group else results["results"]
        rows[label] = source[key] if key else source
    return rows


def summarise(runs: list[dict]) -> str:
    """Markdown: per dataset, per model, diagnosis accuracy over seeds (mean and each seed), then chain tables."""
    lines = []
    for dataset in dict.fromkeys(run["dataset"] for run in runs):
        chosen = [run for run in runs if run["dataset"] == dataset]
        lines += [f"### {dataset} ({len(chosen)} split seed{'s' if len(chosen) > 1 else ''}: "
                  f"{', '.join(str(r['seed']) for r in chosen)})", "",
                  "| Model | Diagnosis accuracy per seed [95% CI] | mean | Diagnosis AUC per seed |",
                  "|---|---|---|---|"]
        step = chosen[0]["diagnosis_step"]
        for model in ("majority", "linear_probe", "teacher", "student"):
            cells, values, aucs = [], [], []
            for run in chosen:
                flat = run["metrics"][model]
                value = flat[f"step{step}_accuracy"]
                values.append(value)
                cells.append(f"{100 * value:.1f} [{100 * flat[f'step{step}_accuracy_ci_low']:.1f}, "
                             f"{100 * flat[f'step{step}_accuracy_ci_high']:.1f}]"
                             if f"step{step}_accuracy_ci_low" in flat else f"{100 * value:.1f}")
                auc = flat[f"step{step}_auc"]
                aucs.append("—" if auc is None or (isinstance(auc, float) and math.isnan(auc)) else f"{100 * auc:.1f}")
            lines.append(f"| {model.replace('_', ' ')} | {'; '.join(cells)} | {100 * np.mean(values):.1f} | "
                         f"{'; '.join(aucs)} |")
        lines += ["", "Paired differences (test examples of each seed; paired bootstrap 95%):", ""]
        for run in chosen:
            lines += [f"- seed {run['seed']}: " + "; ".join(run["differences"])]
        lines += ["", "| Model | Step | n | raw | unconstrained MAP (changed) | repair (changed) |",
                  "|---|---|---|---|---|---|"]
        for run in chosen:
            for role in ("teacher", "student"):
                for step_name, entry in run["chains"][role].items():
                    lines.append(
                        f"| {role} (seed {run['seed']}) | {step_name} | {entry['n']} | {100 * entry['raw']:.1f} | "
                        f"{100 * entry['unconstrained MAP']:.1f} ({entry['unconstrained MAP changed']}) | "
                        f"{100 * entry['repair']:.1f} ({entry['repair changed']}) |")
        fine = [run for run in chosen if "fine_labels" in run]
        if fine:
            classes = " / ".join(fine[0]["fine_labels"]["classes"])
            lines += ["", f"Finer labels ({classes}) on the same frozen features, test accuracy [95% Wilson]:", "",
                      "| seed | n (per class) | majority | linear probe (C) |", "|---|---|---|---|"]
            for run in fine:
                entry = run["fine_labels"]
                cells = [f"{100 * entry[m]['accuracy']:.1f} [{100 * entry[m]['wilson'][0]:.1f}, "
                         f"{100 * entry[m]['wilson'][1]:.1f}]" for m in ("Majority", "Linear probe")]
                lines.append(f"| {run['seed']} | {entry['n_test']} ({', '.join(map(str, entry['test_counts']))}) | "
                             f"{cells[0]} | {cells[1]} ({entry['Linear probe']['chosen_c']}) |")
        if any("ood" in run for run in chosen):
            ood = next(run["ood"] for run in chosen if "ood" in run)
            lines += ["", f"Out-of-distribution flag (teacher, seed {chosen[0]['seed']}, threshold "
                          f"{ood['threshold']:.2f}):", ""]
            lines += [f"- {name}: {entry['flagged']} of {entry['n']} flagged (median distance "
                      f"{entry['median_distance']:.2f}; diagnosis answers {entry['diagnosis_answers']})"
                      for name, entry in ood.items() if name != "threshold"]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--datasets", nargs="+", default=["kermany", "covid", "demo"],
                        help="kermany (Normal / Pneumonia in the seven-step schema), kermany2 (Normal / Pneumonia) "
                             "and kermany3 (Normal / Bacterial / Viral; one step each, imported as the README "
                             "does), covid, demo")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20, help="distillation epochs (default 20; paper 40)")
    parser.add_argument("--demo-size", type=int, default=600)
    parser.add_argument("--hp-search-trials", type=int, default=0,
                        help="`stepcot train --hp_search_trials N` for the real-data runs: N trials on the cached "
                             "features, chosen on the validation split, before each run (default 0: none)")
    parser.add_argument("--ood", action="store_true", help="also run the out-of-distribution check (Kermany)")
    parser.add_argument("--lean", action="store_true",
                        help="only the diagnosis record per run (accuracy, per-class recall, macro-F1, calibration, "
                             "OOD false flags): no chain decoding, no finer-label baselines")
    parser.add_argument("--train-option", action="append", default=[], metavar="OPTION=VALUE",
                        help="another `stepcot train` option for the real-data runs, e.g. teacher_schedule=plateau "
                             "(repeatable)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from dataset_script.parquet_export import build_hub_dataset
    from trainers.evaluation.report import load_metrics
    from trainers.training.run_scoring import DIFFERENCES_FILENAME

    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    started = time.perf_counter()
    for dataset in args.datasets:
        seeds = args.seeds if dataset != "demo" else args.seeds[:1]
        for seed in seeds:
            run_dir = args.out / f"{dataset}-seed{seed}"
            if dataset == "demo":
                train_run("demo", run_dir, seed, args.epochs, ["--demo_size", str(args.demo_size)])
                built = run_dir / "dataset"
            else:
                release = args.out / f"{dataset}-release"
                if not (release / "data.json").is_file():
                    write_imported_release(dataset, release) if dataset in IMPORTED_MAPPINGS else write_release(
                        dataset, release)
                built = args.out / f"{dataset}-built-seed{seed}"
                if not (built / "README.md").is_file():
                    build_hub_dataset(release, built, strict=False, seed=seed)
                options = [part for option in args.train_option for part in ("--" + option.split("=", 1)[0],
                                                                             option.split("=", 1)[-1])]
                train_run(built, run_dir, seed, args.epochs,
                          ["--hp_search_trials", str(args.hp_search_trials), *options])
            metrics = {model: load_metrics(run_dir / "metrics" / model).flat(include_ci=True)
                       for model in ("majority", "linear_probe", "teacher", "student")}
            differences_file = run_dir / "metrics" / DIFFERENCES_FILENAME
            differences = [line for line in differences_file.read_text().splitlines() if "Diagnosis" in line]
            if args.lean:
                record_file = run_dir / "diagnosis.json"
                if not record_file.is_file():
                    record_file.write_text(json.dumps(diagnosis_record(run_dir, built), indent=1))
                paired_file = run_dir / "paired.json"
                if not paired_file.is_file():
                    paired_file.write_text(json.dumps(paired_correctness(run_dir, built, seed)))
                runs.append({"dataset": dataset, "seed": seed, "differences": differences,
                             "diagnosis": json.loads(record_file.read_text()),
                             "paired": json.loads(paired_file.read_text())})
                (args.out / "summary.json").write_text(json.dumps(runs, indent=1, default=str))
                print(f"[{time.perf_counter() - started:.0f} s] {dataset} seed {seed} done", flush=True)
                continue
            chains_file = run_dir / "chains.json"  # a rerun reuses what a finished run measured
            if not chains_file.is_file():
                chains_file.write_text(json.dumps(evaluate_chains(run_dir, built), indent=1))
            run = {"dataset": dataset, "seed": seed, "diagnosis_step": 7, "metrics": metrics,
                   "differences": differences, "chains": json.loads(chains_file.read_text())}
            fine_file = run_dir / "fine_labels.json"
            if dataset in FINE_TARGETS and not fine_file.is_file():
                fine_file.write_text(json.dumps(fine_label_baselines(
                    dataset, run_dir, built, args.out / f"{dataset}-release", seed), indent=1))
            if fine_file.is_file():
                run["fine_labels"] = json.loads(fine_file.read_text())
            ood_file = run_dir / "ood.json"
            if args.ood and dataset == "kermany" and seed == seeds[0] and not ood_file.is_file():
                ood_file.write_text(json.dumps(ood_check(run_dir, built), indent=1))
            if ood_file.is_file():
                run["ood"] = json.loads(ood_file.read_text())
            runs.append(run)
            (args.out / "summary.json").write_text(json.dumps(runs, indent=1, default=str))
            print(f"[{time.perf_counter() - started:.0f} s] {dataset} seed {seed} done", flush=True)
    summary = lean_summary(runs) if args.lean else summarise(runs)
    (args.out / "summary.md").write_text(summary)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
