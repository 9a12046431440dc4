"""Reading radiology reports (JSONL / CSV / JSON list) and writing / validating Step-CoT records.

Records follow the release format the data layer reads: `patient_id`, `image_path`, `origin`, `report`,
`vqa_chain` (seven dicts with `step`, `question`, `options`, `answer`, `reasoning`; the location step may carry
`laterality`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from dataset_script.records import validate_record as release_validate_record
from dataset_script.safe_paths import UnsafePathError, safe_relative_path
from dataset_script.user_files import table_file_rows
from modeling_stepcot.configuration_stepcot import (
    DEFAULT_STEP_OPTIONS,
    DEFAULT_STEP_QUESTIONS,
    LOCATION,
    NA_OPTION,
    NO_ANSWER,
)

ID_FIELDS = ("patient_id", "uid", "id", "study_id")
# A row that carries both a report id and one of these keeps the latter as the record's `patient_id` (the key that
# keeps a patient's images in one split) and its report id as `report_id`.
GROUP_FIELDS = ("patient_id", "patient", "subject_id", "group")
KEPT_FIELDS = ("view", "license")  # copied from the input row into the record
IMAGE_FIELDS = ("image_path", "image", "images")
LATERALITY_VALUES = (None, "left", "right", "bilateral")


class ReportError(ValueError):
    """A report row that cannot be annotated; the message names the file, row and field."""


@dataclass
class ReportRow:
    """One input report, with where it came from (for error messages)."""

    patient_id: str
    findings: str
    impression: str
    image_path: str
    origin: str
    source: str  # "file:line"
    group: str = ""  # patient / grouping key when the row has one besides its report id
    kept: dict = field(default_factory=dict)  # view, license of the input row

    @property
    def text(self) -> str:
        parts = []
        if self.findings:
            parts.append(f"FINDINGS: {self.findings}")
        if self.impression:
            parts.append(f"IMPRESSION: {self.impression}")
        return "\n".join(parts)


@dataclass
class ReadResult:
    rows: list[ReportRow] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"source", "reason", "row"} of each lenient skip


def _raw_rows(path: Path):
    """(line number, dict) pairs of a JSONL, JSON-list or CSV file; a row that cannot be read is a `ReportError` in
    place of its dict (strict reading raises it, lenient reading skips and lists it)."""
    return table_file_rows(path, error=ReportError)


def _text_field(row: dict, name: str, source: str) -> str:
    value = row.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ReportError(f"{source}: field {name!r} must be text, got {type(value).__name__}")
    return value.strip()


def _parse_row(row, source: str, default_origin: str, image_path_template: str | None = None) -> ReportRow:
    if isinstance(row, Exception):
        raise row
    if not isinstance(row, dict):
        raise ReportError(f"{source}: expected an object, got {type(row).__name__}")
    patient_id = next((str(row[name]).strip() for name in ID_FIELDS if row.get(name) not in (None, "")), "")
    if not patient_id:
        raise ReportError(f"{source}: no report id (one of the fields {', '.join(ID_FIELDS)})")
    findings = _text_field(row, "findings", source)
    impression = _text_field(row, "impression", source)
    if not findings and not impression:
        # A release record (or a one-field input) carries the whole text in `report`.
        findings = _text_field(row, "report", source)
    if not findings and not impression:
        raise ReportError(f"{source} (id {patient_id}): empty report: fields 'findings', 'impression' and "
                          "'report' are all missing or blank")
    image = next((row[name] for name in IMAGE_FIELDS if row.get(name)), "")
    if isinstance(image, list):
        image = image[0] if image else ""
    if not image and image_path_template:
        image = image_path_from_template(image_path_template, patient_id, source)
    if not image:
        raise ReportError(f"{source} (id {patient_id}): no image (fields {', '.join(IMAGE_FIELDS)}); a Step-CoT "
                          "record needs one: pass --image-path-template, e.g. 'images/{patient_id}.png'")
    origin = _text_field(row, "origin", source) or default_origin
    report_id = next((str(row[name]).strip() for name in ID_FIELDS[1:] if row.get(name) not in (None, "")), "")
    group = next((str(row[name]).strip() for name in GROUP_FIELDS if row.get(name) not in (None, "")), "")
    if report_id and group:
        patient_id = report_id  # reports are keyed by their own id; the patient groups them
    kept = {name: row[name] for name in KEPT_FIELDS if row.get(name) not in (None, "")}
    return ReportRow(patient_id, findings, impression, str(image), origin, source, group, kept)


def image_path_from_template(template: str, patient_id: str, source: str) -> str:
    """`template` with the report id filled in; an id that is not a plain file name (`..`, `/`, `\\`) or a result
    that would leave the release folder is a `ReportError` (ids come from the input file, which may be hostile)."""
    if patient_id in (".", "..") or any(separator in patient_id for separator in ("/", "\\", "\x00")):
        raise ReportError(f"{source}: report id {patient_id!r} cannot go into --image-path-template: it is not a "
                          "plain file name")
    image = template.format(patient_id=patient_id)
    try:
        safe_relative_path(image, "image_path")
    except UnsafePathError as error:
        raise ReportError(f"{source} (id {patient_id}): --image-path-template gives {error}") from None
    return image


def read_reports(path: str | Path, *, strict: bool = True, default_origin: str = "unknown",
                 image_path_template: str | None = None) -> ReadResult:
    """Read reports. Strict: the first bad row raises `ReportError`. Lenient: bad rows go to `skipped`.

    Duplicate ids are an error too (records are keyed by `patient_id`).
    """
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"reports file not found: {path}")
    result = ReadResult()
    seen: dict[str, str] = {}
    for line_number, raw in _raw_rows(path):
        source = f"{path}:{line_number}"
        try:
            row = _parse_row(raw, source, default_origin, image_path_template)
            if row.patient_id in seen:
                first = seen[row.patient_id]
                raise ReportError(f"{source}: duplicate report id {row.patient_id!r} (first at {first})")
        except ReportError as error:
            if strict:
                raise
            result.skipped.append({"source": source, "reason": str(error),
                                   "row": raw if isinstance(raw, dict) else None})
            continue
        seen[row.patient_id] = source
        result.rows.append(row)
    return result


def make_record(row: ReportRow, chain: list[dict]) -> dict:
    record = {
        "patient_id": row.group or row.patient_id,
        "image_path": row.image_path,
        "origin": row.origin,
        "report": row.text,
        "vqa_chain": chain,
    }
    if row.group:
        record["report_id"] = row.patient_id
    return {**record, **row.kept}


def validate_chain(chain, where: str) -> None:
    """Check a `vqa_chain` against the step schema; raise ValueError naming `where` and the step/field."""
    if not isinstance(chain, list) or len(chain) != len(DEFAULT_STEP_OPTIONS):
        raise ValueError(f"{where}: 'vqa_chain' must be a list of {len(DEFAULT_STEP_OPTIONS)} steps, got "
                         f"{len(chain) if isinstance(chain, list) else type(chain).__name__}")
    for index, step in enumerate(chain):
        label = f"{where}, step {index + 1}"
        if not isinstance(step, dict):
            raise ValueError(f"{label}: must be an object, got {type(step).__name__}")
        missing = [key for key in ("step", "question", "options", "answer", "reasoning") if key not in step]
        if missing:
            raise ValueError(f"{label}: missing field(s) {missing}")
        if step["step"] != f"Step {index + 1}":
            raise ValueError(f"{label}: field 'step' is {step['step']!r}, expected 'Step {index + 1}'")
        if step["question"] != DEFAULT_STEP_QUESTIONS[index]:
            raise ValueError(f"{label}: field 'question' is {step['question']!r}, not the schema's question")
        if step["options"] != DEFAULT_STEP_OPTIONS[index]:
            raise ValueError(f"{label}: field 'options' is {step['options']!r}, not the schema's options")
        allowed = set(DEFAULT_STEP_OPTIONS[index]) | {NO_ANSWER}
        if step["answer"] not in allowed:
            hint = " ('N/A' is not an option of this step)" if step["answer"] == NA_OPTION else ""
            raise ValueError(f"{label}: field 'answer' {step['answer']!r} is not one of {sorted(allowed)}{hint}")
        if not isinstance(step["reasoning"], str) or not step["reasoning"].strip():
            raise ValueError(f"{label}: field 'reasoning' must be non-empty text")
        if index == LOCATION and step.get("laterality") not in LATERALITY_VALUES:
            raise ValueError(f"{label}: field 'laterality' {step.get('laterality')!r} is not one of "
                             f"{LATERALITY_VALUES}")


def validate_record(record, where: str = "record") -> None:
    """Strict check of one output record: the data layer's own validation (`dataset_script.records`), then the
    exact schema texts and the `laterality` key. Raises ValueError naming `where`, the record and the field."""
    problems = release_validate_record(record)
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))
    if not isinstance(record, dict):
        raise ValueError(f"{where}: must be an object, got {type(record).__name__}")
    where = f"{where} (patient_id {record.get('patient_id')!r})"
    for key in ("patient_id", "image_path", "origin", "report"):
        if not isinstance(record.get(key), str):
            raise ValueError(f"{where}: field {key!r} must be a string, got {type(record.get(key)).__name__}")
    if not record["patient_id"] or not record["report"].strip():
        raise ValueError(f"{where}: fields 'patient_id' and 'report' must not be empty")
    validate_chain(record.get("vqa_chain"), where)


class RecordJournal:
    """Finished records appended one JSON line at a time next to the output (`OUT.partial.jsonl`), so that an
    interruption or a late failure keeps them; a rerun with the same reports and options reuses them instead of
    annotating again. The first line names what wrote it (backend, model, reports file): a journal from other
    options is an error, never mixed in. Removed once the output is written."""

    SUFFIX = ".partial.jsonl"

    def __init__(self, out_path: str | Path, identity: dict):
        self.path = Path(str(out_path) + self.SUFFIX)
        self.identity = {"journal": "stepcot-annotate/1", **identity}
        self.records: dict[str, dict] = {}
        if self.path.is_file():
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.identity) + "\n", encoding="utf-8")

    def _load(self) -> None:
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        if header != self.identity:
            raise ReportError(f"{self.path} holds records of another annotation run ({header}); delete it to "
                              f"start over, or rerun with the options it names")
        kept = [lines[0]]
        for line in lines[1:]:
            try:  # a line cut short by a kill is dropped (its report is annotated again)
                record = json.loads(line)
                validate_record(record, str(self.path))
            except ValueError:
                continue
            self.records[record["patient_id"]] = record
            kept.append(line)
        self.path.write_text("\n".join(kept) + "\n", encoding="utf-8")

    def finished(self, row: ReportRow) -> dict | None:
        """The journaled record of `row`, when one exists for the same report text."""
        record = self.records.get(row.patient_id)
        return record if record is not None and record.get("report") == row.text else None

    def add(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
        self.records[record["patient_id"]] = record

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def write_records(records: list[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)  # no half-written data.json if interrupted
