"""Cumulative DVHs and their metrics on analytic dose distributions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dosimetry.dvh import compare_dvh_metrics, cumulative_dvh, dvh_metrics
from dosimetry.errors import DosimetryError
from models.volume import Volume

SPACING_MM = (2.0, 2.0, 2.5)  # 0.01 cc voxels


def _cube_mask() -> np.ndarray:
    mask = np.zeros((24, 24, 24), dtype=bool)
    mask[2:22, 2:22, 2:22] = True  # a 20-voxel cube
    return mask


def _gradient_dose(offset_gy: float = 0.0) -> Volume:
    """40 Gy at the cube's first column, +1 Gy per column along x: 40 ... 59 Gy; 0 Gy outside the cube."""
    x = np.arange(24, dtype=np.float64)
    dose = np.broadcast_to(40.0 + (x - 2.0) + offset_gy, (24, 24, 24)).copy()
    dose[~_cube_mask()] = 0.0
    return Volume(dose, SPACING_MM)


def test_uniform_dose_gives_that_dose_everywhere():
    dose = np.full((24, 24, 24), 7.0)
    dose[_cube_mask()] = 2.0  # the cube gets exactly the prescription
    dvh = cumulative_dvh(Volume(dose, SPACING_MM), _cube_mask(), "PTV")
    metrics = dvh_metrics(dvh, prescription_dose_gy=2.0)
    for value in (metrics.d98_gy, metrics.d95_gy, metrics.d50_gy, metrics.d2_gy, metrics.dmean_gy, metrics.dmax_gy):
        assert value == pytest.approx(2.0, abs=1e-12)
    assert metrics.v95_percent == 100.0
    assert dvh.volume_percent_at_dose(2.0) == 100.0  # V100%: every voxel receives the prescription
    assert dvh.volume_percent_at_dose(2.0001) == 0.0
    assert metrics.volume_cc == pytest.approx(20**3 * 0.01)


def test_linear_gradient_by_hand():
    dvh = cumulative_dvh(_gradient_dose(), _cube_mask(), "PTV")
    # 20 columns of 400 voxels at 40, 41, ..., 59 Gy: V(40 + j) = (20 - j) / 20, straight lines in between.
    np.testing.assert_allclose(dvh.dose_gy, 40.0 + np.arange(20))
    np.testing.assert_allclose(dvh.volume_fraction, (20 - np.arange(20)) / 20)
    metrics = dvh_metrics(dvh, prescription_dose_gy=50.0)
    # D98: 98 % lies between V(40) = 100 % and V(41) = 95 %, 2/5 of the way: 40.4 Gy.
    assert metrics.d98_gy == pytest.approx(40.4)
    assert metrics.d95_gy == pytest.approx(41.0)
    # D50: the hotter half is columns 10-19, so at least 50 % gets 50 Gy: half a column above the
    # mid-range dose 49.5 Gy (see the module docstring), and equal to it within one dose step.
    assert metrics.d50_gy == pytest.approx(50.0)
    assert abs(metrics.d50_gy - (40.0 + 59.0) / 2) <= 0.5
    # D2: 2 % is less than the 5 % that the hottest column holds: the maximum, 59 Gy.
    assert metrics.d2_gy == pytest.approx(59.0)
    assert metrics.dmean_gy == pytest.approx(49.5)
    assert metrics.dmax_gy == 59.0
    # V95% = V(47.5 Gy): halfway between V(47) = 65 % and V(48) = 60 %.
    assert metrics.v95_percent == pytest.approx(62.5)
    assert dvh.volume_cc_at_dose(47.5) == pytest.approx(0.625 * 80.0)
    assert dvh.dose_at_volume_cc(40.0) == pytest.approx(50.0)  # 40 cc is 50 % of the 80 cc cube


def test_dose_at_volume_inverts_volume_at_dose():
    dvh = cumulative_dvh(_gradient_dose(), _cube_mask(), "PTV")
    for percent in np.linspace(5.0, 100.0, 39):
        assert dvh.volume_percent_at_dose(dvh.dose_at_volume_percent(percent)) == pytest.approx(percent)
    doses = [dvh.dose_at_volume_percent(p) for p in np.linspace(0.0, 100.0, 101)]
    assert all(a >= b for a, b in itertools.pairwise(doses))  # D_x% never rises with x
    assert dvh.dose_at_volume_percent(100.0) == dvh.min_dose_gy == 40.0
    assert dvh.dose_at_volume_percent(0.0) == dvh.max_dose_gy == 59.0
    assert dvh.volume_percent_at_dose(0.0) == 100.0 and dvh.volume_percent_at_dose(100.0) == 0.0


def test_comparison_in_gy_and_percent_of_prescription():
    reference = dvh_metrics(cumulative_dvh(_gradient_dose(), _cube_mask(), "PTV"), 50.0)
    evaluated = dvh_metrics(cumulative_dvh(_gradient_dose(offset_gy=1.0), _cube_mask(), "PTV"), 50.0)
    comparison = compare_dvh_metrics(reference, evaluated)
    assert [d.name for d in comparison.dose_differences] == ["D98%", "D95%", "D50%", "D2%", "Dmean", "Dmax"]
    for difference in comparison.dose_differences:  # every dose shifts by 1 Gy = 2 % of 50 Gy
        assert difference.difference_gy == pytest.approx(1.0)
        assert difference.difference_percent_of_prescription == pytest.approx(2.0)
    # V(47.5 Gy) of doses 41..60 Gy: halfway between V(47) = 70 % and V(48) = 65 %: 67.5 %, 5 points more.
    assert comparison.v95.evaluated_percent == pytest.approx(67.5)
    assert comparison.v95.difference_percent_points == pytest.approx(5.0)
    with pytest.raises(DosimetryError, match="different structures"):
        compare_dvh_metrics(reference, dvh_metrics(cumulative_dvh(_gradient_dose(), _cube_mask(), "CTV"), 50.0))
    with pytest.raises(DosimetryError, match="different prescriptions"):
        compare_dvh_metrics(reference, dvh_metrics(cumulative_dvh(_gradient_dose(), _cube_mask(), "PTV"), 60.0))


def test_bad_input_is_rejected_with_clear_messages():
    dose = _gradient_dose()
    with pytest.raises(DosimetryError, match="structure 'Rectum' on the dose grid is empty"):
        cumulative_dvh(dose, np.zeros((24, 24, 24), dtype=bool), "Rectum")
    with pytest.raises(DosimetryError, match=r"mask of structure 'PTV' has shape \(24, 24, 20\); expected"):
        cumulative_dvh(dose, np.ones((24, 24, 20), dtype=bool), "PTV")
    broken = dose.array.copy()
    broken[10, 10, 10] = np.nan
    with pytest.raises(DosimetryError, match="dose in structure 'PTV' has 1 NaN"):
        cumulative_dvh(dose.with_array(broken), _cube_mask(), "PTV")
    dvh = cumulative_dvh(dose, _cube_mask(), "PTV")
    with pytest.raises(DosimetryError, match="prescription_dose_gy"):
        dvh_metrics(dvh, 0.0)
    with pytest.raises(DosimetryError, match=r"volume_percent must lie in \[0, 100\]"):
        dvh.dose_at_volume_percent(101.0)
    with pytest.raises(DosimetryError, match="volume_cc must lie in"):
        dvh.dose_at_volume_cc(81.0)
