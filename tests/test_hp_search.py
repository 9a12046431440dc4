"""`stepcot train --hp_search_trials N`: N optuna trials through `Trainer.hyperparameter_search`, scored on the
validation split only; the final run trains with the best trial's values and records every trial."""

import json
import sys

import pytest
from test_distillation import learnable_dataset, make_pair

from trainers.training.checkpoints import TrainingError
from trainers.training.distillation import StepCoTDistillationTrainer, build_pair_compute_metrics
from trainers.training.distillation_config import StepCoTDistillationConfig
from trainers.training.hp_search import SEARCH_SPACE, apply_best, rescaled_pair, search_hyperparameters
from trainers.training.offline_encoders import offline_encoders_available

pytest.importorskip("optuna")


def _search(tmp_path, n_trials=3):
    pair = make_pair()
    args = StepCoTDistillationConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=2, use_cpu=True,
        disable_tqdm=True, eval_strategy="epoch", save_strategy="no", logging_steps=1, seed=0, data_seed=0,
        teacher_pretrain_epochs=0, relation_dim=16, checkpoint_every_minutes=0)
    record = search_hyperparameters(
        StepCoTDistillationTrainer, pair, args, n_trials, train_dataset=learnable_dataset(32, seed=0),
        eval_dataset=learnable_dataset(16, seed=1), data_collator=None,
        compute_metrics=build_pair_compute_metrics(pair.teacher.config.num_classes_per_step), callbacks=[],
        class_weights=None)
    return pair, args, record


@pytest.mark.slow  # trains every trial of a search
def test_search_runs_every_trial_and_picks_the_best_by_validation(tmp_path):
    pair, args, record = _search(tmp_path / "a")
    trials = record["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2]
    for trial in trials:
        assert set(trial["values"]) == {*SEARCH_SPACE, "num_train_epochs"}
        for name, (low, high, _) in SEARCH_SPACE.items():
            assert low <= trial["values"][name] <= high
        assert 0 <= trial["objective"] <= 1
    assert len({t["values"]["teacher_learning_rate"] for t in trials}) == 3  # three different trials
    chosen = max(trials, key=lambda t: t["objective"])
    assert record["best"]["number"] == chosen["number"] and record["best"]["values"] == chosen["values"]
    assert record["best"]["objective"] == pytest.approx(chosen["objective"])
    assert record["scored_on"] == "validation"
    assert not (tmp_path / "a" / "hp_search").exists()  # the trials write nothing

    # the same seed: the same trials and objectives
    _, _, again = _search(tmp_path / "b")
    assert again["trials"] == trials

    # the final run's arguments and pair take the chosen values; the weights are the run's own
    final = apply_best(record, pair, args)
    values = chosen["values"]
    assert args.teacher_learning_rate == values["teacher_learning_rate"]
    assert args.student_learning_rate == values["student_learning_rate"]
    assert args.weight_decay == values["weight_decay"]
    assert args.label_smoothing_factor == values["label_smoothing_factor"]
    assert args.num_train_epochs == values["num_train_epochs"]
    expected = min(0.9, pair.config.student_config.projection_dropout * values["dropout_scale"])
    assert final.config.student_config.projection_dropout == pytest.approx(expected)
    assert final.student.config.projection_dropout == pytest.approx(expected)
    state, final_state = pair.state_dict(), final.state_dict()
    assert all((state[k] == final_state[k]).all() for k in state)


def test_rescaled_pair_changes_every_head_dropout_and_keeps_the_frozen_projection():
    pair = make_pair()
    doubled = rescaled_pair(pair, 2.0)
    teacher, doubled_teacher = pair.config.teacher_config, doubled.config.teacher_config
    for name in ("fusion_dropout", "classifier_dropout", "gat_attention_dropout", "image_projection_dropout"):
        assert getattr(doubled_teacher, name) == pytest.approx(min(0.9, 2 * getattr(teacher, name)))
    rates = [m.p for name, m in doubled.student.named_modules()
             if type(m).__name__ == "Dropout" and not name.startswith("vision_encoder")]
    assert rates and rates == [pytest.approx(min(0.9, 2 * pair.config.student_config.projection_dropout))] * len(rates)
    assert not doubled.teacher_relation_projection.weight.requires_grad


def test_missing_optuna_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(TrainingError, match=r"pip install stepcot\[search\]"):
        _search(tmp_path)


def test_hp_search_trials_is_checked_and_not_part_of_the_recipe():
    with pytest.raises(TrainingError, match="--hp_search_trials -1"):
        StepCoTDistillationConfig(output_dir="unused", hp_search_trials=-1)
    assert "hp_search_trials" not in StepCoTDistillationConfig(output_dir="unused").distillation_values()


def _poison_test_labels(release):
    """Every test record's answers moved to another option: a search that read them would score differently."""
    import pandas as pd

    test_ids = set(pd.read_excel(release / "test.xlsx")["patient_id"].astype(str))
    records = json.loads((release / "data.json").read_text())
    poisoned = 0
    for record in records:
        if record["patient_id"] in test_ids:
            for step in record["vqa_chain"]:
                options = step["options"]
                step["answer"] = options[(options.index(step["answer"]) + 1) % len(options)]
            poisoned += 1
    assert poisoned
    (release / "data.json").write_text(json.dumps(records))


@pytest.mark.slow
@pytest.mark.skipif(not offline_encoders_available(), reason="offline encoder packages not installed")
def test_cli_search_records_the_trials_and_never_reads_the_test_split(release, tmp_path):
    from trainers.run_distill import main

    def run(name):
        out = tmp_path / name
        assert main(["--dataset", str(release), "--output_dir", str(out), "--image_size", "32",
                     "--teacher_hidden_size", "16", "--student_hidden_size", "16", "--relation_dim", "16",
                     "--num_train_epochs", "2", "--teacher_pretrain_epochs", "1", "--per_device_train_batch_size",
                     "8", "--num_bootstrap", "0", "--disable_tqdm", "true", "--hp_search_trials", "2"]) == 0
        return json.loads((out / "results.json").read_text())

    clean = run("clean")
    search = clean["results"]["hp_search"]
    assert len(search["trials"]) == 2
    chosen = max(search["trials"], key=lambda t: t["objective"])
    assert search["best"]["values"] == chosen["values"]
    recipe = clean["run_args"]["distillation"]
    assert recipe["teacher_learning_rate"] == chosen["values"]["teacher_learning_rate"]
    assert recipe["student_learning_rate"] == chosen["values"]["student_learning_rate"]
    assert clean["run_args"]["training"]["weight_decay"] == chosen["values"]["weight_decay"]

    _poison_test_labels(release)
    poisoned = run("poisoned")
    assert poisoned["results"]["hp_search"]["trials"] == search["trials"]
    assert poisoned["results"]["hp_search"]["best"] == search["best"]
    # the poison reached the test split: the final scores on it differ
    assert poisoned["results"]["teacher"]["mean_accuracy"] != clean["results"]["teacher"]["mean_accuracy"]
