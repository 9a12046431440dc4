"""The exported `evaluate` metric works where its user is: in a fresh venv holding only its requirements.txt
(evaluate, numpy), without this project, `evaluate.load(folder)` computes exactly the numbers of `stepcot eval`'s
`compute_step_metrics`."""

import json
import math

import numpy as np
import pytest
from cleanroom import assert_project_absent, clean_venv, run_clean

from modeling_stepcot.configuration_stepcot import IGNORE_INDEX
from trainers.evaluation import metrics
from trainers.evaluation.metric_export import MODULE_FILES, MODULE_REQUIREMENTS, export_evaluate_metric


def test_the_metric_maths_imports_only_numpy_and_its_siblings():
    source = [metrics.__file__.replace("metrics.py", name) for name in MODULE_FILES]
    for path in source:
        imports = [line.split()[1] for line in open(path, encoding="utf-8")
                   if line.startswith(("import ", "from "))]
        assert set(imports) <= {"__future__", "math", "statistics", "warnings", "collections.abc", "dataclasses",
                                "typing", "numpy", ".bootstrap", ".metric_definitions"}, (path, imports)
    assert metrics.IGNORE_INDEX == IGNORE_INDEX


def _scores_and_labels(seed=0, n=40):
    rng = np.random.default_rng(seed)
    counts = [4, 4, 6, 7, 5, 7, 9]
    logits = np.full((n, len(counts), max(counts)), np.nan)
    labels = np.empty((n, len(counts)), dtype=np.int64)
    for step, count in enumerate(counts):
        logits[:, step, :count] = rng.normal(size=(n, count))
        labels[:, step] = rng.integers(0, count, size=n)
    labels[rng.random(labels.shape) < 0.2] = IGNORE_INDEX
    labels[:, 4] = IGNORE_INDEX  # a step without any label: NaN metrics
    return logits, labels, counts


@pytest.mark.slow
def test_exported_metric_loads_and_agrees_in_a_clean_venv(tmp_path):
    folder = export_evaluate_metric(tmp_path / "export")
    assert (folder / "requirements.txt").read_text().split() == list(MODULE_REQUIREMENTS)
    venv = clean_venv([], files=[folder / "requirements.txt"])
    assert_project_absent(venv, tmp_path)
    logits, labels, counts = _scores_and_labels()
    np.savez(tmp_path / "inputs.npz", logits=logits, labels=labels)
    code = (
        "import json, sys\nimport evaluate, numpy as np\n"
        "saved = np.load(sys.argv[2])\n"
        "metric = evaluate.load(sys.argv[1])\n"
        "result = metric.compute(predictions=saved['logits'], references=saved['labels'], "
        f"num_classes_per_step={counts})\n"
        "print(json.dumps({k: (None if v != v else v) for k, v in result.items()}))\n"
    )
    result = run_clean(venv, code, cwd=tmp_path / "user", args=[folder, tmp_path / "inputs.npz"])
    computed = json.loads(result.stdout.strip().splitlines()[-1])
    expected = metrics.compute_step_metrics(logits, labels, num_classes_per_step=counts, num_bootstrap=0).flat()
    assert set(computed) == set(expected)
    for key, value in expected.items():
        if math.isnan(value):
            assert computed[key] is None, key
        else:
            assert computed[key] == value, key  # exactly: the same code
