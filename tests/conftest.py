"""Shared pytest fixtures (keep this small and generic; module-specific helpers live in their test files)."""

import fcntl
import os
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared/data next to the checkout (CI); STEPCOT_SHARED_DATA points elsewhere (e.g. from a git worktree)
SHARED_DATA = Path(os.environ.get("STEPCOT_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Parallel run (`-n auto`): one worker per core, so each worker and the processes it starts compute on one
    # thread; torch's default (a thread per core in every worker) oversubscribes the cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory):
    """24 synthetic records, 32 px images, with train/val/test split files; use `release` to get a copy to change."""
    from dataset_script.synthetic import write_demo_release

    folder = tmp_path_factory.mktemp("tiny_release")
    write_demo_release(folder, n=24, seed=0, image_size=32)
    return folder


@pytest.fixture
def one_multiprocess_launch_at_a_time(tmp_path_factory):
    """Held by tests that start several cooperating processes (torchrun, gloo): under `-n auto` two such launches
    at once would oversubscribe the cores and share the loopback rendezvous; the lock file is common to all
    workers (their temporary folders share a parent)."""
    with open(tmp_path_factory.getbasetemp().parent / "multiprocess-launch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture
def release(tiny_release, tmp_path):
    """A private copy of `tiny_release` that a test may change."""
    folder = tmp_path / "release"
    shutil.copytree(tiny_release, folder)
    return folder


@pytest.fixture(scope="session")
def demo_release_dir(tmp_path_factory):
    """A small synthetic Step-CoT release (60 records, 64 px) in the release layout; read-only for tests:
    copy it (`shutil.copytree`) before changing anything."""
    from dataset_script.synthetic import write_demo_release

    folder = tmp_path_factory.mktemp("demo_release")
    write_demo_release(folder, n=60, seed=0, image_size=64)
    return folder


@pytest.fixture(scope="session")
def hub_dataset(demo_release_dir, tmp_path_factory):
    """The small demo release built into the Hub layout (`load_dataset(hub_dataset)` works); read-only."""
    from dataset_script.parquet_export import build_hub_dataset

    folder = tmp_path_factory.mktemp("demo_hub")
    build_hub_dataset(demo_release_dir, folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A saved random tiny CLIPModel (32 px) with tokenizer and image processor, loadable like a Hub checkpoint."""
    from tiny_models import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture
def shared_data_dir():
    """`../shared/data` (real images for tests); skips when this checkout has no `../shared` next to it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (a fresh clone has no ../shared)")
    return SHARED_DATA


@pytest.fixture
def xray_png(tmp_path):
    """A small random 8-bit grayscale PNG (40 x 40), as a path."""
    import numpy as np
    from PIL import Image

    path = tmp_path / "xray.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)).save(path)
    return path
