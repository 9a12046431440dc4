"""Hostile training runs: full disks and file size limits while checkpointing, a kill mid-checkpoint, two runs in one
folder, an edited run record, replaced feature caches."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_student

from trainers.training.checkpoints import TrainingError

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _no_checkpoint_left(folder: Path):
    leftovers = [p.name for p in folder.iterdir() if "checkpoint" in p.name]
    assert leftovers == [], leftovers


# ------------------------------------------------------------------------------------------------------------
# checkpoints are staged and renamed; every write failure is one line


def test_a_torch_save_enforce_failure_is_one_line_and_leaves_no_checkpoint(tmp_path, monkeypatch):
    from test_distillation import learnable_dataset, make_pair, trainer_for

    def full_disk(obj, f, *args, **kwargs):  # what torch.save raises on a full disk
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 131584 vs 131472")

    trainer = trainer_for(make_pair(), learnable_dataset(8), tmp_path, max_steps=1, save_strategy="steps",
                          save_steps=1)
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(TrainingError) as caught:
        trainer.train()
    message = str(caught.value)
    assert message.startswith(f"cannot write the checkpoint {tmp_path / 'checkpoint-1'}: the disk is full")
    assert "\n" not in message
    _no_checkpoint_left(tmp_path)


_LIMITED_RUN = """
import resource, sys
sys.path[:0] = [{repo!r}, {tests!r}]
from test_distillation import learnable_dataset, make_pair, trainer_for
from trainers.training.checkpoints import TrainingError
trainer = trainer_for(make_pair(), learnable_dataset(8), {out!r}, max_steps=1, save_strategy="steps", save_steps=1)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
try:
    trainer.train()
except TrainingError as error:
    print("ERROR", error)
"""


@pytest.mark.slow
@pytest.mark.parametrize("limit, cause", [
    (200_000, "File too large"),  # the safetensors weights hit the limit (EFBIG, os error 27)
    (600_000, "the disk is full or a file size limit was reached"),  # torch.save of the optimizer hits it
])
def test_a_file_size_limit_while_checkpointing_is_one_line_and_leaves_no_checkpoint(tmp_path, limit, cause):
    out = tmp_path / "run"
    script = _LIMITED_RUN.format(repo=str(REPO_ROOT), tests=str(TESTS), out=str(out), limit=limit)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    errors = [line for line in result.stdout.splitlines() if line.startswith("ERROR ")]
    assert result.returncode == 0 and len(errors) == 1, result.stderr[-2000:]
    assert errors[0].startswith(f"ERROR cannot write the checkpoint {out / 'checkpoint-1'}: {cause}")
    _no_checkpoint_left(out)


# ------------------------------------------------------------------------------------------------------------
# resume picks the last complete checkpoint

_KILLED_RUN = """
import sys, time
sys.path[:0] = [{repo!r}, {tests!r}]
import torch
from test_distillation import learnable_dataset, make_pair, trainer_for
real_save = torch.save
def save(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    if "checkpoint-2" in str(f):
        print("writing checkpoint-2", flush=True)
        time.sleep(600)  # SIGKILLed here, half way through the checkpoint
torch.save = save
trainer_for(make_pair(), learnable_dataset(16), {out!r}, max_steps=4, save_strategy="steps", save_steps=1).train()
"""


@pytest.mark.slow
def test_resume_after_a_kill_mid_checkpoint_picks_the_last_complete_one_and_says_so(tmp_path, caplog):
    from test_distillation import learnable_dataset, make_pair, trainer_for

    from trainers.training.checkpoints import resolve_resume_checkpoint

    out = tmp_path / "run"
    script = _KILLED_RUN.format(repo=str(REPO_ROOT), tests=str(TESTS), out=str(out))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        while (line := child.stdout.readline()) and "writing checkpoint-2" not in line:
            pass
        assert "writing checkpoint-2" in line
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]  # no partial checkpoint-2
    with caplog.at_level("WARNING", logger="stepcot.train"):
        assert resolve_resume_checkpoint(out, "true") == str(out / "checkpoint-1")
    assert "resuming from" in caplog.text and "last complete checkpoint" in caplog.text
    trainer = trainer_for(make_pair(), learnable_dataset(16), out, max_steps=3, save_strategy="steps", save_steps=1)
    trainer.train(resume_from_checkpoint="true")  # the Trainer's spelling of "the last one", not a folder
    assert trainer.state.global_step == 3
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == [
        "checkpoint-1", "checkpoint-2", "checkpoint-3"]


def test_resume_true_passes_over_an_incomplete_checkpoint_and_an_explicit_one_names_the_complete_one(tmp_path):
    from trainers.training.checkpoints import resolve_resume_checkpoint

    complete, partial = tmp_path / "checkpoint-4", tmp_path / "checkpoint-8"
    for folder in (complete, partial):
        folder.mkdir()
        (folder / "trainable_weights.safetensors").write_bytes(b"")
    (complete / "trainer_state.json").write_text("{}")  # checkpoint-8 has no trainer state: a half-written one
    assert resolve_resume_checkpoint(tmp_path, "true") == str(complete)
    assert resolve_resume_checkpoint(tmp_path, True) == str(complete)
    with pytest.raises(TrainingError, match=r"checkpoint-8.*last complete checkpoint is .*checkpoint-4"):
        resolve_resume_checkpoint(tmp_path, str(partial))
    with pytest.raises(TrainingError, match="holds no complete checkpoint"):
        resolve_resume_checkpoint(tmp_path / "checkpoint-4", "true")


# ------------------------------------------------------------------------------------------------------------
# one run per output folder


def test_a_second_train_into_a_locked_folder_refuses_in_one_line(tmp_path, capsys):
    from trainers.cli import main

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from trainers.training.run_folder import lock_output_dir
        lock_output_dir({str(out)!r})
        print("locked", flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", "--output_dir", str(out), "--demo_size", "60"]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"stepcot train: error: {out} is in use by another training run (pid {holder.pid} ")
        assert "\n" not in error
        assert not (out / "run.json").exists() and not (out / "demo-release").exists()  # nothing of it written
    finally:
        holder.kill()
        holder.wait()
    from trainers.training.run_folder import lock_output_dir, release_output_dir

    lock_output_dir(out)  # the holder's end released it
    release_output_dir(out)


# ------------------------------------------------------------------------------------------------------------
# a resume checks the checkpoint's own record of the run's inputs


def _inputs(**changes):
    return {"script": "run_distill", "dataset": "demo", "demo_size": 60, "image_size": 64, **changes}


def test_a_checkpoint_records_the_runs_inputs(tmp_path):
    from test_distillation import learnable_dataset, make_pair, trainer_for

    from trainers.training.run_folder import open_run, release_output_dir

    open_run(tmp_path, _inputs())
    release_output_dir(tmp_path)
    trainer_for(make_pair(), learnable_dataset(8), tmp_path, max_steps=1, save_strategy="steps", save_steps=1).train()
    assert json.loads((tmp_path / "checkpoint-1" / "run_inputs.json").read_text()) == _inputs()


def test_resuming_with_other_inputs_after_run_json_was_edited_refuses_naming_the_fields(tmp_path):
    from trainers.training.run_folder import open_run, release_output_dir

    open_run(tmp_path, _inputs())
    checkpoint = tmp_path / "checkpoint-5"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    (checkpoint / "trainable_weights.safetensors").write_bytes(b"")
    (checkpoint / "run_inputs.json").write_text(json.dumps(_inputs()))
    assert open_run(tmp_path, _inputs(), resume_from_checkpoint="true") == str(checkpoint)  # same inputs: resumes
    record = json.loads((tmp_path / "run.json").read_text())
    record["built_from"] = _inputs(demo_size=200, image_size=128)  # edited to match the new arguments
    (tmp_path / "run.json").write_text(json.dumps(record))
    with pytest.raises(TrainingError) as caught:
        open_run(tmp_path, _inputs(demo_size=200, image_size=128), resume_from_checkpoint="true")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"cannot resume from {checkpoint}")
    assert "demo_size=60 (now 200)" in message and "image_size=64 (now 128)" in message
    release_output_dir(tmp_path)


# ------------------------------------------------------------------------------------------------------------
# feature caches are checked against the shape and digest recorded when written


@pytest.mark.parametrize("replacement", ["wrong width", "random values"])
def test_a_replaced_feature_cache_is_never_used(tmp_path, replacement, caplog):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from trainers.training.feature_cache import cached_image_embeds

    model = tiny_student().eval()
    batches = [torch.randn(3, 3, 32, 32), torch.randn(2, 3, 32, 32)]
    first, path, _ = cached_image_embeds(model, batches, "data", tmp_path, num_rows=5)
    shard = path / "shard-00000.safetensors"
    with safe_open(str(shard), framework="pt") as reader:
        metadata = reader.metadata()
    fake = torch.randn(5, first.shape[1] * 2) if replacement == "wrong width" else torch.randn_like(first)
    save_file({"image_embeds": fake}, shard, metadata=metadata)  # the recorded metadata kept, the values replaced
    with caplog.at_level("WARNING"):
        again, _, hit = cached_image_embeds(model, batches, "data", tmp_path, num_rows=5)
    assert not hit and torch.allclose(again, first, atol=1e-6)
    assert "differ from what was written" in caplog.text
    assert cached_image_embeds(model, [], "data", tmp_path, num_rows=5)[2]  # the rebuilt file reads back
