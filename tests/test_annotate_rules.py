"""Report -> Step-CoT chain, rules backend: negation, uncertainty, laterality, chain logic, MeSH mapping, metrics."""

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from dataset_script import release
from dataset_script.annotate.findings import (
    ABSENT,
    PRESENT,
    UNCERTAIN,
)
from dataset_script.annotate.mesh import UnknownMeshCode, parse_mesh
from dataset_script.annotate.records import ReportError, read_reports, validate_record
from dataset_script.annotate.rules import annotate_report, extract_findings, split_sentences
from dataset_script.records import validate_record as validate_release_record
from modeling_stepcot.configuration_stepcot import (
    DEFAULT_STEP_OPTIONS,
    DETECTION,
    DIAGNOSIS,
    DISTRIBUTION,
    LOCATION,
    NA_OPTION,
    NO_ANSWER,
    SECONDARY,
)
from trainers.commands.annotate import add_arguments as annotate_arguments
from trainers.commands.annotate import run as annotate_run
from trainers.evaluation.annotation_agreement import agreement, split_of


def status_of(text, kind):
    found = {f.kind: f for f in extract_findings(text)}
    return found[kind].status if kind in found else None


@pytest.mark.parametrize("text", [
    "No pleural effusion.",
    "There is no pneumothorax, pleural effusion or focal consolidation.",
    "Negative for pleural effusion.",
    "The previously seen left pleural effusion has resolved.",
    "Lungs are clear without effusion.",
])
def test_negated_effusion_is_absent(text):
    assert status_of(text, "effusion") == ABSENT


@pytest.mark.parametrize("text, kind", [
    ("Cannot exclude pneumonia.", "pneumonia"),
    ("Pneumonia cannot be excluded.", "pneumonia"),
    ("Right basilar opacity may represent atelectasis.", "atelectasis"),
    ("Possible small left effusion.", "effusion"),
    ("Left base opacity, atelectasis versus pneumonia.", "pneumonia"),
])
def test_hedged_findings_are_uncertain(text, kind):
    assert status_of(text, kind) == UNCERTAIN


def test_negation_scope_stops_at_a_contrasting_clause():
    text = "No pneumothorax, but there is a small right pleural effusion."
    assert status_of(text, "pneumothorax") == ABSENT
    assert status_of(text, "effusion") == PRESENT


def test_pseudo_negation_keeps_the_finding():
    assert status_of("No change in the small left pleural effusion.", "effusion") == PRESENT


@pytest.mark.parametrize("text, side", [
    ("Small left pleural effusion.", "left"),
    ("Right lower lobe atelectasis.", "right"),
    ("Bilateral pleural effusions.", "bilateral"),
    ("Bibasilar atelectasis.", "bilateral"),
    # the effusion outranks the atelectasis as the primary lesion, and keeps its own side
    ("Left basilar atelectasis and right pleural effusion.", "right"),
])
def test_laterality_of_the_primary_lesion(text, side):
    chain = annotate_report(text, "")
    assert chain[LOCATION]["laterality"] == side


@pytest.mark.parametrize("text, side", [
    # explicit bilateral wording, including coordinated and ranked sides
    ("Patchy opacities in the left and right lower lobes.", "bilateral"),
    ("Right upper and left lower lobe opacities.", "bilateral"),
    ("Bibasilar and right perihilar opacities.", "bilateral"),
    ("Basilar opacities, left greater than right, likely atelectasis.", "bilateral"),
    ("Atelectasis at both lung bases.", "bilateral"),
    # plural sites mean both lungs unless one side is named with them
    ("Streaky opacities in the lower lungs.", "bilateral"),
    ("Subsegmental atelectasis at the bases.", "bilateral"),
    ("Small pleural effusions.", "bilateral"),
    ("Right middle and lower lobe pneumonia.", "right"),
    # the same finding named on each side in separate sentences
    ("Right lower lobe atelectasis. Left lower lobe atelectasis.", "bilateral"),
    # side words of devices, bones and negated findings are not the lesion's side
    ("Left-sided pacemaker with mild bibasilar atelectasis.", "bilateral"),
    ("Right internal jugular catheter tip in the SVC and mild atelectasis.", None),
    ("No pneumothorax on the right, but subsegmental atelectasis is present.", None),
    ("No right pleural effusion. Left basilar atelectasis.", "left"),
    # ... unless the bone is the lesion's landmark
    ("Nodular opacity projecting over the left fourth rib.", "left"),
    # a finding named after a sited one in the same sentence shares its site
    ("Blunting of the right costophrenic angle, likely a small effusion.", "right"),
])
def test_laterality_in_general_clinical_language(text, side):
    chain = annotate_report(text, "")
    assert chain[LOCATION]["laterality"] == side


def test_a_sentence_referring_back_takes_the_previous_sentences_site():
    found = {f.kind: f for f in extract_findings(
        "Increased interstitial markings in the right lower lung. This may represent early edema.")}
    assert found["edema"].sides == {"right"} and found["edema"].zones == {"lower"}
    found = {f.kind: f for f in extract_findings("Hazy bilateral opacities. These opacities have increased.")}
    assert found["opacity"].sides == {"left", "right"}


def test_a_hedged_mention_does_not_add_its_side_to_a_stated_one():
    found = {f.kind: f for f in extract_findings(
        "Right upper lobe pneumonia. Left upper lobe nodule which may represent an infectious process.")}
    assert found["pneumonia"].status == PRESENT and found["pneumonia"].sides == {"right"}


def test_would_be_a_consideration_is_a_hedge():
    assert status_of("A pneumonia in the right lower lobe would be a consideration.", "pneumonia") == UNCERTAIN


def test_each_finding_in_a_sentence_keeps_its_own_side_and_zone():
    found = {f.kind: f for f in extract_findings("Left basilar atelectasis and right upper lobe nodule.")}
    assert found["atelectasis"].sides == {"left"} and found["atelectasis"].zones == {"lower"}
    assert found["nodule"].sides == {"right"} and found["nodule"].zones == {"upper"}


def test_generic_opacity_is_explained_by_the_named_finding():
    found = {f.kind: f for f in extract_findings("Left basilar opacity, likely atelectasis.")}
    assert "opacity" not in found
    assert found["atelectasis"].sides == {"left"} and found["atelectasis"].zones == {"lower"}


def test_normal_report_gives_normal_chain_with_not_applicable_middle_steps():
    chain = annotate_report("The heart is normal in size. No focal consolidation, pneumothorax or effusion.",
                            "No acute cardiopulmonary disease.")
    assert chain[DETECTION]["answer"] == "No abnormality"
    assert [step["answer"] for step in chain[DISTRIBUTION:DIAGNOSIS]] == [NA_OPTION] * 5
    assert chain[DIAGNOSIS]["answer"] == "Normal"
    assert chain[LOCATION]["laterality"] is None


def test_effusion_chain_cites_the_report_sentence():
    chain = annotate_report("Heart size is normal. There is a small right pleural effusion. No pneumothorax.", "")
    answers = [step["answer"] for step in chain]
    assert answers[DETECTION] == "Increased opacity"
    assert answers[LOCATION] == "Pleura/Chest wall" and chain[LOCATION]["laterality"] == "right"
    assert answers[SECONDARY] == "Pleural effusion" and answers[DIAGNOSIS] == "Effusion"
    assert "There is a small right pleural effusion" in chain[DETECTION]["reasoning"]


def test_stated_finding_outranks_a_hedged_one():
    chain = annotate_report("Mild cardiomegaly. Possible early pneumonia in the left lower lobe.", "")
    assert chain[DIAGNOSIS]["answer"] == "Cardiomegaly"
    assert "uncertain" not in chain[DIAGNOSIS]["reasoning"]


def test_finding_outside_the_taxonomy_has_no_diagnosis():
    chain = annotate_report("Hyperexpanded lungs with emphysema. No focal consolidation.", "")
    assert chain[DETECTION]["answer"] == "Decreased opacity"
    assert chain[DIAGNOSIS]["answer"] == NO_ANSWER


def test_silent_report_gives_no_answer_for_unstated_secondary_signs():
    chain = annotate_report("Right upper lobe nodule.", "")
    assert chain[SECONDARY]["answer"] == NO_ANSWER
    chain = annotate_report("Right upper lobe nodule. No pleural effusion.", "")
    assert chain[SECONDARY]["answer"] == "None"


def test_sentence_splitting_handles_numbered_items_and_run_ons():
    assert split_sentences("1. Cardiomegaly. 2. Small effusion.") == ["Cardiomegaly", "Small effusion"]
    assert split_sentences("Opacity in the left apex.There is scarring.") == ["Opacity in the left apex",
                                                                              "There is scarring"]


@pytest.mark.parametrize("text", [
    "No acute disease.",
    "Left lower lobe consolidation with air bronchograms, consistent with pneumonia. Small left effusion.",
    "Large right pneumothorax with mediastinal shift to the left.",
    "Scattered calcified granulomas. Hyperinflated lungs. Streaky right basilar scarring.",
    "Enlarged cardiac silhouette. Bilateral interstitial opacities, possibly edema.",
])
def test_every_chain_passes_the_data_layers_strict_validation(text):
    record = {"patient_id": "p1", "image_path": "images/p1.png", "origin": "test", "report": text,
              "vqa_chain": annotate_report(text, "")}
    validate_record(record)  # the release reader's checks plus the exact schema texts
    assert validate_release_record(record) == []
    for step, options in zip(record["vqa_chain"], DEFAULT_STEP_OPTIONS):
        assert step["options"] == options and step["reasoning"].strip()


def test_validation_names_the_record_step_and_field():
    record = {"patient_id": "p7", "image_path": "x.png", "origin": "t", "report": "r",
              "vqa_chain": annotate_report("Small left effusion.", "")}
    record["vqa_chain"][0]["answer"] = NA_OPTION  # Step 1 has no N/A option
    with pytest.raises(ValueError, match=r"p7.*(vqa_chain\[0\]\.answer|step 1)"):
        validate_record(record, "out.json record 0")


def test_reader_strict_fails_and_lenient_skips_with_reason(tmp_path):
    path = tmp_path / "reports.jsonl"
    path.write_text(json.dumps({"uid": "a", "findings": "No effusion.", "images": ["a1"]}) + "\n"
                    + json.dumps({"uid": "b", "findings": "", "impression": "", "images": ["b1"]}) + "\n"
                    + "{not json\n")
    with pytest.raises(ReportError, match=r"reports.jsonl:2 \(id b\): empty report"):
        read_reports(path)
    lenient = read_reports(path, strict=False)
    assert [row.patient_id for row in lenient.rows] == ["a"]
    assert [item["source"].rsplit(":", 1)[1] for item in lenient.skipped] == ["2", "3"]


def test_cli_writes_records_the_release_reader_loads(tmp_path):
    import argparse

    reports = tmp_path / "reports.csv"
    reports.write_text("patient_id,findings,impression\n"
                       "p1,Small right pleural effusion.,Effusion.\n"
                       "p2,,\n"
                       "p3,Lungs are clear.,No acute disease.\n")
    parser = argparse.ArgumentParser()
    annotate_arguments(parser)
    out = tmp_path / "release" / "data.json"
    argv = ["--reports", str(reports), "--out", str(out), "--no-progress",
            "--image-path-template", "images/{patient_id}.png"]
    assert annotate_run(parser.parse_args(argv)) == 1 and not out.exists()  # strict: stops at p2
    assert annotate_run(parser.parse_args(argv + ["--lenient"])) == 0
    records = json.loads(out.read_text())
    assert [r["patient_id"] for r in records] == ["p1", "p3"]
    assert "p2" in (tmp_path / "release" / "data.json.skipped.jsonl").read_text()
    loaded = release.StepCoTRelease(tmp_path / "release", strict=True, check_images=False)
    assert len(loaded) == 2


def test_mesh_codes_map_to_reference_answers():
    reference = parse_mesh("u1", ["Opacity/lung/base/left/mild", "Pulmonary Atelectasis/base/left"])
    assert reference.detection == "Increased opacity" and reference.diagnosis == "Atelectasis"
    assert reference.side == "left" and reference.zone == "Lower lung zone"
    effusion = parse_mesh("u2", ["Pleural Effusion/bilateral/small", "Cardiomegaly/mild"])
    assert effusion.diagnosis == "Effusion" and effusion.side == "bilateral" and effusion.zone == "Pleura/Chest wall"
    assert parse_mesh("u3", ["normal"]).diagnosis == "Normal"
    assert parse_mesh("u4", ["Thoracic Vertebrae/degenerative"]).diagnosis == "Normal"  # incidental only
    assert parse_mesh("u5", ["Lung/hyperdistention"]).diagnosis is None  # outside the taxonomy
    assert parse_mesh("u6", ["Opacity/lung/upper lobe/right/round"]).diagnosis == "Nodule"
    assert not parse_mesh("u7", ["No Indexing"]).indexed
    with pytest.raises(UnknownMeshCode, match="u8.*Made Up Finding"):
        parse_mesh("u8", ["Made Up Finding/left"])


def test_mesh_side_of_multi_finding_reports_and_obscured_angles():
    # codes of one kind add up; the side compared is that of the primary lesion (same priority as the chain)
    assert parse_mesh("u1", ["Opacity/lung/base/left", "Opacity/lung/upper lobe/right"]).side == "bilateral"
    assert parse_mesh("u2", ["Pulmonary Atelectasis/base/left", "Pleural Effusion/right"]).side == "right"
    # an angle coded "obscured" was not seen: image quality, not blunting
    obscured = parse_mesh("u3", ["Costophrenic Angle/sulcus/bilateral/posterior/obscured"])
    assert obscured.side is None and obscured.detection == "No abnormality" and obscured.diagnosis == "Normal"
    assert parse_mesh("u4", ["Costophrenic Angle/left/blunted"]).side == "left"


def test_agreement_matches_scikit_learn_and_has_bootstrap_intervals():
    rng = np.random.default_rng(0)
    classes = ["Normal", "Effusion", "Nodule"]
    true = list(rng.choice(classes, 200))
    predicted = [t if rng.random() < 0.8 else rng.choice(classes) for t in true]
    result = agreement(true, predicted, macro_classes=["Normal", "Effusion"], num_bootstrap=200, seed=1)
    assert result["accuracy"].value == pytest.approx(np.mean(np.array(true) == np.array(predicted)))
    expected = f1_score(true, predicted, labels=["Normal", "Effusion"], average=None)
    assert result["per_class"]["Normal"]["f1"].value == pytest.approx(expected[0])
    assert result["macro_f1"].value == pytest.approx(expected.mean())
    assert result["macro_f1"].ci_low < result["macro_f1"].value < result["macro_f1"].ci_high
    again = agreement(true, predicted, macro_classes=["Normal", "Effusion"], num_bootstrap=200, seed=1)
    assert again["macro_f1"].ci_low == result["macro_f1"].ci_low  # seeded


def test_split_is_a_stable_half():
    uids = [f"CXR{i}" for i in range(400)]
    halves = [split_of(uid) for uid in uids]
    assert halves == [split_of(uid) for uid in uids]
    assert 150 < halves.count("dev") < 250
