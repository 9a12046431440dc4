"""`stepcot data import`: class folders, a CSV / JSONL of image + labels (NIH `A|B` multi-label), with a mapping
file from labels to step answers and patient grouping keys, and a report of what mapped. On generated tiny data and
on the real Kermany-480 images (skipped without ../shared)."""

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_script.importers import import_folders, import_table
from dataset_script.records import StepCoTDataError
from dataset_script.release import StepCoTRelease

REPO_ROOT = Path(__file__).resolve().parents[1]


def _png(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16), dtype=np.uint8)).save(path)


@pytest.fixture
def class_folders(tmp_path):
    """Kermany style: ROOT/{train,test}/{NORMAL,PNEUMONIA}/personN_*.png; one file name in two folders."""
    root = tmp_path / "chest_xray"
    seed = 0
    for split in ("train", "test"):
        for label in ("NORMAL", "PNEUMONIA"):
            for patient in range(6):
                for view in range(2):
                    seed += 1
                    _png(root / split / label / f"person{patient}{split}{label[0]}_{view}.png", seed)
    _png(root / "train" / "NORMAL" / "same.png", 100)
    _png(root / "train" / "PNEUMONIA" / "same.png", 101)
    return root


def test_class_folders_without_mapping_make_one_diagnosis_step(class_folders, tmp_path):
    report = import_folders(class_folders, tmp_path / "release", patient_id=r"^(person\w+?)_")
    assert report["records"] == 50 and report["left_out"] == 0
    assert report["answers"] == {"Diagnosis": {"NORMAL": 25, "PNEUMONIA": 25}}
    assert report["patient_ids"].startswith("48 from the grouping key, 2 from the image name")
    release = StepCoTRelease(tmp_path / "release")
    assert release.schema_source == "schema.json"
    assert release.config.step_options == [["NORMAL", "PNEUMONIA"]]
    assert len({r["image_path"] for r in release}) == 50  # the two same.png files both kept
    by_patient = {}
    for record in release:
        by_patient.setdefault(record["patient_id"], set()).add(record["split"])
    assert all(len(splits) == 1 for splits in by_patient.values())  # both views of a patient in one split


@pytest.fixture
def nih_table(tmp_path):
    """NIH Data_Entry style CSV: Image Index, Finding Labels ('A|B', 'No Finding'), Patient ID, View Position."""
    rows = [("a.png", "No Finding", "1", "PA"), ("b.png", "Effusion", "1", "PA"),
            ("c.png", "Effusion|Infiltration", "2", "AP"), ("d.png", "Infiltration|Hernia", "3", "PA"),
            ("e.png", "Cardiomegaly", "4", "PA"), ("missing.png", "Effusion", "5", "PA"),
            ("f.png", "Infiltration", "6", "PA")]
    images = tmp_path / "images"
    for index, (name, *_rest) in enumerate(rows):
        if name != "missing.png":
            _png(images / name, index)
    table = tmp_path / "Data_Entry_2017.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "View Position"])
        for name, labels, patient, view in rows:
            writer.writerow([name, labels, "0", patient, view])
    mapping = {"labels": {
        "No Finding": {"Detection": "No abnormality", "Diagnosis": "Normal"},
        "Effusion": {"Detection": "Increased opacity", "Diagnosis": "Effusion"},
        "Infiltration": {"Detection": "Increased opacity", "Diagnosis": "Infiltration"},
        "Cardiomegaly": {"Diagnosis": "Cardiomegaly"},
    }, "patient_id": "Patient ID"}
    (tmp_path / "nih.json").write_text(json.dumps(mapping))
    return table, images, tmp_path / "nih.json"


def test_nih_table_with_a_mapping_to_the_step_cot_schema(nih_table, tmp_path):
    table, images, mapping = nih_table
    report = import_table(table, tmp_path / "release", mapping, images_dir=images)
    assert report["records"] == 5 and report["left_out"] == 2
    reasons = {Path(row["image"]).name: row["reason"] for row in report["left_out_rows"]}
    assert reasons["missing.png"] == "image file not found"
    assert "['Hernia'] not in the mapping file" in reasons["d.png"]
    assert report["unmapped_labels"] == {"Hernia": 1}
    assert report["steps_left_unanswered_by_conflicting_labels"] == {"Diagnosis": 1}
    assert report["labels"]["Effusion"] == 3 and report["patient_ids"] == "from the grouping key"
    release = StepCoTRelease(tmp_path / "release")
    assert release.schema_source == "the Step-CoT schema"  # no own steps: partial Step-CoT chains
    records = {Path(r["image_path"]).name: r for r in release}
    assert records["c.png"]["labels"][0] == 1 and records["c.png"]["labels"][6] == -100  # conflict: unanswered
    assert records["e.png"]["labels"][:6] == [-100] * 6 and records["e.png"]["labels"][6] == 6
    assert records["a.png"]["patient_id"] == records["b.png"]["patient_id"] == "1"
    assert records["c.png"]["view"] == "AP"
    raw = {Path(r["image_path"]).name: r for r in json.loads((tmp_path / "release" / "data.json").read_text())}
    assert raw["c.png"]["source_labels"] == ["Effusion", "Infiltration"]


def test_multi_label_rows_need_a_mapping(nih_table, tmp_path):
    table, images, _ = nih_table
    report = import_table(table, tmp_path / "release", images_dir=images)
    assert report["records"] == 4  # the single-label rows with images
    reasons = [row["reason"] for row in report["left_out_rows"]]
    assert sum("a mapping file is needed" in reason for reason in reasons) == 2


@pytest.mark.parametrize("labels, message", [
    ({"Effusion": {"Severity": "High"}}, "unknown step 'Severity'"),
    ({"Effusion": {"Diagnosis": "Pleural fluid"}}, "'Pleural fluid' is not an option of step 'Diagnosis'"),
    ({"Effusion": "Diagnosis"}, "expected {step name: answer}"),
])
def test_mapping_file_errors_name_the_label(nih_table, tmp_path, labels, message):
    table, images, _ = nih_table
    (tmp_path / "bad.json").write_text(json.dumps({"labels": labels}))
    with pytest.raises(StepCoTDataError, match="bad.json: ") as error:
        import_table(table, tmp_path / "release", tmp_path / "bad.json", images_dir=images)
    assert message in str(error.value)


@pytest.mark.slow  # subprocesses (imports torch), or 480 real images
def test_cli_import_reports_and_fails_in_one_line(nih_table, tmp_path):
    table, images, mapping = nih_table
    command = [sys.executable, "-m", "trainers.cli", "data", "import", "table", "--source", str(table),
               "--images", str(images), "--out", str(tmp_path / "release"), "--mapping", str(mapping)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["unmapped_labels"] == {"Hernia": 1}
    assert "2 rows left out" in result.stderr
    again = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    assert again.returncode == 1 and "already holds a data.json" in again.stderr and "Traceback" not in again.stderr


# The README's three-class Kermany mapping, as the real-data study uses it.
KERMANY_MAPPING = (REPO_ROOT / "configs" / "mappings" / "kermany3.yaml").read_text(encoding="utf-8")


@pytest.mark.slow  # subprocesses (imports torch), or 480 real images
def test_kermany_480_from_class_folders_and_from_its_table(shared_data_dir, tmp_path):
    from dataset_script.parquet_export import build_hub_dataset

    source = shared_data_dir / "kermany-pediatric-cxr-480"
    (tmp_path / "kermany.yaml").write_text(KERMANY_MAPPING)
    # class folders as a user has them: NORMAL / BACTERIA / VIRUS (links to the shared images)
    folders = tmp_path / "folders"
    for line in (source / "records.jsonl").read_text().splitlines():
        record = json.loads(line)
        label = {"Normal": "NORMAL", "bacteria": "BACTERIA", "Virus": "VIRUS"}[record["labels"][-1]]
        (folders / label).mkdir(parents=True, exist_ok=True)
        (folders / label / Path(record["image"]).name).symlink_to(source / record["image"])
    folder_report = import_folders(folders, tmp_path / "from_folders", patient_id=r"(person\d+|IM-\d+)",
                                   copy_images=False)
    assert folder_report["answers"] == {"Diagnosis": {"BACTERIA": 160, "NORMAL": 160, "VIRUS": 160}}
    table_report = import_table(source / "records.jsonl", tmp_path / "from_table", tmp_path / "kermany.yaml",
                                copy_images=False)
    assert table_report["records"] == 480 and table_report["left_out"] == 0
    assert table_report["answers"] == {"Diagnosis": {"Normal": 160, "Bacterial pneumonia": 160,
                                                     "Viral pneumonia": 160}}
    assert table_report["patient_ids"] == "from the grouping key" and table_report["patients"] < 480
    summary = build_hub_dataset(tmp_path / "from_table", tmp_path / "built")
    assert sum(summary["split_sizes"].values()) == 480
    release = StepCoTRelease(tmp_path / "from_table")
    assert release.config.step_options == [["Normal", "Bacterial pneumonia", "Viral pneumonia"]]
    splits = {}
    for record in release:
        splits.setdefault(record["patient_id"], set()).add(record["split"])
    assert all(len(s) == 1 for s in splits.values())
    counts = Counter(record["split"] for record in release)
    assert counts["train"] > counts["validation"] > 0 and counts["test"] > 0


def test_the_readme_mapping_example_is_the_shipped_kermany3_mapping():
    """The README shows the three-class mapping inline; configs/mappings/kermany3.yaml is the file its commands use."""
    import yaml

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in readme.split("```yaml\n")[1:] if "Pnemonia" in b.split("```")[0]]
    assert len(blocks) == 1
    assert yaml.safe_load(blocks[0].split("```")[0]) == yaml.safe_load(KERMANY_MAPPING)
    two_class = yaml.safe_load((REPO_ROOT / "configs" / "mappings" / "kermany2.yaml").read_text(encoding="utf-8"))
    assert two_class["steps"][0]["options"] == ["Normal", "Pneumonia"]
    assert set(two_class["labels"]) == set(yaml.safe_load(KERMANY_MAPPING)["labels"])


def test_a_csv_labels_cell_holding_a_list_is_read_as_that_list(nih_table, tmp_path):
    """pandas writes a list column as "['Effusion', 'Infiltration']"; a JSON list in a cell reads alike. Text that
    only looks like a list stays one label and is reported as unmapped (nothing is evaluated)."""
    table, images, mapping = nih_table
    cells = {"a.png": '["No Finding"]', "b.png": "['Effusion']", "c.png": "['Effusion', 'Infiltration']",
             "e.png": "[__import__('os')]", "f.png": "[Infiltration"}
    rows = list(csv.DictReader(table.open(newline="")))
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "Finding Labels": cells.get(row["Image Index"], row["Finding Labels"])})
    report = import_table(table, tmp_path / "release", mapping, images_dir=images)
    assert report["labels"]["Effusion"] == 3 and report["labels"]["No Finding"] == 1  # b, c and missing.png
    assert report["unmapped_labels"] == {"Hernia": 1, "[__import__('os')]": 1, "[Infiltration": 1}
    assert report["steps_left_unanswered_by_conflicting_labels"] == {"Diagnosis": 1}
