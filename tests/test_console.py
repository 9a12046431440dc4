"""A quiet command line: library noise filtered, one line per evaluation, Ctrl-C ends with how to resume."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainers import console

REPO_ROOT = Path(__file__).resolve().parents[1]


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("transformers.x", logging.WARNING, __file__, 1, message, (), None)


def test_library_noise_is_filtered_and_real_problems_kept():
    noise_filter = console.LibraryNoiseFilter()
    assert not noise_filter.filter(_record("The following layers were not sharded: encoder.layer.*.bias"))
    assert not noise_filter.filter(_record("`CLIPImageProcessor` requires torchvision (not installed); falling back"))
    assert not noise_filter.filter(_record("\x1b[1mBertModel LOAD REPORT\x1b[0m from: x\nKey | Status\n"
                                           "pooler.dense.bias | UNEXPECTED"))
    missing = _record("\x1b[1mBertModel LOAD REPORT\x1b[0m from: x\nKey | Status\nencoder.weight | MISSING")
    assert noise_filter.filter(missing)
    assert missing.getMessage().startswith("BertModel LOAD REPORT from: x: some weights are missing")
    assert "\n" not in missing.getMessage()
    assert noise_filter.filter(_record("Gradient accumulation is not supported with the feature cache"))


def test_evaluation_logs_become_one_line():
    line = console._summarise_log({"eval_loss": 24.41, "eval_teacher_mean_accuracy": 0.4643,
                                   "eval_student_mean_accuracy": 0.1667, "epoch": 1.0})
    assert line == "epoch 1: validation mean accuracy teacher 46.4%, student 16.7% (loss 24.41)"
    assert console._summarise_log({"eval_loss": 2.0, "eval_mean_accuracy": 0.5, "epoch": 2.0}) == (
        "epoch 2: validation mean accuracy 50.0% (loss 2)")
    assert console._summarise_log({"loss": 3.2, "grad_norm": 1.0, "learning_rate": 1e-4, "epoch": 0.5}) is None


def test_verbose_flag_is_taken_out():
    assert console.pop_verbose_flag(["--output_dir", "x", "--verbose"]) == ["--output_dir", "x"]
    assert console.VERBOSE
    assert console.pop_verbose_flag(["--output_dir", "x"]) == ["--output_dir", "x"]
    assert not console.VERBOSE


def test_resume_command_replaces_an_earlier_checkpoint(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):  # checkpoint-6 was cut off while being written
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainable_weights.safetensors").write_bytes(b"")
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    checkpoint = console.last_complete_checkpoint(tmp_path)
    assert checkpoint == tmp_path / "checkpoint-4"
    command = console.resume_command("train", ["--output_dir", str(tmp_path), "--resume_from_checkpoint", "old"],
                                     checkpoint)
    assert command == f"stepcot train --output_dir {tmp_path} --resume-from-checkpoint {checkpoint}"
    hyphenated = ["--output-dir", str(tmp_path), "--resume-from-checkpoint=old"]
    assert console._option(hyphenated, "--output_dir") == str(tmp_path)
    assert console.resume_command("train", hyphenated, checkpoint) == (
        f"stepcot train --output-dir {tmp_path} --resume-from-checkpoint {checkpoint}")


def _default_sigint():
    """A background job inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_during_train_names_the_checkpoint_and_the_resume_command(tmp_path):
    out = tmp_path / "run"
    argv = ["--output_dir", str(out), "--demo_size", "24", "--demo_image_size", "32", "--image_size", "32",
            "--num_train_epochs", "200", "--per_device_train_batch_size", "4", "--eval_strategy", "steps",
            "--eval_steps", "1", "--save_strategy", "steps", "--save_steps", "1", "--num_bootstrap", "0",
            "--checkpoint_every_minutes", "0"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "trainers.cli", "train", *argv], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 600
        while console.last_complete_checkpoint(out) is None:
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(1)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("stepcot train: interrupted. Last saved checkpoint: ")
    checkpoint = last_line.split("Last saved checkpoint: ")[1].split(". Resume with: ")[0]
    assert Path(checkpoint).parent == out and (Path(checkpoint) / "trainer_state.json").is_file()
    assert last_line.endswith(f"Resume with: stepcot train {' '.join(argv)} --resume-from-checkpoint {checkpoint}")
    # the quiet console: stage lines, no library reports
    assert "LOAD REPORT" not in stderr + stdout and "not sharded" not in stderr + stdout
    assert "Writing model shards" not in stderr and "torchvision" not in stderr + stdout
    assert "training on cached image features" in stdout
