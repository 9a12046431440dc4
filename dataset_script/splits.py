"""Which split each record of a release is in: the release's split lists (train/val/test .xlsx or .csv, by patient
id or image path), else a seeded patient-grouped split stratified by diagnosis (`stratified_group_split`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from dataset_script.records import RECORD_FIELD_ALIASES, StepCoTDataError, field_key

SPLITS = ("train", "validation", "test")
# Split-list file stems as they appear in releases -> canonical split name.
SPLIT_FILE_STEMS = {"train": "train", "val": "validation", "valid": "validation", "validation": "validation",
                    "dev": "validation", "test": "test"}
SPLIT_FILE_EXTENSIONS = (".xlsx", ".csv")
DEFAULT_SPLIT_FRACTIONS = (0.70, 0.15, 0.15)


def find_split_files(root) -> dict[str, Path]:
    """Canonical split name -> split-list file (train/val/test .xlsx or .csv) present in `root`."""
    found = {}
    for path in sorted(Path(root).iterdir()):
        if path.suffix.lower() in SPLIT_FILE_EXTENSIONS and path.stem.lower() in SPLIT_FILE_STEMS:
            split = SPLIT_FILE_STEMS[path.stem.lower()]
            if split in found:
                raise StepCoTDataError(f"two split files for {split!r}: {found[split].name} and {path.name}")
            found[split] = path
    return found


def read_split_file(path, patient_ids: set[str], image_paths: set[str]) -> tuple[str, list[str]]:
    """Read one split list: returns ("patient_id" | "image_path", values). Detects the column by its name, else
    by which column's values match the release's patient ids or image paths."""
    import pandas as pd

    path = Path(path)
    try:
        frame = pd.read_excel(path, dtype=str) if path.suffix.lower() == ".xlsx" else pd.read_csv(path, dtype=str)
    except Exception as error:  # pandas raises many types (EmptyDataError, BadZipFile, ParserError, ...)
        raise StepCoTDataError(f"{path.name}: unreadable split file ({type(error).__name__}: {error})") from None
    columns = {field_key(column): column for column in frame.columns}
    for kind in ("image_path", "patient_id"):
        for alias in RECORD_FIELD_ALIASES[kind]:
            if field_key(alias) in columns:
                return kind, _clean_values(frame[columns[field_key(alias)]])
    # Unknown header: pick the column whose values (header included, in case the file has none) match best.
    best = (0.0, None, None)
    for column in frame.columns:
        values = [str(column)] + _clean_values(frame[column])
        for kind, known in (("patient_id", patient_ids), ("image_path", image_paths)):
            names = known if kind == "patient_id" else {Path(p).name for p in known} | known
            share = sum(v in names or Path(v).name in names for v in values) / max(len(values), 1)
            if share > best[0]:
                best = (share, kind, values)
    if best[0] < 0.5:
        raise StepCoTDataError(
            f"{path.name}: no patient_id or image_path column found (columns: {list(frame.columns)})"
        )
    values = [v for v in best[2] if v in patient_ids or v in image_paths or Path(v).name in
              {Path(p).name for p in image_paths}]
    return best[1], values

def _clean_values(series) -> list[str]:
    return [str(value).strip() for value in series.dropna() if str(value).strip()]


def stratified_group_split(
    diagnoses: list[str], groups: list[str], fractions=DEFAULT_SPLIT_FRACTIONS, seed: int = 0
) -> list[str]:
    """Assign each record to train/validation/test: whole groups (patients) move together, and within each
    diagnosis the record counts follow `fractions`. A patient is stratified by its most frequent diagnosis.

    Greedy per stratum: patients in seeded random order go to the split furthest below its target count.
    """
    if len(diagnoses) != len(groups):
        raise ValueError("diagnoses and groups must have the same length")
    fractions = np.asarray(fractions, dtype=float) / np.sum(fractions)
    records_of = defaultdict(list)
    for index, group in enumerate(groups):
        records_of[group].append(index)
    stratum_of = {group: Counter(diagnoses[i] for i in idx).most_common(1)[0][0] for group, idx in records_of.items()}
    rng = np.random.default_rng(seed)
    assignment = [None] * len(groups)
    for stratum in sorted(set(stratum_of.values())):
        members = sorted(group for group, s in stratum_of.items() if s == stratum)
        members = [members[i] for i in rng.permutation(len(members))]
        total = sum(len(records_of[g]) for g in members)
        counts = np.zeros(len(SPLITS))
        for group in members:
            size = len(records_of[group])
            # The split furthest below its target share of this stratum takes the next patient.
            deficit = fractions * total - counts
            split = int(np.argmax(deficit))
            counts[split] += size
            for index in records_of[group]:
                assignment[index] = SPLITS[split]
    return assignment


__all__ = [
    "DEFAULT_SPLIT_FRACTIONS",
    "SPLITS",
    "SPLIT_FILE_EXTENSIONS",
    "SPLIT_FILE_STEMS",
    "find_split_files",
    "read_split_file",
    "stratified_group_split",
]
