"""Cached features are read on demand, row by row or batch by batch, never loaded whole: indexing equals the
written tensor, the file is never modified, resident memory stays bounded over a pass through every row, and the
dataset's batched fetch equals its row fetch."""

import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import default_data_collator

from trainers.training.feature_cache import CachedEmbeds, EmbeddingDataset, cached_image_embeds

MODEL = SimpleNamespace(config=SimpleNamespace(vision_backbone="synthetic"))


def _rows(start, stop, width=16):
    return torch.randn(stop - start, width, generator=torch.Generator().manual_seed(start))


def _cache(tmp_path, num_rows, width=16, shard_rows=64):
    embeds, folder, _ = cached_image_embeds(MODEL, None, "data", tmp_path, encoder_digest="enc", num_rows=num_rows,
                                            shard_rows=shard_rows,
                                            encode_rows=lambda start, stop: _rows(start, stop, width))
    return embeds, folder


def test_indexing_equals_the_written_tensor_and_never_writes(tmp_path):
    embeds, folder = _cache(tmp_path, 150)
    whole = torch.cat([_rows(start, min(start + 64, 150)) for start in range(0, 150, 64)])
    before = {path: path.read_bytes() for path in folder.iterdir()}
    assert isinstance(embeds, CachedEmbeds) and embeds.shape == (150, 16) and len(embeds) == 150
    assert torch.equal(embeds[70], whole[70]) and torch.equal(embeds[-1], whole[-1])
    assert torch.equal(embeds[60:130], whole[60:130]) and torch.equal(embeds[::7], whole[::7])
    picks = [149, 0, 64, 63, 128, 5, 5]
    assert torch.equal(embeds[picks], whole[picks]) and torch.equal(embeds[torch.tensor(picks)], whole[picks])
    assert torch.equal(embeds, whole) and torch.equal(torch.cat([embeds, embeds]), torch.cat([whole, whole]))
    row = embeds[3]
    row.add_(1.0)  # a copy: the cache does not change
    assert torch.equal(embeds[3], whole[3])
    with pytest.raises(IndexError):
        embeds[150]
    with pytest.raises(IndexError):
        embeds[[0, 150]]
    assert torch.equal(pickle.loads(pickle.dumps(embeds))[[3, 100]], whole[[3, 100]])  # spawned workers
    assert {path: path.read_bytes() for path in folder.iterdir()} == before


def test_the_batched_fetch_equals_the_row_fetch(tmp_path):
    embeds, _ = _cache(tmp_path, 150)
    labels = torch.randint(0, 3, (150, 7), generator=torch.Generator().manual_seed(1))
    lazy = EmbeddingDataset(embeds, labels, student_image_embeds=embeds)
    eager = EmbeddingDataset(embeds.to_tensor(), labels, student_image_embeds=embeds.to_tensor())
    indices = [5, 149, 64, 0]
    assert all(torch.equal(row[key], eager[index][key])
               for row, index in zip(lazy.__getitems__(indices), indices) for key in row)
    loaded = DataLoader(lazy, batch_size=32, shuffle=False, collate_fn=default_data_collator)
    reference = DataLoader(eager, batch_size=32, shuffle=False, collate_fn=default_data_collator)
    for batch, expected in zip(loaded, reference, strict=True):
        assert batch.keys() == expected.keys() and all(torch.equal(batch[key], expected[key]) for key in batch)


def _resident_kib() -> dict:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) for key in ("RssAnon", "RssFile")}


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc/self/status")
def test_a_pass_over_every_row_keeps_resident_memory_bounded(tmp_path):
    embeds, _ = _cache(tmp_path, 40_000, width=512, shard_rows=8192)  # 80 MiB of float32 features
    order = torch.randperm(len(embeds), generator=torch.Generator().manual_seed(0))
    start = _resident_kib()
    peak = dict(start)
    for batch in order.split(256):
        assert embeds[batch].shape == (len(batch), 512)
        peak = {key: max(value, _resident_kib()[key]) for key, value in peak.items()}
    grown_mib = {key: (peak[key] - start[key]) / 1024 for key in peak}
    assert grown_mib["RssAnon"] < 8 and grown_mib["RssFile"] < 8, grown_mib  # not the 80 MiB of the cache


def test_the_whole_cache_reads_as_a_tensor_and_as_an_array(tmp_path):
    embeds, _ = _cache(tmp_path, 150)
    whole = torch.cat([_rows(start, min(start + 64, 150)) for start in range(0, 150, 64)])
    assert torch.equal(embeds.to_tensor(), whole)
    assert (embeds.numpy() == whole.numpy()).all()  # the probe and OOD statistics fit on `.numpy()` of it
