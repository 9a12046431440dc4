"""Percentile bootstrap over examples: the one implementation behind the metrics' confidence intervals, the paired
baseline comparison and the annotation agreement.

A resample is a vector of per-example multiplicities (how often each example was drawn), so a metric written for
weighted examples scores the data itself (all ones) and every resample through the same code:

    >>> for weights in resample_weights(num_examples=len(labels), num_bootstrap=1000, seed=0):
    ...     values.append(metric(predictions, labels, weights))          # weights: (block, N)
    >>> low, high, valid = percentile_interval(np.concatenate(values), confidence_level=0.95)
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

# Resamples drawn per block: bounds the (block, N) multiplicity matrix while keeping the metric code vectorised.
BLOCK_SIZE = 256


def resample_weights(num_examples: int, num_bootstrap: int, seed: int | None) -> Iterator[np.ndarray]:
    """Yield blocks of (b, N) multiplicities, `num_bootstrap` rows in all: each row counts how often each example
    was drawn in one resample (N draws with replacement). The same seed gives the same resamples."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < num_bootstrap:
        block = min(BLOCK_SIZE, num_bootstrap - done)
        drawn = rng.integers(0, num_examples, size=(block, num_examples))
        offsets = np.arange(block)[:, None] * num_examples
        yield np.bincount((drawn + offsets).ravel(), minlength=block * num_examples).reshape(block, num_examples)
        done += block


def percentile_interval(values: np.ndarray, confidence_level: float) -> tuple[float, float, int]:
    """(low, high, valid resamples) of the central `confidence_level` interval of the resampled values; resamples
    in which the metric is undefined (NaN) are skipped, and with none left the interval is (NaN, NaN, 0)."""
    values = np.asarray(values, dtype=float)
    valid = values[~np.isnan(values)]
    if valid.size == 0:
        return math.nan, math.nan, 0
    tail = (1.0 - confidence_level) / 2.0 * 100.0
    low, high = np.percentile(valid, [tail, 100.0 - tail])
    return float(low), float(high), int(valid.size)


__all__ = ["BLOCK_SIZE", "percentile_interval", "resample_weights"]
