"""The rules annotator on the real Indiana University reports (../shared), scored against expert MeSH codes."""

import json

import pytest
from conftest import SHARED_DATA

from dataset_script.annotate.mesh import parse_mesh
from dataset_script.annotate.records import make_record, read_reports, validate_record
from dataset_script.annotate.rules import annotate_report
from trainers.evaluation.annotation_agreement import collect_pairs, evaluate, split_of

REPORTS = SHARED_DATA / "iu-xray-reports" / "reports.jsonl"


@pytest.fixture(scope="module")
def iu_reports():
    if not REPORTS.is_file():
        pytest.skip(f"shared IU X-Ray reports not found at {REPORTS.resolve()} (a fresh clone has no ../shared)")
    return [json.loads(line) for line in REPORTS.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def scored(iu_reports):
    reports = [r for r in iu_reports if parse_mesh(r["uid"], r["mesh_major"]).indexed
               and ((r.get("findings") or "").strip() or (r.get("impression") or "").strip())]
    chains = {r["uid"]: annotate_report(r["findings"], r["impression"]) for r in reports}
    return reports, chains


def test_every_mesh_head_in_the_shared_reports_is_mapped(iu_reports):
    for report in iu_reports:
        parse_mesh(report["uid"], report["mesh_major"])  # raises UnknownMeshCode naming the report and code


def test_every_annotated_report_is_a_valid_release_record(iu_reports):
    result = read_reports(REPORTS, strict=False, default_origin="IU X-Ray")
    # Skipped rows are the ones without report text or without an image id, each with its reason.
    assert all("empty report" in s["reason"] or "no image" in s["reason"] for s in result.skipped)
    assert len(result.rows) + len(result.skipped) == len(iu_reports)
    for row in result.rows:
        validate_record(make_record(row, annotate_report(row.findings, row.impression)), row.source)


def test_agreement_with_expert_codes_on_both_halves(scored):
    reports, chains = scored
    results = evaluate(reports, chains, min_class_count=20, num_bootstrap=0)
    for split in ("dev", "holdout"):
        assert results[split]["detection"]["accuracy"].value >= 0.90, split
        assert results[split]["diagnosis"]["macro_f1"].value >= 0.80, split
        # target 0.85; rules reach 0.94 on dev, 0.875 on the held-out half (threshold kept below the holdout)
        assert results[split]["side"]["accuracy"].value >= 0.87, split
    assert results["all"]["diagnosis"]["macro_f1_classes"] == [
        "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Nodule", "Normal"]


def test_halves_are_disjoint_and_cover_the_reports(scored):
    reports, chains = scored
    pairs = collect_pairs(reports, chains)
    assert len(pairs["dev"]["detection"][0]) + len(pairs["holdout"]["detection"][0]) == len(reports)
    assert {split_of(r["uid"]) for r in reports} == {"dev", "holdout"}
