"""HU -> density calibration: interpolation, clamping, the generic table, validation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dosimetry.density import (
    GENERIC_CALIBRATION,
    CalibrationError,
    CalibrationTable,
    hu_to_mass_density,
    hu_to_relative_electron_density,
    relative_electron_density_volume,
)
from dosimetry.errors import DosimetryError
from models.volume import Volume

# The generic table as REFERENCE.md gives it (HU -> g/cm3).
REFERENCE_TABLE = {-1000: 0.00121, -837: 0.195, -525: 0.495, -67: 0.967, -35: 0.991, 10: 1.000, 52: 1.062,
                   256: 1.161, 1002: 1.609, 2067: 2.15, 4000: 2.82}


def test_generic_table_reproduces_the_reference_nodes():
    hu = np.array(list(REFERENCE_TABLE), dtype=float)
    np.testing.assert_allclose(hu_to_mass_density(hu), list(REFERENCE_TABLE.values()), rtol=1e-6)


def test_interpolation_is_linear_between_nodes():
    # Halfway between 256 HU (1.161) and 1002 HU (1.609).
    assert hu_to_mass_density(629.0) == pytest.approx((1.161 + 1.609) / 2, rel=1e-6)
    # A quarter of the way from -837 (0.195) to -525 (0.495).
    assert hu_to_mass_density(-759.0) == pytest.approx(0.195 + 0.25 * 0.3, rel=1e-6)


def test_values_outside_the_table_are_clamped():
    np.testing.assert_allclose(hu_to_mass_density(np.array([-3000.0, -1024.0])), [0.00121, 0.00121], rtol=1e-6)
    assert hu_to_mass_density(12000.0) == pytest.approx(2.82, rel=1e-6)
    top = hu_to_relative_electron_density(4000.0)
    assert hu_to_relative_electron_density(8000.0) == pytest.approx(float(top), rel=1e-6)


def test_electron_density_of_water_air_and_bone():
    assert hu_to_relative_electron_density(10.0) == pytest.approx(1.0, abs=1e-6)
    assert hu_to_relative_electron_density(0.0) == pytest.approx(0.998, abs=0.003)
    # Air: 1.21 mg/cm3 with Z/A 0.49919 against water's 0.55508.
    assert hu_to_relative_electron_density(-1000.0) == pytest.approx(0.00121 * 0.49919 / 0.55508, rel=1e-5)
    # Bone has fewer electrons per gram than water: its electron density is below its mass density.
    assert hu_to_relative_electron_density(1002.0) < hu_to_mass_density(1002.0)
    assert 1.45 < hu_to_relative_electron_density(1002.0) < 1.6


def test_generic_electron_density_increases_with_hu():
    hu = np.linspace(-1100, 4100, 2000)
    assert np.all(np.diff(hu_to_relative_electron_density(hu)) >= 0)


def test_output_shape_and_dtype_follow_the_input():
    hu = np.zeros((2, 3, 4), dtype=np.int16)
    result = hu_to_relative_electron_density(hu)
    assert result.shape == (2, 3, 4) and result.dtype == np.float32


def test_volume_conversion_keeps_the_geometry():
    direction = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    ct = Volume(np.full((2, 3, 4), 52, dtype=np.int16), (0.8, 0.9, 2.5), (1.0, 2.0, 3.0), direction)
    density = relative_electron_density_volume(ct)
    assert density.same_grid(ct)
    np.testing.assert_allclose(density.array, GENERIC_CALIBRATION.relative_electron_density[6], rtol=1e-6)


def test_custom_table_and_from_mass_density():
    table = CalibrationTable.from_mass_density([-1000, 0, 1000], [0.001, 1.0, 1.6], 1.0, source="test")
    assert table.relative_electron_density == pytest.approx((0.001, 1.0, 1.6))
    assert hu_to_relative_electron_density(500.0, table) == pytest.approx(1.3, rel=1e-6)
    assert table.source == "test"


def test_table_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        GENERIC_CALIBRATION.hu = (0.0, 1.0)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("hu", "mass", "electron", "message"),
    [
        ((-1000, 0, 0), (0.001, 1.0, 1.1), (0.001, 1.0, 1.1), "strictly increasing"),
        ((-1000, 100, 0), (0.001, 1.0, 1.1), (0.001, 1.0, 1.1), "node 2 \\(0.0 HU\\)"),
        ((-1000, 0), (0.0, 1.0), (0.001, 1.0), "mass_density_g_cm3 must be positive"),
        ((-1000, 0), (0.001, 1.0), (-0.1, 1.0), "relative_electron_density must be positive"),
        ((-1000, 0, 1000), (0.001, 1.0), (0.001, 1.0, 1.5), "one value per node"),
        ((0,), (1.0,), (1.0,), "at least two nodes"),
        ((-1000, float("nan")), (0.001, 1.0), (0.001, 1.0), "finite"),
    ],
)
def test_malformed_tables_are_rejected(hu, mass, electron, message):
    with pytest.raises(CalibrationError, match=message):
        CalibrationTable(hu, mass, electron)


def test_calibration_errors_are_dosimetry_errors():
    assert issubclass(CalibrationError, DosimetryError)


def test_non_finite_ct_numbers_are_rejected():
    with pytest.raises(CalibrationError, match="NaN or infinite"):
        hu_to_relative_electron_density(np.array([0.0, np.nan]))


def test_wrong_argument_types_are_rejected():
    with pytest.raises(CalibrationError, match="CalibrationTable"):
        hu_to_mass_density(0.0, table={"hu": [0, 1]})  # type: ignore[arg-type]
    with pytest.raises(CalibrationError, match="Volume"):
        relative_electron_density_volume(np.zeros((2, 2, 2)))  # type: ignore[arg-type]
