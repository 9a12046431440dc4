"""The `stepcot` console command: version, info, dispatch errors."""

import argparse
import importlib
import json
import shlex
import subprocess
import sys

import pytest
from tiny_models import tiny_teacher

from trainers import cli


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("stepcot ")
    assert cli.main([]) == 2


def test_info_describes_a_saved_model(tmp_path, capsys):
    tiny_teacher(use_memory=False).save_pretrained(tmp_path / "teacher")
    assert cli.main(["info", str(tmp_path / "teacher"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["class"] == "StepCoTTeacher" and info["ablations"] == {"use_memory": False, "use_text": True}
    assert [len(s["options"]) for s in info["steps"]] == [4, 4, 6, 7, 5, 7, 9]
    assert 0 < info["trainable_parameters"] < info["parameters"]
    assert "model.safetensors" in info["files"]


def test_info_names_a_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        cli.main(["info", str(tmp_path)])


def test_console_script_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "trainers.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "stepcot" in result.stdout


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_registered_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def _parse_example(name: str, module, example: str) -> None:
    """Parse one example with the command's own parser (the example is checked, not run)."""
    argv = shlex.split(example)
    assert argv[:2] == ["stepcot", name], example
    if hasattr(module, "add_arguments"):
        parser = argparse.ArgumentParser(prog=f"stepcot {name}", exit_on_error=False)
        module.add_arguments(parser)
        parser.parse_args(argv[2:])
    else:  # the training scripts parse with HfArgumentParser
        script = {"train": "trainers.run_distill", "train-teacher": "trainers.run_teacher"}[name]
        importlib.import_module(script).parse_args(argv[2:])


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_help_shows_a_runnable_example(command, capsys):
    module = cli.COMMANDS[command]
    assert module.EXAMPLES, f"{command} has no example"
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    help_text = capsys.readouterr().out
    for example in module.EXAMPLES:
        assert example in help_text, f"{command} --help does not show {example!r}"
        _parse_example(command, module, example)
