"""One release record: field aliases, answers -> labels, and the parse that collects every problem of a record.

The reader is tolerant about *names* (field aliases, letter-style answers, step dicts keyed "Step 1"...) and strict
about *meaning*: every answer maps to a label or the record is reported (`parse_record`, `validate_record`).
`StepCoTDataError` is the data layer's error for a record or file that cannot be used.
"""

from __future__ import annotations

import json
import re
import unicodedata

import numpy as np

from dataset_script.images import AmbiguousImageError, inspect_image, locate_image
from dataset_script.safe_paths import UnsafePathError
from modeling_stepcot.configuration_stepcot import IGNORE_INDEX, NA_OPTION, NO_ANSWER, StepCoTSchemaConfig

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


def field_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def get_field(mapping: dict, aliases) -> tuple[str | None, object]:
    """(the key found, its value) for the first alias present, comparing normalised key names."""
    by_key = {field_key(key): key for key in mapping}
    for alias in aliases:
        key = by_key.get(field_key(alias))
        if key is not None:
            return key, mapping[key]
    return None, None


def _step_number(value) -> int | None:
    digits = re.findall(r"\d+", str(value))
    return int(digits[0]) if digits else None


def chain_as_list(chain):
    """The chain as an ordered list of step dicts: accepts a list, or a dict keyed "Step 1".. / "1"..."""
    if isinstance(chain, dict):
        numbered = [(_step_number(key), key) for key in chain]
        if any(number is None for number, _ in numbered):
            raise StepCoTDataError(f"vqa_chain is a dict whose keys are not step numbers: {list(chain)}")
        return [dict(chain[key], step=chain[key].get("step", key)) if isinstance(chain[key], dict) else chain[key]
                for _, key in sorted(numbered)]
    if isinstance(chain, str):  # some exports keep the chain as a JSON string
        try:
            return chain_as_list(json.loads(chain))
        except json.JSONDecodeError as error:
            raise StepCoTDataError(f"vqa_chain is a string that is not JSON ({error})") from None
    if not isinstance(chain, (list, tuple)):
        raise StepCoTDataError(f"vqa_chain must be a list of step dicts, got {type(chain).__name__}")
    return list(chain)


def _is_lateral(view) -> bool:
    return view is not None and normalize_text(view).replace("-", " ") in _LATERAL_VIEWS


class StepProblem(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


def describe_record(index, patient_id) -> str:
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
            steps = chain_as_list(raw_chain)
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


def schema_step_index(step: dict, position: int, full_chain: bool, config: StepCoTSchemaConfig) -> int:
    """The schema step a chain entry answers: by its number, its name, or its question; by its position only in a
    chain that lists every step."""
    key = step_key(step)
    names = [normalize_text(name) for name in config.step_names]
    questions = [normalize_text(question) for question in config.step_questions]
    if key is not None and key[0] == "number":
        if not 1 <= key[1] <= config.num_steps:
            raise StepProblem("step", f"step {key[1]} is outside 1..{config.num_steps} (steps: {config.step_names})")
        return key[1] - 1
    if key is not None and key[1] in names:
        return names.index(key[1])
    _, question = get_field(step, STEP_FIELD_ALIASES["question"])
    if question is not None and normalize_text(question) in questions:
        return questions.index(normalize_text(question))
    if full_chain:
        return position
    if key is not None and key[0] == "name":
        raise StepProblem("step", f"unknown step {key[1]!r} (steps: {config.step_names})")
    raise StepProblem("step", f"a partial chain ({config.num_steps} steps in the schema) needs each entry's step "
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
            index = schema_step_index(step, position, full_chain, config)
            if index in given:
                raise StepProblem("step", f"step {index + 1} ({config.step_names[index]!r}) is given twice")
            given[index] = _parse_step(step, index, config)
        except StepProblem as error:
            problem(f"{field}.{error.field}", error.message)
    if len(steps) > config.num_steps:
        problem("vqa_chain", f"has {len(steps)} steps, the schema has {config.num_steps}")
    chain = [given[i][0] if i in given else _missing_step(i, config) for i in range(config.num_steps)]
    labels = [given[i][1] if i in given else IGNORE_INDEX for i in range(config.num_steps)]
    return chain, labels


def _parse_step(step, step_index: int, config: StepCoTSchemaConfig):
    if not isinstance(step, dict):
        raise StepProblem("step", f"must be a dict with question/options/answer, got {type(step).__name__}")
    _, raw_options = get_field(step, STEP_FIELD_ALIASES["options"])
    if raw_options is None:
        raise StepProblem("options", "missing")
    try:
        options = clean_options(raw_options)
    except TypeError as error:
        raise StepProblem("options", str(error)) from None
    expected = config.num_classes_per_step[step_index]
    na_label = config.na_label(step_index)
    # A release may leave out the trailing "N/A" option of steps 2-6; "N/A" answers then map to the last class.
    without_na = na_label is not None and not any(normalize_text(o) in NA_TEXTS for o in options)
    if len(options) != expected and not (without_na and len(options) == expected - 1):
        raise StepProblem("options", f"has {len(options)} options, step {config.step_names[step_index]!r} is "
                                  f"configured with {expected}: {options}")
    if len(set(map(normalize_text, options))) != len(options):
        raise StepProblem("options", f"duplicate options {options}")
    answer_key, answer = get_field(step, STEP_FIELD_ALIASES["answer"])
    try:
        label = answer_to_label(answer, options, na_label=na_label)
    except UnknownAnswerError as error:
        raise StepProblem("answer", str(error)) from None
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
    return (f"{describe_record(problem['index'], problem['patient_id'])}, field {problem['field']}: "
            f"{problem['message']}")


def validate_record(record, index=None, config=None, image_root=None) -> list[str]:
    """Every problem of one record as readable strings naming the record and field (empty list = valid).

    `config` gives the step schema (default: the Step-CoT schema). Image files are checked only when `image_root`
    is given; relative image paths resolve against it (and its images/, images_2/ folders).
    """
    _, problems, _ = parse_record(record, index=index, config=config, image_root=image_root)
    return [format_problem(problem) for problem in problems]



__all__ = [
    "NA_TEXTS",
    "NO_ANSWER_TEXTS",
    "RECORD_FIELD_ALIASES",
    "STEP_FIELD_ALIASES",
    "StepCoTDataError",
    "StepProblem",
    "UnknownAnswerError",
    "answer_to_label",
    "chain_as_list",
    "clean_options",
    "describe_record",
    "field_key",
    "format_problem",
    "get_field",
    "normalize_text",
    "parse_record",
    "schema_step_index",
    "step_key",
    "validate_record",
]
