"""The wording of every number `metrics.py` computes: one definition per metric, per mean, count, confusion matrix
and confidence interval (`metrics.json` carries them next to the numbers), and the metrics' display names.

Plain strings only: `export_evaluate_metric` ships this file with `metrics.py` as the `evaluate` module's siblings.
"""

# Where a class set is needed, it is the classes that occur in the step's (non-missing) labels: recall and AUC are
# undefined for a class with no examples, and one class set for all macro metrics keeps them comparable.
_MACRO_NOTE = (
    " Macro average over the classes present in the step's labels; examples labelled -100 are excluded; predictions "
    "of a class absent from the labels still count as errors (false negatives of the true class)."
)
METRIC_DEFINITIONS = {
    "accuracy": "Fraction of labelled examples whose predicted option (argmax of the step's scores) equals the label.",
    "auc": (
        "Macro one-vs-rest ROC AUC from the class probabilities: for each class c present in the labels, the "
        "probability that an example of class c gets a higher probability of c than an example of another class "
        "(ties count 1/2), averaged over those classes. Undefined (NaN) with fewer than two classes present."
        + _MACRO_NOTE
    ),
    "sensitivity": "Macro recall: per class, TP / (TP + FN)." + _MACRO_NOTE,
    "specificity": (
        "Macro specificity: per class (one-vs-rest), TN / (TN + FP). Undefined (NaN) with fewer than two classes "
        "present." + _MACRO_NOTE
    ),
    "f1": (
        "Macro F1: per class, 2TP / (2TP + FP + FN), the harmonic mean of that class's precision and recall "
        "(0 when TP = 0); the mean of per-class F1, not the F1 of macro precision and recall." + _MACRO_NOTE
    ),
    "precision": (
        "Macro precision: per class, TP / (TP + FP); a class that is never predicted scores 0 (zero_division=0: "
        "no credit for never committing to a class)." + _MACRO_NOTE
    ),
}
METRIC_DISPLAY_NAMES = {
    "accuracy": "Accuracy",
    "auc": "AUC",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "f1": "F1-Score",
    "precision": "Precision",
}
MEAN_DEFINITION = "Unweighted mean over the steps where the metric is defined (each step counts once)."
COUNT_DEFINITION = "Number of examples with a label at this step (label != -100)."
CONFUSION_MATRIX_DEFINITION = (
    "Counts of labelled examples: row = true option index, column = predicted option index (argmax)."
)
CONFIDENCE_INTERVAL_DEFINITION = (
    "Percentile bootstrap: examples (rows, all steps together) are resampled with replacement, every metric is "
    "recomputed on each resample, and the interval is the ((1-level)/2, (1+level)/2) quantile pair of those values. "
    "Resamples in which a metric is undefined are skipped (valid_resamples counts the others)."
)

WILSON_DEFINITION = (
    "Wilson score interval for the accuracy as a binomial proportion (correct / labelled). Unlike the percentile "
    "bootstrap it never collapses to a single point at 0 % or 100 % correct and keeps its coverage at small n."
)


__all__ = [
    "CONFIDENCE_INTERVAL_DEFINITION",
    "CONFUSION_MATRIX_DEFINITION",
    "COUNT_DEFINITION",
    "MEAN_DEFINITION",
    "METRIC_DEFINITIONS",
    "METRIC_DISPLAY_NAMES",
    "WILSON_DEFINITION",
]
