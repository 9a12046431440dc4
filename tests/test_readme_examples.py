"""The README's examples, parsed out of README.md and tried as a reader would.

- Every `stepcot ...` command line in a bash block names a real command, and every `--option` on it appears in that
  command's own `--help` (or `--help-all`): a renamed command or option fails here.
- Every Python block compiles and its imports resolve.
- Every other Python block runs for real, in a folder laid out with the README's own sample paths
  (`outputs/demo/teacher`, `outputs/demo/student`, `chest.png`, `outputs/step_cot`) holding tiny exported models
  and a small built dataset. Names a block takes from the text around it (`logits`, `image`, ...) are given to it
  (`_given`).
- A line whose comment says "needs the Hub" is left out (the Hub is not reachable from the tests); the Hub ids
  appear on such lines only. Blocks that need a running server or a long run are listed in `NOT_RUN` with the test
  that covers them.
"""

import ast
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tiny_models import tiny_student, tiny_teacher, tiny_tokenizer
from trainers import cli

README = Path(__file__).resolve().parents[1] / "README.md"
HUB_IDS = ("openai/clip-vit-base-patch32", "bert-base-uncased", "fl-15o/Step-CoT")
HUB_MARK = "needs the Hub"
# Blocks (by a phrase they contain) that are not run here, and what runs them instead.
NOT_RUN = {
    "from trainers.training.distillation import": "tests/test_python_api.py runs it and compares it with the command",
    "from gradio_client import": "needs `stepcot demo` serving; tests/test_web_demo_api.py calls /predict alike",
}


def _blocks(language: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    return [body for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S) if lang == language]


def _runnable(block: str) -> str:
    """The block without its lines that need the Hub."""
    return "\n".join(line for line in block.splitlines() if HUB_MARK not in line)


def _stepcot_commands() -> list[list[str]]:
    commands = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|;", line.split("  #")[0]):
                words = shlex.split(part, comments=True)
                if words[:1] == ["stepcot"] or words[:1] == [".venv/bin/stepcot"]:
                    commands.append(words[1:])
    return commands


def _help_text(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code in (0, None), argv
    return capsys.readouterr().out


def test_the_readme_has_the_examples_this_test_reads():
    assert len(_stepcot_commands()) >= 20 and len(_blocks("python")) >= 7


@pytest.mark.parametrize("command", _stepcot_commands(), ids=lambda c: " ".join(c)[:60])
def test_every_stepcot_command_line_uses_options_its_command_has(command, capsys):
    command_path = []
    for word in command:
        if word.startswith("-"):
            break
        command_path.append(word)
    options = sorted({word.split("=")[0] for word in command if word.startswith("--")})
    if options == ["--version"]:
        return
    if command[:1] == ["--version"]:
        return
    text = _help_text(command_path + ["--help"], capsys)
    missing = [option for option in options if option not in text and option.replace("-", "_") not in text
               and option.replace("_", "-") not in text]
    if missing and command_path[:1] in (["train"], ["train-teacher"]):
        text += _help_text(command_path + ["--help-all"], capsys)
        missing = [option for option in options if option not in text and option.replace("-", "_") not in text
                   and option.replace("_", "-") not in text]
    assert not missing, f"README: `stepcot {' '.join(command)}` uses {missing}, not in its --help"


OUTPUT_OPTIONS = ("--output-dir", "--output_dir", "--out", "--write-space")


def test_readme_commands_write_under_the_ignored_outputs_folder():
    """Examples run from a checkout leave nothing untracked: every folder they write is under outputs/."""
    ignored = (README.parent / ".gitignore").read_text(encoding="utf-8").split()
    assert "outputs/" in ignored
    written = []
    for command in _stepcot_commands():
        written += [value for option, value in zip(command, command[1:]) if option in OUTPUT_OPTIONS]
        if command[:2] == ["data", "push"]:
            written.append(command[2])
    assert len(written) >= 15
    assert [path for path in written if not path.startswith("outputs/")] == []


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_every_python_block_compiles_and_its_imports_resolve(index):
    block = _blocks("python")[index]
    tree = ast.parse(block, f"README.md python block {index}")
    imports = [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    exec("\n".join(imports), {})  # noqa: S102 - the README's own import lines


def test_hub_ids_appear_only_on_lines_marked_as_needing_the_hub():
    for block in _blocks("python"):
        for line in block.splitlines():
            code = line.split("#")[0]
            assert not any(hub_id in code for hub_id in HUB_IDS) or HUB_MARK in line, line


@pytest.fixture(scope="module")
def readme_folder(tmp_path_factory, hub_dataset):
    """A working folder laid out with the README's sample paths."""
    from modeling_stepcot import StepCoTProcessor
    from trainers.model_export.export import export

    tokenizer = tiny_tokenizer()
    models = {"student": tiny_student(), "teacher": tiny_teacher()}
    models["teacher"].set_question_tokens(tokenizer)
    processor = StepCoTProcessor.from_model_config(models["teacher"].config, tokenizer)
    folder = tmp_path_factory.mktemp("readme")
    export({role: model.eval() for role, model in models.items()}, processor, folder / "outputs" / "demo",
           results={}, run_args={"model": {}}, table="")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (80, 96), dtype=np.uint8)).save(folder / "chest.png")
    shutil.copytree(hub_dataset, folder / "outputs" / "step_cot")
    return folder, models["teacher"], tokenizer


def _given(teacher, tokenizer) -> dict:
    """What a block takes from the text around it."""
    labels = torch.randint(0, 2, (6, len(teacher.config.step_options)))
    return {
        "logits": torch.randn(6, len(teacher.config.step_options), max(map(len, teacher.config.step_options))).numpy(),
        "labels": labels.numpy(),
        "image": Image.new("L", (64, 64), 100),
        "model": teacher,
        "tokenizer": tokenizer,
    }


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_every_python_block_runs_on_the_readme_sample_paths(index, readme_folder, monkeypatch):
    block = _blocks("python")[index]
    reason = next((why for phrase, why in NOT_RUN.items() if phrase in block), None)
    if reason:
        pytest.skip(reason)
    folder, teacher, tokenizer = readme_folder
    monkeypatch.chdir(folder)
    namespace = _given(teacher, tokenizer)
    exec(compile(_runnable(block), f"README.md python block {index}", "exec"), namespace)  # noqa: S102
    if "vqa(" in block:
        result = namespace["r"]
        assert len(result["steps"]) == len(teacher.config.step_options) and result["maps"].shape[0] == len(
            teacher.config.step_options)
    if "metric.compute(" in block:
        assert "mean_accuracy" in namespace["metric"].compute(predictions=namespace["logits"],
                                                              references=namespace["labels"])
    if "out = model(" in block:
        assert namespace["out"].logits.shape[0] == 1
