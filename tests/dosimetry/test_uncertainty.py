"""Uncertainty region of an sCT: a hand-built uncertainty map with known answers, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dosimetry.errors import DosimetryError
from dosimetry.uncertainty import uncertainty_region
from models.volume import Volume


def test_uncertainty_region_by_hand():
    std = np.full((4, 6, 8), 10.0)
    std[1:3, 2:4, 5:7] = 80.0  # 8 voxels above the level
    std[0, 0, 0] = 500.0  # above, but outside the body
    body = np.zeros(std.shape, dtype=bool)
    body[:, 1:6, 1:8] = True
    volume = Volume(std, (2.0, 3.0, 5.0), (-10.0, 20.0, 100.0))
    region = uncertainty_region(volume, body, level_hu=50.0)
    assert (region.body_voxel_count, region.above_count) == (140, 8)
    assert region.above_fraction == pytest.approx(8 / 140)
    assert region.bounding_box_zyx == ((1, 2), (2, 3), (5, 6))
    # x = -10 + 2 * (5..6), y = 20 + 3 * (2..3), z = 100 + 5 * (1..2)
    assert region.bounding_box_min_mm == (0.0, 26.0, 105.0)
    assert region.bounding_box_max_mm == (2.0, 29.0, 110.0)
    assert region.centroid_mm == pytest.approx((1.0, 27.5, 107.5))
    assert region.max_std_hu == 80.0 and region.mean_std_hu == pytest.approx((132 * 10 + 8 * 80) / 140)

    calm = uncertainty_region(volume, body, level_hu=100.0)
    assert calm.above_count == 0 and calm.bounding_box_zyx is None and calm.centroid_mm is None


def test_uncertainty_region_rejects_bad_input():
    volume = Volume(np.zeros((3, 3, 3)), (1.0, 1.0, 1.0))
    body = np.ones((3, 3, 3), dtype=bool)
    with pytest.raises(DosimetryError, match="level_hu"):
        uncertainty_region(volume, body, level_hu=-1.0)
    with pytest.raises(DosimetryError, match="not on the same voxel grid: origin_mm"):
        uncertainty_region(volume, body, 10.0, sct=Volume(np.zeros((3, 3, 3)), (1.0, 1.0, 1.0), (0.0, 0.0, 5.0)))
    negative = volume.with_array(np.full((3, 3, 3), -1.0))
    with pytest.raises(DosimetryError, match="negative"):
        uncertainty_region(negative, body, 10.0)
    broken = volume.with_array(np.full((3, 3, 3), math.nan))
    with pytest.raises(DosimetryError, match="27 NaN"):
        uncertainty_region(broken, body, 10.0)
