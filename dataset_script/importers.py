"""`stepcot data import`: your own images and labels, in the common layouts, -> a Step-CoT release folder
(data.json, images/, schema.json) that `stepcot data build` / `--dataset` read.

Layouts:
    folders   class folders, Kermany style: ROOT/<label>/<image> (any depth: ROOT/train/NORMAL/x.jpeg works; the
              label is the folder right above the image)
    table     a CSV / JSONL / JSON list with an image column and a labels column (NIH Data_Entry style
              "Finding Labels" = "Effusion|Infiltration"; a JSON list also works)
    reports   image + report pairs: the reports go through the annotator (`dataset_script.annotate`)

A mapping file (JSON or YAML) says what the labels mean:

    steps:                      # optional: your own step schema; without it the Step-CoT seven steps are used
      - {name: Diagnosis, question: What does the radiograph show?, options: [Normal, Bacterial, Viral]}
    labels:                     # label -> answers of one or more steps (by step name); {} = carries no answer
      NORMAL: {Diagnosis: Normal}
      bacteria: {Diagnosis: Bacterial}
      Pnemonia: {}
    patient_id: '(person\\d+|IM-\\d+)'    # regex on the image file name (group 1), or a column name (table)

Without a mapping file, the labels themselves become the options of one "Diagnosis" step (a row with several
labels then cannot be mapped and is listed). Labels are matched case-insensitively. A row whose label has no
mapping is left out; two labels that answer one step differently leave that step unanswered (-100, a partial
chain). Everything is counted in IMPORT_REPORT (what mapped, what did not, and why).
"""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

from dataset_script.annotate.annotator import annotate_rows
from dataset_script.annotate.records import read_reports
from dataset_script.record_stream import JsonArrayWriter
from dataset_script.records import RECORD_FIELD_ALIASES, StepCoTDataError, get_field, normalize_text
from dataset_script.schema import SCHEMA_FILE
from dataset_script.user_files import check_document_size, read_utf8_text, table_file_rows
from modeling_stepcot.configuration_stepcot import StepCoTSchemaConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
IMPORT_REPORT = "import_report.json"
LABEL_COLUMNS = ("labels", "label", "finding_labels", "finding labels", "findings_labels", "class", "finding",
                 "diagnosis")
IMAGE_COLUMNS = ("image_path", "image", "image_index", "image index", "filename", "file_name", "path", "img")
KEPT_COLUMNS = {"view": RECORD_FIELD_ALIASES["view"], "license": ("license", "licence")}


# ---------------------------------------------------------------------------------------------------------------
# The mapping
# ---------------------------------------------------------------------------------------------------------------


class LabelMapping:
    """Labels -> step answers, and the step schema they answer."""

    def __init__(self, config: StepCoTSchemaConfig, answers: dict[str, dict[int, str]] | None,
                 patient_id: str | None = None, custom_schema: bool = False):
        self.config = config
        self.answers = answers  # normalised label -> {step index: option}; None: each label is its own answer
        self.patient_id = patient_id
        self.custom_schema = custom_schema

    @classmethod
    def from_file(cls, path) -> LabelMapping:
        path = Path(path)
        text = read_utf8_text(path, StepCoTDataError)
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as error:  # noqa: BLE001 - any parse error is reported with the file name
            raise StepCoTDataError(f"{path}: cannot read the mapping file ({type(error).__name__}: {error})") \
                from None
        check_document_size(data, path, StepCoTDataError)
        if not isinstance(data, dict) or not isinstance(data.get("labels"), dict):
            raise StepCoTDataError(f"{path}: a mapping file needs a 'labels' table (label -> {{step: answer}})")
        if data.get("steps"):
            try:
                config = StepCoTSchemaConfig(step_names=[str(s["name"]) for s in data["steps"]],
                                             step_questions=[str(s.get("question") or s["name"])
                                                             for s in data["steps"]],
                                             step_options=[[str(o) for o in s["options"]] for s in data["steps"]])
            except (KeyError, TypeError, ValueError) as error:
                raise StepCoTDataError(f"{path}: 'steps' must list {{name, question, options}} ({error})") from None
        else:
            config = StepCoTSchemaConfig()
        names = {normalize_text(name): index for index, name in enumerate(config.step_names)}
        answers = {}
        for label, steps in data["labels"].items():
            steps = steps or {}
            if not isinstance(steps, dict):
                raise StepCoTDataError(f"{path}: label {label!r}: expected {{step name: answer}}, got {steps!r}")
            mapped = {}
            for step_name, answer in steps.items():
                index = names.get(normalize_text(step_name))
                if index is None:
                    raise StepCoTDataError(f"{path}: label {label!r}: unknown step {step_name!r} "
                                           f"(steps: {config.step_names})")
                options = {normalize_text(option): option for option in config.step_options[index]}
                if normalize_text(answer) not in options:
                    raise StepCoTDataError(f"{path}: label {label!r}: {answer!r} is not an option of step "
                                           f"{config.step_names[index]!r} {config.step_options[index]}")
                mapped[index] = options[normalize_text(answer)]
            answers[normalize_text(label)] = mapped
        return cls(config, answers, data.get("patient_id"), custom_schema=bool(data.get("steps")))

    @classmethod
    def from_labels(cls, labels, patient_id: str | None = None) -> LabelMapping:
        """No mapping file: one "Diagnosis" step whose options are the labels seen (sorted)."""
        options = sorted({label for label in labels}, key=str.lower)
        if len(options) < 2:
            raise StepCoTDataError(f"found {len(options)} label(s) {options}: a step needs at least two options")
        config = StepCoTSchemaConfig(step_names=["Diagnosis"], step_questions=["What is the diagnosis?"],
                                     step_options=[options])
        return cls(config, None, patient_id, custom_schema=True)

    def chain(self, labels: list[str]) -> tuple[list[dict] | None, str | None, list[str]]:
        """(partial chain, reason it could not be mapped, steps left unanswered by conflicting labels)."""
        if not labels:
            return None, "no label", []
        if self.answers is None:
            if len(labels) > 1:
                return None, f"{len(labels)} labels {labels}: a mapping file is needed to combine labels", []
            answers = {0: labels[0]}
        else:
            unmapped = [label for label in labels if normalize_text(label) not in self.answers]
            if unmapped:
                return None, f"label(s) {unmapped} not in the mapping file", []
            answers, conflicts = {}, set()
            for label in labels:
                for index, answer in self.answers[normalize_text(label)].items():
                    if answers.get(index, answer) != answer:
                        conflicts.add(index)
                    answers[index] = answer
            for index in conflicts:
                answers.pop(index)
            conflicts = [self.config.step_names[i] for i in sorted(conflicts)]
            if not answers:
                return None, "the labels answer no step" + (f" (conflicts on {conflicts})" if conflicts else ""), \
                    conflicts
            return self._steps(answers), None, conflicts
        return self._steps(answers), None, []

    def _steps(self, answers: dict[int, str]) -> list[dict]:
        return [{"step": self.config.step_names[i], "question": self.config.step_questions[i],
                 "options": list(self.config.step_options[i]), "answer": answers[i]} for i in sorted(answers)]

    def patient_of(self, image: Path, row: dict | None = None) -> tuple[str, bool]:
        """(patient / group id, whether it came from a grouping key). The key is a column of the row when one has
        that name, else a regex on the image file name (group 1, or the whole match); without a key, the row's
        patient_id column; else the image's own name (each image its own group, which the report says)."""
        row = row or {}
        if self.patient_id:
            value = _column(row, (self.patient_id,))
            if value not in (None, ""):
                return str(value), True
            try:
                match = re.search(self.patient_id, image.name) if value is None else None
            except re.error as error:
                raise StepCoTDataError(f"patient_id {self.patient_id!r} is neither a column nor a valid regex "
                                       f"({error})") from None
            if match:
                return (match.group(1) if match.groups() else match.group(0)), True
        _, value = get_field(row, RECORD_FIELD_ALIASES["patient_id"])
        if value not in (None, ""):
            return str(value), True
        return image.stem, False


def _column(row: dict, names) -> object:
    by_key = {re.sub(r"[^a-z0-9]", "", str(key).lower()): key for key in row}
    for name in names:
        key = by_key.get(re.sub(r"[^a-z0-9]", "", name.lower()))
        if key is not None:
            return row[key]
    return None


# ---------------------------------------------------------------------------------------------------------------
# Reading the layouts
# ---------------------------------------------------------------------------------------------------------------


def folder_rows(root) -> list[dict]:
    """One row per image under ROOT: its label is the name of the folder holding it."""
    root = Path(root)
    if not root.is_dir():
        raise StepCoTDataError(f"image folder not found: {root}")
    rows = [{"image": path, "labels": [path.parent.name]} for path in sorted(root.rglob("*"))
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and path.parent != root]
    if not rows:
        raise StepCoTDataError(f"{root}: no images in class folders (expected ROOT/<label>/<image>)")
    return rows


def _split_labels(value, separator: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    listed = _listed_labels(str(value).strip())
    if listed is not None:
        return _split_labels(listed, separator)
    return [part.strip() for part in str(value).split(separator) if part.strip()]


def _listed_labels(text: str) -> list | None:
    """A CSV cell that holds a list: JSON (`["Normal"]`) or a Python literal as pandas writes a list column
    (`['Normal']`); None for anything else (then the cell is split on the separator)."""
    if not (text.startswith("[") and text.endswith("]")):
        return None
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(value, list) and all(isinstance(v, (str, int)) for v in value):
            return value
    return None


def _table_records(path: Path):
    """(line or element number, row) of a CSV / JSONL / JSON list, read one row at a time; a row that cannot be used
    is a `StepCoTDataError` in place of its dict (`user_files`)."""
    return table_file_rows(path, error=StepCoTDataError)


def iter_table_rows(path, images_dir=None, separator: str = "|", image_column: str | None = None,
                    label_column: str | None = None):
    """The rows of `table_rows`, read from the file one at a time; the columns are checked first (a pass over the
    file that keeps nothing), so an unusable table raises before any row is given out."""
    path = Path(path)
    if not path.is_file():
        raise StepCoTDataError(f"table not found: {path}")
    image_names = (image_column,) if image_column else IMAGE_COLUMNS
    label_names = (label_column,) if label_column else LABEL_COLUMNS
    first, has_labels = None, False
    for _, row in _table_records(path):
        if isinstance(row, StepCoTDataError):
            continue
        if first is None:
            first = row
            if _column(row, image_names) is None:
                raise StepCoTDataError(f"{path}: no image column (tried {list(image_names)}; columns: {list(row)})")
            if _column(row, label_names) is None and label_column is not None:
                break
        if _column(row, label_names) is not None:
            has_labels = True
            break
    if first is None:
        raise StepCoTDataError(f"{path}: no rows")
    if not has_labels:
        raise StepCoTDataError(f"{path}: no labels column (tried {list(label_names)}; columns: {list(first)})")
    return _table_rows(path, Path(images_dir) if images_dir else path.parent, separator, image_names, label_names)


def _table_rows(path: Path, images_dir: Path, separator: str, image_names, label_names):
    for line, row in _table_records(path):
        if isinstance(row, StepCoTDataError):
            yield {"image": None, "problem": str(row), "row": None, "labels": [], "where": f"{path.name}:{line}"}
            continue
        image = Path(str(_column(row, image_names)))
        candidates = [image] if image.is_absolute() else [images_dir / image, images_dir / image.name]
        found = next((c for c in candidates if c.is_file()), None)
        yield {"image": found or candidates[0], "missing": found is None, "row": row,
               "labels": _split_labels(_column(row, label_names), separator), "where": f"{path.name}:{line}"}


def table_rows(path, images_dir=None, separator: str = "|", image_column: str | None = None,
               label_column: str | None = None) -> list[dict]:
    """Rows of a CSV / JSONL / JSON list: the image (resolved against `images_dir`, default the table's folder),
    its labels, and the whole row (for patient ids, view, license)."""
    return list(iter_table_rows(path, images_dir, separator, image_column, label_column))


# ---------------------------------------------------------------------------------------------------------------
# Writing the release
# ---------------------------------------------------------------------------------------------------------------


def _copy_image(image: Path, images_out: Path, taken: set[str], link: bool = False) -> str:
    """The image under OUT/images (a unique name) as a path relative to the release: a release never points
    outside its folder (`dataset_script.safe_paths`). `link`: a hard link instead of a copy where the file system
    allows one (no second copy of a large image set), else a copy."""
    name = image.name
    if name in taken:  # same file name in two class folders
        name = f"{image.parent.name}-{image.name}"
    stem, number = Path(name).stem, 1
    while name in taken:
        number += 1
        name = f"{stem}-{number}{image.suffix}"
    taken.add(name)
    if link:
        try:
            os.link(image, images_out / name)
            return f"images/{name}"
        except OSError:  # another file system, or links not allowed: copy
            pass
    shutil.copyfile(image, images_out / name)
    return f"images/{name}"


SPLIT_CHOICES = ("auto", "all", "none")
WHOLE_SET_SPLIT = "test"


def write_split(out_dir, patient_ids, split: str = "auto") -> str | None:
    """`split` "auto": no split file (`data build` splits 70/15/15 by patient, seeded); "all" or "none": the whole
    set is one split, written as a `test.csv` listing every patient (what `stepcot eval` scores as one split).
    `patient_ids`: the records' patient ids in order (repeats allowed). Returns the split file's name, or None."""
    if split not in SPLIT_CHOICES:
        raise StepCoTDataError(f"--split {split!r}: choose one of {', '.join(SPLIT_CHOICES)}")
    if split == "auto":
        return None
    path = Path(out_dir) / f"{WHOLE_SET_SPLIT}.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id"])
        for patient in dict.fromkeys(patient_ids):
            writer.writerow([patient])
    return path.name


def write_release(rows, mapping: LabelMapping, out_dir, origin: str, copy_images: bool = True,
                  split: str = "auto") -> dict:
    """Map `rows` (an iterable, from `folder_rows` / `iter_table_rows`) and write the release folder (`split`: see
    `write_split`), each record to data.json as it is made: memory holds the counts and the patient ids, not the
    records. Returns the import report."""
    if split not in SPLIT_CHOICES:
        raise StepCoTDataError(f"--split {split!r}: choose one of {', '.join(SPLIT_CHOICES)}")
    out_dir = Path(out_dir)
    if (out_dir / "data.json").exists():
        raise StepCoTDataError(f"{out_dir} already holds a data.json; choose an empty output folder")
    images_out = out_dir / "images"
    images_out.mkdir(parents=True, exist_ok=True)
    skipped, label_counts, unmapped, conflicts = [], Counter(), Counter(), Counter()
    answers = [Counter() for _ in mapping.config.step_names]
    patients: dict[str, None] = {}  # in order, for the split file
    grouped, taken, num_rows = 0, set(), 0
    with JsonArrayWriter(out_dir / "data.json") as data:
        for row in rows:
            num_rows += 1
            label_counts.update(row["labels"])
            where = row.get("where") or str(row["image"])
            if row.get("problem"):
                skipped.append({"where": where, "reason": row["problem"]})
                continue
            if row.get("missing"):
                skipped.append({"where": where, "image": str(row["image"]), "reason": "image file not found"})
                continue
            chain, reason, conflicting = mapping.chain(row["labels"])
            conflicts.update(conflicting)
            if chain is None:
                if mapping.answers is not None:
                    unmapped.update(label for label in row["labels"] if normalize_text(label) not in mapping.answers)
                skipped.append({"where": where, "image": str(row["image"]), "labels": row["labels"],
                                "reason": reason})
                continue
            patient, from_key = mapping.patient_of(Path(row["image"]), row.get("row"))
            grouped += from_key
            record = {"patient_id": patient,
                      "image_path": _copy_image(Path(row["image"]), images_out, taken, link=not copy_images),
                      "origin": origin, "source_labels": row["labels"], "vqa_chain": chain}
            for name, aliases in KEPT_COLUMNS.items():
                value = _column(row.get("row") or {}, aliases)
                if value not in (None, ""):
                    record[name] = value
            data.write(record)
            patients.setdefault(patient)
            for step in chain:
                answers[mapping.config.step_names.index(step["step"])][step["answer"]] += 1
        if not data.count:
            raise StepCoTDataError(f"no row could be mapped ({len(skipped)} left out; first: "
                                   f"{skipped[0]['reason'] if skipped else 'none'})")
        records = data.count
    if mapping.custom_schema:
        schema = {"steps": [{"name": n, "question": q, "options": list(o)} for n, q, o in zip(
            mapping.config.step_names, mapping.config.step_questions, mapping.config.step_options)]}
        (out_dir / SCHEMA_FILE).write_text(json.dumps(schema, indent=1), encoding="utf-8")
    report = {
        "out_dir": str(out_dir), "rows": num_rows, "records": records, "left_out": len(skipped),
        "patients": len(patients),
        "patient_ids": "from the grouping key" if grouped == records else
        f"{grouped} from the grouping key, {records - grouped} from the image name (each its own group)",
        "labels": dict(label_counts.most_common()), "unmapped_labels": dict(unmapped.most_common()),
        "steps_left_unanswered_by_conflicting_labels": dict(conflicts.most_common()),
        "answers": {name: dict(counts.most_common()) for name, counts in zip(mapping.config.step_names, answers)},
        "split": write_split(out_dir, patients, split) or "auto (70/15/15 by patient at build)",
        "left_out_rows": skipped,
    }
    (out_dir / IMPORT_REPORT).write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    return report


def import_folders(root, out_dir, mapping_file=None, patient_id: str | None = None, copy_images=True,
                   split: str = "auto") -> dict:
    rows = folder_rows(root)
    mapping = _mapping(mapping_file, [label for row in rows for label in row["labels"]], patient_id)
    return write_release(rows, mapping, out_dir, origin=f"imported from {Path(root).name}", copy_images=copy_images,
                         split=split)


def import_table(table, out_dir, mapping_file=None, images_dir=None, separator="|", image_column=None,
                 label_column=None, patient_id: str | None = None, copy_images=True, split: str = "auto") -> dict:
    rows = iter_table_rows(table, images_dir, separator, image_column, label_column)
    label_names = (label_column,) if label_column else LABEL_COLUMNS
    # Read twice: the labels (when no mapping file names them; no image looked up), then the records.
    labels = (_split_labels(_column(row, label_names), separator) for _, row in _table_records(Path(table))
              if not isinstance(row, StepCoTDataError))
    mapping = _mapping(mapping_file, (found[0] for found in labels if len(found) == 1), patient_id)
    return write_release(rows, mapping, out_dir, origin=f"imported from {Path(table).name}", copy_images=copy_images,
                         split=split)


def _mapping(mapping_file, labels, patient_id) -> LabelMapping:
    mapping = LabelMapping.from_file(mapping_file) if mapping_file else LabelMapping.from_labels(labels)
    if patient_id:
        mapping.patient_id = patient_id
    return mapping


def import_reports(reports, out_dir, images_dir=None, strict=False, copy_images=True, split: str = "auto") -> dict:
    """Image + report pairs through the rules annotator: each report's chain (steps the report is silent about stay
    "No Answer"); view, license and patient / group keys of the input rows are kept."""
    import argparse

    reports = Path(reports)
    read = read_reports(reports, strict=strict)
    records, skipped, _ = annotate_rows(read.rows, "rules", argparse.Namespace(), strict=strict, progress=False)
    out_dir = Path(out_dir)
    if (out_dir / "data.json").exists():
        raise StepCoTDataError(f"{out_dir} already holds a data.json; choose an empty output folder")
    images_out = out_dir / "images"
    images_out.mkdir(parents=True, exist_ok=True)
    images_dir = Path(images_dir) if images_dir else reports.parent
    kept, taken = [], set()
    for record in records:
        image = Path(record["image_path"])
        source = image if image.is_absolute() else images_dir / image
        if not source.is_file():
            skipped.append({"patient_id": record["patient_id"], "reason": f"image file not found: {source}"})
            continue
        record["image_path"] = _copy_image(source, images_out, taken, link=not copy_images)
        kept.append(record)
    if not kept:
        raise StepCoTDataError(f"{reports}: no report could be imported ({len(read.skipped) + len(skipped)} left out)")
    (out_dir / "data.json").write_text(json.dumps(kept, indent=1, ensure_ascii=False), encoding="utf-8")
    no_answer = Counter()
    for record in kept:
        for step in record["vqa_chain"]:
            no_answer[step["step"]] += step["answer"] == "No Answer"
    report = {"out_dir": str(out_dir), "rows": len(read.rows) + len(read.skipped), "records": len(kept),
              "left_out": len(read.skipped) + len(skipped), "no_answer_per_step": dict(no_answer),
              "split": write_split(out_dir, (r["patient_id"] for r in kept), split)
              or "auto (70/15/15 by patient at build)",
              "left_out_rows": read.skipped + skipped}
    (out_dir / IMPORT_REPORT).write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    return report


__all__ = ["IMPORT_REPORT", "SPLIT_CHOICES", "LabelMapping", "folder_rows", "import_folders", "import_reports",
           "import_table", "iter_table_rows", "table_rows", "write_release", "write_split"]
