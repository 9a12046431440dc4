"""The image-feature cache: a second run reads the stored features; changed encoder weights or data never do."""

import torch
from tiny_models import tiny_student

from trainers.training.feature_cache import cached_image_embeds, encoder_fingerprint


def test_cache_hits_for_the_same_data_and_encoder_and_misses_otherwise(tmp_path):
    model = tiny_student().eval()
    batches = [torch.randn(3, 3, 32, 32), torch.randn(2, 3, 32, 32)]
    first, path, hit = cached_image_embeds(model, batches, "data-v1", tmp_path)
    assert not hit and (path / "shard-00000.safetensors").is_file() and first.shape == (5, 24)
    with torch.no_grad():
        assert torch.allclose(first[:3], model.encode_images(batches[0]), atol=1e-6)

    digest = encoder_fingerprint(model)
    again, same_path, hit = cached_image_embeds(model, [], "data-v1", tmp_path, encoder_digest=digest)
    assert hit and same_path == path and torch.equal(again, first)  # read back: no batch was encoded

    _, other_data_path, hit = cached_image_embeds(model, batches, "data-v2", tmp_path)
    assert not hit and other_data_path != path
    with torch.no_grad():
        weight = model.vision_encoder.model.visual_projection.weight
        weight.add_(0.1 * torch.randn_like(weight))  # not a uniform shift, which a LayerNorm would cancel
    changed, changed_path, hit = cached_image_embeds(model, batches, "data-v1", tmp_path)
    assert not hit and changed_path != path and not torch.allclose(changed, first)
