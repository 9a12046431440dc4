"""One source resolver: what `--dataset` names -> a `datasets.DatasetDict`, the same way for `stepcot train`,
`train-teacher`, `eval`, the baselines and the ablation bench.

    "demo"              the synthetic release, rendered into WORK/demo-release (re-rendered when its size, image
                        size or seed differ), then built like a release folder
    a release folder    (data.json or data.jsonl) validated and built into WORK/dataset; the build is reused only
                        when WORK/dataset/build_info.json says it was made from this release, unchanged, with the same
                        mode (strict / lenient), seed and schema; otherwise it is rebuilt (atomically)
    a built folder      (a dataset card or Parquet files, e.g. `stepcot data build` output) loaded as it is
    a Hub id            a raw release on the Hub (data.json + image archives, e.g. fl-15o/Step-CoT) is downloaded at
                        a pinned commit, unpacked and built once into $HF_HOME/stepcot/hub-releases (reused for that
                        commit, offline too: `dataset_script.release_download`); any other Hub id goes to
                        `load_dataset(id)`

WORK is the command's own folder (`stepcot train --output_dir`, the bench's OUT/data) or, for commands that have
none (`stepcot eval`, baselines), a per-release folder under `$STEPCOT_CACHE` (default ~/.cache/stepcot/builds).

A built folder's shard names carry their content digest (`dataset_script.parquet_export`), so `load_dataset`'s
cache never serves an earlier build's rows; folders built before that naming are re-read from their Parquet files
every time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from pathlib import Path

from dataset_script.parquet_export import build_hub_dataset, build_settings, read_build_info
from dataset_script.records import StepCoTDataError
from dataset_script.release_download import prepare_hub_dataset
from dataset_script.synthetic import demo_release_matches, write_demo_release

logger = logging.getLogger(__name__)

DEMO = "demo"
CONTENT_NAMED_SHARD = re.compile(r".+-[0-9a-f]{16}\.parquet")


def is_release_folder(path) -> bool:
    path = Path(path)
    return (path / "data.json").is_file() or (path / "data.jsonl").is_file()


def is_built_folder(path) -> bool:
    """A folder `load_dataset` reads: a dataset card, or Parquet files at the top or one level down."""
    path = Path(path)
    return (path / "README.md").is_file() or any(path.glob("*.parquet")) or any(path.glob("*/*.parquet"))


def source_kind(source: str) -> str:
    """"demo", "release", "built" or "hub"; a local path that is none of these is a `StepCoTDataError`."""
    if source == DEMO:
        return "demo"
    path = Path(source).expanduser()
    if path.exists():
        if is_release_folder(path):
            return "release"
        if is_built_folder(path):
            return "built"
        raise StepCoTDataError(f"{source} is neither a Step-CoT release folder (data.json, images/) nor a built "
                               "dataset folder (README.md + data/*.parquet from `stepcot data build`, or Parquet "
                               "files)")
    if str(source).startswith((".", "/", "~")) or str(source).count("/") > 1 or os.sep != "/" and os.sep in source:
        raise StepCoTDataError(f"dataset folder not found: {source}")
    return "hub"


def default_work_dir(source: str) -> Path:
    """The per-source folder under $STEPCOT_CACHE (default ~/.cache/stepcot) for commands without their own."""
    cache = Path(os.environ.get("STEPCOT_CACHE") or Path.home() / ".cache" / "stepcot")
    key = source if source == DEMO else str(Path(source).expanduser().resolve())
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(key).name or "source")
    return cache / "builds" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def prepare_source(source: str, work_dir=None, *, lenient: bool = False, seed: int = 0, demo_size: int = 1200,
                   demo_image_size: int = 224, demo_difficulty: str = "easy", log=logger.info) -> str:
    """What `load_dataset` should read for `source`: a built folder (rendering and building as needed) or a Hub id.

    A release is built into WORK/dataset, reusing an earlier build only when it was made from the same, unchanged
    release with the same settings."""
    kind = source_kind(source)
    if kind == "built":
        return str(source)
    if kind == "hub":
        return prepare_hub_dataset(str(source), strict=not lenient, seed=seed)
    work_dir = Path(work_dir) if work_dir is not None else default_work_dir(source)
    release = Path(source).expanduser()
    if kind == "demo":
        release = _demo_release(work_dir, demo_size, demo_image_size, log, demo_difficulty)
    built = work_dir / "dataset"
    settings = build_settings(release, strict=not lenient, seed=seed)
    existing = read_build_info(built)
    if is_built_folder(built) and existing is not None and all(existing.get(k) == v for k, v in settings.items()):
        log(f"reusing the build {built} of {release} (release and settings unchanged)")
        return str(built)
    if is_built_folder(built):
        log(f"rebuilding {built}: it was not built from {release} as it is now, with these settings")
    summary = build_hub_dataset(release, built, strict=not lenient, seed=seed)
    log(f"built {built} from the release {release} in {summary['seconds']:.1f} s")
    if summary.get("records_skipped") or summary.get("problems_reported"):
        logger.warning("%s records skipped, %s other problems: see %s", summary["records_skipped"],
                       summary.get("problems_reported", 0), summary["report"])
    return str(built)


def _demo_release(work_dir: Path, size: int, image_size: int, log, difficulty: str = "easy") -> Path:
    release = work_dir / "demo-release"
    if not demo_release_matches(release, n=size, image_size=image_size, difficulty=difficulty):
        if release.exists():
            shutil.rmtree(release)
        summary = write_demo_release(release, n=size, image_size=image_size, difficulty=difficulty)
        log(f"rendered {summary['records']} synthetic records into {release} in {summary['seconds']:.1f} s")
    return release


def load_built(source: str, split: str | None = None):
    """`load_dataset` on a built folder or Hub id. A local folder whose shard names carry no content digest (built
    before the naming) is re-read from its files, since the cache cannot tell its builds apart."""
    from datasets import load_dataset

    path = Path(source).expanduser()
    shards = list(path.glob("*.parquet")) + list(path.glob("*/*.parquet"))
    legacy = path.is_dir() and not all(CONTENT_NAMED_SHARD.fullmatch(shard.name) for shard in shards)
    return load_dataset(str(path) if path.is_dir() else source, split=split,
                        download_mode="force_redownload" if legacy else None)


def load_source(source: str, work_dir=None, *, split: str | None = None, lenient: bool = False, seed: int = 0,
                demo_size: int = 1200, demo_image_size: int = 224, demo_difficulty: str = "easy", log=logger.info):
    """The `DatasetDict` (or one split) of `source`: "demo", a release folder, a built folder or a Hub id."""
    return load_built(prepare_source(source, work_dir, lenient=lenient, seed=seed, demo_size=demo_size,
                                     demo_image_size=demo_image_size, demo_difficulty=demo_difficulty, log=log),
                      split=split)


__all__ = [
    "default_work_dir",
    "is_built_folder",
    "is_release_folder",
    "load_built",
    "load_source",
    "prepare_source",
    "source_kind",
]
