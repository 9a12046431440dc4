"""The rules annotator answers "No Answer" where a report is silent about the lungs (never "No abnormality" /
"Normal" by default), reads common narrative wording, keeps view / license / patient keys, and `annotate-eval`
lists MeSH codes it does not know instead of aborting."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dataset_script.annotate.findings import DETECTION, DIAGNOSIS, LOCATION, NO_ANSWER, PATTERN
from dataset_script.annotate.records import read_reports
from dataset_script.annotate.rules import annotate_report

REPO_ROOT = Path(__file__).resolve().parents[1]


def answers(text):
    return [step["answer"] for step in annotate_report(text, None)]


@pytest.mark.parametrize("text", [
    "Fever and cough.",
    "Severe ARDS. Person is intubated with an OG in place.",
    "Dry cough, chest pain and dyspnea",
    "Past medical history was unremarkable. Physical examination was unremarkable.",
    "The current appearances of the lungs are nearly normal.",
    "Lines and tubes suitably sited.",
    "Subcutaneous emphysema in the neck.",  # soft tissue, not the lungs
    "Heart size is normal.",  # the heart, not the lungs
])
def test_a_report_silent_about_the_lungs_answers_no_answer(text):
    assert answers(text) == [NO_ANSWER] * 7


@pytest.mark.parametrize("text", [
    "Normal examination.",
    "Fever and cough. Normal appearances.",
    "Patient 2 - CXR: Normal",
    "Examination within the limits of the norm.",
    "The lungs are normally inflated and clear.",
    "No acute radiographic cardiopulmonary process.",
    "No evidence of acute cardiopulmonary disease",
    "The cardiomediastinal contours, lungs, pleura, osseous structures and visualized upper abdomen are normal.",
    "Crackles on both bases. No collapse or consolidation.",
    "Chest radiograph of patient 1 (illness day 7). Unremarkable",
])
def test_a_report_that_calls_the_lungs_normal_answers_normal(text):
    result = answers(text)
    assert result[DETECTION] == "No abnormality" and result[DIAGNOSIS] == "Normal"


def test_narrative_wording_is_read():
    chain = annotate_report("ETT and NG tube placed. New air-space shadowing with air bronchogram in left lower zone. "
                            "New pneumomediastinum demonstrated.", None)
    assert chain[DETECTION]["answer"] == "Mixed"  # opacity plus mediastinal air
    assert chain[PATTERN]["answer"] == "Consolidation"
    assert chain[LOCATION]["answer"] == "Lower lung zone" and chain[LOCATION]["laterality"] == "left"
    assert chain[DIAGNOSIS]["answer"] == "Infiltration"
    chain = annotate_report("No significant findings reported. In retrospect, a subtle ground-glass pattern can be "
                            "seen in both lungs, with peripheral distribution.", None)
    assert chain[DETECTION]["answer"] == "Increased opacity" and chain[LOCATION]["laterality"] == "bilateral"
    chain = annotate_report("Pneumomediastinum.", None)
    assert chain[DETECTION]["answer"] == "Decreased opacity" and chain[LOCATION]["answer"] == "Heart/Mediastinum"
    assert chain[DIAGNOSIS]["answer"] == NO_ANSWER  # no class for it among the diagnoses
    assert answers("Bilateral reticulonodular shadowing.")[PATTERN] == "Interstitial"
    assert answers("Patchy shadowing in the right mid zone.")[DETECTION] == "Increased opacity"
    assert answers("The cardiac shadow is not enlarged. Lungs clear.")[DIAGNOSIS] == "Normal"


def test_the_covid_case_notes_quoted_in_the_issue(shared_data_dir):
    records = {json.loads(line)["source_path"]: json.loads(line) for line in
               (shared_data_dir / "covid-chestxray-cases" / "records.jsonl").read_text().splitlines()}
    ards = records["images/ARDSSevere.png"]
    assert ards["report"].startswith("Severe ARDS. Person is intubated")
    assert answers(ards["report"]) == [NO_ANSWER] * 7
    by_text = {r["report"].strip(): r for r in records.values()}
    for text in ("Fever and two days of odynophagia", "Intensive care study", "Dry cough, chest pain and dyspnea"):
        assert answers(by_text[text]["report"]) == [NO_ANSWER] * 7, text
    assert answers(by_text["Fever and cough. Normal appearances."]["report"])[DIAGNOSIS] == "Normal"


def test_view_license_and_patient_keys_are_kept(tmp_path):
    rows = [{"id": "img-1", "patient_id": "P7", "image": "images/1.png", "report": "Lungs clear.", "view": "PA",
             "license": "CC BY 4.0"},
            {"id": "img-2", "patient_id": "P7", "image": "images/2.png", "report": "Fever and cough.", "view": "AP"}]
    path = tmp_path / "reports.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    from dataset_script.annotate.annotator import annotate_rows

    read = read_reports(path)  # two images of one patient: not duplicate report ids
    records, _, _ = annotate_rows(read.rows, "rules", None, strict=True, progress=False)
    assert [r["patient_id"] for r in records] == ["P7", "P7"]
    assert [r["report_id"] for r in records] == ["img-1", "img-2"]
    assert records[0]["view"] == "PA" and records[0]["license"] == "CC BY 4.0" and "license" not in records[1]
    assert records[1]["vqa_chain"][DIAGNOSIS]["answer"] == NO_ANSWER


def test_import_of_image_report_pairs_goes_through_the_annotator(tmp_path):
    import numpy as np
    from PIL import Image

    from dataset_script.importers import import_reports
    from dataset_script.release import StepCoTRelease

    rows = []
    for index, text in enumerate(["Fever and cough.", "Normal examination.", "Right lower lobe consolidation.",
                                  "Small left pleural effusion."]):
        (tmp_path / "images").mkdir(exist_ok=True)
        Image.fromarray(np.full((16, 16), index * 40, dtype=np.uint8)).save(tmp_path / "images" / f"{index}.png")
        rows.append({"id": f"r{index}", "patient": f"p{index // 2}", "image": f"images/{index}.png", "report": text,
                     "view": "PA"})
    (tmp_path / "reports.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    report = import_reports(tmp_path / "reports.jsonl", tmp_path / "release")
    assert report["records"] == 4 and report["no_answer_per_step"]["Step 7"] == 1
    release = StepCoTRelease(tmp_path / "release")
    labels = {r["patient_id"]: [] for r in release}
    for record in release:
        labels[record["patient_id"]].append(record["labels"])
    assert sorted(labels) == ["p0", "p1"] and [-100] * 7 in labels["p0"]


@pytest.mark.slow  # subprocesses (imports torch), or 480 real images
def test_annotate_eval_lists_unknown_mesh_codes_and_scores_the_rest(tmp_path):
    reports = [
        {"uid": "CXR1", "findings": "The lungs are clear.", "impression": "Normal chest.", "mesh_major": ["normal"]},
        {"uid": "CXR2", "findings": "Small right pleural effusion.", "impression": "",
         "mesh_major": ["Pleural Effusion/right/small"]},
        {"uid": "CXR3", "findings": "Left lower lobe atelectasis.", "impression": "",
         "mesh_major": ["Pulmonary Atelectasis/lower lobe/left", "Made Up Finding/left"]},
        {"uid": "CXR4", "findings": "Fever and cough.", "impression": "", "mesh_major": ["normal"]},
    ]
    path = tmp_path / "reports.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in reports))
    result = subprocess.run([sys.executable, "-m", "trainers.cli", "annotate-eval", "--reports", str(path),
                             "--no-progress", "--bootstrap", "20", "--min-class-count", "1", "--out",
                             str(tmp_path / "out.json")], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert "scored 3" in result.stdout and "1 with a MeSH code the mapping does not cover" in result.stdout
    assert "'Made Up Finding/left': 1 report(s), e.g. CXR3" in result.stdout
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["unknown_mesh_codes"] == {"Made Up Finding/left": ["CXR3"]}
    detection = out["results"]["all"]["detection"]
    assert detection["count"] == 3
    # the silent CXR4 is a miss, not "abnormal"
    assert detection["accuracy"]["value"] == pytest.approx(2 / 3, abs=1e-3)
