"""A release's image files: where a record's image is (`locate_image`, inside the release folder only) and whether
it can be used (`inspect_image`: decoded in full, a decompression-bomb guard, a perceptual hash for near-duplicates).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from dataset_script.safe_paths import UnsafePathError, is_inside, safe_relative_path
from modeling_stepcot.processing_stepcot import MAX_IMAGE_PIXELS, image_to_8bit

IMAGE_FOLDERS = ("", "images", "images_2")


def locate_image(image_path: str, image_root) -> tuple[Path | None, bool]:
    """(the image file for `image_path`, whether it was found by file name only).

    Tried as given under the root and its images/, images_2/ folders (releases store paths with or without the
    folder); then, when the path names a folder that holds no such file, by file name in those folders. A file name
    found in several folders is ambiguous (`AmbiguousImageError`): the reader never picks one of them. Whether a
    by-name match is another record's image is checked over the whole release (`StepCoTRelease`).

    Only files inside `image_root` are ever returned: an absolute path, a `..` part or a symbolic link that leads
    outside raises `UnsafePathError` (a named validation problem), so no outside bytes reach the Parquet files."""
    root = Path(image_root)
    relative = Path(safe_relative_path(image_path, "image_path"))
    for folder in IMAGE_FOLDERS:
        if (root / folder / relative).is_file():
            return _inside_release(root / folder / relative, root, image_path), False
    if relative.parent == Path("."):
        return None, False
    by_name = [root / folder / relative.name for folder in IMAGE_FOLDERS if (root / folder / relative.name).is_file()]
    if len(by_name) > 1:
        raise AmbiguousImageError(
            f"image file not found as given: {str(image_path)!r}; its file name matches several files "
            f"({', '.join(str(p.relative_to(root)) for p in by_name)}), not guessing which"
        )
    return (_inside_release(by_name[0], root, image_path), True) if by_name else (None, False)


def _inside_release(candidate: Path, root: Path, image_path) -> Path:
    if not is_inside(candidate, root):
        raise UnsafePathError(f"image_path {str(image_path)!r} leads outside the release folder {root} through a "
                              f"symbolic link (to {candidate.resolve()})")
    return candidate


# Near-duplicate images: 256-bit perceptual hashes (imagehash.phash, hash_size 16) at most this many bits apart.
# Measured: resized (0.5-1.5x) and JPEG re-saved (quality 50-90) copies differ by <= 8 bits; distinct real chest
# X-rays (1,100 from ../shared/data) by >= 50, distinct synthetic demo images by >= 12.
NEAR_DUPLICATE_HASH_SIZE = 16
# Validating this many records or more shows a progress bar (each image is decoded: ~100 records/s).
NEAR_DUPLICATE_MAX_DISTANCE = 10
NEAR_DUPLICATE_PAIRS_PER_BLOCK = 2**20  # image pairs compared at once (32 MiB of hash words)


class ImageTooLargeError(OSError):
    """An image whose pixel count exceeds `MAX_IMAGE_PIXELS` (a decompression-bomb guard)."""


class AmbiguousImageError(OSError):
    """A record's image path that could name several files."""


def inspect_image(path, max_pixels: int = MAX_IMAGE_PIXELS, perceptual_hash: bool = False) -> dict:
    """Open, verify and fully decode an image (a truncated JPEG passes `verify()` and fails only when decoded).
    Returns mode/size, whether it needs 8-bit conversion and, with `perceptual_hash`, its 256-bit perceptual hash
    as a bool array. Raises OSError (incl. `ImageTooLargeError`) / UnidentifiedImageError for unusable files."""
    from PIL import ImageFile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below applies instead
            image = Image.open(path)
        with image:
            mode, size = image.mode, image.size
            if size[0] * size[1] > max_pixels:
                raise ImageTooLargeError(f"{size[0]} x {size[1]} pixels is above the limit of {max_pixels:,} "
                                         "(decompression-bomb guard, MAX_IMAGE_PIXELS)")
            image.verify()
        truncated_allowed, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
        try:
            with Image.open(path) as image:
                image.load()
                digest = _perceptual_hash(image) if perceptual_hash else None
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = truncated_allowed
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(str(error)) from None
    return {"mode": mode, "size": size, "needs_8bit": mode.startswith("I") or mode == "F", "phash": digest}


def near_duplicate_pairs(later: np.ndarray, earlier: np.ndarray, max_distance: int = NEAR_DUPLICATE_MAX_DISTANCE,
                         pairs_per_block: int = NEAR_DUPLICATE_PAIRS_PER_BLOCK) -> np.ndarray:
    """Every pair (i, j, distance) with `later[i]` and `earlier[j]` at most `max_distance` bits apart, sorted by i
    then j; `later` and `earlier` are packed hashes (rows of uint64 words).

    Exact, and near-linear for spread-out hashes: the bits are cut into `max_distance + 1` bands, and two hashes
    within `max_distance` bits agree on at least one band (pigeonhole), so only pairs sharing a band value are
    compared (found by sorting each band of `earlier`). The candidates are made at most `pairs_per_block` at a
    time, so memory stays bounded even when many hashes share band values."""
    empty = np.zeros((0, 3), dtype=np.int64)
    if not len(later) or not len(earlier):
        return empty
    later_bits = np.unpackbits(np.ascontiguousarray(later).view(np.uint8), axis=1)
    earlier_bits = np.unpackbits(np.ascontiguousarray(earlier).view(np.uint8), axis=1)
    edges = np.linspace(0, later_bits.shape[1], max_distance + 2).astype(int)
    bands = []
    for start, end in zip(edges[:-1], edges[1:]):
        weights = np.left_shift(np.int64(1), np.arange(end - start, dtype=np.int64))
        later_band, earlier_band = later_bits[:, start:end] @ weights, earlier_bits[:, start:end] @ weights
        order = np.argsort(earlier_band, kind="stable")
        ordered = earlier_band[order]
        first = np.searchsorted(ordered, later_band, "left")
        bands.append((order, first, np.searchsorted(ordered, later_band, "right") - first))
    del later_bits, earlier_bits
    found, rows = [], np.arange(len(later))
    per_row = sum(count for _, _, count in bands)
    start = 0
    while start < len(later):  # later rows in blocks of at most `pairs_per_block` candidates (at least one row)
        end = max(start + 1, int(np.searchsorted(np.cumsum(per_row[start:]), pairs_per_block, "right")) + start)
        keys = []
        for order, first, count in bands:
            counts = count[start:end]
            if not counts.sum():
                continue
            row = np.repeat(rows[start:end], counts)
            offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            keys.append(row * len(earlier) + order[np.repeat(first[start:end], counts) + offsets])
        if keys:
            key = np.unique(np.concatenate(keys))
            row, column = key // len(earlier), key % len(earlier)
            distance = np.bitwise_count(later[row] ^ earlier[column]).sum(-1).astype(np.int64)
            near = distance <= max_distance
            found.append(np.stack([row[near], column[near], distance[near]], axis=1))
        start = end
    return np.concatenate(found) if found else empty


def _perceptual_hash(image) -> np.ndarray:
    import imagehash

    gray = image_to_8bit(image).convert("L")
    gray.thumbnail((256, 256))  # the hash looks at 64 x 64 anyway; shrinking first keeps large images fast
    return imagehash.phash(gray, hash_size=NEAR_DUPLICATE_HASH_SIZE).hash.flatten()


__all__ = [
    "IMAGE_FOLDERS",
    "NEAR_DUPLICATE_HASH_SIZE",
    "NEAR_DUPLICATE_MAX_DISTANCE",
    "NEAR_DUPLICATE_PAIRS_PER_BLOCK",
    "AmbiguousImageError",
    "ImageTooLargeError",
    "inspect_image",
    "locate_image",
    "near_duplicate_pairs",
]
