"""The real-data study's paired comparison with the linear probe (exact McNemar, pooled over split seeds) and its
two imported Kermany problems (three classes, two classes)."""

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.parametrize(("model_only", "probe_only", "expected"), [
    (0, 0, 1.0),  # no discordant pair: no evidence either way
    (5, 0, 2 / 2 ** 5),  # 5 of 5 discordant pairs on one side: 2 * 0.5^5
    (1, 7, 2 * (1 + 8) / 2 ** 8),  # 2 * P(X <= 1), X ~ Binomial(8, 1/2)
    (7, 1, 2 * (1 + 8) / 2 ** 8),  # two-sided: symmetric
    (10, 10, 1.0),  # capped at 1
])
def test_exact_mcnemar_is_the_two_sided_binomial_test_on_discordant_pairs(model_only, probe_only, expected):
    from real_data_study import exact_mcnemar

    assert exact_mcnemar(model_only, probe_only) == pytest.approx(expected)


def test_paired_lines_pool_the_discordant_pairs_of_every_seed():
    from real_data_study import paired_lines

    # seed 0: the teacher is right where the probe is wrong twice, the reverse once; seed 1: the reverse 4 times
    runs = [{"paired": {"linear_probe": [0, 0, 1, 1, 1], "teacher": [1, 1, 0, 1, 1], "student": [0, 0, 1, 1, 1]}},
            {"paired": {"linear_probe": [1, 1, 1, 1, 0], "teacher": [0, 0, 0, 0, 0], "student": [1, 1, 1, 1, 0]}}]
    teacher_row = next(line for line in paired_lines(runs) if line.startswith("| teacher − linear probe"))
    cells = [cell.strip() for cell in teacher_row.strip("|").split("|")]
    assert cells[1] == f"{(20 - 80) / 2:+.1f}"  # mean of +20 pp and -80 pp
    assert cells[2] == "+20.0 (1.00) / -80.0 (0.12)"  # per seed: McNemar of (2, 1) and (0, 4)
    assert cells[3] == "2 / 5"  # pooled discordant pairs
    assert float(cells[4]) == pytest.approx(2 * (1 + 7 + 21) / 2 ** 7, abs=5e-4)  # 2 * P(X <= 2), n = 7
    student_row = next(line for line in paired_lines(runs) if line.startswith("| student − linear probe"))
    assert "| +0.0 |" in student_row and "0 / 0 | 1.000 |" in student_row


@pytest.mark.parametrize(("dataset", "expected"), [
    ("kermany3", {"Normal": 160, "Bacterial pneumonia": 160, "Viral pneumonia": 160}),
    ("kermany2", {"Normal": 160, "Pneumonia": 320}),
])
def test_imported_kermany_problems_label_every_film(tmp_path, dataset, expected):
    from conftest import SHARED_DATA

    if not (SHARED_DATA / "kermany-pediatric-cxr-480" / "records.jsonl").is_file():
        pytest.skip(f"real test data not found at {SHARED_DATA} (a fresh clone has no ../shared)")
    import json

    from real_data_study import write_imported_release

    write_imported_release(dataset, tmp_path / "release")
    records = json.loads((tmp_path / "release" / "data.json").read_text())
    answers = Counter(step["answer"] for record in records for step in record["vqa_chain"])
    assert dict(answers) == expected
    assert all(record["patient_id"] for record in records)


def test_ensemble_lines_choose_on_validation_and_show_only_the_chosen_test_score():
    from real_data_study import ensemble_lines

    labels = [0, 1, 1, 0]
    # validation: teacher and student each miss one example, their mean gets all four; the probe misses two
    validation = {"labels": labels, "teacher": [[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.4, 0.6]],
                  "student": [[0.4, 0.6], [0.1, 0.9], [0.3, 0.7], [0.9, 0.1]],
                  "linear_probe": [[0.4, 0.6], [0.6, 0.4], [0.2, 0.8], [0.9, 0.1]]}
    # test: the ensemble gets 3 of 4, the probe 2 of 4 (the teacher alone gets 4 of 4: not chosen, not shown)
    test = {"labels": labels, "teacher": [[0.9, 0.1], [0.2, 0.8], [0.2, 0.8], [0.9, 0.1]],
            "student": [[0.3, 0.7], [0.3, 0.7], [0.4, 0.6], [0.05, 0.95]],
            "linear_probe": [[0.6, 0.4], [0.6, 0.4], [0.6, 0.4], [0.6, 0.4]]}
    lines = ensemble_lines([{"paired": {"probabilities": {"validation": validation, "test": test}}}])
    assert "| teacher + student | 100.0 | +50.0 |" in lines
    assert "| teacher | 75.0 | +25.0 |" in lines
    chosen = lines[-1]
    assert chosen.startswith("Chosen: teacher + student. On test: accuracy 75.0 (mean), minus probe +25.0 pp")
    assert "only by the probe 2 / 1" in chosen and "p 1.000" in chosen  # 2 * P(X <= 1) = 2 * 4 / 8, capped
