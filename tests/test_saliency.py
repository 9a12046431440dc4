"""Saliency figures (`trainers/inference/saliency.py`): the overlay of a Grad-CAM map on its radiograph."""

import numpy as np
import pytest

from trainers.inference.saliency import overlay


def test_overlay_keeps_low_saliency_pixels_grey():
    image = np.full((4, 4, 3), 100, dtype=np.uint8)
    saliency = np.zeros((4, 4), dtype=np.float32)
    saliency[0, 0] = 1.0
    blended = overlay(image, saliency)
    assert (blended[1:, 1:] == 100).all()
    assert tuple(blended[0, 0]) != (100, 100, 100)
    with pytest.raises(ValueError, match="differ in size"):
        overlay(image, np.zeros((3, 4)))
