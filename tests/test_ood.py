"""Out-of-distribution statistics (`modeling_stepcot/ood_stepcot.py`): far images are flagged, and the threshold,
set on held-out images, flags about the nominal share of unseen in-distribution images."""

import numpy as np
import pytest

from modeling_stepcot.ood_stepcot import conformal_threshold, embedding_distance, embedding_statistics


def test_embedding_statistics_flag_far_images_only():
    rng = np.random.default_rng(0)
    train, validation = rng.normal(size=(300, 16)), rng.normal(size=(100, 16))
    statistics = embedding_statistics(train, validation)
    assert statistics["reference"] == "validation" and statistics["quantile"] == 0.99
    inside = embedding_distance(rng.normal(size=(200, 16)), statistics)
    outside = embedding_distance(rng.normal(loc=3.0, size=(20, 16)), statistics)
    assert np.mean(inside > statistics["threshold"]) < 0.05 and np.all(outside > statistics["threshold"])
    with pytest.raises(ValueError, match="width"):
        embedding_distance(np.zeros((1, 8)), statistics)


def test_conformal_threshold_flags_about_the_nominal_share_of_unseen_images():
    """Threshold from a held-out set of 72 (the validation split of Kermany-480); false-flag rate measured on
    fresh draws from the same distribution, over many repetitions."""
    rng = np.random.default_rng(0)
    rates, expected = [], []
    for _ in range(200):
        train, validation, unseen = (rng.normal(size=(n, 24)) for n in (336, 72, 500))
        statistics = embedding_statistics(train, validation)
        rates.append(np.mean(embedding_distance(unseen, statistics) > statistics["threshold"]))
        expected.append(statistics["expected_false_flag_rate"])
    assert statistics["reference"] == "validation" and statistics["num_reference"] == 72
    assert abs(np.mean(rates) - np.mean(expected)) < 0.006 and np.mean(rates) < 0.02
    assert conformal_threshold(np.arange(1.0, 1001.0), 0.99) == (991.0, pytest.approx(1 - 991 / 1001))
    assert conformal_threshold([3.0, 1.0, 2.0], 0.99) == (3.0, pytest.approx(0.25))  # too few: the largest
