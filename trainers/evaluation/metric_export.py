"""Where the `evaluate` metric module lives, and how to make a folder of it for the Hub.

`evaluate.load(METRIC_SCRIPT)` loads the module from this package; `export_evaluate_metric(OUT)` writes
OUT/stepcot_step_metrics/ (the script, its siblings `metrics.py`, `metric_definitions.py` and `bootstrap.py` copied
verbatim, the maths `stepcot eval` runs, a requirements.txt and a README) which `evaluate.load(folder)` loads as
is and which can be uploaded as a Hub repository, so that `evaluate.load("user/stepcot_step_metrics")` works too."""

from __future__ import annotations

import shutil
from pathlib import Path

METRIC_NAME = "stepcot_step_metrics"
METRIC_SCRIPT = str(Path(__file__).with_name(f"{METRIC_NAME}.py"))
MODULE_FILES = ("metrics.py", "metric_definitions.py", "bootstrap.py")  # numpy-only: the script's siblings
MODULE_REQUIREMENTS = ("evaluate", "numpy")  # what `evaluate.load(folder)` needs


def export_evaluate_metric(out) -> Path:
    """Write the metric as a self-contained folder named after it; returns the folder."""
    folder = Path(out) / METRIC_NAME
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(METRIC_SCRIPT, folder / f"{METRIC_NAME}.py")
    for sibling in MODULE_FILES:
        shutil.copyfile(Path(__file__).with_name(sibling), folder / sibling)
    (folder / "requirements.txt").write_text("\n".join(MODULE_REQUIREMENTS) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(
        "---\ntitle: Step-CoT step metrics\ntags:\n- evaluate\n- metric\n---\n\n"
        "Per-step accuracy, AUC, sensitivity, specificity, F1 and precision for Step-CoT chains "
        "(labels of -100 are left out).\n\nNeeds only `pip install evaluate numpy`.\n\n"
        "```python\nimport evaluate\n"
        f"metric = evaluate.load(\"{METRIC_NAME}\")  # this folder, or its Hub id\n"
        "metric.compute(predictions=logits, references=labels)  # (N, 7, C_max), (N, 7)\n```\n",
        encoding="utf-8",
    )
    return folder


__all__ = ["METRIC_NAME", "METRIC_SCRIPT", "MODULE_FILES", "MODULE_REQUIREMENTS", "export_evaluate_metric"]
