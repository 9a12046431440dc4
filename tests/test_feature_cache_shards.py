"""Cache shards are verified on read: a truncated or corrupt shard is re-made (one warning line naming it), a shard
of another cache (other encoder weights, other rows) is never read, and only the bad shard is encoded again."""

import shutil

import torch
from tiny_models import tiny_student

from trainers.training.feature_cache import cached_image_embeds, encoder_fingerprint

PIXELS = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _cache(model, tmp_path, encoded, **kwargs):
    @torch.no_grad()
    def encode_rows(start, stop):
        encoded.append((start, stop))
        return model.encode_images(PIXELS[start:stop])

    return cached_image_embeds(model, None, "data", tmp_path, num_rows=10, shard_rows=4, encode_rows=encode_rows,
                               **kwargs)


def _warnings(caplog):
    return [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]


def test_a_truncated_or_corrupt_shard_is_re_made_alone(tmp_path, caplog):
    model = tiny_student().eval()
    encoded = []
    first, folder, _ = _cache(model, tmp_path, encoded)
    assert encoded == [(0, 4), (4, 8), (8, 10)]
    first = first.to_tensor()
    truncated, corrupt = folder / "shard-00001.safetensors", folder / "shard-00002.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:-7])
    data = bytearray(corrupt.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte in the values: the recorded digest no longer matches
    corrupt.write_bytes(bytes(data))

    encoded.clear()
    with caplog.at_level("WARNING"):
        again, _, hit = _cache(model, tmp_path, encoded)
    assert not hit and encoded == [(4, 8), (8, 10)] and torch.allclose(again.to_tensor(), first, atol=1e-6)
    messages = _warnings(caplog)
    assert len(messages) == 2 and all("\n" not in message for message in messages)
    assert str(truncated) in messages[0] and "truncated" in messages[0]
    assert str(corrupt) in messages[1] and "differ from what was written" in messages[1]
    encoded.clear()
    assert _cache(model, tmp_path, encoded)[2] and encoded == []


def test_a_shard_of_another_encoder_is_never_read(tmp_path, caplog):
    model, other = tiny_student().eval(), tiny_student().eval()
    with torch.no_grad():
        weight = other.vision_encoder.model.visual_projection.weight
        weight.add_(0.1 * torch.randn_like(weight))
    digest = encoder_fingerprint(model)
    own, folder, _ = _cache(model, tmp_path, [], encoder_digest=digest)
    _, other_folder, _ = _cache(other, tmp_path, [])
    assert other_folder != folder
    shutil.copy(other_folder / "shard-00000.safetensors", folder / "shard-00000.safetensors")  # a stray file

    encoded = []
    with caplog.at_level("WARNING"):
        again, _, hit = _cache(model, tmp_path, encoded, encoder_digest=digest)
    assert not hit and encoded == [(0, 4)]
    assert torch.allclose(again.to_tensor(), own.to_tensor(), atol=1e-6)
    assert any("belongs to another cache" in message and "encoder" in message for message in _warnings(caplog))


def test_a_shard_of_other_rows_is_never_read(tmp_path, caplog):
    model = tiny_student().eval()
    own, folder, _ = _cache(model, tmp_path, [])
    shutil.copy(folder / "shard-00000.safetensors", folder / "shard-00001.safetensors")  # rows 0:4 named 4:8
    encoded = []
    with caplog.at_level("WARNING"):
        again, _, hit = _cache(model, tmp_path, encoded)
    assert not hit and encoded == [(4, 8)] and torch.equal(again.to_tensor(), own.to_tensor())
    assert any("rows" in message for message in _warnings(caplog))
