"""`near_duplicate_pairs` (banded search on the perceptual hashes) finds exactly the pairs a comparison of every pair
finds, including pairs planted at, just inside and just beyond the distance limit."""

import numpy as np
import pytest

from dataset_script.images import NEAR_DUPLICATE_MAX_DISTANCE, near_duplicate_pairs


def _every_pair(later, earlier, limit):
    distances = np.bitwise_count(later[:, None, :] ^ earlier[None, :, :]).sum(-1)
    rows, columns = np.nonzero(distances <= limit)
    return np.stack([rows, columns, distances[rows, columns]], axis=1)


def _with_planted_pairs(rng, later, earlier, flips):
    bits = np.unpackbits(earlier.view(np.uint8), axis=1)
    for k, count in enumerate(flips):
        copy = bits[(7 * k) % len(earlier)].copy()
        copy[rng.choice(bits.shape[1], count, replace=False)] ^= 1
        later[(3 * k) % len(later)] = np.packbits(copy).view(np.uint64)
    return later


@pytest.mark.parametrize("seed, block", [(0, 2**20), (1, 7), (2, 1)])
def test_banded_search_equals_every_pair_comparison(seed, block):
    rng = np.random.default_rng(seed)
    later = rng.integers(0, 2**64, (300, 4), dtype=np.uint64)
    earlier = rng.integers(0, 2**64, (250, 4), dtype=np.uint64)
    limit = NEAR_DUPLICATE_MAX_DISTANCE
    flips = [0, 1, limit - 1, limit, limit, limit + 1, limit + 2, 3, limit]
    later = _with_planted_pairs(rng, later, earlier, flips)
    later[50] = later[3]  # one later hash near two earlier ones, and two later hashes near one earlier
    earlier[200] = earlier[7]
    got = near_duplicate_pairs(later, earlier, limit, pairs_per_block=block)
    expected = _every_pair(later, earlier, limit)
    assert got.tolist() == expected.tolist()
    assert {d for _, _, d in got.tolist()} >= {0, 1, limit - 1, limit}  # the planted pairs, at the limit included


def test_clustered_hashes_sharing_band_values():
    """Hashes that agree on most bits (many equal bands: the worst case for banding) still give every pair."""
    rng = np.random.default_rng(5)
    base = np.unpackbits(rng.integers(0, 2**64, (1, 4), dtype=np.uint64).view(np.uint8), axis=1)
    bits = np.repeat(base, 120, axis=0)
    for row in bits:
        row[rng.choice(256, rng.integers(0, 14), replace=False)] ^= 1
    hashes = np.packbits(bits, axis=1).view(np.uint64)
    later, earlier = hashes[:70], hashes[70:]
    got = near_duplicate_pairs(later, earlier, pairs_per_block=100)
    assert got.tolist() == _every_pair(later, earlier, NEAR_DUPLICATE_MAX_DISTANCE).tolist() and len(got) > 100


def test_empty_sides():
    hashes = np.zeros((3, 4), dtype=np.uint64)
    assert near_duplicate_pairs(hashes[:0], hashes).shape == (0, 3)
    assert near_duplicate_pairs(hashes, hashes[:0]).shape == (0, 3)
