"""The `stepcot` console command: version, info, dispatch errors."""

import json
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
    # + CLIP's unused text tower and BERT's unused pooler, as Table 11 counts
    assert info["paper_comparable_parameters"] > info["parameters"]
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
