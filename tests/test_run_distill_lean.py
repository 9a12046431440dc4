"""A finished run leaves little more than its exported models, and a long run writes a bounded number of
checkpoints: `checkpoint_every_minutes` thins the saves, the best models live in memory and in the checkpoints only,
and `stepcot train` removes its checkpoints once `teacher/` and `student/` are exported."""

from pathlib import Path

import pytest
from test_distillation import learnable_dataset, make_pair, trainer_for

from trainers.training.distillation_config import StepCoTDistillationConfig
from trainers.training.offline_encoders import offline_encoders_available


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _write_chars() -> int:
    return int(dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())["wchar"])


def test_lean_defaults_are_declared_on_the_config():
    config = StepCoTDistillationConfig(output_dir="unused")
    assert config.checkpoint_every_minutes == 10 and config.keep_checkpoints is False
    assert config.save_total_limit == 1
    # how a run is kept on disk is not part of the recipe a resume must match
    assert "checkpoint_every_minutes" not in config.distillation_values()
    assert "keep_checkpoints" not in config.distillation_values()


def test_checkpoint_every_minutes_thins_the_saves(tmp_path):
    dataset = learnable_dataset(16)
    trainer_for(make_pair(), dataset, tmp_path / "thinned", max_steps=3, save_strategy="steps", save_steps=1,
                checkpoint_every_minutes=10).train()
    assert not list((tmp_path / "thinned").glob("checkpoint-*"))  # 3 steps take far less than 10 minutes
    trainer_for(make_pair(), dataset, tmp_path / "every", max_steps=3, save_strategy="steps", save_steps=1,
                checkpoint_every_minutes=0).train()
    assert sorted(p.name for p in (tmp_path / "every").glob("checkpoint-*")) == [
        "checkpoint-1", "checkpoint-2", "checkpoint-3"]


def test_checkpoint_every_minutes_rejects_negative_values():
    from trainers.training.checkpoints import TrainingError

    with pytest.raises(TrainingError, match="--checkpoint_every_minutes -1"):
        StepCoTDistillationConfig(output_dir="unused", checkpoint_every_minutes=-1)


@pytest.mark.slow
@pytest.mark.skipif(not offline_encoders_available(), reason="offline encoder packages not installed")
def test_finished_run_leaves_at_most_one_and_a_half_times_its_exports(tmp_path):
    from trainers.run_distill import main

    out = tmp_path / "run"
    before = _write_chars()
    assert main(["--output_dir", str(out), "--demo_size", "48", "--demo_image_size", "32", "--image_size", "32",
                 "--teacher_hidden_size", "16", "--student_hidden_size", "16", "--relation_dim", "16",
                 "--num_train_epochs", "2", "--teacher_pretrain_epochs", "1", "--per_device_train_batch_size", "8",
                 "--checkpoint_every_minutes", "0", "--num_bootstrap", "0", "--disable_tqdm", "true"]) == 0
    written = _write_chars() - before
    exports = _bytes(out / "teacher") + _bytes(out / "student")
    left = _bytes(out)
    assert not list(out.glob("checkpoint-*")) and not (out / "best").exists()
    assert left <= 1.5 * exports, (left, exports)
    # a checkpoint at every one of the 3 epochs, and still: every byte written at most 3x what is left
    assert written <= 3 * left, (written, left)
