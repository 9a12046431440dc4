"""Hostile training cases (issue 11 #5, #6, #7, #13): a reused output folder, resume after the best epoch, a feature
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
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # what a kill during an in-place write leaves
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
    from safetensors.torch import load_file
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
                              callbacks=[BestModelExportCallback(str(folder)), StopAt()])
        holder["trainer"] = trainer
        trainer.train(resume_from_checkpoint=resume_from)
        return load_file(folder / "best" / "student" / "model.safetensors")

    uninterrupted = run(tmp_path / "full")
    run(tmp_path / "killed", stop_at=6)
    resumed = run(tmp_path / "killed", resume_from=str(tmp_path / "killed" / "checkpoint-6"))
    assert uninterrupted.keys() == resumed.keys()
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
