"""Stepwise Grad-CAM maps (`modeling_stepcot/gradcam_stepcot.py`): shape and range, the requested answer, and — on the
synthetic demo, where the lesion's pixels are known — that a briefly trained model's maps concentrate on the rendered
lesion."""

from contextlib import contextmanager
from unittest import mock

import numpy as np
import pytest
import torch
from tiny_models import tiny_student, tiny_teacher
from transformers import pipeline

import modeling_stepcot  # noqa: F401  (registers the task)
from modeling_stepcot.configuration_stepcot import DEFAULT_STEP_NAMES, DEFAULT_STEP_OPTIONS
from modeling_stepcot.gradcam_stepcot import stepwise_grad_cam, upsample_maps
from modeling_stepcot.pipeline_stepcot import TASK
from trainers.training.offline_encoders import offline_encoders_available

# Diagnoses whose finding is drawn as a parenchymal lesion by the demo renderer (`_draw_lesions`); effusion,
# pneumothorax and cardiomegaly change the pleura/heart instead, and Normal has nothing to find.
PARENCHYMAL = ("Nodule", "Mass", "Pneumonia", "Infiltration", "Atelectasis")
LESION_DENSITY_THRESHOLD = 0.05  # added density (0-1 scale) above which a pixel belongs to the lesion


@pytest.mark.parametrize("factory", [tiny_student, tiny_teacher])
def test_maps_have_the_image_shape_and_unit_range(factory, tmp_path):
    factory(seed=0).save_pretrained(tmp_path)
    vqa = pipeline(TASK, model=str(tmp_path), device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (70, 52), dtype=np.uint8)
    result = vqa(image, maps=True)
    maps = result["maps"]
    assert maps.shape == (7, 70, 52) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert (maps.reshape(7, -1).max(1) > 0.5).sum() >= 5  # normalised per step (a map may be all zero)
    # The maps explain exactly the predictions the pipeline reports (same forward pass).
    plain = vqa(image)
    assert [s["label"] for s in plain["steps"]] == [s["label"] for s in result["steps"]]


def test_grad_cam_targets_the_requested_answer():
    model = tiny_student(seed=1).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    logits, predicted_maps = stepwise_grad_cam(model, pixel_values)
    predicted = torch.stack([step.argmax(-1) for step in logits], 1)
    other = (predicted + 1) % torch.tensor(model.config.num_classes_per_step)
    _, same = stepwise_grad_cam(model, pixel_values, target_labels=predicted)
    _, different = stepwise_grad_cam(model, pixel_values, target_labels=other)
    torch.testing.assert_close(predicted_maps, same)
    assert not torch.allclose(predicted_maps, different)
    assert all(p.requires_grad is False for p in model.vision_encoder.parameters())  # encoder stays frozen


# ---------------------------------------------------------------------------------------------------------------
# Localisation on the synthetic demo


@contextmanager
def capture_lesions():
    """Record the lesion density image that the demo renderer adds (its `_draw_lesions` output)."""
    import dataset_script.synthetic as synthetic

    captured = {}
    original = synthetic._draw_lesions

    def recording(*args, **kwargs):
        captured["density"] = original(*args, **kwargs)
        return captured["density"]

    with mock.patch.object(synthetic, "_draw_lesions", recording):
        yield captured


def render(diagnoses, size, first_index):
    from dataset_script.synthetic import make_demo_example

    images, labels, masks = [], [], []
    with capture_lesions() as captured:
        for offset, diagnosis in enumerate(diagnoses):
            captured.clear()
            record, image = make_demo_example(first_index + offset, 0, size, f"p{offset}", diagnosis)
            answers = [step["answer"] for step in record["vqa_chain"]]
            labels.append([options.index(a) for options, a in zip(DEFAULT_STEP_OPTIONS, answers)])
            images.append(image)
            density = captured.get("density")
            masks.append(None if density is None else density > LESION_DENSITY_THRESHOLD)
    return images, torch.tensor(labels), masks


def inside_outside_ratio(saliency, mask):
    """Mean saliency inside the lesion over mean saliency outside it (1 = no preference)."""
    return float(saliency[mask].mean() / max(saliency[~mask].mean(), 1e-9))


@pytest.mark.slow
@pytest.mark.skipif(not offline_encoders_available(), reason="needs the offline EfficientNet-Lite0 package")
def test_trained_model_maps_concentrate_on_the_rendered_lesion():
    """A student (frozen ImageNet EfficientNet-Lite0 + heads trained on cached pooled features for a few seconds)
    explains its pattern and diagnosis answers with maps that are denser inside the lesion than outside.
    The baseline pairs each map with another image's lesion mask: lesions always lie in the lungs, so a map that
    merely highlights the lungs would score as well there."""
    from dataset_script.synthetic import DIAGNOSIS_PRIOR
    from modeling_stepcot import StepCoTStudent
    from modeling_stepcot.backbones_stepcot import StepCoTEfficientNetEncoder

    size, train_count, test_count = 160, 128, 24
    rng = np.random.default_rng(0)
    names = list(DIAGNOSIS_PRIOR)
    train_diagnoses = [names[i] for i in rng.choice(len(names), train_count, p=list(DIAGNOSIS_PRIOR.values()))]
    test_diagnoses = [PARENCHYMAL[i % len(PARENCHYMAL)] for i in range(test_count)]
    train_images, train_labels, _ = render(train_diagnoses, size, first_index=0)
    test_images, _, test_masks = render(test_diagnoses, size, first_index=10_000)
    assert all(mask is not None and mask.any() for mask in test_masks)

    encoder = StepCoTEfficientNetEncoder
    mean, std = (torch.tensor(v)[:, None, None] for v in (encoder.image_mean, encoder.image_std))

    def pixels(images):  # the processor's resize is a no-op at this size: normalise only
        array = torch.from_numpy(np.stack(images)).float().div(255)[:, None].expand(-1, 3, -1, -1)
        return (array - mean) / std

    def trained_maps(seed):
        torch.manual_seed(seed)
        model = StepCoTStudent.from_pretrained_encoders(vision="efficientnet_lite0", hidden_size=128, image_size=size)
        with torch.no_grad():
            embeds = torch.cat([model.encode_images(pixels(train_images[i:i + 64]))
                                for i in range(0, train_count, 64)])
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
        for _ in range(40):
            for batch in torch.randperm(train_count).split(32):
                loss = model(image_embeds=embeds[batch], labels=train_labels[batch]).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model.eval()
        _, maps = stepwise_grad_cam(model, pixels(test_images))
        return np.stack([upsample_maps(step_maps, (size, size)) for step_maps in maps])  # (N, 7, H, W)

    # Three training seeds pooled: with 128 training images one seed's heads vary enough to move the figures by
    # 20 points, so a single seed measures the initialisation as much as the maps.
    saliencies = [trained_maps(seed) for seed in (0, 1, 2)]
    shuffled = test_masks[1:] + test_masks[:1]
    summary = {}
    for step_name in ("Radiographic pattern", "Anatomical location", "Diagnosis"):
        step = DEFAULT_STEP_NAMES.index(step_name)
        ratios = np.array([inside_outside_ratio(s[step], m) for saliency in saliencies
                           for s, m in zip(saliency, test_masks)])
        baseline = np.array([inside_outside_ratio(s[step], m) for saliency in saliencies
                             for s, m in zip(saliency, shuffled)])
        summary[step_name] = (ratios, np.median(baseline))
        print(f"{step_name}: inside/outside median {np.median(ratios):.2f} (>1 on {np.mean(ratios > 1):.0%}), "
              f"with another image's lesion {np.median(baseline):.2f}")
    # Measured (seeds 0-2 pooled, 72 maps): pattern 2.1 (>1 on 68%), diagnosis 1.8 (68%), baselines 0.65-0.94. Small
    # nodules (<1% of the image, below one 32 px grid cell) and reticular infiltration are the misses; location is
    # weaker and is reported, not asserted. A map unrelated to the lesion scores about 1 (>1 on about half).
    for step_name in ("Radiographic pattern", "Diagnosis"):
        ratios, baseline = summary[step_name]
        assert np.mean(ratios > 1) >= 0.6, (step_name, ratios.round(2))
        assert np.median(ratios) >= 1.5, (step_name, ratios.round(2))
        assert np.median(ratios) >= 1.5 * baseline, (step_name, baseline)
