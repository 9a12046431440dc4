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

import hashlib
import json
import logging
import os
import re
import sys
import unicodedata
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from dataset_script.record_stream import JsonArrayRecords, compact_record, looks_like_json_array, unpack_hash
from dataset_script.safe_paths import UnsafePathError, is_inside, safe_relative_path
from modeling_stepcot.configuration_stepcot import IGNORE_INDEX, NA_OPTION, NO_ANSWER, StepCoTSchemaConfig
from modeling_stepcot.processing_stepcot import MAX_IMAGE_PIXELS, image_to_8bit

logger = logging.getLogger(__name__)

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
NO_ANSWER_TEXTS = {"", NO_ANSWER.lower(), "noanswer", "unanswered", "unknown answer", "missing"}
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


def get_field(mapping: dict, aliases) -> tuple[str | None, object]:
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


def locate_image(image_path: str, image_root) -> tuple[Path | None, bool]:
    """(the image file for `image_path`, whether it was found by file name only).

    Tried as given under the root and its images/, images_2/ folders (releases store paths with or without the
    folder); then, when the path names a folder that holds no such file, by file name in those folders. A file name
    found in several folders is ambiguous (`AmbiguousImageError`): the reader never picks one of them. Whether a
    by-name match is another record's image is checked over the whole release (`StepCoTRelease`).

    Only files inside `image_root` are ever returned: an absolute path, a `..` part or a symbolic link that leads
    outside raises `UnsafePathError` (a named validation problem), so no outside bytes reach the Parquet files."""
    root = Path(image_root)
    relative = Path(safe_relative_path(image_path, "image_path"))
    for folder in IMAGE_FOLDERS:
        if (root / folder / relative).is_file():
            return _inside_release(root / folder / relative, root, image_path), False
    if relative.parent == Path("."):
        return None, False
    by_name = [root / folder / relative.name for folder in IMAGE_FOLDERS if (root / folder / relative.name).is_file()]
    if len(by_name) > 1:
        raise AmbiguousImageError(
            f"image file not found as given: {str(image_path)!r}; its file name matches several files "
            f"({', '.join(str(p.relative_to(root)) for p in by_name)}), not guessing which"
        )
    return (_inside_release(by_name[0], root, image_path), True) if by_name else (None, False)


def _inside_release(candidate: Path, root: Path, image_path) -> Path:
    if not is_inside(candidate, root):
        raise UnsafePathError(f"image_path {str(image_path)!r} leads outside the release folder {root} through a "
                              f"symbolic link (to {candidate.resolve()})")
    return candidate


# Near-duplicate images: 256-bit perceptual hashes (imagehash.phash, hash_size 16) at most this many bits apart.
# Measured: resized (0.5-1.5x) and JPEG re-saved (quality 50-90) copies differ by <= 8 bits; distinct real chest
# X-rays (1,100 from ../shared/data) by >= 50, distinct synthetic demo images by >= 12.
NEAR_DUPLICATE_HASH_SIZE = 16
# Validating this many records or more shows a progress bar (each image is decoded: ~100 records/s).
PROGRESS_MIN_RECORDS = 500
NEAR_DUPLICATE_MAX_DISTANCE = 10
NEAR_DUPLICATE_PAIRS_PER_BLOCK = 2**20  # image pairs compared at once (32 MiB of hash words)


class ImageTooLargeError(OSError):
    """An image whose pixel count exceeds `MAX_IMAGE_PIXELS` (a decompression-bomb guard)."""


class AmbiguousImageError(OSError):
    """A record's image path that could name several files."""


def inspect_image(path, max_pixels: int = MAX_IMAGE_PIXELS, perceptual_hash: bool = False) -> dict:
    """Open, verify and fully decode an image (a truncated JPEG passes `verify()` and fails only when decoded).
    Returns mode/size, whether it needs 8-bit conversion and, with `perceptual_hash`, its 256-bit perceptual hash
    as a bool array. Raises OSError (incl. `ImageTooLargeError`) / UnidentifiedImageError for unusable files."""
    from PIL import ImageFile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below applies instead
            image = Image.open(path)
        with image:
            mode, size = image.mode, image.size
            if size[0] * size[1] > max_pixels:
                raise ImageTooLargeError(f"{size[0]} x {size[1]} pixels is above the limit of {max_pixels:,} "
                                         "(decompression-bomb guard, MAX_IMAGE_PIXELS)")
            image.verify()
        truncated_allowed, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
        try:
            with Image.open(path) as image:
                image.load()
                digest = _perceptual_hash(image) if perceptual_hash else None
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = truncated_allowed
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(str(error)) from None
    return {"mode": mode, "size": size, "needs_8bit": mode.startswith("I") or mode == "F", "phash": digest}


def _perceptual_hash(image) -> np.ndarray:
    import imagehash

    gray = image_to_8bit(image).convert("L")
    gray.thumbnail((256, 256))  # the hash looks at 64 x 64 anyway; shrinking first keeps large images fast
    return imagehash.phash(gray, hash_size=NEAR_DUPLICATE_HASH_SIZE).hash.flatten()


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
    _, patient_id = get_field(record, RECORD_FIELD_ALIASES["patient_id"])
    patient_id = None if patient_id is None or str(patient_id).strip() == "" else str(patient_id).strip()

    def problem(field, message):
        problems.append(dict(index=index, patient_id=patient_id, field=field, message=message))

    if patient_id is None:
        problem("patient_id", "missing (needed to split by patient without leakage)")
    _, image_path = get_field(record, RECORD_FIELD_ALIASES["image_path"])
    resolved, by_name, perceptual_hash = None, False, None
    if image_path is None or str(image_path).strip() == "":
        problem("image_path", "missing")
    elif image_root is not None:
        try:
            resolved, by_name = locate_image(image_path, image_root)
        except (AmbiguousImageError, UnsafePathError) as error:
            problem("image_path", str(error))
        except OSError as error:  # e.g. a name longer than the file system allows
            problem("image_path", f"not a usable file path ({type(error).__name__}: {error.strerror})")
        else:
            if resolved is None and check_image:
                problem("image_path", f"image file not found: {image_path!r} (looked in {image_root} and its "
                                      f"images/, images_2/ folders)")
            elif check_image:
                try:
                    info = inspect_image(resolved, perceptual_hash=True)
                    perceptual_hash = info["phash"]
                    if info["needs_8bit"]:
                        notes.append(dict(index=index, patient_id=patient_id, field="image_path",
                                          message=f"{info['mode']} image {image_path!r} will be converted to 8-bit"))
                except Exception as error:  # any decoder failure is this record's problem, never the whole run's
                    problem("image_path", f"unreadable image {str(resolved)!r}: {type(error).__name__}: {error}")
    _, view = get_field(record, RECORD_FIELD_ALIASES["view"])
    if _is_lateral(view):
        problem("view", f"non-frontal view {view!r}: Step-CoT uses frontal chest X-rays only")

    _, raw_chain = get_field(record, RECORD_FIELD_ALIASES["vqa_chain"])
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
    _, origin = get_field(record, RECORD_FIELD_ALIASES["origin"])
    _, report = get_field(record, RECORD_FIELD_ALIASES["report"])
    clean = {
        "patient_id": patient_id,
        "image_path": str(image_path),
        "resolved_image_path": None if resolved is None else str(resolved),
        "image_found_by_name": by_name,
        "perceptual_hash": perceptual_hash,
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
    _, ident = get_field(step, STEP_FIELD_ALIASES["step"])
    if ident is not None and str(ident).strip():
        match = _STEP_NUMBER.match(str(ident))
        return ("number", int(match.group(1))) if match else ("name", normalize_text(ident))
    _, question = get_field(step, STEP_FIELD_ALIASES["question"])
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
    _, question = get_field(step, STEP_FIELD_ALIASES["question"])
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
    _, raw_options = get_field(step, STEP_FIELD_ALIASES["options"])
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
    answer_key, answer = get_field(step, STEP_FIELD_ALIASES["answer"])
    try:
        label = answer_to_label(answer, options, na_label=na_label)
    except UnknownAnswerError as error:
        raise _Problem("answer", str(error)) from None
    if without_na:
        options = options + [NA_OPTION]
    _, question = get_field(step, STEP_FIELD_ALIASES["question"])
    _, reasoning = get_field(step, STEP_FIELD_ALIASES["reasoning"])
    clean_step = {
        "question": str(question) if question is not None else config.step_questions[step_index],
        "options": options,
        "answer": "" if label == IGNORE_INDEX else options[label],
        "reasoning": "" if reasoning is None else str(reasoning),
    }
    return clean_step, label


def format_problem(problem: dict) -> str:
    return f"{_describe(problem['index'], problem['patient_id'])}, field {problem['field']}: {problem['message']}"


def _format_entry(entry: dict) -> str:
    """A problem, warning or note as one line (release-level entries have no record index)."""
    return format_problem(entry) if entry["index"] is not None else f"{entry['field']}: {entry['message']}"


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
    try:
        frame = pd.read_excel(path, dtype=str) if path.suffix.lower() == ".xlsx" else pd.read_csv(path, dtype=str)
    except Exception as error:  # pandas raises many types (EmptyDataError, BadZipFile, ParserError, ...)
        raise StepCoTDataError(f"{path.name}: unreadable split file ({type(error).__name__}: {error})") from None
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


def _read_utf8(path: Path) -> str:
    """The file's text; a file that is not UTF-8 is a named error giving the first bad byte's offset."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise StepCoTDataError(
            f"{path}: not UTF-8 text (byte {error.start}: {data[error.start:error.start + 1]!r}); "
            "re-save it as UTF-8"
        ) from None


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


def _chain_entries(raw_records):
    for record in raw_records:
        if not isinstance(record, dict):
            continue
        _, raw_chain = get_field(record, RECORD_FIELD_ALIASES["vqa_chain"])
        try:
            yield [step for step in _chain_as_list(raw_chain) if isinstance(step, dict)]
        except StepCoTDataError:
            continue


def _fits(chains: list[list[dict]], config: StepCoTSchemaConfig) -> bool:
    """Every entry names a step of `config` and each step's usual option count is the configured one."""
    option_counts = [Counter() for _ in range(config.num_steps)]
    for chain in chains:
        for position, step in enumerate(chain):
            try:
                index = _step_index(step, position, len(chain) == config.num_steps, config)
            except _Problem:
                return False
            _, options = get_field(step, STEP_FIELD_ALIASES["options"])
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
    fitting = total = 0  # (raw_records is iterated twice: a list, or records streamed from the file)
    for chain in _chain_entries(raw_records):
        fitting, total = fitting + _fits([chain], base), total + 1
    if 2 * fitting >= total:
        return base, "the Step-CoT schema"
    order, questions, options, labels = [], defaultdict(Counter), defaultdict(Counter), {}
    for chain in _chain_entries(raw_records):
        for position, step in enumerate(chain):
            key = step_key(step) or ("position", position + 1)
            if key not in labels:
                order.append(key)
                _, ident = get_field(step, STEP_FIELD_ALIASES["step"])
                labels[key] = str(ident).strip() if key[0] == "name" else f"Step {key[1]}" if key[0] in (
                    "number", "position") else None
            _, question = get_field(step, STEP_FIELD_ALIASES["question"])
            if question is not None and str(question).strip():
                questions[key][str(question).strip()] += 1
            _, raw_options = get_field(step, STEP_FIELD_ALIASES["options"])
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


def release_fingerprint(root) -> str:
    """SHA-256 over a release folder: the bytes of data.json / data.jsonl and the split files, and the name, size
    and modification time of every other file (the images), so that any change to the release changes it."""
    root = Path(root)
    digest = hashlib.sha256()
    for directory, folders, files in os.walk(root):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in sorted(files):
            path = Path(directory) / name
            relative = path.relative_to(root).as_posix()
            digest.update(relative.encode() + b"\0")
            if directory == str(root) and (name in ("data.json", "data.jsonl")
                                           or path.suffix.lower() in SPLIT_FILE_EXTENSIONS):
                digest.update(hashlib.sha256(path.read_bytes()).digest())
            else:
                stat = path.stat()
                digest.update(f"{stat.st_size} {stat.st_mtime_ns}".encode())
    return digest.hexdigest()


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
        # Problems that lenient mode resolved without skipping a record (leakage kept in one split, options
        # re-ordered, unreadable split files): strict mode raises on each.
        self.warnings: list[dict] = []
        self.near_duplicates: list[dict] = []
        self._split_files: dict[str, Path] = {}
        if not self.root.is_dir():
            raise StepCoTDataError(f"release folder not found: {self.root}")
        self._line_problems: dict[int, dict] = {}
        raw_records = self._load_raw_records()
        if config is not None:
            self.config, self.schema_source = config, "given by the caller"
        elif (self.root / SCHEMA_FILE).is_file():
            self.config, self.schema_source = read_schema_file(self.root / SCHEMA_FILE), SCHEMA_FILE
        else:
            self.config, self.schema_source = infer_schema(raw_records)
        records = []
        from tqdm.auto import tqdm

        progress = tqdm(enumerate(raw_records), total=len(raw_records), desc="validating records", unit="record",
                        disable=len(raw_records) < PROGRESS_MIN_RECORDS, file=sys.stderr)
        for index, raw in progress:
            if index in self._line_problems:
                self._reject([self._line_problems[index]])
                continue
            try:
                clean, problems, notes = parse_record(raw, index, self.config, self.root, check_image=check_images)
            except RecursionError:
                clean, notes = None, []
                problems = [dict(index=index, patient_id=None, field="record", message="nested too deeply to read")]
            self.notes.extend(notes)
            if problems:
                self._reject(problems)
                continue
            records.append(compact_record(clean))
        if not len(raw_records):
            raise StepCoTDataError(f"{self.root / 'data.json'}: the release has no records")
        unanswered = sum(all(label == IGNORE_INDEX for label in record["labels"]) for record in records)
        if unanswered:  # kept (e.g. a report silent about the lungs), but they teach and score nothing
            self.notes.append(dict(index=None, patient_id=None, field="vqa_chain",
                                   message=f"{unanswered} records answer no step (all 'No Answer' / left out)"))
        records = self._check_image_claims(self._drop_exact_duplicates(records))
        self.split_source = self._assign_splits(records)
        self.records = [record for record in records if record.get("split") is not None]
        self._check_leakage()
        self._check_option_lists()
        if check_images:
            self._check_near_duplicates()
        else:
            self.notes.append(dict(index=None, patient_id=None, field="images",
                                   message="images not checked: near-duplicates across splits not looked for"))
        self.report = self._build_report(len(raw_records))
        if report_path is not None:
            self.write_report(report_path)
        if not self.records:
            raise StepCoTDataError(
                f"{self.root}: no usable records ({len(raw_records)} in the release, {len(self.skipped)} skipped"
                + (f": see {report_path}" if report_path is not None and self.skipped else "") + ")"
            )
        if self.skipped or self.warnings:
            logger.warning("%d of %d records skipped, %d other problems (see the report%s).", len(self.skipped),
                           len(raw_records), len(self.warnings), f" in {report_path}" if report_path else "")

    # -- loading -------------------------------------------------------------------------------------------------

    def _load_raw_records(self) -> list:
        json_path, jsonl_path = self.root / "data.json", self.root / "data.jsonl"
        if json_path.is_file() and looks_like_json_array(json_path):  # streamed, one record at a time
            return JsonArrayRecords(json_path, error=StepCoTDataError)
        if json_path.is_file():
            try:
                data = json.loads(_read_utf8(json_path))
            except json.JSONDecodeError as error:
                raise StepCoTDataError(f"{json_path}: not valid JSON ({error})") from None
            except RecursionError:
                raise StepCoTDataError(f"{json_path}: JSON nested too deeply to read") from None
            if isinstance(data, dict):  # {"data": [...]} or {"<id>": record, ...}
                data = data.get("data", data.get("records", list(data.values())))
            if not isinstance(data, list):
                raise StepCoTDataError(f"{json_path}: expected a list of records, got {type(data).__name__}")
            if not data:
                raise StepCoTDataError(f"{json_path}: the release has no records")
            return data
        if jsonl_path.is_file():
            return self._load_jsonl(jsonl_path)
        raise StepCoTDataError(f"{self.root}: no data.json (or data.jsonl) in the release folder")

    def _load_jsonl(self, path: Path) -> list:
        """One record per line; in lenient mode a bad line is skipped and listed (its record index is kept, so
        later records keep their numbers)."""
        records, offset = [], 0
        for line_number, raw_line in enumerate(path.read_bytes().splitlines(keepends=True), 1):
            line_offset, offset = offset, offset + len(raw_line)
            if not raw_line.strip():
                continue
            try:
                records.append(json.loads(raw_line.decode("utf-8-sig" if line_number == 1 else "utf-8")))
                continue
            except UnicodeDecodeError as error:
                message = f"not UTF-8 text (byte {line_offset + error.start} of the file)"
            except json.JSONDecodeError as error:
                message = f"not valid JSON ({error})"
            except RecursionError:
                message = "JSON nested too deeply to read"
            problem = dict(index=len(records), patient_id=None, field=f"{path.name} line {line_number}",
                           message=message)
            if self.strict:
                raise StepCoTDataError(f"{path}:{line_number}: {message}")
            self._line_problems[len(records)] = problem
            records.append(None)
        if not records:
            raise StepCoTDataError(f"{path}: the release has no records")
        return records

    def _reject(self, problems: list[dict]):
        if self.strict:
            raise StepCoTDataError(format_problem(problems[0]))
        index = problems[0]["index"]
        self.skipped.append({"index": index, "patient_id": problems[0]["patient_id"], "problems": problems})

    def _warn(self, problem: dict):
        """A problem lenient mode resolved without skipping the record: strict mode raises."""
        if self.strict:
            raise StepCoTDataError(format_problem(problem) if problem["index"] is not None
                                   else f"{problem['field']}: {problem['message']}")
        self.warnings.append(problem)

    def _drop_exact_duplicates(self, records: list[dict]) -> list[dict]:
        """A record with the same patient_id and image as an earlier one is a duplicate (it would count twice, and
        split files cannot tell the two apart): reported naming the first, skipped in lenient mode."""
        first, kept = {}, []
        for record in records:
            image = record.get("resolved_image_path")
            key = (record["patient_id"], str(Path(image).resolve()) if image else record["image_path"])
            if key in first:
                same = "same answers" if first[key]["labels"] == record["labels"] else "different answers"
                self._reject([dict(index=record["index"], patient_id=record["patient_id"], field="record",
                                   message=f"exact duplicate of {_describe(first[key]['index'], record['patient_id'])}"
                                           f" (same patient_id and image, {same})")])
                continue
            first[key] = record
            kept.append(record)
        return kept

    def _check_image_claims(self, records: list[dict]) -> list[dict]:
        """An image found only by its file name (`missing_subdir/x.png` -> `images/x.png`) must not be another
        record's image: such a record is reported, never given the other record's image."""
        claims = defaultdict(list)
        for record in records:
            if record.get("resolved_image_path"):
                claims[Path(record["resolved_image_path"]).resolve()].append(record)
        rejected, by_name = set(), 0
        for path, owners in claims.items():
            guessed = [record for record in owners if record["image_found_by_name"]]
            by_name += len(guessed)
            if not guessed or len(owners) == 1:
                continue
            for record in guessed:
                others = [o for o in owners if o is not record]
                relative = path.relative_to(self.root.resolve()) if path.is_relative_to(self.root.resolve()) else path
                self._reject([dict(index=record["index"], patient_id=record["patient_id"], field="image_path",
                                   message=f"image file not found as given: {record['image_path']!r}; "
                                           f"the file of that name, {str(relative)!r}, is also the image of "
                                           + ", ".join(_describe(o["index"], o["patient_id"]) for o in others)
                                           + ": not guessing across records")])
                rejected.add(id(record))
        if by_name - len(rejected) > 0:
            self.notes.append(dict(index=None, patient_id=None, field="image_path",
                                   message=f"{by_name - len(rejected)} image paths name a folder that does not hold "
                                           "the file; found by file name (unique, used by no other record)"))
        return [record for record in records if id(record) not in rejected]

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
            try:
                kind, values = read_split_file(split_files[split], patient_ids, image_paths)
            except StepCoTDataError as error:
                self._warn(dict(index=None, patient_id=None, field=split_files[split].name,
                                message=f"{error}; the file is ignored, so its records are in no split"))
                continue
            unmatched = 0
            for value in values:
                if kind == "patient_id":
                    matched = by_patient.get(value, [])
                else:
                    matched = [by_image[value]] if value in by_image else by_name.get(Path(value).name, [])
                unmatched += not matched
                for record in matched:
                    record.setdefault("listed_in", set()).add(split)
                    if record.get("split") is None:
                        record["split"] = split
            if unmatched:
                self.notes.append(dict(index=None, patient_id=None, field=split_files[split].name,
                                       message=f"{unmatched} entries match no record of data.json"))
        self._split_files = split_files
        for record in records:
            if record.get("split") is None:
                self._reject([dict(index=record["index"], patient_id=record["patient_id"], field="split",
                                   message="listed in no split file (" + ", ".join(
                                       p.name for p in split_files.values()) + ")")])
        return "split files: " + ", ".join(f"{split}={path.name}" for split, path in split_files.items())

    def _check_leakage(self):
        """A patient in two splits leaks, whether its records are listed in different split files or one record
        is listed in two. Strict mode raises; lenient mode keeps the patient in its first split (train, validation,
        test order), skips its records elsewhere and reports a record listed in several split files."""
        splits_of = defaultdict(set)
        for record in self.records:
            splits_of[record["patient_id"]].add(record["split"])
            splits_of[record["patient_id"]].update(record.get("listed_in", ()))
        leaking = {pid: splits for pid, splits in splits_of.items() if len(splits) > 1}
        kept = []
        for record in self.records:
            splits = leaking.get(record["patient_id"])
            if splits is None:
                kept.append(record)
                continue
            first = min(splits, key=SPLITS.index)
            ordered = sorted(splits, key=SPLITS.index)
            listed = sorted(record.get("listed_in", ()), key=SPLITS.index)
            where = (f", this record listed in {', '.join(self._split_files[s].name for s in listed)}"
                     if len(listed) > 1 else "")
            problem = dict(index=record["index"], patient_id=record["patient_id"], field="split",
                           message=f"patient appears in several splits {ordered}{where} (leakage); "
                                   f"kept only in {first!r}")
            if self.strict:
                raise StepCoTDataError(format_problem(problem).replace("; kept only in", "; would keep only in"))
            if record["split"] == first:
                kept.append(record)
                if len(listed) > 1:
                    self.warnings.append(problem)
            else:
                self.skipped.append({"index": record["index"], "patient_id": record["patient_id"],
                                     "problems": [problem]})
        self.records = kept

    def _check_option_lists(self):
        """Labels are option indices, so every record must list a step's options in the same order. A record
        whose list differs from the most common one is an error in strict mode; lenient mode re-orders a record
        with the same options in another order (labels follow, reported) and skips one with other options."""
        kept = []
        majority = []
        for step in range(self.config.num_steps):
            counts = Counter(tuple(map(normalize_text, r["vqa_chain"][step]["options"])) for r in self.records)
            common = counts.most_common(1)[0][0] if counts else ()
            display = next((r["vqa_chain"][step]["options"] for r in self.records
                            if tuple(map(normalize_text, r["vqa_chain"][step]["options"])) == common), [])
            majority.append((common, list(display), counts[common] if counts else 0))
        for record in self.records:
            skip = None
            for step, (common, display, count) in enumerate(majority):
                options = record["vqa_chain"][step]["options"]
                normalized = tuple(map(normalize_text, options))
                if normalized == common:
                    continue
                field = f"vqa_chain[{step}].options"
                same_set = sorted(normalized) == sorted(common)
                problem = dict(index=record["index"], patient_id=record["patient_id"], field=field,
                               message=f"{options} {'in another order than' if same_set else 'differ from'} the "
                                       f"options of the other {count} records {display} (labels index the options)")
                if self.strict:
                    raise StepCoTDataError(format_problem(problem))
                if not same_set:
                    skip = problem
                    break
                label = record["labels"][step]
                if label != IGNORE_INDEX:
                    record["labels"][step] = common.index(normalized[label])
                record["vqa_chain"][step] = dict(record["vqa_chain"][step], options=list(display))
                self.warnings.append(dict(problem, message=problem["message"] + "; re-ordered, label follows"))
            if skip is None:
                kept.append(record)
            else:
                self.skipped.append({"index": record["index"], "patient_id": record["patient_id"],
                                     "problems": [skip]})
        self.records = kept

    def _check_near_duplicates(self):
        """Near-duplicate images (perceptual hash within `NEAR_DUPLICATE_MAX_DISTANCE` bits) in different splits
        leak even across patient ids (sources re-use images). Strict mode raises; lenient mode keeps the image in
        its first split and skips the later copies."""
        hashed = [r for r in self.records if r.get("perceptual_hash") is not None]
        packed = {split: (np.array([r for r in hashed if r["split"] == split], dtype=object),
                          np.packbits(np.array([unpack_hash(r["perceptual_hash"]) for r in hashed
                                                if r["split"] == split],
                                               dtype=bool).reshape(-1, NEAR_DUPLICATE_HASH_SIZE ** 2), axis=1)
                          .view(np.uint64))
                  for split in SPLITS}
        dropped = set()
        for later_index, later in enumerate(SPLITS):
            later_records, later_hashes = packed[later]
            for earlier in SPLITS[:later_index]:
                earlier_records, earlier_hashes = packed[earlier]
                if not len(later_records) or not len(earlier_records):
                    continue
                rows = max(1, min(256, NEAR_DUPLICATE_PAIRS_PER_BLOCK // len(earlier_records)))  # bounded memory
                for start in range(0, len(later_records), rows):
                    chunk = later_hashes[start:start + rows]
                    distances = np.bitwise_count(chunk[:, None, :] ^ earlier_hashes[None, :, :]).sum(-1)
                    for row, column in zip(*np.nonzero(distances <= NEAR_DUPLICATE_MAX_DISTANCE)):
                        record, original = later_records[start + row], earlier_records[column]
                        if id(record) in dropped or id(original) in dropped:
                            continue
                        distance = int(distances[row, column])
                        self.near_duplicates.append({
                            "distance_bits": distance,
                            "kept": {"index": original["index"], "patient_id": original["patient_id"],
                                     "split": earlier, "image_path": original["image_path"]},
                            "skipped": {"index": record["index"], "patient_id": record["patient_id"],
                                        "split": later, "image_path": record["image_path"]},
                        })
                        problem = dict(index=record["index"], patient_id=record["patient_id"], field="image_path",
                                       message=f"{later} image {record['image_path']!r} is a near-duplicate of "
                                               f"{_describe(original['index'], original['patient_id'])}'s {earlier} "
                                               f"image {original['image_path']!r} (perceptual hash {distance} of "
                                               f"{NEAR_DUPLICATE_HASH_SIZE ** 2} bits apart; leakage)")
                        if self.strict:
                            raise StepCoTDataError(format_problem(problem))
                        dropped.add(id(record))
                        self.skipped.append({"index": record["index"], "patient_id": record["patient_id"],
                                             "problems": [dict(problem, message=problem["message"]
                                                               + f"; kept only in {earlier!r}")]})
        self.records = [record for record in self.records if id(record) not in dropped]

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
            "near_duplicate_rule": f"perceptual hash (imagehash.phash, {NEAR_DUPLICATE_HASH_SIZE ** 2} bits) at most "
                                   f"{NEAR_DUPLICATE_MAX_DISTANCE} bits apart",
            "max_image_pixels": MAX_IMAGE_PIXELS,
            "split_sizes": {name: len(records) for name, records in self.splits.items()},
            "skipped": [
                {**entry, "problems": [dict(p, text=format_problem(p)) for p in entry["problems"]]}
                for entry in self.skipped
            ],
            "warnings": [dict(w, text=_format_entry(w)) for w in self.warnings],
            "near_duplicates": self.near_duplicates,
            "notes": [dict(n, text=_format_entry(n)) for n in self.notes],
        }

    def write_report(self, path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.report, indent=2, default=str), encoding="utf-8")
        return path


__all__ = [
    "SPLITS",
    "MAX_IMAGE_PIXELS",
    "NEAR_DUPLICATE_MAX_DISTANCE",
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
    "release_fingerprint",
    "inspect_image",
    "locate_image",
    "stratified_group_split",
    "validate_record",
]
