"""Read and validate a Step-CoT release folder.

A release (the Hub's `fl-15o/Step-CoT` files, a local copy, or `stepcot data demo`) looks like::

    data.json                 list of records: patient_id, image_path, origin, report, vqa_chain (7 steps)
    train.xlsx val.xlsx test.xlsx   split lists (a patient-id or image-path column; optional)
    images/  images_2/        the images

The reader is tolerant about *names* (field aliases, letter-style answers, step dicts keyed "Step 1"...) and strict
about *meaning*: every answer maps to a label or the record is reported. `strict=True` stops at the first problem;
`strict=False` skips bad records and lists each one in `release.report` (and a JSON file), so nothing is lost
silently.

    >>> release = StepCoTRelease("Step-CoT/", strict=False, report_path="skipped.json")
    >>> release.split("train")[0]["labels"]
    [1, 0, 2, 0, 1, 0, 5]
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from modeling_stepcot.configuration_stepcot import NA_OPTION, StepCoTSchemaConfig

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
SPLITS = ("train", "validation", "test")
# Split-list file stems as they appear in releases -> canonical split name.
SPLIT_FILE_STEMS = {"train": "train", "val": "validation", "valid": "validation", "validation": "validation",
                    "dev": "validation", "test": "test"}
SPLIT_FILE_EXTENSIONS = (".xlsx", ".csv")
IMAGE_FOLDERS = ("", "images", "images_2")
DEFAULT_SPLIT_FRACTIONS = (0.70, 0.15, 0.15)

# Accepted spellings of each field (compared after lower-casing and dropping non-alphanumerics).
RECORD_FIELD_ALIASES = {
    "patient_id": ("patient_id", "patientid", "patient", "pid", "subject_id", "patient_uid"),
    "image_path": ("image_path", "imagepath", "image", "img_path", "image_file", "filename", "file_name", "img"),
    "origin": ("origin", "source", "dataset", "data_source"),
    "report": ("report", "report_text", "radiology_report"),
    "vqa_chain": ("vqa_chain", "chain", "steps", "vqa", "qa_chain", "vqa_steps", "cot"),
    "view": ("view", "view_position", "viewposition", "projection", "view_type"),
}
STEP_FIELD_ALIASES = {
    "step": ("step", "step_id", "step_number", "name"),
    "question": ("question", "q", "prompt"),
    "options": ("options", "choices", "candidates", "option"),
    "answer": ("answer", "gt", "ground_truth", "gt_answer", "label", "a"),
    "reasoning": ("reasoning", "rationale", "explanation", "reason", "thought"),
}
NO_ANSWER_TEXTS = {"", "no answer", "noanswer", "unanswered", "unknown answer", "missing"}
NA_TEXTS = {"n/a", "na", "n.a.", "n.a", "not applicable"}
# "B", "B.", "B)", "(B)", "B: Focal", "B. Focal" -> ("B", "Focal")
_LETTER_ANSWER = re.compile(r"^\(?([A-Za-z])\s*(?:[.):\]]\s*(.*))?$", re.S)
_LETTER_PREFIXED_OPTION = re.compile(r"^\(?([A-Za-z])\s*[.):\]]\s+(.+)$", re.S)
_LATERAL_VIEWS = {"lateral", "lat", "ll", "rl", "lateral left", "left lateral", "right lateral", "lateral right"}


class StepCoTDataError(ValueError):
    """A release record or file that cannot be used; the message names the record, field or file."""


class UnknownAnswerError(ValueError):
    """An answer that matches no option of its step (unknown letter or unmatched text)."""


# ---------------------------------------------------------------------------------------------------------------
# Answers -> labels
# ---------------------------------------------------------------------------------------------------------------


def normalize_text(text) -> str:
    """Lower-case, NFKC, single spaces, no spaces around '/', no trailing period: 'Pleura / Chest wall.' ->
    'pleura/chest wall'."""
    text = unicodedata.normalize("NFKC", str(text)).strip().lower()
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s*/\s*", "/", text)
    return text.rstrip(".").strip()


def clean_options(options) -> list[str]:
    """Options as plain strings in order. Accepts a list, or a dict keyed by letter; strips letter prefixes
    ("A. Focal") only when every option carries the expected letter, so option texts are never cut by accident."""
    if isinstance(options, dict):
        options = [options[key] for key in sorted(options, key=str)]
    if not isinstance(options, (list, tuple)):
        raise TypeError(f"options must be a list of strings, got {type(options).__name__}")
    options = [str(option).strip() for option in options]
    matches = [_LETTER_PREFIXED_OPTION.match(option) for option in options]
    if options and all(
        m is not None and m.group(1).upper() == chr(ord("A") + i) for i, m in enumerate(matches)
    ):
        options = [m.group(2).strip() for m in matches]
    return options


def answer_to_label(answer, options, na_label: int | None = None) -> int:
    """Map one answer to its label: the answer's index in this record's `options`.

    In order: missing / empty / "No Answer" -> -100; normalised option text -> its index; "N/A" -> the index of
    the record's "N/A" option, else `na_label` (the step's configured N/A class); a letter ("B", "B.", "B) Focal")
    -> its position. Anything else raises `UnknownAnswerError` (never a silent -100).
    """
    options = clean_options(options)
    if answer is None or (isinstance(answer, float) and np.isnan(answer)):
        return IGNORE_INDEX
    if isinstance(answer, (int, np.integer)) and not isinstance(answer, bool):
        if 0 <= int(answer) < len(options):  # already a label
            return int(answer)
        raise UnknownAnswerError(f"answer index {answer} is outside the {len(options)} options {options}")
    normalized_options = [normalize_text(option) for option in options]
    text = normalize_text(answer)
    if text in normalized_options:
        return normalized_options.index(text)
    if text in NO_ANSWER_TEXTS:
        return IGNORE_INDEX
    if text in NA_TEXTS:
        for index, option in enumerate(normalized_options):
            if option in NA_TEXTS:
                return index
        if na_label is not None:
            return na_label
        raise UnknownAnswerError(f"answer {answer!r} but this step has no N/A option: {options}")
    letter_match = _LETTER_ANSWER.match(str(answer).strip())
    if letter_match:
        letter, trailing = letter_match.group(1).upper(), (letter_match.group(2) or "").strip()
        index = ord(letter) - ord("A")
        if index >= len(options):
            raise UnknownAnswerError(
                f"answer letter {letter!r} is beyond the {len(options)} options (A-{chr(ord('A') + len(options) - 1)})"
            )
        trailing_text = normalize_text(trailing)
        if trailing_text and trailing_text in normalized_options and normalized_options.index(trailing_text) != index:
            raise UnknownAnswerError(
                f"answer {answer!r}: letter {letter} is {options[index]!r} but the text names "
                f"{options[normalized_options.index(trailing_text)]!r}"
            )
        return index
    raise UnknownAnswerError(f"answer {answer!r} matches none of the options {options}")


# ---------------------------------------------------------------------------------------------------------------
# One record
# ---------------------------------------------------------------------------------------------------------------


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _get_field(mapping: dict, aliases) -> tuple[str | None, object]:
    """(the key found, its value) for the first alias present, comparing normalised key names."""
    by_key = {_key(key): key for key in mapping}
    for alias in aliases:
        key = by_key.get(_key(alias))
        if key is not None:
            return key, mapping[key]
    return None, None


def _step_number(value) -> int | None:
    digits = re.findall(r"\d+", str(value))
    return int(digits[0]) if digits else None


def _chain_as_list(chain):
    """The chain as an ordered list of step dicts: accepts a list, or a dict keyed "Step 1".. / "1"..."""
    if isinstance(chain, dict):
        numbered = [(_step_number(key), key) for key in chain]
        if any(number is None for number, _ in numbered):
            raise StepCoTDataError(f"vqa_chain is a dict whose keys are not step numbers: {list(chain)}")
        return [dict(chain[key], step=chain[key].get("step", key)) if isinstance(chain[key], dict) else chain[key]
                for _, key in sorted(numbered)]
    if isinstance(chain, str):  # some exports keep the chain as a JSON string
        try:
            return _chain_as_list(json.loads(chain))
        except json.JSONDecodeError as error:
            raise StepCoTDataError(f"vqa_chain is a string that is not JSON ({error})") from None
    if not isinstance(chain, (list, tuple)):
        raise StepCoTDataError(f"vqa_chain must be a list of step dicts, got {type(chain).__name__}")
    return list(chain)


def _is_lateral(view) -> bool:
    return view is not None and normalize_text(view).replace("-", " ") in _LATERAL_VIEWS


def resolve_image_path(image_path: str, image_root) -> Path | None:
    """The image file for a record's `image_path`: tried as given, then under images/ and images_2/ (releases
    store paths with or without the folder), then by file name. None when nothing exists."""
    root = Path(image_root)
    relative = Path(str(image_path).replace("\\", "/"))
    if relative.is_absolute():
        return relative if relative.is_file() else None
    for folder in IMAGE_FOLDERS:
        for candidate in (root / folder / relative, root / folder / relative.name):
            if candidate.is_file():
                return candidate
    return None


def inspect_image(path) -> dict:
    """Open an image header and verify the file; returns mode/size and whether it needs 8-bit conversion.
    Raises OSError / UnidentifiedImageError for unreadable files."""
    with Image.open(path) as image:
        mode, size = image.mode, image.size
        image.verify()
    return {"mode": mode, "size": size, "needs_8bit": mode.startswith("I") or mode == "F"}


class _Problem(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


def _describe(index, patient_id) -> str:
    where = "record" if index is None else f"record {index}"
    return f"{where} (patient_id={patient_id!r})" if patient_id is not None else where


def parse_record(record, index=None, config: StepCoTSchemaConfig | None = None, image_root=None, check_image=True):
    """Parse one raw record into the clean form, collecting every problem.

    Returns `(clean, problems, notes)`: `clean` is None when there is any problem; `problems` are dicts
    `{index, patient_id, field, message}`; `notes` record harmless fixes (e.g. a 16-bit image to convert).
    Image checks run only when `image_root` is given (relative paths resolve against it).
    """
    config = config or StepCoTSchemaConfig()
    problems, notes = [], []
    if not isinstance(record, dict):
        return None, [dict(index=index, patient_id=None, field="record",
                           message=f"must be a JSON object, got {type(record).__name__}")], notes
    _, patient_id = _get_field(record, RECORD_FIELD_ALIASES["patient_id"])
    patient_id = None if patient_id is None or str(patient_id).strip() == "" else str(patient_id).strip()

    def problem(field, message):
        problems.append(dict(index=index, patient_id=patient_id, field=field, message=message))

    if patient_id is None:
        problem("patient_id", "missing (needed to split by patient without leakage)")
    _, image_path = _get_field(record, RECORD_FIELD_ALIASES["image_path"])
    resolved = None
    if image_path is None or str(image_path).strip() == "":
        problem("image_path", "missing")
    elif image_root is not None and check_image:
        resolved = resolve_image_path(image_path, image_root)
        if resolved is None:
            problem("image_path", f"image file not found: {image_path!r} (looked in {image_root} and its "
                                  f"images/, images_2/ folders)")
        else:
            try:
                info = inspect_image(resolved)
                if info["needs_8bit"]:
                    notes.append(dict(index=index, patient_id=patient_id, field="image_path",
                                      message=f"{info['mode']} image {image_path!r} will be converted to 8-bit"))
            except (OSError, UnidentifiedImageError, SyntaxError) as error:
                problem("image_path", f"unreadable image {str(resolved)!r}: {error}")
    elif image_root is not None:
        resolved = resolve_image_path(image_path, image_root)
    _, view = _get_field(record, RECORD_FIELD_ALIASES["view"])
    if _is_lateral(view):
        problem("view", f"non-frontal view {view!r}: Step-CoT uses frontal chest X-rays only")

    _, raw_chain = _get_field(record, RECORD_FIELD_ALIASES["vqa_chain"])
    chain, labels = [], []
    if raw_chain is None:
        problem("vqa_chain", "missing")
    else:
        try:
            steps = _chain_as_list(raw_chain)
        except StepCoTDataError as error:
            problem("vqa_chain", str(error))
            steps = None
        if steps is not None:
            chain, labels = _parse_chain(steps, config, problem)
    if problems:
        return None, problems, notes
    _, origin = _get_field(record, RECORD_FIELD_ALIASES["origin"])
    _, report = _get_field(record, RECORD_FIELD_ALIASES["report"])
    clean = {
        "patient_id": patient_id,
        "image_path": str(image_path),
        "resolved_image_path": None if resolved is None else str(resolved),
        "origin": "" if origin is None else str(origin),
        "report": "" if report is None else str(report),
        "view": None if view is None else str(view),
        "vqa_chain": chain,
        "labels": labels,
        "index": index,
    }
    return clean, problems, notes


_STEP_NUMBER = re.compile(r"^\s*(?:step)?\s*[-_#]?\s*(\d+)\s*$", re.I)


def step_key(step: dict) -> tuple[str, object] | None:
    """How a chain entry names its step: ("number", 3) for "Step 3" / 3, ("name", "diagnosis") for a step name,
    ("question", ...) when it only carries a question; None when it carries none of these."""
    _, ident = _get_field(step, STEP_FIELD_ALIASES["step"])
    if ident is not None and str(ident).strip():
        match = _STEP_NUMBER.match(str(ident))
        return ("number", int(match.group(1))) if match else ("name", normalize_text(ident))
    _, question = _get_field(step, STEP_FIELD_ALIASES["question"])
    if question is not None and str(question).strip():
        return ("question", normalize_text(question))
    return None


def _step_index(step: dict, position: int, full_chain: bool, config: StepCoTSchemaConfig) -> int:
    """The schema step a chain entry answers: by its number, its name, or its question; by its position only in a
    chain that lists every step."""
    key = step_key(step)
    names = [normalize_text(name) for name in config.step_names]
    questions = [normalize_text(question) for question in config.step_questions]
    if key is not None and key[0] == "number":
        if not 1 <= key[1] <= config.num_steps:
            raise _Problem("step", f"step {key[1]} is outside 1..{config.num_steps} (steps: {config.step_names})")
        return key[1] - 1
    if key is not None and key[1] in names:
        return names.index(key[1])
    _, question = _get_field(step, STEP_FIELD_ALIASES["question"])
    if question is not None and normalize_text(question) in questions:
        return questions.index(normalize_text(question))
    if full_chain:
        return position
    if key is not None and key[0] == "name":
        raise _Problem("step", f"unknown step {key[1]!r} (steps: {config.step_names})")
    raise _Problem("step", f"a partial chain ({config.num_steps} steps in the schema) needs each entry's step "
                           "number or name ('step': 'Step 3' or 'Diagnosis')")


def _missing_step(step_index: int, config: StepCoTSchemaConfig) -> dict:
    return {"question": config.step_questions[step_index], "options": list(config.step_options[step_index]),
            "answer": "", "reasoning": ""}


def _parse_chain(steps: list, config: StepCoTSchemaConfig, problem) -> tuple[list[dict], list[int]]:
    """The full chain (one entry per schema step) and its labels. Steps a record leaves out, or answers "No Answer"
    / null, get label -100: they are neither trained nor scored."""
    given: dict[int, tuple[dict, int]] = {}
    full_chain = len(steps) == config.num_steps
    for position, step in enumerate(steps):
        field = f"vqa_chain[{position}]"
        if not isinstance(step, dict):
            problem(f"{field}.step", f"must be a dict with question/options/answer, got {type(step).__name__}")
            continue
        try:
            index = _step_index(step, position, full_chain, config)
            if index in given:
                raise _Problem("step", f"step {index + 1} ({config.step_names[index]!r}) is given twice")
            given[index] = _parse_step(step, index, config)
        except _Problem as error:
            problem(f"{field}.{error.field}", error.message)
    if len(steps) > config.num_steps:
        problem("vqa_chain", f"has {len(steps)} steps, the schema has {config.num_steps}")
    chain = [given[i][0] if i in given else _missing_step(i, config) for i in range(config.num_steps)]
    labels = [given[i][1] if i in given else IGNORE_INDEX for i in range(config.num_steps)]
    return chain, labels


def _parse_step(step, step_index: int, config: StepCoTSchemaConfig):
    if not isinstance(step, dict):
        raise _Problem("step", f"must be a dict with question/options/answer, got {type(step).__name__}")
    _, raw_options = _get_field(step, STEP_FIELD_ALIASES["options"])
    if raw_options is None:
        raise _Problem("options", "missing")
    try:
        options = clean_options(raw_options)
    except TypeError as error:
        raise _Problem("options", str(error)) from None
    expected = config.num_classes_per_step[step_index]
    na_label = config.na_label(step_index)
    # A release may leave out the trailing "N/A" option of steps 2-6; "N/A" answers then map to the last class.
    without_na = na_label is not None and not any(normalize_text(o) in NA_TEXTS for o in options)
    if len(options) != expected and not (without_na and len(options) == expected - 1):
        raise _Problem("options", f"has {len(options)} options, step {config.step_names[step_index]!r} is "
                                  f"configured with {expected}: {options}")
    if len(set(map(normalize_text, options))) != len(options):
        raise _Problem("options", f"duplicate options {options}")
    answer_key, answer = _get_field(step, STEP_FIELD_ALIASES["answer"])
    try:
        label = answer_to_label(answer, options, na_label=na_label)
    except UnknownAnswerError as error:
        raise _Problem("answer", str(error)) from None
    if without_na:
        options = options + [NA_OPTION]
    _, question = _get_field(step, STEP_FIELD_ALIASES["question"])
    _, reasoning = _get_field(step, STEP_FIELD_ALIASES["reasoning"])
    clean_step = {
        "question": str(question) if question is not None else config.step_questions[step_index],
        "options": options,
        "answer": "" if label == IGNORE_INDEX else options[label],
        "reasoning": "" if reasoning is None else str(reasoning),
    }
    return clean_step, label


def format_problem(problem: dict) -> str:
    return f"{_describe(problem['index'], problem['patient_id'])}, field {problem['field']}: {problem['message']}"


def validate_record(record, index=None, config=None, image_root=None) -> list[str]:
    """Every problem of one record as readable strings naming the record and field (empty list = valid).

    `config` gives the step schema (default: the Step-CoT schema). Image files are checked only when `image_root`
    is given; relative image paths resolve against it (and its images/, images_2/ folders).
    """
    _, problems, _ = parse_record(record, index=index, config=config, image_root=image_root)
    return [format_problem(problem) for problem in problems]


# ---------------------------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------------------------


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
    frame = pd.read_excel(path, dtype=str) if path.suffix.lower() == ".xlsx" else pd.read_csv(path, dtype=str)
    columns = {_key(column): column for column in frame.columns}
    for kind in ("image_path", "patient_id"):
        for alias in RECORD_FIELD_ALIASES[kind]:
            if _key(alias) in columns:
                return kind, _clean_values(frame[columns[_key(alias)]])
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


# ---------------------------------------------------------------------------------------------------------------
# The step schema of a release
# ---------------------------------------------------------------------------------------------------------------

SCHEMA_FILE = "schema.json"


def _na_last(options: list[str]) -> list[str]:
    """An "N/A"-like option becomes the canonical NA_OPTION, moved last (the schema's convention)."""
    rest = [option for option in options if normalize_text(option) not in NA_TEXTS]
    return rest + [NA_OPTION] if len(rest) < len(options) else rest


def read_schema_file(path) -> StepCoTSchemaConfig:
    """`schema.json`: {"steps": [{"name": ..., "question": ..., "options": [...]}, ...]}."""
    path = Path(path)
    try:
        steps = json.loads(path.read_text(encoding="utf-8"))["steps"]
        return StepCoTSchemaConfig(step_names=[str(s["name"]) for s in steps],
                                   step_questions=[str(s.get("question") or s["name"]) for s in steps],
                                   step_options=[_na_last(clean_options(s["options"])) for s in steps])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise StepCoTDataError(f"{path}: not a step schema ({type(error).__name__}: {error}); expected "
                               '{"steps": [{"name": ..., "question": ..., "options": [...]}, ...]}') from None
    except ValueError as error:
        raise StepCoTDataError(f"{path}: {error}") from None


def _chain_entries(raw_records: list) -> list[list[dict]]:
    chains = []
    for record in raw_records:
        if not isinstance(record, dict):
            continue
        _, raw_chain = _get_field(record, RECORD_FIELD_ALIASES["vqa_chain"])
        try:
            chains.append([step for step in _chain_as_list(raw_chain) if isinstance(step, dict)])
        except StepCoTDataError:
            continue
    return chains


def _fits(chains: list[list[dict]], config: StepCoTSchemaConfig) -> bool:
    """Every entry names a step of `config` and each step's usual option count is the configured one."""
    option_counts = [Counter() for _ in range(config.num_steps)]
    for chain in chains:
        for position, step in enumerate(chain):
            try:
                index = _step_index(step, position, len(chain) == config.num_steps, config)
            except _Problem:
                return False
            _, options = _get_field(step, STEP_FIELD_ALIASES["options"])
            if isinstance(options, (list, tuple, dict)):
                option_counts[index][len(options)] += 1
    for index, counts in enumerate(option_counts):
        if counts:
            usual = counts.most_common(1)[0][0]
            expected = config.num_classes_per_step[index]
            if usual != expected and not (config.na_label(index) is not None and usual == expected - 1):
                return False
    return True


def infer_schema(raw_records: list, base: StepCoTSchemaConfig | None = None) -> tuple[StepCoTSchemaConfig, str]:
    """The step schema of a release's records: `base` (default the Step-CoT seven steps) when most records fit it
    (each entry names one of its steps and has its option count; records may leave steps out; the records that do
    not fit are reported by the validation as usual); otherwise a schema built
    from the data: one step per distinct step number / name / question, in order, with the most common question
    and option list of that step (e.g. a single "Diagnosis" step with Normal / Bacterial / Viral)."""
    base = base or StepCoTSchemaConfig()
    chains = _chain_entries(raw_records)
    if 2 * sum(_fits([chain], base) for chain in chains) >= len(chains):
        return base, "the Step-CoT schema"
    order, questions, options, labels = [], defaultdict(Counter), defaultdict(Counter), {}
    for chain in chains:
        for position, step in enumerate(chain):
            key = step_key(step) or ("position", position + 1)
            if key not in labels:
                order.append(key)
                _, ident = _get_field(step, STEP_FIELD_ALIASES["step"])
                labels[key] = str(ident).strip() if key[0] == "name" else f"Step {key[1]}" if key[0] in (
                    "number", "position") else None
            _, question = _get_field(step, STEP_FIELD_ALIASES["question"])
            if question is not None and str(question).strip():
                questions[key][str(question).strip()] += 1
            _, raw_options = _get_field(step, STEP_FIELD_ALIASES["options"])
            try:
                options[key][tuple(_na_last(clean_options(raw_options)))] += 1
            except TypeError:
                continue
    if any(kind == "number" for kind, _ in order) and all(kind in ("number", "position") for kind, _ in order):
        order.sort(key=lambda key: key[1])
    steps = [key for key in order if options[key]]
    if not steps:
        raise StepCoTDataError("cannot infer the step schema: no chain entry has an options list")
    names, step_questions = [], []
    for number, key in enumerate(steps, 1):
        question = questions[key].most_common(1)[0][0] if questions[key] else None
        names.append(labels[key] or f"Step {number}")
        step_questions.append(question or names[-1])
    config = StepCoTSchemaConfig(step_names=names, step_questions=step_questions,
                                 step_options=[list(options[key].most_common(1)[0][0]) for key in steps])
    return config, f"inferred from the records ({config.num_steps} steps: {', '.join(names)})"


# ---------------------------------------------------------------------------------------------------------------
# The release
# ---------------------------------------------------------------------------------------------------------------


def diagnosis_name(record: dict) -> str:
    """The final step's answer text ("Normal", "Nodule", ...; "unlabelled" when missing)."""
    last = record["vqa_chain"][-1]
    return last["answer"] or "unlabelled"


class StepCoTRelease:
    """A Step-CoT release folder, read, validated and split.

    Args:
        root: folder holding `data.json` (or `data.jsonl`), optional split lists and the image folders.
        config: step schema. Default: the release's `schema.json` if it has one, else the Step-CoT seven steps when
            the records fit them (partial chains included), else a schema inferred from the records
            (`infer_schema`). `schema_source` says which.
        strict: raise `StepCoTDataError` on the first problem (default), else skip and report.
        seed: seed of the 70/15/15 stratified patient split used when the release has no split files.
        report_path: where to write the JSON report of skipped records (lenient mode; also written when empty).
        check_images: open and verify every image (turn off only for fast metadata-only reads).

    Attributes: `records` (clean dicts with `split`), `report` (skipped records, notes, counts).
    """

    def __init__(self, root, config=None, strict=True, seed=0, report_path=None, check_images=True):
        self.root = Path(root)
        self.strict = strict
        self.seed = seed
        self.skipped: list[dict] = []
        self.notes: list[dict] = []
        if not self.root.is_dir():
            raise StepCoTDataError(f"release folder not found: {self.root}")
        raw_records = self._load_raw_records()
        if config is not None:
            self.config, self.schema_source = config, "given by the caller"
        elif (self.root / SCHEMA_FILE).is_file():
            self.config, self.schema_source = read_schema_file(self.root / SCHEMA_FILE), SCHEMA_FILE
        else:
            self.config, self.schema_source = infer_schema(raw_records)
        records = []
        for index, raw in enumerate(raw_records):
            clean, problems, notes = parse_record(raw, index, self.config, self.root, check_image=check_images)
            self.notes.extend(notes)
            if problems:
                self._reject(problems)
                continue
            records.append(clean)
        unanswered = sum(all(label == IGNORE_INDEX for label in record["labels"]) for record in records)
        if unanswered:  # kept (e.g. a report silent about the lungs), but they teach and score nothing
            self.notes.append(dict(index=None, patient_id=None, field="vqa_chain",
                                   message=f"{unanswered} records answer no step (all 'No Answer' / left out)"))
        self.split_source = self._assign_splits(records)
        self.records = [record for record in records if record.get("split") is not None]
        self._check_leakage()
        self._check_option_vocabulary()
        self.report = self._build_report(len(raw_records))
        if report_path is not None:
            self.write_report(report_path)
        if self.skipped:
            logger.warning("%d of %d records skipped (see the report%s).", len(self.skipped), len(raw_records),
                           f" in {report_path}" if report_path else "")

    # -- loading -------------------------------------------------------------------------------------------------

    def _load_raw_records(self) -> list:
        json_path, jsonl_path = self.root / "data.json", self.root / "data.jsonl"
        if json_path.is_file():
            try:
                data = json.loads(json_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise StepCoTDataError(f"{json_path}: not valid JSON ({error})") from None
            if isinstance(data, dict):  # {"data": [...]} or {"<id>": record, ...}
                data = data.get("data", data.get("records", list(data.values())))
            if not isinstance(data, list):
                raise StepCoTDataError(f"{json_path}: expected a list of records, got {type(data).__name__}")
            return data
        if jsonl_path.is_file():
            records = []
            for line_number, line in enumerate(jsonl_path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise StepCoTDataError(f"{jsonl_path}:{line_number}: not valid JSON ({error})") from None
            return records
        raise StepCoTDataError(f"{self.root}: no data.json (or data.jsonl) in the release folder")

    def _reject(self, problems: list[dict]):
        if self.strict:
            raise StepCoTDataError(format_problem(problems[0]))
        index = problems[0]["index"]
        self.skipped.append({"index": index, "patient_id": problems[0]["patient_id"], "problems": problems})

    # -- splits --------------------------------------------------------------------------------------------------

    def _assign_splits(self, records: list[dict]) -> str:
        split_files = find_split_files(self.root)
        if not split_files:
            assignment = stratified_group_split(
                [diagnosis_name(r) for r in records], [r["patient_id"] for r in records], seed=self.seed
            )
            for record, split in zip(records, assignment):
                record["split"] = split
            return f"seeded 70/15/15 split stratified by diagnosis, grouped by patient (seed {self.seed})"
        patient_ids = {r["patient_id"] for r in records}
        image_paths = {r["image_path"] for r in records}
        by_patient, by_image, by_name = defaultdict(list), {}, defaultdict(list)
        for record in records:
            by_patient[record["patient_id"]].append(record)
            by_image[record["image_path"]] = record
            by_name[Path(record["image_path"]).name].append(record)
        for split in SPLITS:
            if split not in split_files:
                continue
            kind, values = read_split_file(split_files[split], patient_ids, image_paths)
            unmatched = 0
            for value in values:
                if kind == "patient_id":
                    matched = by_patient.get(value, [])
                else:
                    matched = [by_image[value]] if value in by_image else by_name.get(Path(value).name, [])
                unmatched += not matched
                for record in matched:
                    if record.get("split") not in (None, split):
                        record.setdefault("other_splits", set()).add(split)
                    else:
                        record["split"] = split
            if unmatched:
                self.notes.append(dict(index=None, patient_id=None, field=split_files[split].name,
                                       message=f"{unmatched} entries match no record of data.json"))
        for record in records:
            if record.get("split") is None:
                self._reject([dict(index=record["index"], patient_id=record["patient_id"], field="split",
                                   message="listed in no split file (" + ", ".join(
                                       p.name for p in split_files.values()) + ")")])
        return "split files: " + ", ".join(f"{split}={path.name}" for split, path in split_files.items())

    def _check_leakage(self):
        """A patient in two splits leaks; lenient mode keeps the patient in its first split (train, validation,
        test order) and skips its records elsewhere."""
        splits_of = defaultdict(set)
        for record in self.records:
            splits_of[record["patient_id"]].add(record["split"])
            splits_of[record["patient_id"]].update(record.pop("other_splits", ()))
        leaking = {pid: splits for pid, splits in splits_of.items() if len(splits) > 1}
        if not leaking:
            return
        kept = []
        for record in self.records:
            splits = leaking.get(record["patient_id"])
            if splits is None:
                kept.append(record)
                continue
            first = min(splits, key=SPLITS.index)
            problem = dict(index=record["index"], patient_id=record["patient_id"], field="split",
                           message=f"patient appears in several splits {sorted(splits, key=SPLITS.index)} "
                                   f"(leakage); kept only in {first!r}")
            if self.strict:
                raise StepCoTDataError(format_problem(problem).replace("; kept only in", "; would keep only in"))
            if record["split"] == first:
                kept.append(record)
            else:
                self.skipped.append({"index": record["index"], "patient_id": record["patient_id"],
                                     "problems": [problem]})
        self.records = kept

    def _check_option_vocabulary(self):
        """Labels are option indices, so a step whose option list differs between records changes meaning."""
        for step in range(self.config.num_steps):
            variants = Counter(tuple(map(normalize_text, r["vqa_chain"][step]["options"])) for r in self.records)
            if len(variants) > 1:
                self.notes.append(dict(index=None, patient_id=None, field=f"vqa_chain[{step}].options",
                                       message=f"{len(variants)} different option lists across records: "
                                               f"{[list(v) for v, _ in variants.most_common(3)]}"))

    # -- access --------------------------------------------------------------------------------------------------

    def split(self, name: str) -> list[dict]:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; splits are {SPLITS}")
        return [record for record in self.records if record["split"] == name]

    @property
    def splits(self) -> dict[str, list[dict]]:
        return {name: self.split(name) for name in SPLITS if self.split(name)}

    def step_class_counts(self, split: str | None = None) -> list[dict[str, int]]:
        """Per step: option -> number of records answering it (all splits, or one), in option order; steps left out
        or unanswered are not counted."""
        records = self.records if split is None else self.split(split)
        counts = []
        for step, options in enumerate(self.config.step_options):
            tally = Counter(r["labels"][step] for r in records)
            counts.append({option: tally.get(index, 0) for index, option in enumerate(options)})
        return counts

    def diagnosis_counts(self) -> dict[str, dict[str, int]]:
        """split -> diagnosis -> record count."""
        counts = {}
        for name, records in self.splits.items():
            counts[name] = dict(sorted(Counter(diagnosis_name(r) for r in records).items()))
        return counts

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        return self.records[index]

    def __iter__(self):
        return iter(self.records)

    def __repr__(self):
        sizes = {name: len(records) for name, records in self.splits.items()}
        total = Counter(diagnosis_name(r) for r in self.records)
        return (f"StepCoTRelease(root={str(self.root)!r}, records={len(self)}, splits={sizes}, "
                f"skipped={len(self.skipped)})\n" + "\n".join(f"  {d}: {n}" for d, n in total.most_common()))

    # -- report --------------------------------------------------------------------------------------------------

    def _build_report(self, num_raw: int) -> dict:
        return {
            "root": str(self.root),
            "strict": self.strict,
            "records_in_release": num_raw,
            "records_kept": len(self.records),
            "records_skipped": len(self.skipped),
            "split_source": self.split_source,
            "schema_source": self.schema_source,
            "schema": [{"name": name, "question": question, "options": list(options), "counts": counts}
                       for name, question, options, counts in zip(self.config.step_names, self.config.step_questions,
                                                                  self.config.step_options, self.step_class_counts())],
            "split_sizes": {name: len(records) for name, records in self.splits.items()},
            "skipped": [
                {**entry, "problems": [dict(p, text=format_problem(p)) for p in entry["problems"]]}
                for entry in self.skipped
            ],
            "notes": [dict(n, text=format_problem(n) if n["index"] is not None else f"{n['field']}: {n['message']}")
                      for n in self.notes],
        }

    def write_report(self, path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.report, indent=2, default=str), encoding="utf-8")
        return path


__all__ = [
    "IGNORE_INDEX",
    "SPLITS",
    "StepCoTDataError",
    "StepCoTRelease",
    "UnknownAnswerError",
    "answer_to_label",
    "clean_options",
    "diagnosis_name",
    "find_split_files",
    "infer_schema",
    "read_schema_file",
    "step_key",
    "format_problem",
    "normalize_text",
    "parse_record",
    "read_split_file",
    "resolve_image_path",
    "stratified_group_split",
    "validate_record",
]
