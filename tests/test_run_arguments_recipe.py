"""The training recipe: on real data (a release, built folder or Hub set) training stops early on the validation
loss (transformers' EarlyStoppingCallback); the synthetic demo and `--recipe paper` keep the paper's fixed epochs."""

from types import SimpleNamespace

import pytest
from transformers import EarlyStoppingCallback, TrainingArguments

from trainers.training.checkpoints import TrainingError
from trainers.training.run_arguments import DataArguments, early_stopping_callbacks, parse_run_args


def _training_args(tmp_path, **kwargs):
    return TrainingArguments(output_dir=str(tmp_path), eval_strategy="epoch", report_to="none", use_cpu=True,
                             **kwargs)


@pytest.mark.parametrize("dataset, recipe, stops", [
    ("my_release", "auto", True), ("demo", "auto", False), ("my_release", "paper", False),
    ("demo", "early-stopping", True),
])
def test_which_recipe_stops_early(tmp_path, dataset, recipe, stops):
    args = _training_args(tmp_path)
    callbacks = early_stopping_callbacks(SimpleNamespace(dataset=dataset, recipe=recipe, early_stopping_patience=4),
                                         args)
    assert bool(callbacks) == stops
    if stops:
        (callback,) = callbacks
        assert isinstance(callback, EarlyStoppingCallback) and callback.early_stopping_patience == 4
        assert args.metric_for_best_model == "loss" and args.greater_is_better is False
    else:
        assert args.metric_for_best_model is None


def test_early_stopping_needs_evaluation(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), eval_strategy="no", report_to="none", use_cpu=True)
    with pytest.raises(TrainingError, match="--recipe paper"):
        early_stopping_callbacks(SimpleNamespace(dataset="x", recipe="auto", early_stopping_patience=3), args)


def test_recipe_options_parse_and_are_checked(tmp_path):
    from trainers.training.distillation_config import StepCoTDistillationConfig
    from trainers.training.run_arguments import ModelArguments

    _, data, _ = parse_run_args((ModelArguments, DataArguments, StepCoTDistillationConfig),
                                ["--output_dir", str(tmp_path), "--recipe", "paper", "--split_seed", "3"])
    assert data.recipe == "paper" and data.split_seed == 3 and data.early_stopping_patience == 5
    with pytest.raises(TrainingError, match="early_stopping_patience"):
        parse_run_args((ModelArguments, DataArguments, StepCoTDistillationConfig),
                       ["--output_dir", str(tmp_path), "--early_stopping_patience", "0"])
    with pytest.raises(SystemExit):
        parse_run_args((ModelArguments, DataArguments, StepCoTDistillationConfig),
                       ["--output_dir", str(tmp_path), "--recipe", "fast"])


def test_standardization_is_off_unless_asked_and_needs_frozen_encoders():
    from trainers.training.run_arguments import ModelArguments, standardizes_image_embeds

    assert standardizes_image_embeds(ModelArguments()) is False
    assert standardizes_image_embeds(ModelArguments(standardize_image_embeds=True)) is True
    for model_args in (ModelArguments(standardize_image_embeds=True, lora_r=4),
                       ModelArguments(standardize_image_embeds=True, freeze_encoders=False)):
        with pytest.raises(TrainingError, match="frozen image encoders"):
            standardizes_image_embeds(model_args)
