"""trainers.evaluation.bootstrap: the one percentile bootstrap used by metrics, baselines and annotation agreement."""

import math

import numpy as np
import pytest

from trainers.evaluation.bootstrap import BLOCK_SIZE, percentile_interval, resample_weights


def test_resample_weights_are_draw_counts_in_blocks():
    blocks = list(resample_weights(num_examples=7, num_bootstrap=BLOCK_SIZE + 5, seed=0))
    assert [len(block) for block in blocks] == [BLOCK_SIZE, 5]
    weights = np.concatenate(blocks)
    assert weights.shape == (BLOCK_SIZE + 5, 7)
    assert (weights.sum(axis=1) == 7).all() and (weights >= 0).all()  # 7 draws with replacement per resample
    assert len(np.unique(weights, axis=0)) > 1  # resamples differ
    again = np.concatenate(list(resample_weights(7, BLOCK_SIZE + 5, seed=0)))
    assert np.array_equal(weights, again)  # a seed fixes the resamples
    assert list(resample_weights(7, 0, seed=0)) == []


def test_percentile_interval_skips_undefined_resamples():
    values = np.concatenate([np.arange(101, dtype=float), [np.nan] * 9])
    low, high, valid = percentile_interval(values, confidence_level=0.9)
    assert (low, high, valid) == (pytest.approx(5.0), pytest.approx(95.0), 101)
    low, high, valid = percentile_interval(np.full(4, np.nan), 0.95)
    assert math.isnan(low) and math.isnan(high) and valid == 0


def test_the_bootstrap_interval_covers_a_known_mean():
    # The mean of 400 N(0, 1) draws: the 95% interval should be about +-1.96/20 wide around the sample mean.
    data = np.random.default_rng(1).normal(size=400)
    means = np.concatenate([w @ data / len(data) for w in resample_weights(len(data), 2000, seed=2)])
    low, high, _ = percentile_interval(means, 0.95)
    assert low < data.mean() < high
    assert abs((high - low) - 2 * 1.96 * data.std() / 20) < 0.03
