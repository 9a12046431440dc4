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


RESUME_SCRIPT = """
import json, sys, torch
sys.path.insert(0, sys.argv[3])
sys.path.insert(0, sys.argv[3] + "/tests")
from datasets import load_dataset
from test_extraction_resume import Killed, _encoder
from tiny_models import tiny_teacher
from trainers.training.feature_cache import cached_image_embeds
torch.distributed.init_process_group("gloo")
teacher = tiny_teacher().eval()
dataset = load_dataset(sys.argv[1])["train"].select(range(20))
encoded = []
kill_at = 12 if sys.argv[4] == "kill" else None
try:
    embeds, _, hit = cached_image_embeds(teacher, None, "data", sys.argv[2], num_rows=20, shard_rows=6,
                                         encode_rows=_encoder(teacher, dataset, encoded, kill_at=kill_at))
    torch.save(embeds.to_tensor(), f"{sys.argv[2]}/rank{torch.distributed.get_rank()}.pt")
except Killed:
    pass
print(json.dumps(encoded))
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.usefixtures("one_multiprocess_launch_at_a_time")
def test_a_killed_two_rank_extraction_resumes_at_its_first_missing_shard(hub_dataset, tmp_path):
    import os
    import subprocess
    import sys

    from test_extraction import REPO_ROOT

    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    for mode in ("kill", "resume"):
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29543",
                   str(script), str(hub_dataset), str(tmp_path), str(REPO_ROOT), mode]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    folder = next(tmp_path.glob("image_embeds-*"))
    assert len(list(folder.glob("shard-*.safetensors"))) == 4
    assert "[[12, 18], [18, 20]]" in result.stdout  # the resumed ranks encoded only the missing shards
    teacher = tiny_teacher().eval()
    dataset = load_dataset(str(hub_dataset))["train"].select(range(20))
    one_shot = extract_image_embeds(teacher, dataset, _processor(teacher.config), batch_size=4, num_workers=0)
    for rank in (0, 1):
        assert torch.allclose(torch.load(tmp_path / f"rank{rank}.pt"), one_shot, atol=1e-5)
