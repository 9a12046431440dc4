"""`--teacher_schedule plateau`: the reference's separate teacher stage (ReduceLROnPlateau factor 0.5 patience 2,
early stopping patience 3, at most 10 epochs, the lowest validation loss kept)."""

import pytest
import torch
from test_distillation import learnable_dataset, make_pair
from transformers import Trainer

from trainers.training.checkpoints import TrainingError
from trainers.training.distillation_config import StepCoTDistillationConfig
from trainers.training.feature_cache import EmbeddingDataset
from trainers.training.teacher_stage import MAX_EPOCHS, train_teacher_stage


def _validation_loss(teacher, dataset, tmp_path):
    args = StepCoTDistillationConfig(output_dir=str(tmp_path / "eval"), use_cpu=True, report_to="none",
                                     disable_tqdm=True)
    return Trainer(model=teacher, args=args, eval_dataset=dataset).evaluate(metric_key_prefix="eval")["eval_loss"]


@pytest.mark.slow
def test_plateau_stage_stops_early_and_keeps_the_lowest_validation_loss(tmp_path):
    pair = make_pair()
    teacher = pair.teacher
    before = {n: p.detach().clone() for n, p in teacher.named_parameters() if p.requires_grad}
    train = learnable_dataset(48, seed=0)
    noise = learnable_dataset(24, seed=1)  # unlearnable validation labels: the validation loss stops improving
    generator = torch.Generator().manual_seed(3)
    order = torch.randperm(len(noise), generator=generator)
    shuffled = EmbeddingDataset(noise.image_embeds, noise.labels[order])
    args = StepCoTDistillationConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, use_cpu=True,
                                     disable_tqdm=True, seed=0, data_seed=0, relation_dim=16,
                                     teacher_learning_rate=3e-3, logging_steps=1)
    record = train_teacher_stage(teacher, args, train, shuffled)
    assert record["schedule"] == "plateau" and record["max_epochs"] == MAX_EPOCHS
    assert 1 <= record["epochs_run"] < MAX_EPOCHS  # early stopping fired
    assert record["epochs_run"] <= record["best_epoch"] + 3  # patience 3 after the best epoch
    assert record["last_learning_rate"] in (1.5e-3, 7.5e-4)  # halved on the plateau (patience 2)
    assert any(not torch.equal(before[n], p) for n, p in teacher.named_parameters() if p.requires_grad)
    # the teacher left in place is the lowest-validation-loss epoch's
    assert abs(_validation_loss(teacher, shuffled, tmp_path) - record["best_validation_loss"]) < 1e-4
    assert not (tmp_path / "run" / "teacher_stage").exists()


def test_teacher_schedule_is_checked_and_part_of_the_recipe():
    with pytest.raises(TrainingError, match="--teacher_schedule cosine"):
        StepCoTDistillationConfig(output_dir="unused", teacher_schedule="cosine")
    assert StepCoTDistillationConfig(output_dir="unused").distillation_values()["teacher_schedule"] == "joint"
