"""Commands that answer at once: `stepcot info` reads config.json and safetensors headers without importing torch or
transformers, and every `--help` builds its parser without them (the training commands' HfArgumentParser help comes
from a cache)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from tiny_models import save_tiny_pair, tiny_student, tiny_teacher

from trainers import cli
from trainers.commands import help_cache
from trainers.commands.info import describe
from trainers.model_loading import ModelLoadError, read_config, stepcot_classes, stepcot_config_from_dict

HEAVY_MODULES = ("torch", "transformers", "datasets")
# Generous: the real figure is ~0.2 s (benchmarks/RESULTS.md); a loaded 2-core machine can be several times slower.
FAST_SECONDS = 5.0


def _run_python(code: str, env: dict | None = None) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON line last."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _reference_counts(folder):
    """Parameter counts as the model itself has them (built on the meta device from this package's classes)."""
    from trainers.paper.efficiency import paper_comparable_parameters

    config_dict = read_config(folder)
    config = stepcot_config_from_dict(config_dict, folder)
    _, model_class = stepcot_classes(config_dict["model_type"])
    with torch.device("meta"):
        model = model_class(config)
    return (sum(p.numel() for p in model.parameters()),
            sum(p.numel() for p in model.parameters() if p.requires_grad),
            paper_comparable_parameters(config)["paper_comparable"])


@pytest.mark.parametrize("build", [
    lambda: tiny_teacher(use_memory=False),
    lambda: tiny_teacher(use_text=False),
    lambda: tiny_teacher(freeze_vision_encoder=False),
    lambda: tiny_student(),
    lambda: tiny_student(freeze_vision_encoder=False),
], ids=["teacher", "teacher-no-text", "teacher-vision-trains", "student", "student-vision-trains"])
def test_info_counts_match_the_model(build, tmp_path):
    build().save_pretrained(tmp_path / "model")
    info = describe(str(tmp_path / "model"))
    assert (info["parameters"], info["trainable_parameters"], info["paper_comparable_parameters"]) == \
        _reference_counts(tmp_path / "model")


def test_info_counts_batchnorm_statistics_as_buffers(tmp_path):
    """EfficientNet-Lite0 stores BatchNorm running statistics: stored, but not parameters."""
    from modeling_stepcot import StepCoTStudent

    StepCoTStudent.from_pretrained_encoders(vision="efficientnet_lite0").save_pretrained(tmp_path / "student")
    info = describe(str(tmp_path / "student"))
    assert info["stored_values"] > info["parameters"]
    assert (info["parameters"], info["trainable_parameters"], info["paper_comparable_parameters"]) == \
        _reference_counts(tmp_path / "student")


def test_info_imports_neither_torch_nor_transformers(tmp_path):
    save_tiny_pair(tmp_path)
    code = (
        "import json, sys, time\n"
        "start = time.perf_counter()\n"
        "from trainers import cli\n"
        f"code = cli.main(['info', {str(tmp_path / 'teacher')!r}, '--json'])\n"
        "seconds = time.perf_counter() - start\n"
        f"print(json.dumps({{'code': code, 'seconds': seconds, 'heavy': [m for m in {HEAVY_MODULES!r} "
        "if m in sys.modules]}))\n"
    )
    result = _run_python(code)
    assert result["code"] == 0 and result["heavy"] == []
    assert result["seconds"] < FAST_SECONDS


def test_info_names_a_config_whose_steps_do_not_line_up(tmp_path, capsys):
    tiny_student().save_pretrained(tmp_path / "student")
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    config["step_options"] = config["step_options"][:-1]
    (tmp_path / "student" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="step_options"):
        describe(str(tmp_path / "student"))
    capsys.readouterr()
    assert cli.main(["info", str(tmp_path / "student")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("stepcot info: error:") and "config.json" in error and len(error.splitlines()) == 1


def test_info_rejects_an_out_of_range_image_size(tmp_path):
    tiny_student().save_pretrained(tmp_path / "student")
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    config["image_size"] = 10**6
    (tmp_path / "student" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="image_size"):
        describe(str(tmp_path / "student"))


def test_every_help_but_the_training_commands_imports_no_torch(tmp_path):
    """One interpreter builds every command's --help in turn; none of them may pull in torch or transformers."""
    commands = sorted(set(cli.COMMANDS) - {"train", "train-teacher"}) + ["data build", "data import", "data demo"]
    code = (
        "import contextlib, io, json, sys, time\n"
        "from trainers import cli\n"
        "times = {}\n"
        f"for command in {commands!r}:\n"
        "    start = time.perf_counter()\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        cli.main(command.split() + ['--help'])\n"
        "    times[command] = time.perf_counter() - start\n"
        f"print(json.dumps({{'times': times, 'heavy': [m for m in {HEAVY_MODULES!r} if m in sys.modules]}}))\n"
    )
    result = _run_python(code)
    assert result["heavy"] == []
    assert max(result["times"].values()) < FAST_SECONDS, result["times"]


def test_help_cache_renders_once_and_again_when_its_key_changes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STEPCOT_CACHE", str(tmp_path))
    calls = []

    def render():
        calls.append(1)
        print(f"usage: stepcot demo-command (rendering {len(calls)})")
        raise SystemExit(0)  # as argparse does after printing the help

    def show():
        with pytest.raises(SystemExit) as exit_info:
            help_cache.print_cached_help("demo-command", render)
        assert exit_info.value.code == 0

    show()
    show()
    assert capsys.readouterr().out.count("(rendering 1)") == 2 and len(calls) == 1
    monkeypatch.setenv("COLUMNS", "57")  # another terminal width: another text
    show()
    assert len(calls) == 2
    for damaged in ("", "\x00\x01 not a help text"):
        for path in tmp_path.glob("help/*.txt"):
            path.write_text(damaged)
        show()
        assert capsys.readouterr().out.startswith("usage:")
    current = tmp_path / "help" / f"demo-command-{help_cache.help_key('demo-command')}.txt"
    assert len(calls) == 4 and current.read_text().startswith("usage:")


def test_help_requested_ignores_flags_passed_on():
    assert help_cache.help_requested(["--output-dir", "x", "-h"])
    assert not help_cache.help_requested(["--", "--help"])
    assert not help_cache.help_requested(["--output-dir", "help"])


@pytest.mark.slow
def test_training_help_is_served_from_the_cache_without_torch(tmp_path):
    code = (
        "import contextlib, io, json, sys, time\n"
        "from trainers import cli\n"
        "out = io.StringIO()\n"
        "start = time.perf_counter()\n"
        "try:\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        cli.main(['train', '--help'])\n"
        "    code = None\n"
        "except SystemExit as exit_:\n"
        "    code = exit_.code\n"
        "seconds = time.perf_counter() - start\n"
        "print(json.dumps({'code': code, 'seconds': seconds, 'text': out.getvalue(), "
        "'torch': 'torch' in sys.modules}))\n"
    )
    env = {"STEPCOT_CACHE": str(tmp_path), "COLUMNS": "100"}
    first, second = _run_python(code, env), _run_python(code, env)
    assert first["code"] == second["code"] == 0 and first["torch"] and not second["torch"]
    assert second["text"] == first["text"] and "--teacher_learning_rate" in first["text"]
    assert second["seconds"] < FAST_SECONDS
