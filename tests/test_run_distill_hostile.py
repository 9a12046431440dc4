"""Hostile training cases: a reused output folder, resume after the best epoch, a feature
cache killed mid-write, non-finite losses, bad arguments, unwritable folders and damaged checkpoints."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_student

from trainers.training.feature_cache import cached_image_embeds

REPO_ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------------------
# #7 the feature cache is written atomically; a damaged one is rebuilt


def test_a_truncated_feature_cache_is_detected_and_rebuilt(tmp_path):
    model = tiny_student().eval()
    batches = [torch.randn(3, 3, 32, 32), torch.randn(2, 3, 32, 32)]
    first, path, hit = cached_image_embeds(model, batches, "data", tmp_path, num_rows=5)
    shard = path / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # what a kill during an in-place write leaves
    again, same_path, hit = cached_image_embeds(model, batches, "data", tmp_path, num_rows=5)
    assert not hit and same_path == path and torch.allclose(again, first, atol=1e-6)
    assert cached_image_embeds(model, [], "data", tmp_path, num_rows=5)[2]  # the rebuilt file reads back


def test_a_cache_write_killed_midway_leaves_no_file_under_the_final_name(tmp_path):
    """A child process writes a large cache and is SIGKILLed mid-write: the final name never holds a partial file."""
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(REPO_ROOT)!r})
        import safetensors.torch as st
        real_save = st.save_file
        def slow_save(tensors, filename, metadata=None):
            real_save(tensors, filename, metadata=metadata)
            print("written", flush=True)
            import time; time.sleep(60)  # killed here: after the bytes, before the rename
        import trainers.training.feature_cache as fc
        fc.save_file = slow_save
        fc.save_file_atomically({{"image_embeds": torch.zeros(1000, 64)}}, {str(tmp_path / "cache.safetensors")!r})
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "written"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not (tmp_path / "cache.safetensors").exists()


# ------------------------------------------------------------------------------------------------------------
# #6 resume keeps the best model


@pytest.mark.slow
def test_resume_after_the_best_epoch_exports_the_same_best_models(tmp_path):
    from test_distillation import learnable_dataset, make_pair, trainer_for
    from transformers import TrainerCallback

    from trainers.training.distillation import BestModelExportCallback

    scripted = {2: 0.5, 4: 0.9, 6: 0.3, 8: 0.4}  # validation accuracy by step: best at epoch 2 of 4
    dataset = learnable_dataset(16)

    def run(folder, resume_from=None, stop_at=None):
        holder = {}

        def compute_metrics(_):
            value = scripted[holder["trainer"].state.global_step]
            return {"teacher_mean_accuracy": value, "student_mean_accuracy": value}

        class StopAt(TrainerCallback):  # a kill right after the checkpoint of step `stop_at`
            def on_save(self, args, state, control, **kwargs):
                if state.global_step == stop_at:
                    control.should_training_stop = True

        trainer = trainer_for(make_pair(), dataset, folder, num_train_epochs=4, eval_strategy="epoch",
                              save_strategy="epoch", eval_dataset=dataset, compute_metrics=compute_metrics,
                              teacher_learning_rate=1e-2, student_learning_rate=1e-2,
                              callbacks=[best := BestModelExportCallback(), StopAt()])
        holder["trainer"] = trainer
        trainer.train(resume_from_checkpoint=resume_from)
        return best.states["student"]

    uninterrupted = run(tmp_path / "full")
    run(tmp_path / "killed", stop_at=6)
    resumed = run(tmp_path / "killed", resume_from=str(tmp_path / "killed" / "checkpoint-6"))
    assert uninterrupted.keys() == resumed.keys()
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)


# ------------------------------------------------------------------------------------------------------------
# #13 non-finite losses, bad arguments, unwritable folders, damaged checkpoints: one line each


def test_training_stops_at_the_first_non_finite_loss_naming_step_terms_and_causes(tmp_path):
    from test_distillation import learnable_dataset, make_pair, trainer_for

    from trainers.training.checkpoints import TrainingError

    dataset = learnable_dataset(32)
    dataset.image_embeds[9] = float("inf")  # one bad row: the loss of its batch is not finite
    pair = make_pair()
    trainer = trainer_for(pair, dataset, tmp_path, max_steps=4)
    with pytest.raises(TrainingError) as caught:
        trainer.train()
    message = str(caught.value)
    assert "\n" not in message and f"at step {trainer.state.global_step + 1} " in message  # stopped at that step
    assert all(term in message for term in ("teacher_ce=", "kd=", "ch=", "learning rates", "--temperature"))
    assert all(torch.isfinite(p).all() for p in pair.parameters())  # no update with the non-finite loss


@pytest.mark.parametrize("flag, value", [
    ("--temperature", "0"), ("--per_device_train_batch_size", "0"), ("--max_train_samples", "0"),
    ("--per_device_eval_batch_size", "0"), ("--alpha_kd", "-1"), ("--temperature", "nan"),
])
def test_bad_training_arguments_fail_before_anything_runs(tmp_path, flag, value):
    from trainers.run_distill import parse_args
    from trainers.training.checkpoints import TrainingError

    with pytest.raises(TrainingError, match=f"^{flag} [^ ]+: must be [>]"):
        parse_args(["--output_dir", str(tmp_path), flag, value])


def test_cli_names_an_unwritable_output_folder_in_one_line(tmp_path, capsys):
    from trainers.cli import main

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["train", "--output_dir", str(blocker / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("stepcot train: error: cannot write to the output folder ") and "\n" not in error
    assert str(blocker / "run") in error


def test_a_full_disk_while_checkpointing_is_named_in_one_line(tmp_path, monkeypatch):
    import errno

    from test_distillation import learnable_dataset, make_pair, trainer_for

    import trainers.training.checkpoints as checkpoints

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "checkpoint-1" / "x"))

    monkeypatch.setattr(checkpoints, "save_file_atomically", full_disk)
    trainer = trainer_for(make_pair(), learnable_dataset(8), tmp_path, max_steps=1, save_strategy="steps",
                          save_steps=1)
    with pytest.raises(checkpoints.TrainingError, match="cannot write the checkpoint .*checkpoint-1.*No space left"):
        trainer.train()


@pytest.mark.parametrize("damage", ["trainer_state.json", "trainable_weights.safetensors", "optimizer.pt"])
def test_resuming_from_a_damaged_checkpoint_names_the_file(tmp_path, damage):
    from test_distillation import learnable_dataset, make_pair, trainer_for

    from trainers.training.checkpoints import TrainingError

    dataset = learnable_dataset(16)
    trainer_for(make_pair(), dataset, tmp_path, max_steps=2, save_strategy="steps", save_steps=2).train()
    damaged = tmp_path / "checkpoint-2" / damage
    damaged.write_bytes(damaged.read_bytes()[:40])
    with pytest.raises(TrainingError, match="damaged checkpoint") as caught:
        trainer_for(make_pair(), dataset, tmp_path, max_steps=4).train(
            resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert "checkpoint-2" in str(caught.value) and "\n" not in str(caught.value)


# ------------------------------------------------------------------------------------------------------------
# #5 a reused output folder never mixes two runs


def _inputs(**changes):
    return {"script": "run_distill", "dataset": "demo", "demo_size": 60, "vision_encoder": "efficientnet_lite0",
            **changes}


def test_a_folder_is_refused_to_a_run_built_from_other_inputs(tmp_path):
    from trainers.training.checkpoints import TrainingError
    from trainers.training.run_folder import claim_output_dir

    claim_output_dir(tmp_path, _inputs())
    (tmp_path / "dataset").mkdir()
    with pytest.raises(TrainingError, match=r"built from other inputs: dataset='demo' \(now '/data/other'\)"):
        claim_output_dir(tmp_path, _inputs(dataset="/data/other"))
    with pytest.raises(TrainingError, match="vision_encoder"):
        claim_output_dir(tmp_path, _inputs(vision_encoder="openai/clip-vit-base-patch32"), resume_from_checkpoint="x")
    assert (tmp_path / "dataset").is_dir()  # nothing was touched


def test_a_fresh_run_never_deletes_or_exports_an_earlier_runs_work(tmp_path):
    import json

    from trainers.training.checkpoints import TrainingError
    from trainers.training.run_folder import claim_output_dir

    first = claim_output_dir(tmp_path, _inputs())
    (tmp_path / "checkpoint-8").mkdir()
    with pytest.raises(TrainingError, match="checkpoints of an earlier run .checkpoint-8.*--resume_from_checkpoint"):
        claim_output_dir(tmp_path, _inputs())
    assert (tmp_path / "checkpoint-8").is_dir()
    assert claim_output_dir(tmp_path, _inputs(), resume_from_checkpoint=str(tmp_path / "checkpoint-8")) == first

    (tmp_path / "checkpoint-8").rmdir()  # a finished run without checkpoints: a new run of the same inputs may start
    (tmp_path / "best" / "teacher").mkdir(parents=True)
    second = claim_output_dir(tmp_path, _inputs())
    assert second != first and not (tmp_path / "best").exists()  # the old bests can never be exported as this run's
    assert json.loads((tmp_path / "run.json").read_text())["run_id"] == second


def test_overwrite_starts_over_and_an_unrecorded_folder_is_refused(tmp_path):
    from trainers.training.checkpoints import TrainingError
    from trainers.training.run_folder import claim_output_dir

    for name in ("dataset", "best", "checkpoint-3", "cache"):
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError, match="without a record of what it was built from"):
        claim_output_dir(tmp_path, _inputs())
    claim_output_dir(tmp_path, _inputs(), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "notes.txt", "run.json"]


@pytest.mark.slow
def test_reused_output_dir_end_to_end(tmp_path, demo_release_dir):
    """Run A evaluates each epoch; run B, same inputs, never evaluates: its export is its own final model, not A's
    best. Run C points --dataset elsewhere: refused instead of training on A's dataset/."""
    from safetensors.torch import load_file

    from trainers.cli import main
    from trainers.training.offline_encoders import offline_encoders_available

    if not offline_encoders_available():
        pytest.skip("offline encoder packages not installed")
    out = tmp_path / "run"
    small = ["--output_dir", str(out), "--demo_size", "60", "--demo_image_size", "64", "--image_size", "64",
             "--teacher_hidden_size", "32", "--student_hidden_size", "32", "--relation_dim", "16",
             "--num_train_epochs", "1", "--teacher_pretrain_epochs", "1", "--save_strategy", "no",
             "--num_bootstrap", "0", "--disable_tqdm", "true", "--logging_steps", "50"]
    assert main(["train", *small]) == 0
    best_teacher = load_file(out / "teacher" / "model.safetensors")
    assert not (out / "best").exists() and not list(out.glob("checkpoint-*"))
    assert main(["train", *small, "--eval_strategy", "no", "--seed", "7"]) == 0
    exported = load_file(out / "teacher" / "model.safetensors")
    assert any(not torch.equal(exported[k], best_teacher[k]) for k in best_teacher)
    assert main(["train", *small, "--dataset", str(demo_release_dir)]) == 2
