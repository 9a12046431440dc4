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
    # + CLIP's unused text tower and BERT's unused pooler, as Table 11 counts
    assert info["paper_comparable_parameters"] > info["parameters"]
    assert "model.safetensors" in info["files"]


def test_info_names_a_folder_that_is_not_a_model(tmp_path, capsys):
    assert cli.main(["info", str(tmp_path)]) == 1
    assert "no config.json" in capsys.readouterr().err


def test_console_script_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "trainers.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "stepcot" in result.stdout


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_registered_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_baseline_help_names_the_papers_backbones_and_where_the_linear_probe_is(capsys):
    """`stepcot baseline` runs Table 3/8's vision-language backbones; the probe on the models' features is train's."""
    cli.build_parser().print_help()
    overview = " ".join(capsys.readouterr().out.split())
    assert "Table 3/8 baselines: vision-language backbones" in overview
    with pytest.raises(SystemExit):
        cli.main(["baseline", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "frozen vision-language model" in text and "2-layer MLP" in text
    assert "`stepcot train` fits it" in text and "metrics/linear_probe" in text

def _long_options(parser):
    options = []
    for action in parser._actions:
        options += [o for o in action.option_strings if o.startswith("--")]
        if isinstance(action, argparse._SubParsersAction):  # `data build|demo|push`
            for sub in action.choices.values():
                options += _long_options(sub)
    return options


@pytest.mark.parametrize("command", sorted(n for n, m in cli.COMMANDS.items() if hasattr(m, "add_arguments")))
def test_every_flag_is_spelled_with_hyphens(command):
    assert [o for o in _long_options(cli.command_parser(command)) if "_" in o] == []


@pytest.mark.parametrize("command, hyphens, underscores", [
    ("eval", ["--model", "m", "--dataset", "d", "--output-dir", "o", "--num-bootstrap", "5", "--batch-size", "3"],
     ["--model", "m", "--dataset", "d", "--out", "o", "--num_bootstrap", "5", "--batch_size=3"]),
    ("eval-transfer", ["--model", "m", "--nih-images", "i", "--bbox-csv", "b", "--output-dir", "o", "--no-plots"],
     ["--model", "m", "--nih_images", "i", "--bbox_csv", "b", "--output_dir", "o", "--no_plots"]),
    ("bench-ablations", ["--output-dir", "o", "--demo-size", "9", "--", "--num_train_epochs", "1"],
     ["--out", "o", "--demo_size", "9", "--", "--num_train_epochs", "1"]),
    ("data", ["build", "--source", "s", "--output-dir", "o"], ["build", "--source", "s", "--out", "o"]),
    ("annotate-eval", ["--reports", "r", "--num-bootstrap", "5"], ["--reports", "r", "--bootstrap", "5"]),
    ("baseline", ["--backbone", "b", "--dataset", "d", "--output-dir", "o", "--num-bootstrap", "5", "--no-plots"],
     ["--backbone", "b", "--dataset", "d", "--out", "o", "--num_bootstrap", "5", "--no_plots"]),
])
def test_old_flag_spellings_are_aliases(command, hyphens, underscores):
    parser = cli.command_parser(command)
    assert parser.parse_args(cli.hyphenate_flags(hyphens)) == parser.parse_args(cli.hyphenate_flags(underscores))


def test_arguments_after_a_bare_double_dash_pass_through_unchanged():
    assert cli.hyphenate_flags(["--num_bootstrap", "5", "--", "--output_dir", "x"]) == [
        "--num-bootstrap", "5", "--", "--output_dir", "x"]


def test_training_commands_accept_both_spellings():
    from trainers.run_distill import DataArguments, StepCoTDistillationConfig
    from trainers.training.run_arguments import parse_run_args

    for flags in (["--output_dir", "o", "--num_bootstrap", "7", "--alpha_kd", "0.3"],
                  ["--output-dir", "o", "--num-bootstrap", "7", "--alpha-kd", "0.3"]):
        data_args, training_args = parse_run_args((DataArguments, StepCoTDistillationConfig), flags)
        assert (training_args.output_dir, data_args.num_bootstrap, training_args.alpha_kd) == ("o", 7, 0.3)


@pytest.mark.parametrize("spelling", [["--output_dir", "x"], ["--output-dir", "x"], ["--output-dir=x"],
                                      ["--output", "x"], ["--use-text", "False"], ["--cache_dir=c"]])
def test_bench_ablations_refuses_reserved_train_flags_however_spelled(spelling, tmp_path, capsys):
    code = cli.main(["bench-ablations", "--output-dir", str(tmp_path / "out"), "--", *spelling])
    assert code == 2
    assert "are set by this command" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before preparing any data


def _parse_example(name: str, module, example: str) -> None:
    """Parse one example with the command's own parser (the example is checked, not run)."""
    argv = shlex.split(example)
    assert argv[:2] == ["stepcot", name], example
    if hasattr(module, "add_arguments"):
        cli.command_parser(name).parse_args(cli.hyphenate_flags(argv[2:]))
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
