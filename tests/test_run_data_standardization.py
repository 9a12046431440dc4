"""`--standardize_image_embeds`: the heads read the frozen embedding standardised with the training split's
statistics, fitted from the features each model trains on, stored in the exported model and used when it serves."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_student, tiny_teacher

from trainers.training.feature_cache import EmbeddingDataset
from trainers.training.run_data import fit_image_standardization


def test_each_model_is_fitted_to_its_own_training_features():
    teacher, student = tiny_teacher(standardize_image_embeds=True), tiny_student(standardize_image_embeds=True)
    width = teacher.vision_encoder.output_dim
    teacher_embeds, student_embeds = torch.randn(30, width) * 3 + 1, torch.randn(30, width) * 0.5 - 2
    train = EmbeddingDataset(teacher_embeds, torch.zeros(30, 7), student_embeds)
    fitted = fit_image_standardization({"teacher": teacher, "student": student}, None, {"train": train}, None, None,
                                       use_cache=True)
    assert fitted == ["teacher", "student"]
    assert torch.allclose(teacher.image_embed_mean, teacher_embeds.mean(0), atol=1e-5)
    assert torch.allclose(student.image_embed_mean, student_embeds.mean(0), atol=1e-5)
    assert torch.allclose(student.image_embed_scale, student_embeds.std(0, unbiased=False), atol=1e-4)

    shared = EmbeddingDataset(teacher_embeds, torch.zeros(30, 7))  # one encoder: the student reads the teacher's
    saved = tiny_student(standardize_image_embeds=True)
    before = saved.image_embed_mean.clone()
    assert fit_image_standardization({"student": saved}, None, {"train": shared}, None, None, use_cache=True,
                                     fresh_roles=()) == []  # a model read from a folder keeps its own statistics
    assert torch.equal(saved.image_embed_mean, before)
    fit_image_standardization({"student": saved}, None, {"train": shared}, None, None, use_cache=True)
    assert torch.allclose(saved.image_embed_mean, teacher_embeds.mean(0), atol=1e-5)


@pytest.mark.slow
def test_a_standardised_run_exports_models_that_serve_what_they_trained_on(tmp_path):
    from transformers import AutoModel

    from dataset_script.importers import import_folders
    from modeling_stepcot.pipeline_stepcot import StepCoTVQAPipeline
    from trainers.run_distill import main

    rng = np.random.default_rng(0)
    for label_index, label in enumerate(("NORMAL", "PNEUMONIA")):
        (tmp_path / "folders" / label).mkdir(parents=True)
        for patient in range(12):
            pixels = rng.integers(0, 120, (40, 40)) + 80 * label_index
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "folders" / label / f"person{patient}_0.png")
    import_folders(tmp_path / "folders", tmp_path / "release")
    out = tmp_path / "run"
    assert main(["--dataset", str(tmp_path / "release"), "--output_dir", str(out), "--image_size", "32",
                 "--teacher_hidden_size", "16", "--student_hidden_size", "16", "--relation_dim", "8",
                 "--num_train_epochs", "1", "--teacher_pretrain_epochs", "0", "--save_strategy", "no",
                 "--num_bootstrap", "0", "--disable_tqdm", "true", "--standardize_image_embeds", "true"]) == 0
    assert json.loads((out / "results.json").read_text())["run_args"]["model"]["standardize_image_embeds"] is True
    image = next((tmp_path / "release").rglob("*.png"))
    for role in ("teacher", "student"):
        model = AutoModel.from_pretrained(out / role).eval()
        assert model.config.standardize_image_embeds
        assert model.image_embed_mean.abs().sum() > 0 and not torch.allclose(model.image_embed_scale,
                                                                              torch.ones_like(model.image_embed_scale))
        answer = StepCoTVQAPipeline(model=model, device="cpu")(str(image))
        processor_pixels = StepCoTVQAPipeline(model=model, device="cpu").preprocess(str(image))["pixel_values"]
        with torch.no_grad():
            logits = model(pixel_values=processor_pixels).step_logits[-1][0]
        temperature = model.config.calibration["temperatures"][-1]
        probabilities = torch.softmax(logits.double() / temperature, -1)
        assert answer["refused"] is None, answer["refused"]
        served = answer["steps"][-1]["probabilities"]
        assert np.allclose(sorted(served.values()), sorted(probabilities.tolist()), atol=1e-5)
