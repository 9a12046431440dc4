"""Turn the real image collections of `../shared/data` into Step-CoT releases (data.json + images/), diagnosis only.

    python benchmarks/real_data_release.py kermany /tmp/kermany-release
    python benchmarks/real_data_release.py covid /tmp/covid-release

The releases keep the paper's default schema (nine diagnosis options; `stepcot data import` with a mapping file
builds releases with their own steps and options instead), so the diagnoses map onto it: Kermany Normal ->
"Normal", bacterial or viral pneumonia -> "Pneumonia" (the finer Normal / Bacterial / Viral label is kept as
`fine_label` for the feature-only baselines); COVID case notes: "No Finding" -> "Normal", any infectious finding
-> "Pneumonia", anything else (ARDS, Lipoid, unlabelled, 'todo') -> no answer. Steps 1-6 have no labels: "No
Answer" (-100), so only the diagnosis is trained.

Patient keys: Kermany file names carry the patient ("person1_bacteria_1" -> person1; a Normal "IM-0115-0001" is one
patient per image series "IM-0115"); the COVID collection keeps no patient id here, so images sharing the same
case notes (one case, often several days) are one group, and otherwise the file name without its day/index suffix.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_stepcot.configuration_stepcot import (  # noqa: E402
    DEFAULT_STEP_NAMES,
    DEFAULT_STEP_OPTIONS,
    DEFAULT_STEP_QUESTIONS,
)

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("STEPCOT_SHARED_DATA") or REPOSITORY.parent / "shared" / "data")
SOURCES = {"kermany": SHARED_DATA / "kermany-pediatric-cxr-480", "covid": SHARED_DATA / "covid-chestxray-cases"}
NO_ANSWER = "No Answer"
INFECTIOUS = {"covid-19", "sars", "pneumocystis", "streptococcus", "pneumonia", "klebsiella", "e.coli", "varicella",
              "mycoplasma bacterial pneumonia", "legionella", "bacterial", "influenza", "covid-19, ards"}


def kermany_labels(record: dict) -> tuple[str, str, str]:
    """(diagnosis option, fine label, patient key)."""
    labels = [label.lower() for label in record["labels"]]
    name = Path(record["source_path"]).stem
    fine = "Normal" if labels == ["normal"] else ("Bacterial" if "bacteria" in labels else "Viral")
    match = re.match(r"(person\d+)_", name)
    patient = match.group(1) if match else "-".join(name.split("-")[:2])
    return ("Normal" if fine == "Normal" else "Pneumonia"), fine, patient


def covid_labels(record: dict) -> tuple[str, str, str]:
    finding = (record["labels"][0] if record["labels"] else "").strip()
    if finding.lower() == "no finding":
        diagnosis = "Normal"
    elif finding.lower() in INFECTIOUS:
        diagnosis = "Pneumonia"
    else:
        diagnosis = NO_ANSWER
    fine = "COVID-19" if finding.lower().startswith("covid-19") else (finding or "unlabelled")
    notes = (record.get("report") or "").strip()
    stem = re.sub(r"([-_](day)?[-_]?\d+)+$", "", Path(record["source_path"]).stem.lower())
    return diagnosis, fine, ("notes:" + notes[:80]) if notes else stem


def write_release(kind: str, out: Path, source: Path | None = None) -> dict:
    source = Path(source or SOURCES[kind])
    records_file = source / "records.jsonl"
    if not records_file.is_file():
        raise FileNotFoundError(f"{records_file} not found (the real data lives in ../shared/data)")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "images").exists():  # copied: a release never points outside its folder (no symlink out)
        shutil.copytree(source / "images", out / "images")
    to_labels = kermany_labels if kind == "kermany" else covid_labels
    records, counts = [], {}
    for line in records_file.read_text(encoding="utf-8").splitlines():
        raw = json.loads(line)
        diagnosis, fine, patient = to_labels(raw)
        counts[diagnosis] = counts.get(diagnosis, 0) + 1
        chain = [{"step": f"Step {i + 1}", "question": question, "options": options,
                  "answer": diagnosis if i == len(DEFAULT_STEP_NAMES) - 1 else NO_ANSWER}
                 for i, (question, options) in enumerate(zip(DEFAULT_STEP_QUESTIONS, DEFAULT_STEP_OPTIONS))]
        records.append({"patient_id": patient, "image_path": raw["image"], "origin": raw.get("dataset", kind),
                        "report": raw.get("report", ""), "view": "AP" if kind == "kermany" else raw.get("view"),
                        "fine_label": fine, "source_id": raw["id"], "vqa_chain": chain})
    (out / "data.json").write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    return {"records": len(records), "diagnoses": counts, "patients": len({r["patient_id"] for r in records})}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(SOURCES))
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", type=Path, default=None)
    args = parser.parse_args(argv)
    print(json.dumps(write_release(args.kind, args.out, args.source)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
