"""Step-CoT per-step metrics as an `evaluate` metric module.

    >>> import evaluate
    >>> from trainers.evaluation.metric_export import METRIC_SCRIPT  # or a folder from export_evaluate_metric
    >>> metric = evaluate.load(METRIC_SCRIPT)
    >>> metric.compute(predictions=logits, references=labels)        # logits (N, 7, C_max), labels (N, 7)
    {'step1_accuracy': ..., 'step1_auc': ..., ..., 'mean_precision': ...}

Per step: accuracy, AUC, sensitivity, specificity, F1 and precision (macro over the classes present in the labels;
definitions in `metric_definitions.METRIC_DEFINITIONS`), and their unweighted mean over the steps where they are
defined.
Labels of -100 are missing answers and leave that step's metrics only; a step without labels, or AUC/specificity
with a single class present, is NaN. The numbers are those `stepcot eval` writes to metrics.json (same function).

This script computes through its siblings `metrics.py`, `metric_definitions.py` and `bootstrap.py`, the very files
`stepcot eval` runs (relative imports: `evaluate` copies the siblings the script imports into its modules cache),
which need only numpy;
the module needs evaluate and numpy, not this package.
"""

import datasets
import evaluate
import numpy as np

# bootstrap imported here so that `evaluate` copies bootstrap.py too (metrics.py imports it); no comment on the
# import lines themselves: `evaluate` would read one as the file's download address
from .bootstrap import BLOCK_SIZE
from .metric_definitions import METRIC_DEFINITIONS
from .metrics import compute_step_metrics

assert BLOCK_SIZE > 0  # the sibling is there
_DESCRIPTION = __doc__
_CITATION = """@article{stepcot2026,
  title = {Step-CoT: Stepwise Visual Chain-of-Thought for Medical Visual Question Answering},
  journal = {arXiv preprint arXiv:2603.13878},
  year = {2026}
}"""
_KWARGS_DESCRIPTION = """
Args:
    predictions: per example, a (steps, C_max) list of scores; step s uses its first C_s columns (pad the rest with
        anything, e.g. NaN or -inf).
    references: per example, the (steps,) option indices; -100 marks a missing answer.
    num_classes_per_step: class count per step (default: inferred from padding that is NaN, -inf or <= -1e4).
    scores: "logits" (softmax per step; default), "probabilities" or "auto".
Returns:
    `step{n}_{metric}` and `mean_{metric}` for metric in accuracy, auc, sensitivity, specificity, f1, precision
    (floats; NaN where undefined).
Definitions:
""" + "\n".join(f"    {name}: {text}" for name, text in METRIC_DEFINITIONS.items())


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class StepcotStepMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("float64"))),
                "references": datasets.Sequence(datasets.Value("int64")),
            }),
        )

    def _compute(self, predictions, references, num_classes_per_step=None, scores="logits"):
        result = compute_step_metrics(
            np.asarray(predictions, dtype=np.float64),
            np.asarray(references, dtype=np.int64),
            num_classes_per_step=num_classes_per_step,
            scores=scores,
            num_bootstrap=0,
        )
        return result.flat()
