"""Report writers and the `stepcot report` command: files are written and parse back to the computed numbers."""

import csv
import json
import math
import re

import numpy as np
import pytest

from modeling_stepcot.configuration_stepcot import IGNORE_INDEX
from trainers import cli
from trainers.commands import report as report_command
from trainers.evaluation import report
from trainers.evaluation.metric_definitions import METRIC_DISPLAY_NAMES
from trainers.evaluation.metrics import METRIC_NAMES, compute_step_metrics

STEP_NAMES = ["Detection", "Lesion distribution", "Diagnosis"]
STEP_OPTIONS = [
    ["No abnormality", "Increased opacity", "Decreased opacity", "Mixed"],
    ["Focal", "Multifocal", "Diffuse", "N/A"],
    ["Normal", "Nodule", "Atelectasis", "Infiltration", "Effusion", "Pneumonia", "Cardiomegaly", "Mass",
     "Pneumothorax"],
]
CELL = re.compile(r"^(?P<value>\d+\.\d) \[(?P<low>\d+\.\d), (?P<high>\d+\.\d)\]$")


def _result(seed, model, n=120, empty_step=None):
    rng = np.random.default_rng(seed)
    counts = [len(options) for options in STEP_OPTIONS]
    labels = np.stack([rng.integers(0, c, n) for c in counts], axis=1)
    logits = [rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels[:, s]] for s, c in enumerate(counts)]
    if empty_step is not None:
        labels[:, empty_step] = IGNORE_INDEX
    return compute_step_metrics(
        logits, labels, step_names=STEP_NAMES, step_options=STEP_OPTIONS, num_bootstrap=40, seed=seed,
        metadata={"model": model, "split": "test"},
    )


def _table_rows(markdown):
    """The first table of `markdown` (the metrics table; per-class tables follow it)."""
    lines = markdown.split("\n\n")[0].splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return header, [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def _percent(value):
    return f"{100 * value:.1f}"


def test_write_report_files_parse_back_to_the_computed_numbers(tmp_path):
    result = _result(0, "Teacher", empty_step=1)
    written = report.write_report(result, tmp_path / "teacher")
    assert {path.name for path in written.values()} == {
        "metrics.json", "metrics.md", "step_metrics.png", "confusion_matrices.png"
    }

    data = json.loads(written["metrics"].read_text())
    assert data["model"] == "Teacher" and data["split"] == "test"
    assert data["confidence_interval"]["num_resamples"] == 40
    for step, parsed in zip(result.steps, data["steps"]):
        assert parsed["count"] == step.count
        assert parsed["confusion_matrix"] == step.confusion_matrix.tolist()
        for name in METRIC_NAMES:
            entry = parsed["metrics"][name]
            assert set(entry) >= {"value", "ci_low", "ci_high", "definition"} and entry["definition"]
            if math.isnan(step.metrics[name].value):
                assert entry["value"] is None and entry["note"]
            else:
                assert entry["value"] == step.metrics[name].value
                assert entry["ci_low"] == step.metrics[name].ci_low and entry["ci_high"] == step.metrics[name].ci_high
    assert data["mean"]["f1"]["value"] == result.mean["f1"].value
    np.testing.assert_equal(report.load_metrics(tmp_path / "teacher").flat(True), result.flat(True))

    header, rows = _table_rows(written["table"].read_text())
    assert header == ["Model", "Step"] + [METRIC_DISPLAY_NAMES[name] for name in METRIC_NAMES]
    assert [row[0] for row in rows] == ["Teacher", "", "", ""]  # model named once per block, as in the paper
    assert [row[1] for row in rows] == ["Detection step", "Lesion distribution step", "Diagnosis step",
                                        "**Mean over steps**"]
    for row, metrics in zip(rows, [step.metrics for step in result.steps] + [result.mean]):
        for cell, name in zip(row[2:], METRIC_NAMES):
            estimate = metrics[name]
            if math.isnan(estimate.value):
                assert cell == report.MISSING_CELL
                continue
            match = CELL.match(cell)
            assert match, cell
            assert match["value"] == _percent(estimate.value)
            assert (match["low"], match["high"]) == (_percent(estimate.ci_low), _percent(estimate.ci_high))
    table_text = written["table"].read_text()
    assert "Teacher, Lesion distribution step, Accuracy: no labelled examples" in table_text
    assert "labelled per step: 120, 0, 120" in table_text


def test_plots_are_readable_pngs(tmp_path):
    from matplotlib.image import imread

    result = _result(1, "Student")
    bars = report.plot_step_metrics(result, tmp_path / "bars.png")
    confusion = report.plot_confusion_matrices(result, tmp_path / "confusion.png")
    for path in (bars, confusion):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = imread(path).shape
        assert width > 800 and height > 400


def test_format_estimate_without_interval_or_value():
    from trainers.evaluation.metrics import MetricEstimate

    assert report.format_estimate(MetricEstimate(0.8768)) == "87.7"
    assert report.format_estimate(MetricEstimate(0.5, 0.25, 0.75), decimals=2) == "50.00 [25.00, 75.00]"
    assert report.format_estimate(MetricEstimate(math.nan, note="no labelled examples")) == report.MISSING_CELL


def test_report_command_writes_a_comparison_table_and_csv(tmp_path, capsys):
    results = {"teacher": _result(2, "Teacher"), "student": _result(3, "Student")}
    for folder, result in results.items():
        report.write_metrics_json(result, tmp_path / folder / "metrics.json")
    out = tmp_path / "cmp" / "comparison.md"
    parser = __import__("argparse").ArgumentParser()
    report_command.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "teacher"), str(tmp_path / "student" / "metrics.json"),
                              "--out", str(out)])
    assert report_command.run(args) == 0

    header, rows = _table_rows(out.read_text())
    assert header[:2] == ["Model", "Step"]
    assert [row[0] for row in rows if row[0]] == ["Teacher", "Student"]
    assert len(rows) == 2 * (len(STEP_NAMES) + 1)

    with open(out.with_suffix(".csv"), newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert len(csv_rows) == 2 * (len(STEP_NAMES) + 1)
    for row in csv_rows:
        result = results[row["model"].lower()]
        if row["step_index"] == "mean":
            metrics = result.mean
            assert row["n"] == ""
        else:
            step = result.steps[int(row["step_index"]) - 1]
            metrics = step.metrics
            assert int(row["n"]) == step.count
        for name in METRIC_NAMES:
            assert float(row[name]) == metrics[name].value
            assert float(row[f"{name}_ci_low"]) == metrics[name].ci_low


def test_report_command_errors_and_duplicate_names(tmp_path, capsys):
    report.write_metrics_json(_result(4, "Teacher"), tmp_path / "a" / "metrics.json")
    report.write_metrics_json(_result(5, "Teacher"), tmp_path / "b" / "metrics.json")

    assert cli.main(["report", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    assert "| Teacher (a) |" in printed and "| Teacher (b) |" in printed

    assert cli.main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--names", "Only one"]) == 2
    assert "--names has 1 names for 2 runs" in capsys.readouterr().err

    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    assert "No metrics.json" in capsys.readouterr().err

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text('{"steps": []}')
    assert cli.main(["report", str(tmp_path / "broken")]) == 2
    assert "not a valid Step-CoT metrics file" in capsys.readouterr().err

    assert cli.main(["report", str(tmp_path / "a"), "--names", "Ablation", "--no-mean"]) == 0
    printed = capsys.readouterr().out
    assert "| Ablation |" in printed and "Mean over steps" not in printed


@pytest.mark.parametrize("name, expected", [("Detection", "Detection step"), ("Step 3", "Step 3"),
                                            ("Diagnosis step", "Diagnosis step")])
def test_step_label(name, expected):
    assert report.step_label(name) == expected
