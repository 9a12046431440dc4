"""A raw Step-CoT release on the Hub (e.g. `fl-15o/Step-CoT`: data.json, split sheets, zipped image folders) ->
a local Parquet build that `load_dataset` reads.

The published repository holds no files that `datasets` can load, so `load_dataset("fl-15o/Step-CoT")` cannot
read it directly. This module downloads the release with `huggingface_hub` (resumable; the revision is pinned to a
commit and written into the built card), unpacks the image archives safely, validates the release and builds it
once per commit into a cache; later calls reuse the build. A Hub repository that already holds a built dataset
(Parquet, CSV, ... anything `datasets` detects) is returned as is, for `load_dataset`.

    >>> built = prepare_hub_dataset("fl-15o/Step-CoT")        # folder with README.md + data/*.parquet
    >>> load_dataset(built)
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from dataset_script.parquet_export import build_hub_dataset
from dataset_script.records import StepCoTDataError

logger = logging.getLogger(__name__)

RELEASE_MARKERS = ("data.json", "data.jsonl")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
SOURCE_FILE = "hub_source.json"
# Archive limits (a zip bomb is refused before anything is written); each can be set by its environment variable.
ARCHIVE_LIMITS = {
    "STEPCOT_MAX_UNPACKED_BYTES": 200 * 2**30,  # total size of the members (the real release: ~10 GB)
    "STEPCOT_MAX_ARCHIVE_MEMBERS": 2_000_000,
    "STEPCOT_MAX_COMPRESSION_RATIO": 100,  # unpacked / archive bytes (images barely compress; text ~10x)
}
# Below this many unpacked bytes the compression ratio is not checked (a small text file may compress 1000x).
RATIO_CHECK_MIN_BYTES = 50_000_000
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(source: str) -> bool:
    """`owner/name` that is not a local path."""
    return bool(_HUB_ID.match(str(source))) and not Path(source).exists()


def default_cache_dir() -> Path:
    """`$STEPCOT_CACHE/hub-releases`, else under the Hugging Face home (`$HF_HOME/stepcot/hub-releases`)."""
    if os.environ.get("STEPCOT_CACHE"):
        return Path(os.environ["STEPCOT_CACHE"]) / "hub-releases"
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "stepcot" / "hub-releases"


# ---------------------------------------------------------------------------------------------------------------
# Safe unpacking
# ---------------------------------------------------------------------------------------------------------------


def archive_stem(name: str) -> str | None:
    """'images.tar.gz' -> 'images'; None when the name is not an archive this module unpacks."""
    lower = name.lower()
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _checked_member_name(archive: Path, name: str) -> PurePosixPath:
    """The member's relative path, or a StepCoTDataError when it could land outside the target folder."""
    if "\\" in name or re.match(r"^[A-Za-z]:", name) or name.startswith("/"):
        raise StepCoTDataError(f"{archive.name}: member {name!r} has an absolute or Windows path; refusing to unpack")
    path = PurePosixPath(name)
    if any(part == ".." for part in path.parts):
        raise StepCoTDataError(f"{archive.name}: member {name!r} climbs out of the target folder ('..'); "
                               "refusing to unpack")
    return path


def _inside(target: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(target.resolve())
        return True
    except ValueError:
        return False


def _top_folder(names: list[PurePosixPath]) -> str | None:
    """The one folder every member sits in, if there is one."""
    tops = {name.parts[0] for name in names if name.parts}
    return tops.pop() if len(tops) == 1 and any(len(name.parts) > 1 for name in names) else None


def archive_limits() -> dict[str, int]:
    """`ARCHIVE_LIMITS`, each overridden by its environment variable (a positive integer)."""
    limits = {}
    for name, default in ARCHIVE_LIMITS.items():
        text = os.environ.get(name, "").strip().replace("_", "")
        try:
            limits[name] = int(float(text)) if text else default
        except ValueError:
            raise StepCoTDataError(f"{name}={text!r} is not a number") from None
        if limits[name] < 1:
            raise StepCoTDataError(f"{name}={text!r} must be positive")
    return limits


def _check_members(archive: Path, entries: list[tuple[PurePosixPath, bool, int]]) -> None:
    """Refuse, before anything is written: more members, unpacked bytes or compression than `archive_limits()`
    allow, a name that is both a file and a folder, a file listed twice. `entries`: (name, is_dir, size)."""
    limits = archive_limits()
    if len(entries) > limits["STEPCOT_MAX_ARCHIVE_MEMBERS"]:
        raise StepCoTDataError(f"{archive.name}: {len(entries):,} members, above the limit of "
                               f"{limits['STEPCOT_MAX_ARCHIVE_MEMBERS']:,} (STEPCOT_MAX_ARCHIVE_MEMBERS); "
                               "refusing to unpack")
    total = sum(size for _, is_dir, size in entries if not is_dir)
    if total > limits["STEPCOT_MAX_UNPACKED_BYTES"]:
        raise StepCoTDataError(f"{archive.name}: unpacks to {total:,} bytes, above the limit of "
                               f"{limits['STEPCOT_MAX_UNPACKED_BYTES']:,} (STEPCOT_MAX_UNPACKED_BYTES); "
                               "refusing to unpack")
    ratio = total / max(archive.stat().st_size, 1)
    if total >= RATIO_CHECK_MIN_BYTES and ratio > limits["STEPCOT_MAX_COMPRESSION_RATIO"]:
        raise StepCoTDataError(f"{archive.name}: unpacks to {total:,} bytes, {ratio:,.0f} times its size, above "
                               f"the ratio limit of {limits['STEPCOT_MAX_COMPRESSION_RATIO']} "
                               "(STEPCOT_MAX_COMPRESSION_RATIO; a zip bomb?); refusing to unpack")
    files, folders = set(), set()
    for name, is_dir, _ in entries:
        if not name.parts:
            continue
        folders.update(name.parents)
        if is_dir:
            folders.add(name)
        elif name in files:
            raise StepCoTDataError(f"{archive.name}: member {str(name)!r} appears twice; refusing to unpack")
        else:
            files.add(name)
    clash = sorted(files & folders)
    if clash:
        raise StepCoTDataError(f"{archive.name}: {str(clash[0])!r} is both a file and a folder in the archive; "
                               "refusing to unpack")


def _copy_at_most(source, sink, limit: int, archive: Path, name: str) -> None:
    """Copy, refusing a member that yields more bytes than it declares."""
    written = 0
    while chunk := source.read(1 << 20):
        written += len(chunk)
        if written > limit:
            raise StepCoTDataError(f"{archive.name}: member {name!r} holds more than its declared {limit:,} bytes; "
                                   "refusing to unpack")
        sink.write(chunk)


def safe_unpack(archive, target) -> Path:
    """Unpack a .zip / .tar / .tar.gz archive under `target` and return the folder holding its files.

    Every member is checked before anything is written: no absolute or Windows paths, no '..', no symbolic or hard
    link that points outside the target, no device files, no name both a file and a folder, and the limits of
    `archive_limits()` (member count, unpacked bytes, compression ratio). An archive `images.zip` whose members all
    sit in one `images/` folder unpacks into `target/images`; a flat one also unpacks into `target/images` (its
    stem), so `image_path` values such as `images/x.png` or `x.png` resolve either way. The archive is unpacked
    into a hidden staging folder and renamed into place when complete: a refused or failed unpack leaves nothing.
    """
    archive, target = Path(archive), Path(target)
    stem = archive_stem(archive.name)
    if stem is None:
        raise StepCoTDataError(f"{archive.name}: not an archive this tool unpacks ({', '.join(ARCHIVE_SUFFIXES)})")
    final = target / stem
    if final.exists() or final.is_symlink():
        kind = "folder" if final.is_dir() else "file"
        raise StepCoTDataError(f"{archive.name} unpacks into {stem}/, but the release already holds a {kind} "
                               f"{stem}; rename one of them")
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{stem}.unpacking-", dir=target))
    try:
        _unpack_into(archive, staging, stem)
        (staging / stem).mkdir(exist_ok=True)  # an empty archive gives an empty folder
        os.replace(staging / stem, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _unpack_into(archive: Path, staging: Path, stem: str) -> None:
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as handle:
            infos = handle.infolist()
            names = [_checked_member_name(archive, info.filename) for info in infos]
            for info in infos:
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise StepCoTDataError(f"{archive.name}: member {info.filename!r} is a symbolic link; "
                                           "refusing to unpack")
            _check_members(archive, [(name, info.is_dir(), info.file_size) for info, name in zip(infos, names)])
            destination = staging if _top_folder(names) == stem else staging / stem
            for info, name in zip(infos, names):
                out = destination / name
                if not _inside(destination, out):
                    raise StepCoTDataError(f"{archive.name}: member {info.filename!r} would land outside "
                                           f"{destination}; refusing to unpack")
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with handle.open(info) as source, open(out, "wb") as sink:
                    _copy_at_most(source, sink, info.file_size, archive, info.filename)
        return
    with tarfile.open(archive) as handle:
        members = handle.getmembers()
        names = [_checked_member_name(archive, member.name) for member in members]
        _check_members(archive, [(name, member.isdir(), member.size if member.isfile() else 0)
                                 for member, name in zip(members, names)])
        destination = staging if _top_folder(names) == stem else staging / stem
        for member, name in zip(members, names):
            if member.isdev() or member.isfifo():
                raise StepCoTDataError(f"{archive.name}: member {member.name!r} is a device or pipe; "
                                       "refusing to unpack")
            if member.issym() or member.islnk():
                link = PurePosixPath(member.linkname)
                # a symlink resolves from its own folder, a hard link from the archive root
                resolved = (destination / name.parent / link) if member.issym() else (destination / link)
                if link.is_absolute() or not _inside(destination, Path(os.path.normpath(resolved))):
                    raise StepCoTDataError(f"{archive.name}: member {member.name!r} links to {member.linkname!r}, "
                                           "outside the target folder; refusing to unpack")
        destination.mkdir(parents=True, exist_ok=True)
        handle.extractall(destination, filter="data")  # the stdlib's own guard on top of the checks above


# ---------------------------------------------------------------------------------------------------------------
# Download, unpack, build
# ---------------------------------------------------------------------------------------------------------------


def _repo_folder(cache_dir: Path, repo_id: str) -> Path:
    return cache_dir / repo_id.replace("/", "--")


def _cached_builds(cache_dir: Path, repo_id: str) -> list[Path]:
    """Complete builds of `repo_id` in the cache, newest first."""
    folder = _repo_folder(cache_dir, repo_id)
    builds = [path.parent for path in folder.glob("*/built/README.md")] if folder.is_dir() else []
    builds = [build.parent / "built" for build in builds]
    return sorted(builds, key=lambda path: (path / "README.md").stat().st_mtime, reverse=True)


def release_files(repo_files: list[str]) -> bool:
    """Whether a repository's file list is a raw Step-CoT release (a data.json / data.jsonl at its root)."""
    return any(name in RELEASE_MARKERS for name in repo_files)


def assemble_release(snapshot_dir, release_dir) -> dict:
    """A release folder from a downloaded snapshot: plain files copied, archives unpacked. Returns what was done."""
    snapshot_dir, release_dir = Path(snapshot_dir), Path(release_dir)
    if release_dir.exists():
        shutil.rmtree(release_dir)
    release_dir.mkdir(parents=True)
    unpacked, copied = {}, []
    try:
        for path in sorted(snapshot_dir.rglob("*")):
            if not path.is_file() or any(part.startswith(".") for part in path.relative_to(snapshot_dir).parts):
                continue
            relative = path.relative_to(snapshot_dir)
            if archive_stem(path.name) is not None:
                folder = safe_unpack(path, release_dir / relative.parent)
                unpacked[str(relative)] = str(folder.relative_to(release_dir))
                continue
            destination = release_dir / relative
            if destination.exists():  # an archive unpacked into this name already
                raise StepCoTDataError(f"{relative}: the release also has an archive that unpacks into "
                                       f"{relative}/; rename one of them")
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)  # follows the cache's symlink to the blob
            copied.append(str(relative))
    except BaseException:
        shutil.rmtree(release_dir, ignore_errors=True)  # a refused or interrupted release leaves nothing behind
        raise
    return {"unpacked": unpacked, "copied": copied}


def _hub_dataset_info(repo_id: str, revision: str | None, token=None):
    """The repository's info at `revision` (its commit sha and file list); raises OSError-like errors offline."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if constants.HF_HUB_OFFLINE:
        raise OfflineModeIsEnabled("HF_HUB_OFFLINE=1")
    import httpx2  # huggingface_hub's HTTP client

    try:
        return HfApi(token=token).dataset_info(repo_id, revision=revision)
    except HfHubHTTPError as error:
        raise StepCoTDataError(f"{repo_id}: the Hub refused the dataset ({str(error).splitlines()[0]})") from None
    except httpx2.TransportError as error:  # no connection, timeout: the caller may fall back to a cached build
        raise ConnectionError(f"{type(error).__name__}: {error}") from None


def download_release(repo_id: str, info, cache_dir: Path, token=None) -> tuple[Path, dict]:
    """Download the release files of `info` (pinned to its commit; `huggingface_hub` resumes an interrupted
    download from its partial file) and assemble the release folder. Returns (release folder, source record)."""
    from huggingface_hub import constants, snapshot_download

    folder = _repo_folder(cache_dir, repo_id) / info.sha
    logger.info("downloading %s at %s (%d files)", repo_id, info.sha, len(info.siblings or []))
    snapshot = snapshot_download(repo_id, repo_type="dataset", revision=info.sha, cache_dir=folder / "download",
                                 token=token)
    assembled = assemble_release(snapshot, folder / "release")
    return folder / "release", {"repo_id": repo_id, "revision": info.sha, "endpoint": constants.ENDPOINT,
                                **assembled}


def build_from_hub(repo_id: str, out_dir, revision: str | None = None, cache_dir=None, strict: bool = True,
                   seed: int = 0, token=None) -> dict:
    """`stepcot data build --source <hub id>`: download the raw release at `revision` and build it into
    `out_dir`. A repository that holds no data.json (already built, or not a release) is an error naming it."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        info = _hub_dataset_info(repo_id, revision, token)
    except OSError as error:
        raise StepCoTDataError(f"{repo_id}: cannot reach the Hub ({error})") from None
    files = [sibling.rfilename for sibling in info.siblings or []]
    if not release_files(files):
        raise StepCoTDataError(f"{repo_id}: no data.json at the repository root, so it is not a raw Step-CoT "
                               f"release (files: {files[:8]}); if it already holds Parquet, load it directly: "
                               f"load_dataset({repo_id!r}) or --dataset {repo_id}")
    release_dir, source = download_release(repo_id, info, cache_dir, token)
    source["requested_revision"] = revision or "main"
    summary = build_release_folder(release_dir, out_dir, strict=strict, seed=seed, hub_source=source)
    (Path(out_dir) / SOURCE_FILE).write_text(json.dumps(source, indent=2), encoding="utf-8")
    summary["hub_source"] = {key: source[key] for key in ("repo_id", "revision", "unpacked")}
    return summary


def prepare_hub_dataset(repo_id: str, revision: str | None = None, cache_dir=None, strict: bool = True,
                        seed: int = 0, token=None) -> str:
    """What `load_dataset` should read for the Hub dataset `repo_id`.

    A raw release (data.json at the repository root) is downloaded at `revision` (default: the main branch, pinned
    to its commit), unpacked, validated and built once into `cache_dir/<owner>--<name>/<commit>/built`; the path of
    that build is returned, and a later call for the same commit reuses it. Any other repository is returned as its
    id (it already holds data files `datasets` reads). Offline (`HF_HUB_OFFLINE=1`) the newest cached build is used,
    with a warning naming its commit.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        info = _hub_dataset_info(repo_id, revision, token)
    except OSError as error:  # offline, connection refused, timeout
        builds = [b for b in _cached_builds(cache_dir, repo_id) if revision is None or b.parent.name == revision]
        if builds:
            logger.warning("cannot reach the Hub (%s); using the cached build of %s at %s", error, repo_id,
                           builds[0].parent.name)
            return str(builds[0])
        raise StepCoTDataError(f"{repo_id}: cannot reach the Hub ({error}) and no cached build in {cache_dir}") \
            from None
    files = [sibling.rfilename for sibling in info.siblings or []]
    if not release_files(files):
        return repo_id
    built = _repo_folder(cache_dir, repo_id) / info.sha / "built"
    if (built / "README.md").is_file() and (built / SOURCE_FILE).is_file():
        logger.info("reusing the build of %s at %s from %s", repo_id, info.sha, built)
        return str(built)
    release_dir, source = download_release(repo_id, info, cache_dir, token)
    source["requested_revision"] = revision or "main"
    build_release_folder(release_dir, built, strict=strict, seed=seed, hub_source=source)
    (built / SOURCE_FILE).write_text(json.dumps(source, indent=2), encoding="utf-8")  # written last: build complete
    return str(built)


def build_release_folder(release_dir, out_dir, strict=True, seed=0, hub_source=None) -> dict:
    """Validate and build (atomically: `build_hub_dataset` moves a complete build into place)."""
    return build_hub_dataset(release_dir, out_dir, strict=strict, seed=seed, hub_source=hub_source)


__all__ = [
    "assemble_release",
    "build_from_hub",
    "default_cache_dir",
    "looks_like_hub_id",
    "prepare_hub_dataset",
    "safe_unpack",
]
