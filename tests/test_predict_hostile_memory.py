"""Hostile inputs, memory: `stepcot predict FOLDER --maps` streams, so memory stays flat over a folder of large
radiographs (keeping every full-resolution map would take 7 steps x 4 bytes per pixel, ~1.8 GB per 8000^2 image)."""

import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import tiny_student  # noqa: E402

SIDE = 1200  # 1.44 megapixels: full-size maps are 40 MB per image, the figures' maps (512 px) 7 MB
MB = 2**20


@pytest.fixture(scope="module")
def large_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("large")
    gradient = np.add.outer(np.arange(SIDE), np.arange(SIDE)) % 256  # compresses well: quick to write and read
    paths = []
    for index in range(3):
        path = folder / f"xray{index}.png"
        Image.fromarray(((gradient + 40 * index) % 256).astype(np.uint8)).save(path, compress_level=1)
        paths.append(path)
    return paths


def _peak_bytes(function) -> int:
    """Peak of the memory Python and numpy allocate while `function` runs (tracemalloc sees numpy's arrays)."""
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow  # ~15 s of CPU: 1 + 3 1.4-megapixel images drawn under tracemalloc
def test_predict_maps_memory_is_flat_over_a_folder_of_large_images(large_images, tmp_path):
    from trainers.inference.predict import build_pipeline, predict_images

    pipe = build_pipeline(tiny_student())
    # batch size 1: memory must not grow with the number of images (a batch's figure-size maps are held together).
    # Kept full-size maps would add 40 MB per image, uncollected figures ~10 MB: three images may not add 8 MB.
    predict_images(pipe, large_images[:1], tmp_path / "warm-up", batch_size=1)  # first-use caches (fonts) apart
    one = _peak_bytes(lambda: predict_images(pipe, large_images[:1], tmp_path / "one", batch_size=1))
    three = _peak_bytes(lambda: predict_images(pipe, large_images, tmp_path / "three", batch_size=1))
    assert three < one + 8 * MB, (one / MB, three / MB)  # flat: no growth per image
    assert len(list((tmp_path / "three").rglob("summary.png"))) == 3
    drawn = Image.open(next((tmp_path / "three").rglob("step1_*.png")))
    assert max(drawn.size) <= 700  # the figures are drawn at the figure size, as before


def test_pipeline_makes_maps_at_the_requested_size_only(large_images):
    from trainers.inference.predict import build_pipeline

    pipe = build_pipeline(tiny_student())
    result = pipe(str(large_images[0]), maps=True, maps_max_side=512)
    assert result["maps"].shape == (7, 512, 512) and result["image_size"] == (SIDE, SIDE)
    assert pipe(np.zeros((300, 100), dtype=np.uint8), maps=True, maps_max_side=512)["maps"].shape == (7, 300, 100)
    with pytest.raises(ValueError, match="maps_max_side"):
        pipe(str(large_images[0]), maps=True, maps_max_side=0)
