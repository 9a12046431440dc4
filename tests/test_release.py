"""Release reader: answer -> label mapping, record validation, strict/lenient reading, splits and leakage."""

import copy
import json
import shutil
from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dataset_script.records import (
    StepCoTDataError,
    UnknownAnswerError,
    answer_to_label,
    clean_options,
    validate_record,
)
from dataset_script.release import StepCoTRelease
from dataset_script.splits import stratified_group_split
from modeling_stepcot.configuration_stepcot import DEFAULT_STEP_OPTIONS, IGNORE_INDEX

DISTRIBUTION = DEFAULT_STEP_OPTIONS[1]  # Focal, Multifocal, Diffuse, N/A
SECONDARY = DEFAULT_STEP_OPTIONS[5]  # None, ..., N/A


@pytest.mark.parametrize(
    "answer, options, expected",
    [
        ("Multifocal", DISTRIBUTION, 1),
        ("  multifocal. ", DISTRIBUTION, 1),  # normalised text
        ("Pleura / Chest wall", DEFAULT_STEP_OPTIONS[3], 4),
        ("B", DISTRIBUTION, 1),
        ("B.", DISTRIBUTION, 1),
        ("(C)", DISTRIBUTION, 2),
        ("B) Multifocal", DISTRIBUTION, 1),
        ("A. Focal", DISTRIBUTION, 0),
        ("N/A", DISTRIBUTION, 3),
        ("n/a", DISTRIBUTION, 3),
        ("Not applicable", DISTRIBUTION, 3),
        ("None", SECONDARY, 0),  # an option text, not a missing answer
        ("No Answer", DISTRIBUTION, IGNORE_INDEX),
        ("", DISTRIBUTION, IGNORE_INDEX),
        (None, DISTRIBUTION, IGNORE_INDEX),
        (2, DISTRIBUTION, 2),
    ],
)
def test_answer_to_label_forms(answer, options, expected):
    assert answer_to_label(answer, options) == expected


def test_na_answer_without_na_option_uses_the_configured_na_class():
    assert answer_to_label("N/A", ["Focal", "Multifocal", "Diffuse"], na_label=3) == 3
    with pytest.raises(UnknownAnswerError, match="no N/A option"):
        answer_to_label("N/A", ["Focal", "Multifocal", "Diffuse"])


@pytest.mark.parametrize(
    "answer, message",
    [("E", "beyond the 4 options"), ("B) Focal", "letter B is 'Multifocal'"), ("Lobar", "matches none"),
     (7, "outside")],
)
def test_bad_answers_raise_instead_of_becoming_missing(answer, message):
    with pytest.raises(UnknownAnswerError, match=message):
        answer_to_label(answer, DISTRIBUTION)


def test_letter_prefixed_options_are_stripped_only_when_all_are_lettered():
    assert clean_options(["A. Focal", "B. Multifocal"]) == ["Focal", "Multifocal"]
    assert clean_options({"B": "Multifocal", "A": "Focal"}) == ["Focal", "Multifocal"]
    assert clean_options(["A. Focal", "Multifocal"]) == ["A. Focal", "Multifocal"]


def _demo_records(folder):
    return json.loads((folder / "data.json").read_text())


def test_demo_records_are_valid_and_field_variants_are_accepted(demo_release_dir):
    record = _demo_records(demo_release_dir)[0]
    assert validate_record(record, 0, image_root=demo_release_dir) == []
    variant = {
        "Patient ID": record["patient_id"],
        "image": record["image_path"].split("/")[-1],  # bare file name, found under images/
        "source": record["origin"],
        "steps": {f"Step {i + 1}": {"Question": s["question"], "choices": s["options"],
                                    "gt": f"{chr(65 + s['options'].index(s['answer']))}.", "rationale": "..."}
                  for i, s in reversed(list(enumerate(record["vqa_chain"])))},
    }
    assert validate_record(variant, 1, image_root=demo_release_dir) == []


def _break(record, case, folder):
    record = copy.deepcopy(record)
    if case == "step_number":
        record["vqa_chain"][6]["step"] = "Step 9"
    elif case == "unknown_letter":
        record["vqa_chain"][1]["answer"] = "F"
    elif case == "missing_image":
        record["image_path"] = "images/does-not-exist.png"
    elif case == "unreadable_image":
        (folder / "images" / "broken.png").write_bytes(b"not a png at all")
        record["image_path"] = "images/broken.png"
    elif case == "lateral":
        record["view"] = "LATERAL"
    elif case == "no_patient":
        del record["patient_id"]
    return record


BAD_CASES = {
    "step_number": ("vqa_chain[6].step", "step 9 is outside 1..7"),
    "unknown_letter": ("vqa_chain[1].answer", "answer letter 'F'"),
    "missing_image": ("image_path", "image file not found"),
    "unreadable_image": ("image_path", "unreadable image"),
    "lateral": ("view", "non-frontal view 'LATERAL'"),
    "no_patient": ("patient_id", "missing"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_validate_record_names_record_and_field(case, demo_release_dir, tmp_path):
    shutil.copytree(demo_release_dir, tmp_path / "release")
    record = _break(_demo_records(tmp_path / "release")[4], case, tmp_path / "release")
    problems = validate_record(record, 4, image_root=tmp_path / "release")
    field, message = BAD_CASES[case]
    assert len(problems) == 1, problems
    assert problems[0].startswith("record 4")
    assert f"field {field}:" in problems[0] and message in problems[0]


@pytest.fixture
def broken_release(demo_release_dir, tmp_path):
    """The demo release with one record per bad case, a 16-bit image and one patient listed in two splits."""
    folder = tmp_path / "release"
    shutil.copytree(demo_release_dir, folder)
    records = _demo_records(folder)
    broken = {}
    for index, case in zip(range(3, 30, 4), sorted(BAD_CASES)):
        records[index] = _break(records[index], case, folder)
        broken[index] = case
    # 16-bit image: kept, converted later.
    sixteen = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))
    sixteen.save(folder / records[1]["image_path"])
    (folder / "data.json").write_text(json.dumps(records))
    # Leakage: a test patient also listed in train.xlsx.
    test_rows = pd.read_excel(folder / "test.xlsx", dtype=str)
    leaked = test_rows.iloc[0]
    train_rows = pd.read_excel(folder / "train.xlsx", dtype=str)
    pd.concat([train_rows, test_rows.iloc[:1]]).to_excel(folder / "train.xlsx", index=False)
    leaked_index = next(i for i, r in enumerate(records) if r.get("image_path") == leaked["image_path"])
    return folder, records, broken, leaked_index


def test_strict_mode_stops_at_the_first_problem(broken_release):
    folder, _, broken, _ = broken_release
    first = min(broken)
    with pytest.raises(StepCoTDataError, match=f"record {first} .*field {BAD_CASES[broken[first]][0]}"):
        StepCoTRelease(folder, strict=True)


def test_lenient_mode_skips_and_reports_every_bad_record(broken_release, tmp_path):
    folder, records, broken, leaked_index = broken_release
    report_path = tmp_path / "report.json"
    release = StepCoTRelease(folder, strict=False, report_path=report_path)
    report = json.loads(report_path.read_text())
    skipped = {entry["index"]: entry for entry in report["skipped"]}
    for index, case in broken.items():
        assert skipped[index]["problems"][0]["field"] == BAD_CASES[case][0]
        assert BAD_CASES[case][1] in skipped[index]["problems"][0]["text"]
    # The leaking patient stays only in train; its records listed elsewhere are reported.
    leaked_patient = records[leaked_index]["patient_id"]
    leak_skipped = set(skipped) - set(broken)
    assert leak_skipped and all(records[i]["patient_id"] == leaked_patient for i in leak_skipped)
    assert all("leakage" in skipped[i]["problems"][0]["message"] for i in leak_skipped)
    assert {r["split"] for r in release if r["patient_id"] == leaked_patient} == {"train"}
    # Nothing lost silently: every record is either kept or reported.
    assert len(release) + len(skipped) == len(records) == report["records_in_release"]
    assert any("will be converted to 8-bit" in note["message"] and note["index"] == 1 for note in report["notes"])
    assert 1 in {record["index"] for record in release}


def test_strict_mode_reports_leakage(demo_release_dir, tmp_path):
    folder = tmp_path / "release"
    shutil.copytree(demo_release_dir, folder)
    val = pd.read_excel(folder / "val.xlsx", dtype=str)
    pd.concat([pd.read_excel(folder / "test.xlsx", dtype=str), val.iloc[:1]]).to_excel(folder / "test.xlsx",
                                                                                        index=False)
    with pytest.raises(StepCoTDataError, match="several splits.*leakage"):
        StepCoTRelease(folder)


def test_split_files_are_read_by_patient_column_or_by_matching_values(demo_release_dir, tmp_path):
    folder = tmp_path / "release"
    shutil.copytree(demo_release_dir, folder)
    original = StepCoTRelease(folder)
    for name in ("train.xlsx", "val.xlsx", "test.xlsx"):  # unknown header "ID" holding patient ids
        rows = pd.read_excel(folder / name, dtype=str)
        pd.DataFrame({"ID": rows["patient_id"].drop_duplicates()}).to_excel(folder / name, index=False)
    release = StepCoTRelease(folder)
    assert {r["patient_id"]: r["split"] for r in release} == {r["patient_id"]: r["split"] for r in original}
    pd.DataFrame({"ID": ["nobody"] * 3}).to_excel(folder / "val.xlsx", index=False)
    with pytest.raises(StepCoTDataError, match="val.xlsx: no patient_id or image_path column"):
        StepCoTRelease(folder)


def test_without_split_files_the_split_is_seeded_stratified_and_grouped(demo_release_dir, tmp_path):
    folder = tmp_path / "release"
    shutil.copytree(demo_release_dir, folder)
    for name in ("train.xlsx", "val.xlsx", "test.xlsx"):
        (folder / name).unlink()
    release = StepCoTRelease(folder, seed=3)
    assert "seeded 70/15/15" in release.split_source
    splits_of = defaultdict(set)
    for record in release:
        splits_of[record["patient_id"]].add(record["split"])
    assert all(len(s) == 1 for s in splits_of.values())
    assert [r["split"] for r in StepCoTRelease(folder, seed=3)] == [r["split"] for r in release]


def test_stratified_group_split_fractions_per_diagnosis():
    rng = np.random.default_rng(0)
    groups = [f"p{i}" for i in rng.integers(0, 1500, 2000)]
    patient_diagnosis = {g: rng.choice(["Normal", "Nodule", "Mass"], p=[0.6, 0.3, 0.1]) for g in groups}
    diagnoses = [patient_diagnosis[g] for g in groups]
    assignment = stratified_group_split(diagnoses, groups, seed=0)
    per_group = defaultdict(set)
    for group, split in zip(groups, assignment):
        per_group[group].add(split)
    assert all(len(s) == 1 for s in per_group.values())
    for diagnosis in ("Normal", "Nodule", "Mass"):
        counts = Counter(s for s, d in zip(assignment, diagnoses) if d == diagnosis)
        total = sum(counts.values())
        for split, target in (("train", 0.70), ("validation", 0.15), ("test", 0.15)):
            assert abs(counts[split] / total - target) < 0.03, (diagnosis, counts)
    assert stratified_group_split(diagnoses, groups, seed=1) != assignment
