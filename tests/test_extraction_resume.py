"""Sharded, resumable extraction into the feature cache: an extraction killed midway resumes at its first missing
shard (the encoder sees only the rows of the missing shards) and the cache equals a one-shot extraction."""

import pytest
import torch
from datasets import load_dataset
from test_extraction import _processor
from tiny_models import tiny_teacher

from trainers.training.extraction import extract_image_embeds
from trainers.training.feature_cache import CachedEmbeds, cached_image_embeds, encoder_fingerprint


class Killed(Exception):
    pass


def _encoder(teacher, dataset, encoded: list, kill_at=None):
    """`encode_rows` for the cache: the real extraction of rows [start, stop), recording them; raises (a kill) at
    the shard starting at `kill_at`."""
    processor = _processor(teacher.config)

    def encode_rows(start, stop):
        if start == kill_at:
            raise Killed
        encoded.append((start, stop))
        return extract_image_embeds(teacher, dataset, processor, batch_size=4, num_workers=0, rows=range(start, stop))

    return encode_rows


def test_extraction_of_a_row_range_equals_those_rows_of_the_whole(hub_dataset):
    teacher = tiny_teacher().eval()
    dataset = load_dataset(str(hub_dataset))["train"].select(range(13))
    whole = extract_image_embeds(teacher, dataset, _processor(teacher.config), batch_size=4, num_workers=0)
    part = extract_image_embeds(teacher, dataset, _processor(teacher.config), batch_size=4, num_workers=0,
                                rows=range(5, 11))
    assert torch.allclose(part, whole[5:11], atol=1e-5)


def test_a_killed_extraction_resumes_at_its_first_missing_shard(hub_dataset, tmp_path):
    teacher = tiny_teacher().eval()
    dataset = load_dataset(str(hub_dataset))["train"].select(range(20))
    digest = encoder_fingerprint(teacher)
    one_shot = extract_image_embeds(teacher, dataset, _processor(teacher.config), batch_size=4, num_workers=0)

    encoded = []
    with pytest.raises(Killed):  # killed while encoding the third shard: two shards are on disk
        cached_image_embeds(teacher, None, "data", tmp_path, encoder_digest=digest, num_rows=20, shard_rows=6,
                            encode_rows=_encoder(teacher, dataset, encoded, kill_at=12))
    assert encoded == [(0, 6), (6, 12)]
    folder = next(tmp_path.glob("image_embeds-*"))
    assert sorted(path.name for path in folder.iterdir()) == ["shard-00000.safetensors", "shard-00001.safetensors"]

    encoded.clear()
    embeds, path, hit = cached_image_embeds(teacher, None, "data", tmp_path, encoder_digest=digest, num_rows=20,
                                            shard_rows=6, encode_rows=_encoder(teacher, dataset, encoded))
    assert not hit and path == folder and encoded == [(12, 18), (18, 20)]  # only the missing shards
    assert isinstance(embeds, CachedEmbeds) and embeds.shape == one_shot.shape
    assert torch.allclose(embeds.to_tensor(), one_shot, atol=1e-5)

    encoded.clear()
    again, _, hit = cached_image_embeds(teacher, None, "data", tmp_path, encoder_digest=digest, num_rows=20,
                                        shard_rows=6, encode_rows=_encoder(teacher, dataset, encoded))
    assert hit and encoded == [] and torch.equal(again.to_tensor(), embeds.to_tensor())
