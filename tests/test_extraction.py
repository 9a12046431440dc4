"""Feature extraction for the cache: tensor preprocessing in DataLoader workers and a channels_last encoder give the
features of the processor + encoder path; shards cover every row once, in order; under `torchrun` (2 processes,
gloo) the sharded cache equals the single-process one."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import load_dataset
from PIL import Image
from tiny_models import tiny_teacher

from modeling_stepcot.processing_stepcot import image_processor_for_config, image_to_rgb
from trainers.training.extraction import extract_image_embeds, pixel_values_from_images, shard_bounds

REPO_ROOT = Path(__file__).resolve().parents[1]


def _processor(config):
    return SimpleNamespace(image_processor=image_processor_for_config(config), image_size=int(config.image_size))


def _reference_pixels(processor, images):
    rgb = [image_to_rgb(image, processor.image_size) for image in images]
    return processor.image_processor(rgb, return_tensors="pt")["pixel_values"]


def test_tensor_preprocessing_matches_the_image_processor():
    processor = _processor(tiny_teacher().config)  # 32 px
    mean, std = processor.image_processor.image_mean, processor.image_processor.image_std
    rng = np.random.default_rng(0)
    native = [Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))]
    assert torch.allclose(pixel_values_from_images(native, 32, mean, std), _reference_pixels(processor, native),
                          atol=1e-6)  # already at size: the same pixels
    smooth = np.clip(np.add.outer(np.arange(80), np.arange(96)) * 1.4 + rng.normal(0, 3, (80, 96)), 0, 255)
    resized = [Image.fromarray(smooth.astype(np.uint8))]
    difference = pixel_values_from_images(resized, 32, mean, std) - _reference_pixels(processor, resized)
    one_grey_level = 1 / 255 / min(std)
    assert difference.abs().mean() < 0.5 * one_grey_level and difference.abs().max() <= 2.01 * one_grey_level


def test_shards_cover_every_row_once_in_rank_order():
    for rows in (0, 1, 7, 60):
        for world in (1, 2, 3, 8):
            bounds = [shard_bounds(rows, rank, world) for rank in range(world)]
            assert [r for start, stop in bounds for r in range(start, stop)] == list(range(rows))


def test_extraction_equals_the_processor_and_encoder_path(hub_dataset):
    teacher = tiny_teacher().eval()
    processor = _processor(teacher.config)
    dataset = load_dataset(str(hub_dataset))["train"].select(range(20))  # 64 px images: resized to 32
    with torch.no_grad():
        reference = torch.cat([teacher.encode_images(_reference_pixels(processor, dataset[i:i + 8]["image"]))
                               for i in range(0, 20, 8)])
    for workers in (0, 1):
        embeds = extract_image_embeds(teacher, dataset, processor, batch_size=8, num_workers=workers)
        assert embeds.shape == reference.shape
        assert torch.allclose(embeds, reference, atol=2e-2, rtol=0)  # resize within one grey level of PIL's
        assert torch.nn.functional.cosine_similarity(embeds, reference).min() > 0.999
    assert all(p.is_contiguous() for p in teacher.parameters())  # the model is handed back in its usual layout


SHARDED_SCRIPT = """
import sys, torch
from datasets import load_dataset
from safetensors.torch import save_file
sys.path.insert(0, sys.argv[3])
sys.path.insert(0, sys.argv[3] + "/tests")
from test_extraction import _processor
from tiny_models import tiny_teacher
from trainers.training.extraction import extract_image_embeds
if len(sys.argv) > 4:
    torch.distributed.init_process_group("gloo")
teacher = tiny_teacher().eval()
dataset = load_dataset(sys.argv[1])["train"]
embeds = extract_image_embeds(teacher, dataset, _processor(teacher.config), batch_size=8, num_workers=0)
if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
    save_file({"embeds": embeds}, sys.argv[2])
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.usefixtures("one_multiprocess_launch_at_a_time")
def test_sharded_extraction_under_torchrun_equals_one_process(hub_dataset, tmp_path):
    from safetensors.torch import load_file

    script = tmp_path / "extract.py"
    script.write_text(SHARDED_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    single = [sys.executable, str(script), str(hub_dataset), str(tmp_path / "one.safetensors"), str(REPO_ROOT)]
    sharded = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
               str(script), str(hub_dataset), str(tmp_path / "two.safetensors"), str(REPO_ROOT), "ddp"]
    for command in (single, sharded):
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = load_file(tmp_path / "one.safetensors")["embeds"], load_file(tmp_path / "two.safetensors")["embeds"]
    assert one.shape == two.shape and one.shape[0] == len(load_dataset(str(hub_dataset))["train"])
    assert torch.allclose(one, two, atol=1e-5, rtol=0)  # same rows in the same order (batches differ at the seam)
