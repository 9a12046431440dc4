"""Metric reports: `metrics.json`, Markdown tables in the paper's Table 8/9 layout, CSV and PNG plots.

Also the `stepcot report` command, which collects several runs' `metrics.json` into one comparison table:

    stepcot report runs/teacher runs/student runs/no_memory --out comparison.md   # also writes comparison.csv
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dataset_script.user_files import read_json_file
from trainers.evaluation.metric_definitions import METRIC_DISPLAY_NAMES
from trainers.evaluation.metrics import FEW_EXAMPLES, METRIC_NAMES, EvaluationMetrics, MetricEstimate

METRICS_FILENAME = "metrics.json"
TABLE_FILENAME = "metrics.md"
STEP_PLOT_FILENAME = "step_metrics.png"
CONFUSION_PLOT_FILENAME = "confusion_matrices.png"
MEAN_ROW_LABEL = "Mean over steps"
MISSING_CELL = "—"
ZERO_WIDTH_MARK = " (zero width)"

SHORT_DEFINITIONS = {
    "accuracy": "fraction of labelled examples whose argmax prediction equals the label.",
    "auc": "macro one-vs-rest ROC AUC from the class probabilities.",
    "sensitivity": "macro recall, TP / (TP + FN) per class.",
    "specificity": "macro one-vs-rest TN / (TN + FP) per class.",
    "f1": "macro F1, mean of per-class 2TP / (2TP + FP + FN).",
    "precision": "macro TP / (TP + FP) per class; a never-predicted class counts 0.",
}


# ----------------------------------------------------------------------------------------------------------------
# metrics.json


def finite_or_none(value):
    """`value` with every NaN / infinity (Python or numpy, at any depth) replaced by None, numpy scalars and arrays
    turned into Python numbers and lists: what strict JSON can hold."""
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    if isinstance(value, np.ndarray):
        return finite_or_none(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def strict_json(value, **kwargs) -> str:
    """`json.dumps` that never writes the bare `NaN` / `Infinity` tokens other parsers reject (they become null)."""
    return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)



def write_metrics_json(result: EvaluationMetrics, path: str | Path) -> Path:
    """Strict JSON (NaN written as null, with a note saying why)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def load_metrics(path: str | Path) -> EvaluationMetrics:
    """Read a `metrics.json`, or the one inside a run directory."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"No {METRICS_FILENAME} at {path} (run `stepcot eval ... --out DIR` first).")
    data = read_json_file(path)  # unreadable, not UTF-8, not JSON: "PATH: why"
    try:
        return EvaluationMetrics.from_dict(data)
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(f"{path} is not a valid Step-CoT metrics file: {error}") from error


# ----------------------------------------------------------------------------------------------------------------
# Tables


def step_label(name: str) -> str:
    """The paper labels rows "Detection step"; generic names like "Step 3" are kept as they are."""
    return name if name.lower().startswith("step") or name.lower().endswith("step") else f"{name} step"


def format_estimate(estimate: MetricEstimate, decimals: int = 1) -> str:
    """`91.8 [90.4, 93.1]` in percent; `—` when undefined; no brackets without an interval."""
    if math.isnan(estimate.value):
        return MISSING_CELL
    text = f"{100 * estimate.value:.{decimals}f}"
    if not (math.isnan(estimate.ci_low) or math.isnan(estimate.ci_high)):
        text += f" [{100 * estimate.ci_low:.{decimals}f}, {100 * estimate.ci_high:.{decimals}f}]"
        if estimate.zero_width:  # every resample agreed: not certainty (see the note under the table)
            text += ZERO_WIDTH_MARK
    return text


def format_wilson(estimate: MetricEstimate, decimals: int = 1) -> str:
    """`91.7 [83.0, 96.2]` with the accuracy's Wilson interval; `—` when there is none."""
    if math.isnan(estimate.wilson_low):
        return MISSING_CELL
    return (f"{100 * estimate.value:.{decimals}f} [{100 * estimate.wilson_low:.{decimals}f}, "
            f"{100 * estimate.wilson_high:.{decimals}f}]")


def interval_notes(runs: Sequence[tuple[str, EvaluationMetrics]], decimals: int = 1) -> list[str]:
    """Note lines: each step's accuracy with its Wilson interval, steps with few labelled examples, and what a
    zero-width bootstrap interval means."""
    notes, few, zero_width = [], [], False
    for model, result in runs:
        level = f"{100 * result.confidence_level:g}%"
        cells = [f"{step.name} {format_wilson(step.metrics['accuracy'], decimals)} (n = {step.count})"
                 for step in result.steps if step.count]
        if cells:
            notes.append(f"- {model}, accuracy with its {level} Wilson interval: " + "; ".join(cells) + ".")
        few += [f"{step.name} (n = {step.count})" for step in result.steps if 0 < step.count < FEW_EXAMPLES]
        zero_width |= any(step.metrics[name].zero_width for step in result.steps for name in METRIC_NAMES)
    if few:
        notes.append(f"- Few labelled examples (< {FEW_EXAMPLES}), figures unreliable: "
                     + ", ".join(dict.fromkeys(few)) + ".")
    if zero_width:
        notes.append(f"- {ZERO_WIDTH_MARK.strip()}: the bootstrap interval has no width because every resample gave "
                     "the same value (e.g. all examples correct); that is not certainty: use the Wilson interval "
                     "above.")
    return notes


def _rows(result: EvaluationMetrics, include_mean: bool):
    """(label, n, metrics) per step, then the mean row."""
    for step in result.steps:
        yield step_label(step.name), step.count, step.metrics
    if include_mean:
        yield MEAN_ROW_LABEL, None, result.mean


def per_class_scores(confusion: np.ndarray) -> list[dict]:
    """Per class (row = true, column = predicted counts): support, precision, recall and F1 (None where undefined:
    precision of a class never predicted, recall of a class with no examples)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    rows = []
    for cls in range(confusion.shape[0]):
        true_positive, support, predicted = confusion[cls, cls], confusion[cls].sum(), confusion[:, cls].sum()
        precision = true_positive / predicted if predicted else None
        recall = true_positive / support if support else None
        f1 = (2 * true_positive / (support + predicted)) if support + predicted else None
        rows.append({"support": int(support), "predicted": int(predicted), "precision": precision, "recall": recall,
                     "f1": f1})
    return rows


def _classes(count: int) -> str:
    return "1 class" if count == 1 else f"{count} classes"


def _percent(value, decimals: int) -> str:
    return MISSING_CELL if value is None else f"{100 * value:.{decimals}f}"


def per_class_markdown(runs: Sequence[tuple[str, EvaluationMetrics]], steps: str = "last", decimals: int = 1) -> str:
    """Per-class precision / recall / F1 and the confusion matrix (rows: true class, columns: predicted) of each
    run's labelled steps: `steps` "last" (the last labelled step, the diagnosis in the Step-CoT schema) or "all"."""
    blocks = []
    for model, result in runs:
        labelled = [step for step in result.steps if step.count > 0]
        for step in labelled[-1:] if steps == "last" else labelled:
            options = [_short(option, 28) for option in step.options]
            lines = [f"### {model}: {step_label(step.name)} per class (n = {step.count})", "",
                     "| Class | n | Precision | Recall | F1 |", "|---|---|---|---|---|"]
            scores = per_class_scores(step.confusion_matrix)
            for option, row in zip(options, scores):
                lines.append(f"| {option} | {row['support']} | {_percent(row['precision'], decimals)} | "
                             f"{_percent(row['recall'], decimals)} | {_percent(row['f1'], decimals)} |")
            present = [row["f1"] or 0.0 for row in scores if row["support"]]
            macro = sum(present) / len(present) if present else None
            lines += ["", f"Macro-F1 over the {_classes(len(present))} present: {_percent(macro, decimals)}; "
                          f"precision is undefined ({MISSING_CELL}) for a class never predicted.", "",
                      "Confusion matrix (rows: true class, columns: predicted):", "",
                      "| true \\ predicted | " + " | ".join(options) + " |", "|---|" + "---|" * len(options)]
            for option, counts in zip(options, np.asarray(step.confusion_matrix, dtype=np.int64)):
                lines.append(f"| {option} | " + " | ".join(str(int(c)) for c in counts) + " |")
            blocks.append("\n".join(lines))
    return ("\n\n".join(blocks) + "\n") if blocks else ""


def markdown_table(
    runs: Sequence[tuple[str, EvaluationMetrics]],
    decimals: int = 1,
    include_mean: bool = True,
    sources: Sequence[str] | None = None,
    per_class: str | None = "last",
) -> str:
    """The paper's Table 8/9 layout (Model | Step | six metrics), one block of rows per model, followed by notes:
    the interval method, per-step example counts, undefined values with their reasons and short definitions.
    The paper's Table 3 (Teacher / Student rows) is the Diagnosis row of Table 9: read it off this table."""
    header = ["Model", "Step"] + [METRIC_DISPLAY_NAMES[name] for name in METRIC_NAMES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, result in runs:
        for row_index, (label, _, metrics) in enumerate(_rows(result, include_mean)):
            cells = [model if row_index == 0 else "", f"**{label}**" if label == MEAN_ROW_LABEL else label]
            cells += [format_estimate(metrics[name], decimals) for name in METRIC_NAMES]
            lines.append("| " + " | ".join(cells) + " |")

    notes = ["", "Values in %."]
    for run_index, (model, result) in enumerate(runs):
        level = f"{100 * result.confidence_level:g}%"
        interval = (
            f"brackets = {level} percentile bootstrap CI over examples ({result.num_bootstrap} resamples, "
            f"seed {result.seed})"
            if result.num_bootstrap
            else "no confidence intervals (0 bootstrap resamples)"
        )
        counts = ", ".join(str(step.count) for step in result.steps)
        where = ", ".join(
            f"{key} {result.metadata[key]}" for key in ("dataset", "split") if result.metadata.get(key) is not None
        )
        source = f"; from {sources[run_index]}" if sources else ""
        notes.append(
            f"- {model}: {interval}; N = {result.num_examples} examples, labelled per step: {counts}"
            f"{'; ' + where if where else ''}{source}."
        )
    undefined = [
        f"- {model}, {step_label(step.name)}, {METRIC_DISPLAY_NAMES[name]}: {step.metrics[name].note}."
        for model, result in runs
        for step in result.steps
        for name in METRIC_NAMES
        if math.isnan(step.metrics[name].value) and step.metrics[name].note
    ]
    wilson = interval_notes(runs, decimals)
    if wilson:
        notes += [""] + wilson
    if undefined:
        notes += ["", f"Undefined ({MISSING_CELL}):"] + undefined
    if include_mean:
        notes += ["", f"{MEAN_ROW_LABEL}: unweighted mean over the steps where the metric is defined."]
    notes += [
        "",
        "Definitions (macro averages run over the classes present in the step's labels; "
        "examples labelled -100 are excluded; full definitions in metrics.json):",
    ]
    notes += [f"- {METRIC_DISPLAY_NAMES[name]}: {SHORT_DEFINITIONS[name]}" for name in METRIC_NAMES]
    table = "\n".join(lines + notes) + "\n"
    classes = per_class_markdown(runs, per_class, decimals) if per_class else ""
    return table + ("\n" + classes if classes else "")


def comparison_csv(
    runs: Sequence[tuple[str, EvaluationMetrics]], sources: Sequence[str] | None = None, include_mean: bool = True
) -> str:
    """One row per (model, step) with fractions in [0, 1] and their interval bounds; empty cell = undefined."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["model", "source", "step_index", "step", "n"]
    for name in METRIC_NAMES:
        header += [name, f"{name}_ci_low", f"{name}_ci_high"]
    writer.writerow(header)
    for run_index, (model, result) in enumerate(runs):
        source = sources[run_index] if sources else ""
        step_indices = [str(step.index + 1) for step in result.steps] + ["mean"]
        for step_index, (label, count, metrics) in zip(step_indices, _rows(result, include_mean)):
            row = [model, source, step_index, label, "" if count is None else count]
            for name in METRIC_NAMES:
                estimate = metrics[name]
                row += [_csv_number(estimate.value), _csv_number(estimate.ci_low), _csv_number(estimate.ci_high)]
            writer.writerow(row)
    return buffer.getvalue()


def _csv_number(value: float) -> str:
    return "" if math.isnan(value) else repr(float(value))


# ----------------------------------------------------------------------------------------------------------------
# Plots (Agg canvas on a bare Figure: no pyplot, no global backend switch)


def new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_step_metrics(result: EvaluationMetrics, path: str | Path, title: str | None = None) -> Path:
    """Grouped bars: one group per step (plus the mean), one bar per metric, bootstrap intervals as error bars."""
    path = Path(path)
    labels = [step_label(step.name) for step in result.steps] + [MEAN_ROW_LABEL]
    groups = [step.metrics for step in result.steps] + [result.mean]
    figure = new_figure(max(10.0, 1.5 * len(labels) + 2), 5.5)
    axes = figure.add_subplot()
    width = 0.8 / len(METRIC_NAMES)
    positions = np.arange(len(labels))
    palette = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]
    for metric_index, name in enumerate(METRIC_NAMES):
        values = np.array([100 * group[name].value for group in groups])
        low = np.array([100 * group[name].ci_low for group in groups])
        high = np.array([100 * group[name].ci_high for group in groups])
        has_interval = ~(np.isnan(low) | np.isnan(high) | np.isnan(values))
        # a percentile interval need not contain the point estimate (skewed metrics): never a negative bar
        error = np.clip(np.where(has_interval, [values - low, high - values], 0.0), 0.0, None)
        x = positions + (metric_index - (len(METRIC_NAMES) - 1) / 2) * width
        axes.bar(
            x,
            np.nan_to_num(values),
            width,
            yerr=error,
            capsize=2,
            color=palette[metric_index % len(palette)],
            label=METRIC_DISPLAY_NAMES[name],
            error_kw={"elinewidth": 0.8, "ecolor": "#333333"},
        )
        for position in x[np.isnan(values)]:
            axes.text(position, 1, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="#666666")
    axes.set_xticks(positions, [label.replace(" ", "\n", 1) for label in labels], fontsize=8)
    axes.set_ylim(0, 105)
    axes.set_ylabel("%")
    axes.yaxis.grid(True, linewidth=0.5, alpha=0.5)
    axes.set_axisbelow(True)
    interval = (
        f"error bars: {100 * result.confidence_level:g}% bootstrap CI ({result.num_bootstrap} resamples)"
        if result.num_bootstrap
        else "no confidence intervals"
    )
    axes.set_title(f"{title or result.metadata.get('model', 'Step-CoT')}: per-step metrics; {interval}", fontsize=11)
    axes.legend(ncols=len(METRIC_NAMES), loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def _short(text: str, limit: int = 20) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plot_confusion_matrices(result: EvaluationMetrics, path: str | Path, title: str | None = None) -> Path:
    """One panel per step: colour = fraction of the true class (row-normalised), text = counts."""
    path = Path(path)
    num_steps = len(result.steps)
    columns = min(4, num_steps)
    rows = math.ceil(num_steps / columns)
    figure = new_figure(4.6 * columns, 4.6 * rows + 0.6)
    panels = figure.subplots(rows, columns, squeeze=False).ravel()
    image = None
    for axes, step in zip(panels, result.steps):
        counts = step.confusion_matrix
        row_totals = counts.sum(axis=1, keepdims=True)
        fractions = np.divide(counts, row_totals, out=np.zeros(counts.shape, dtype=float), where=row_totals > 0)
        image = axes.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
        for (true, predicted), count in np.ndenumerate(counts):
            if count:
                dark = fractions[true, predicted] > 0.6
                axes.text(predicted, true, str(count), ha="center", va="center", fontsize=7,
                          color="white" if dark else "black")
        ticks = np.arange(step.num_classes)
        option_labels = [_short(option) for option in step.options]
        axes.set_xticks(ticks, option_labels, rotation=45, ha="right", fontsize=7)
        axes.set_yticks(ticks, option_labels, fontsize=7)
        axes.set_xlabel("predicted", fontsize=8)
        axes.set_ylabel("true", fontsize=8)
        axes.set_title(f"{step_label(step.name)} (n={step.count})", fontsize=9)
    for axes in panels[num_steps:]:
        axes.set_visible(False)
    if image is not None:
        figure.colorbar(image, ax=panels[:num_steps].tolist(), shrink=0.6, label="fraction of the true class")
    figure.suptitle(f"{title or result.metadata.get('model', 'Step-CoT')}: confusion matrices", fontsize=12)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


# ----------------------------------------------------------------------------------------------------------------
# One run's report folder


def write_report(result: EvaluationMetrics, out_dir: str | Path, model_name: str | None = None,
                 plots: bool = True) -> dict[str, Path]:
    """Write metrics.json, metrics.md and (unless `plots=False`) the two PNGs into `out_dir`; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_name = model_name or result.metadata.get("model") or out_dir.name
    written = {"metrics": write_metrics_json(result, out_dir / METRICS_FILENAME)}
    table = out_dir / TABLE_FILENAME
    table.write_text(markdown_table([(model_name, result)], per_class="all"), encoding="utf-8")
    written["table"] = table
    if plots:
        written["step_plot"] = plot_step_metrics(result, out_dir / STEP_PLOT_FILENAME, title=model_name)
        written["confusion_plot"] = plot_confusion_matrices(
            result, out_dir / CONFUSION_PLOT_FILENAME, title=model_name
        )
    return written


# ----------------------------------------------------------------------------------------------------------------
# `stepcot report`


def write_comparison(runs, out_path, sources=None, decimals: int = 1, include_mean: bool = True) -> tuple[Path, Path]:
    """The comparison table of several runs as Markdown at `out_path` and CSV next to it; returns both paths."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(markdown_table(runs, decimals=decimals, include_mean=include_mean, sources=sources),
                        encoding="utf-8")
    csv_path = out_path.with_suffix(".csv")
    csv_path.write_text(comparison_csv(runs, sources=sources, include_mean=include_mean), encoding="utf-8")
    return out_path, csv_path

