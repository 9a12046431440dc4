"""The step schema of a release: its `schema.json` (`read_schema_file`), else the Step-CoT seven steps when the
records fit them, else a schema inferred from the records (`infer_schema`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from dataset_script.records import (
    NA_TEXTS,
    RECORD_FIELD_ALIASES,
    STEP_FIELD_ALIASES,
    StepCoTDataError,
    StepProblem,
    chain_as_list,
    clean_options,
    get_field,
    normalize_text,
    schema_step_index,
    step_key,
)
from dataset_script.user_files import read_json_file
from modeling_stepcot.configuration_stepcot import NA_OPTION, StepCoTSchemaConfig

SCHEMA_FILE = "schema.json"


def _na_last(options: list[str]) -> list[str]:
    """An "N/A"-like option becomes the canonical NA_OPTION, moved last (the schema's convention)."""
    rest = [option for option in options if normalize_text(option) not in NA_TEXTS]
    return rest + [NA_OPTION] if len(rest) < len(options) else rest


def read_schema_file(path) -> StepCoTSchemaConfig:
    """`schema.json`: {"steps": [{"name": ..., "question": ..., "options": [...]}, ...]}."""
    path = Path(path)
    try:
        steps = read_json_file(path, StepCoTDataError)["steps"]
        return StepCoTSchemaConfig(step_names=[str(s["name"]) for s in steps],
                                   step_questions=[str(s.get("question") or s["name"]) for s in steps],
                                   step_options=[_na_last(clean_options(s["options"])) for s in steps])
    except (KeyError, TypeError) as error:
        raise StepCoTDataError(f"{path}: not a step schema ({type(error).__name__}: {error}); expected "
                               '{"steps": [{"name": ..., "question": ..., "options": [...]}, ...]}') from None
    except StepCoTDataError:
        raise
    except ValueError as error:
        raise StepCoTDataError(f"{path}: {error}") from None


def _chain_entries(raw_records):
    for record in raw_records:
        if not isinstance(record, dict):
            continue
        _, raw_chain = get_field(record, RECORD_FIELD_ALIASES["vqa_chain"])
        try:
            yield [step for step in chain_as_list(raw_chain) if isinstance(step, dict)]
        except StepCoTDataError:
            continue


def _fits(chains: list[list[dict]], config: StepCoTSchemaConfig) -> bool:
    """Every entry names a step of `config` and each step's usual option count is the configured one."""
    option_counts = [Counter() for _ in range(config.num_steps)]
    for chain in chains:
        for position, step in enumerate(chain):
            try:
                index = schema_step_index(step, position, len(chain) == config.num_steps, config)
            except StepProblem:
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


__all__ = ["SCHEMA_FILE", "infer_schema", "read_schema_file"]
