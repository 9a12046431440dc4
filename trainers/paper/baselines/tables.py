"""Baselines, part 3: the paper's Table 3 layout (the paired difference it shows: `metrics.paired_difference`)."""

from __future__ import annotations

import csv
import io
import math

from trainers.evaluation.metric_definitions import METRIC_DISPLAY_NAMES
from trainers.evaluation.report import format_estimate


def _signed(value: float, low: float, high: float) -> str:
    if math.isnan(value):
        return "—"
    text = f"{100 * value:+.1f}"
    return text if math.isnan(low) else f"{text} [{100 * low:+.1f}, {100 * high:+.1f}]"


TABLE3_METRICS = ("accuracy", "auc", "sensitivity", "specificity", "f1", "precision")


def table3_markdown(rows: list[dict], confidence_level: float, num_bootstrap: int, seed) -> str:
    """Diagnosis-level summary (paper Table 3): one line per backbone and setting; the "Δ" line under a backbone
    is with - without on the same test examples with its paired bootstrap CI. Table 3's Teacher / Student rows are
    not made here: they are the Diagnosis row of Table 9 (`stepcot eval` / `stepcot train` metrics.md)."""
    header = ["Model", "Setting"] + [METRIC_DISPLAY_NAMES[name] for name in TABLE3_METRICS] + ["n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if row["kind"] == "metrics":
            diagnosis = row["result"].steps[-1]
            cells = [row["model"], row["setting"]]
            cells += [format_estimate(diagnosis.metrics[name]) for name in TABLE3_METRICS] + [str(diagnosis.count)]
        else:
            diff = row["difference"]
            cells = ["", row.get("label", "Δ with − without")]
            cells += [_signed(diff[n]["value"], diff[n]["ci_low"], diff[n]["ci_high"]) for n in TABLE3_METRICS] + [""]
        lines.append("| " + " | ".join(cells) + " |")
    level = f"{100 * confidence_level:g}%"
    lines += [
        "",
        f"Diagnosis step of the evaluation split, values in %; brackets: {level} percentile bootstrap CI over "
        f"examples ({num_bootstrap} resamples, seed {seed}). Δ: percentage points, paired bootstrap (each resample "
        "scores both settings on the same examples).",
        "Metrics are macro averages over the diagnosis classes present in the labels (definitions in each "
        "metrics.json). 'with Step-CoT': one MLP trained on all seven steps; 'without': on the diagnosis only.",
    ]
    return "\n".join(lines) + "\n"


def table3_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["model", "setting", "n"]
    for name in TABLE3_METRICS:
        header += [name, f"{name}_ci_low", f"{name}_ci_high"]
    writer.writerow(header)
    for row in rows:
        if row["kind"] == "metrics":
            diagnosis = row["result"].steps[-1]
            values = [(diagnosis.metrics[n].value, diagnosis.metrics[n].ci_low, diagnosis.metrics[n].ci_high)
                      for n in TABLE3_METRICS]
            line = [row["model"], row["setting"], diagnosis.count]
        else:
            values = [(row["difference"][n]["value"], row["difference"][n]["ci_low"], row["difference"][n]["ci_high"])
                      for n in TABLE3_METRICS]
            line = [row["model"], row.get("label", "Δ with − without").replace("Δ", "difference").replace("−", "-"),
                    ""]
        for triple in values:
            line += ["" if math.isnan(v) else repr(float(v)) for v in triple]
        writer.writerow(line)
    return buffer.getvalue()
