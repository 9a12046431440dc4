"""Real pretrained encoders, offline: EfficientNet-Lite0 (ImageNet) + MiniLM (BERT family)."""

import pytest
import torch

from modeling_stepcot import StepCoTStudent, StepCoTTeacher
from trainers.training.offline_encoders import offline_encoders_available, offline_text_encoder_path

pytestmark = pytest.mark.skipif(not offline_encoders_available(), reason="offline encoder packages not installed")


def test_teacher_with_offline_pretrained_encoders(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    text_path = offline_text_encoder_path()
    model = StepCoTTeacher.from_pretrained_encoders(vision="efficientnet_lite0", text=text_path, hidden_size=64)
    assert model.config.text_config.hidden_size == 384 and model.config.vision_backbone == "efficientnet_lite0"
    assert model.question_attention_mask.sum() > 0  # questions tokenized with the real tokenizer
    assert all(not p.requires_grad for p in model.vision_encoder.parameters())
    assert all(not p.requires_grad for p in model.text_encoder.parameters())
    # Real weights, not random: the question embeddings of different questions differ but are related,
    # and the pretrained stem differs from a fresh initialisation.
    questions = torch.nn.functional.normalize(model.encode_questions(), dim=-1)
    similarity = questions @ questions.T
    assert torch.all(similarity.diagonal() > 0.999) and similarity.min() > 0.0
    fresh = StepCoTStudent.from_pretrained_encoders(vision=None, vision_backbone="efficientnet_lite0")
    stem = "vision_encoder.model._conv_stem.weight"
    assert not torch.allclose(model.state_dict()[stem], fresh.state_dict()[stem])
    out = model(pixel_values=torch.randn(2, 3, 224, 224))
    assert out.logits.shape == (2, 7, 9) and torch.isfinite(out.logits).all()


def test_imagenet_features_separate_structured_from_noise_images():
    """Pretrained features respond to image content: two renderings of one pattern are closer than noise."""
    model = StepCoTStudent.from_pretrained_encoders(vision="efficientnet_lite0").eval()
    grid = torch.linspace(-1, 1, 128)
    stripes = torch.sin(grid[None, :] * 20).expand(128, 128)
    pattern = stripes.expand(3, 128, 128)
    batch = torch.stack([pattern, pattern + 0.05 * torch.randn(3, 128, 128), torch.randn(3, 128, 128)])
    with torch.no_grad():
        features = torch.nn.functional.normalize(model.encode_images(batch), dim=-1)
    assert features[0] @ features[1] > features[0] @ features[2]


def test_clip_checkpoint_loads_only_the_vision_tower(tiny_clip_dir, monkeypatch):
    """The hub-loading path of `from_pretrained_encoders`, on a full CLIPModel checkpoint saved locally."""
    from safetensors.torch import load_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = StepCoTTeacher.from_pretrained_encoders(vision=str(tiny_clip_dir), text=offline_text_encoder_path(),
                                                    hidden_size=32)
    assert model.config.vision_backbone == "clip" and model.config.image_size == 32
    assert model.config.vision_encoder_name_or_path == str(tiny_clip_dir)
    saved = load_file(tiny_clip_dir / "model.safetensors")
    ours = model.vision_encoder.model.state_dict()
    for key, value in ours.items():
        assert torch.equal(value, saved[key]), key  # same names as CLIPModel: vision_model.*, visual_projection.*
    assert not any(k.startswith("text_model") for k in ours)  # no text tower
    assert model(pixel_values=torch.randn(2, 3, 32, 32)).logits.shape == (2, 7, 9)
