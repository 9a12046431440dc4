"""Your own labels: partial chains (steps left out or unanswered get -100: neither trained nor scored) and a step
schema taken from the release (options and class counts from the records or a schema.json)."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from dataset_script.records import StepCoTDataError
from dataset_script.release import StepCoTRelease
from dataset_script.schema import infer_schema
from modeling_stepcot.configuration_stepcot import DEFAULT_STEP_NAMES, DEFAULT_STEP_OPTIONS

DIAGNOSES = ["Normal", "Bacterial", "Viral"]


def _write_images(folder, count, size=16):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(folder / "images" / f"{index}.png")


def _kermany_like_release(folder, count=30):
    """One custom step: diagnosis Normal / Bacterial / Viral (10 each)."""
    _write_images(folder, count)
    records = [{"patient_id": f"p{i}", "image_path": f"images/{i}.png",
                "vqa_chain": [{"step": "Diagnosis", "question": "What does the radiograph show?",
                               "options": DIAGNOSES, "answer": DIAGNOSES[i % 3]}]}
               for i in range(count)]
    (folder / "data.json").write_text(json.dumps(records))
    return records


def test_custom_schema_comes_from_the_records(tmp_path):
    _kermany_like_release(tmp_path)
    release = StepCoTRelease(tmp_path)
    assert release.config.step_names == ["Diagnosis"]
    assert release.config.step_questions == ["What does the radiograph show?"]
    assert release.config.step_options == [DIAGNOSES]
    assert release.step_class_counts() == [{"Normal": 10, "Bacterial": 10, "Viral": 10}]
    assert "inferred from the records" in release.schema_source
    assert {tuple(r["labels"]) for r in release} == {(0,), (1,), (2,)}
    assert release.report["schema"][0]["counts"] == {"Normal": 10, "Bacterial": 10, "Viral": 10}


def test_custom_schema_builds_and_loads_with_counts_in_the_card(tmp_path):
    from datasets import load_dataset

    from dataset_script.parquet_export import build_hub_dataset

    _kermany_like_release(tmp_path / "release")
    build_hub_dataset(tmp_path / "release", tmp_path / "built")
    data = load_dataset(str(tmp_path / "built"))
    assert sorted(label for split in data for (label,) in data[split]["labels"]) == [0] * 10 + [1] * 10 + [2] * 10
    card = (tmp_path / "built" / "README.md").read_text()
    assert "| 1 | Diagnosis | What does the radiograph show? | 0: Normal (10) / 1: Bacterial (10) / 2: Viral (10) |" \
        in card


def test_inferred_schema_moves_na_last_and_orders_numbered_steps():
    records = [{"vqa_chain": [{"step": "Step 2", "options": ["Yes", "No"], "answer": "No"},
                              {"step": "Step 1", "options": ["N/A", "Left", "Right"], "answer": "Left"}]}]
    config, source = infer_schema(records)
    assert config.step_names == ["Step 1", "Step 2"]
    assert config.step_options == [["Left", "Right", "N/A"], ["Yes", "No"]]


def test_schema_file_wins(tmp_path):
    _kermany_like_release(tmp_path)
    schema = {"steps": [{"name": "Diagnosis", "question": "Which diagnosis?", "options": DIAGNOSES}]}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    release = StepCoTRelease(tmp_path)
    assert release.schema_source == "schema.json" and release.config.step_questions == ["Which diagnosis?"]
    (tmp_path / "schema.json").write_text('{"steps": [{"question": "no name"}]}')
    with pytest.raises(StepCoTDataError, match="schema.json: not a step schema"):
        StepCoTRelease(tmp_path)


def test_a_record_whose_options_break_the_inferred_schema_is_reported(tmp_path):
    records = _kermany_like_release(tmp_path)
    records[5]["vqa_chain"][0]["options"] = ["Normal", "Pneumonia"]
    (tmp_path / "data.json").write_text(json.dumps(records))
    release = StepCoTRelease(tmp_path, strict=False)
    assert [entry["index"] for entry in release.skipped] == [5]
    assert "has 2 options" in release.report["skipped"][0]["problems"][0]["text"]


@pytest.fixture
def partial_release(demo_release_dir, tmp_path):
    """The demo release where records leave steps out (by number or by name) or mark them unanswered."""
    folder = tmp_path / "partial"
    shutil.copytree(demo_release_dir, folder)
    records = json.loads((folder / "data.json").read_text())
    records[0]["vqa_chain"] = [records[0]["vqa_chain"][6]]  # only the diagnosis, numbered "Step 7"
    records[1]["vqa_chain"] = [dict(records[1]["vqa_chain"][6], step="Diagnosis")]  # by name
    records[2]["vqa_chain"] = records[2]["vqa_chain"][:1] + records[2]["vqa_chain"][6:]  # steps 2-6 left out
    records[3]["vqa_chain"][3]["answer"] = "No Answer"  # marked missing
    records[4]["vqa_chain"][0]["answer"] = None
    (folder / "data.json").write_text(json.dumps(records))
    return folder, records


def test_partial_chains_keep_only_the_given_steps(partial_release):
    folder, raw = partial_release
    release = StepCoTRelease(folder)
    assert release.config.step_names == DEFAULT_STEP_NAMES and release.schema_source == "the Step-CoT schema"
    labels = {record["index"]: record["labels"] for record in release}
    diagnosis = DEFAULT_STEP_OPTIONS[6]
    assert labels[0] == [-100] * 6 + [diagnosis.index(raw[0]["vqa_chain"][0]["answer"])]
    assert labels[1] == [-100] * 6 + [diagnosis.index(raw[1]["vqa_chain"][0]["answer"])]
    assert labels[2][1:6] == [-100] * 5 and labels[2][0] != -100 and labels[2][6] != -100
    assert labels[3][3] == -100 and all(label != -100 for i, label in enumerate(labels[3]) if i != 3)
    assert labels[4][0] == -100
    chain = next(r for r in release if r["index"] == 0)["vqa_chain"]
    assert len(chain) == 7 and chain[2]["answer"] == "" and chain[2]["options"] == DEFAULT_STEP_OPTIONS[2]
    counts = release.step_class_counts()
    assert sum(counts[6].values()) == len(release) and sum(counts[1].values()) == len(release) - 3


def test_partial_chains_are_scored_only_on_given_steps(partial_release):
    from trainers.evaluation.metrics import compute_step_metrics

    folder, _ = partial_release
    release = StepCoTRelease(folder)
    labels = np.array([record["labels"] for record in release])
    counts = release.config.num_classes_per_step
    predictions = [np.eye(counts[s])[np.where(labels[:, s] >= 0, labels[:, s], 0)] for s in range(7)]
    result = compute_step_metrics(predictions, labels, num_classes_per_step=release.config.num_classes_per_step,
                                  num_bootstrap=0)
    assert [row["count"] for row in result.to_dict()["steps"]] == [int((labels[:, s] >= 0).sum()) for s in range(7)]


@pytest.mark.parametrize("chain, field, message", [
    ([{"step": "Step 9", "options": ["a", "b"], "answer": "a"}], "vqa_chain[0].step", "step 9 is outside 1..7"),
    ([{"step": "Severity", "options": ["a", "b"], "answer": "a"}], "vqa_chain[0].step", "unknown step 'severity'"),
    ([{"options": ["a", "b"], "answer": "a"}], "vqa_chain[0].step", "needs each entry's step number or name"),
])
def test_partial_chain_entries_must_name_their_step(demo_release_dir, chain, field, message):
    from dataset_script.records import validate_record

    problems = validate_record({"patient_id": "p", "image_path": "x.png", "vqa_chain": chain}, 0)
    assert len(problems) == 1 and f"field {field}: " in problems[0] and message in problems[0], problems


def test_a_step_given_twice_is_reported_and_a_chain_without_answers_is_a_note(partial_release):
    from dataset_script.records import validate_record

    step = {"step": "Diagnosis", "options": DEFAULT_STEP_OPTIONS[6], "answer": "Normal"}
    assert "given twice" in validate_record({"patient_id": "p", "image_path": "x", "vqa_chain": [step, step]})[0]
    folder, records = partial_release
    records[0]["vqa_chain"][0]["answer"] = "No Answer"  # a report silent about the lungs: kept, teaches nothing
    (folder / "data.json").write_text(json.dumps(records))
    release = StepCoTRelease(folder)
    assert next(r for r in release if r["index"] == 0)["labels"] == [-100] * 7
    assert any("1 records answer no step" in note["text"] for note in release.report["notes"])


def test_the_readme_record_example_is_a_valid_record():
    import re
    from pathlib import Path

    from dataset_script.records import parse_record

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = re.search(r"A complete record of the seven-step schema:\n\n```json\n(.*?)```", readme, re.S)
    clean, problems, _ = parse_record(json.loads(example.group(1)))
    assert problems == [] and clean["labels"] == [1, 0, 5, 4, 4, 1, 4]
