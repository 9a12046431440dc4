"""The Python API is the product: `StepCoTDistillationConfig` carries every default of `stepcot train`, the
trainer needs no other set-up, the README's "Train from Python" block trains exactly what the command trains, and
`stepcot train --help` is short with the inherited options behind `--help-all`."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainers import cli
from trainers.training.checkpoints import TRAINABLE_WEIGHTS_NAME, TrainingError
from trainers.training.distillation import StepCoTDistillationConfig, StepCoTDistillationTrainer
from trainers.training.distillation_config import StepCoTTeacherTrainingConfig
from trainers.training.offline_encoders import offline_encoders_available

REPO_ROOT = Path(__file__).resolve().parents[1]


def _settings(config) -> dict:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}


@pytest.mark.parametrize("script, config_class", [("trainers.run_distill", StepCoTDistillationConfig),
                                                  ("trainers.run_teacher", StepCoTTeacherTrainingConfig)])
def test_the_command_line_adds_no_default_of_its_own(script, config_class, tmp_path):
    import importlib

    parsed = importlib.import_module(script).parse_args(["--output_dir", str(tmp_path)])[2]
    assert type(parsed) is config_class
    assert _settings(parsed) == _settings(config_class(output_dir=str(tmp_path)))


def test_the_config_is_the_recipe():
    config = StepCoTDistillationConfig()
    assert (config.remove_unused_columns, config.label_names, config.report_to) == (False, ["labels"], [])
    assert (config.per_device_train_batch_size, config.num_train_epochs, config.teacher_pretrain_epochs) == (32, 40, 2)
    assert (config.teacher_learning_rate, config.student_learning_rate) == (5e-5, 1e-4)
    assert (config.weight_decay, config.lr_scheduler_type) == (0.01, "constant")
    assert config.use_cpu == (not (torch.cuda.is_available() or torch.backends.mps.is_available()))
    teacher = StepCoTTeacherTrainingConfig()
    assert (teacher.learning_rate, teacher.num_train_epochs, teacher.load_best_model_at_end) == (5e-5, 2, True)
    assert teacher.metric_for_best_model == "mean_accuracy" and teacher.greater_is_better
    assert StepCoTTeacherTrainingConfig(save_strategy="no").load_best_model_at_end is False


def test_the_unused_learning_rate_is_refused_by_the_config_and_the_command(capsys, tmp_path):
    with pytest.raises(TrainingError, match="teacher_learning_rate"):
        StepCoTDistillationConfig(learning_rate=1e-3)
    assert cli.main(["train", "--output-dir", str(tmp_path / "run"), "--learning-rate", "1e-3"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("stepcot train: error: --learning_rate") and "\n" not in error


def test_args_are_optional_and_num_train_epochs_counts_distillation_epochs(tmp_path, monkeypatch):
    from test_distillation import learnable_dataset, make_pair

    monkeypatch.chdir(tmp_path)  # the default output folder is relative
    pair = make_pair()
    trainer = StepCoTDistillationTrainer(model=pair, train_dataset=learnable_dataset(16),
                                         eval_dataset=learnable_dataset(8, seed=1))
    assert isinstance(trainer.args, StepCoTDistillationConfig) and trainer.args.relation_dim == 16
    assert trainer.compute_metrics is not None  # teacher and student accuracy at each evaluation
    config = StepCoTDistillationConfig(output_dir=str(tmp_path / "run"), num_train_epochs=1, teacher_pretrain_epochs=2,
                                       per_device_train_batch_size=8, eval_strategy="no", save_strategy="no",
                                       relation_dim=16, disable_tqdm=True)
    trainer = StepCoTDistillationTrainer(model=pair, args=config, train_dataset=learnable_dataset(16))
    trainer.train()
    assert trainer.state.num_train_epochs == 3 and trainer.state.global_step == 6  # 2 teacher-only + 1, 2 steps each
    assert config.num_train_epochs == 1  # the config itself is left as given


def test_train_help_is_short_and_help_all_lists_the_inherited_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    short = capsys.readouterr().out
    assert short.startswith("usage: stepcot train ")
    assert len(short.splitlines()) < 190  # the project's own options and a few common ones; --help-all has ~600
    order = [short.index(f"\n  --{name} ") for name in ("alpha_kd", "vision_encoder", "per_device_train_batch_size")]
    assert order == sorted(order)  # the recipe first, then model and data, then the common TrainingArguments
    assert "--adam_beta1" not in short and "--learning_rate" not in short and "--help-all" in short
    with pytest.raises(SystemExit):
        cli.main(["train", "--help-all"])
    full = capsys.readouterr().out
    assert "--adam_beta1" in full and "--alpha_kd" in full and len(full.splitlines()) > 3 * len(short.splitlines())
    with pytest.raises(SystemExit):
        cli.main(["train-teacher", "--help"])
    teacher = capsys.readouterr().out
    assert teacher.startswith("usage: stepcot train-teacher ") and "--learning_rate" in teacher


# ---------------------------------------------------------------------------------------------------------------
# the README block against the command


def readme_block(heading: str) -> str:
    """The first ```python block under the README's `## heading`."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


TINY_FLAGS = {"num_train_epochs": 1, "teacher_pretrain_epochs": 1, "per_device_train_batch_size": 8,
              "per_device_eval_batch_size": 16, "logging_steps": 1, "relation_dim": 16,
              "checkpoint_every_minutes": 0, "keep_checkpoints": True}
TINY_MODELS = "hidden_size=16, image_size=32"


def _substitute(code: str, old: str, new: str) -> str:
    assert old in code, f"the README block no longer contains {old!r}"
    return code.replace(old, new)


@pytest.mark.slow
@pytest.mark.skipif(not offline_encoders_available(), reason="offline encoder packages not installed")
def test_readme_python_training_equals_stepcot_train(tmp_path):
    from trainers.run_distill import main as run_distill

    command = tmp_path / "command"
    flags = [f"--{name}={value}" for name, value in TINY_FLAGS.items()]
    assert run_distill(["--output_dir", str(command), "--demo_size", "48", "--demo_image_size", "32",
                        "--image_size", "32", "--teacher_hidden_size", "16", "--student_hidden_size", "16",
                        "--feature_cache", "False", "--num_bootstrap", "5", *flags]) == 0

    python = tmp_path / "python"
    code = readme_block("Train from Python")
    code = _substitute(code, '"outputs/demo/dataset"', repr(str(command / "dataset")))
    code = _substitute(code, '"outputs/python', f'"{python}')
    code = _substitute(code, "num_train_epochs=10", ", ".join(f"{k}={v}" for k, v in TINY_FLAGS.items()))
    code = _substitute(code, 'vision="efficientnet_lite0", text=text)', f'vision="efficientnet_lite0", text=text, '
                                                                        f'{TINY_MODELS})')
    code = _substitute(code, 'from_pretrained_encoders(vision="efficientnet_lite0")',
                       f'from_pretrained_encoders(vision="efficientnet_lite0", {TINY_MODELS})')
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert (python / "student" / "config.json").is_file()

    runs = {}
    for name, folder in (("command", command), ("python", python)):
        (checkpoint,) = sorted(folder.glob("checkpoint-*"))
        history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
        weights = load_file(checkpoint / TRAINABLE_WEIGHTS_NAME)  # a lean checkpoint: the trained weights
        runs[name] = (checkpoint.name, [h for h in history if "loss" in h], weights)
    (name_a, logs_a, weights_a), (name_b, logs_b, weights_b) = runs["command"], runs["python"]
    assert name_a == name_b and len(logs_a) == len(logs_b) > 2
    for key in ("loss", "teacher_ce", "student_ce", "kd", "ch"):
        assert logs_a[0][key] == pytest.approx(logs_b[0][key], rel=1e-5), key
        assert logs_a[-1][key] == pytest.approx(logs_b[-1][key], rel=1e-4), key
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.allclose(weights_a[key], weights_b[key], atol=1e-6, rtol=1e-5), key


def test_logs_that_are_not_a_terminal_get_no_cursor_escapes(tmp_path, capfd):
    from test_distillation import learnable_dataset, make_pair

    from trainers.console import quiet_progress

    config = StepCoTDistillationConfig(output_dir=str(tmp_path), num_train_epochs=1, teacher_pretrain_epochs=0,
                                       per_device_train_batch_size=8, save_strategy="no", relation_dim=16)
    trainer = StepCoTDistillationTrainer(model=make_pair(), args=config, train_dataset=learnable_dataset(16),
                                         eval_dataset=learnable_dataset(8, seed=1))
    quiet_progress(trainer)
    trainer.train()
    output = capfd.readouterr()
    assert "training steps" in output.err and "validation mean accuracy" in output.out + output.err
    assert "\x1b[A" not in output.err + output.out
