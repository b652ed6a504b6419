"""CT numbers to densities: relative electron density and mass density.

A :class:`CalibrationTable` holds a CT calibration curve as nodes
``(hu, mass density, relative electron density)``; values in between are
interpolated piecewise-linearly and values outside the table are clamped to
its first and last node (so metal above the top node gets the top density,
and anything below -1000 HU gets air).

The photon dose engine (:mod:`dosimetry.engine`) needs the relative electron
density (electrons per volume relative to water): in the megavoltage range the
Compton effect dominates, and its attenuation scales with electron density.

The generic default table
-------------------------
:data:`GENERIC_CALIBRATION` uses the generic HU -> mass density table that the
project's ``REFERENCE.md`` gives as "used by an open-source TPS" (the exact
program and scanner are not recorded there and were not verified here)::

    HU      -1000    -837   -525   -67    -35    10     52     256    1002   2067   4000
    g/cm3   0.00121  0.195  0.495  0.967  0.991  1.000  1.062  1.161  1.609  2.15   2.82

That table gives no electron densities. They are derived here as
``mass density * (Z/A of the tissue) / (Z/A of water)``, with Z/A of the
tissue each node most likely represents (ICRU Report 44 compositions):

=========  ===================  ======================  =============================
HU         tissue assumed       (Z/A) / (Z/A)_water     source of Z/A
=========  ===================  ======================  =============================
-1000      dry air              0.8993                  0.49919 / 0.55508
-837, -525 lung (inflated)      0.9903                  ICRU-44 lung 0.54965
-67, -35   adipose / fat        1.0013                  ICRU-44 adipose 0.55579
10         water                1.0000
52         muscle / soft tissue 0.9898                  ICRU-44 muscle 0.54938
256        spongiosa            0.9827                  linear in density between
1002       (mixed bone)         0.9498                  muscle (1.062) and cortical
                                                        bone (1.92 g/cm3)
2067, 4000 cortical bone        0.9274                  ICRU-44 cortical bone 0.51478
=========  ===================  ======================  =============================

These relative electron densities are an approximation for a *generic*
scanner. A clinic replaces the whole table with its own measured calibration
(for example from a CIRS 062 / Gammex 467 phantom scan) through
:class:`CalibrationTable`. For the sCT dose comparison the same table is used
on both images, so a table error largely cancels; and a 1 % dose error needs
more than an 8 % error in bone electron density (Thomas 1999).

References
----------
U. Schneider, E. Pedroni and A. Lomax, "The calibration of CT Hounsfield units
for radiotherapy treatment planning", Phys. Med. Biol. 41(1), 111-124 (1996),
doi:10.1088/0031-9155/41/1/009.

ICRU Report 44, "Tissue Substitutes in Radiation Dosimetry and Measurement"
(1989): tissue compositions, hence Z/A.

S. J. Thomas, "Relative electron density calibration of CT scanners for
radiotherapy treatment planning", Br. J. Radiol. 72(860), 781-786 (1999),
doi:10.1259/bjr.72.860.10624344.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dosimetry.errors import DosimetryError
from models.volume import Volume

__all__ = [
    "GENERIC_CALIBRATION",
    "CalibrationError",
    "CalibrationTable",
    "hu_to_mass_density",
    "hu_to_relative_electron_density",
    "relative_electron_density_volume",
]


class CalibrationError(DosimetryError):
    """A CT calibration table is malformed, or the CT numbers it is applied to are unusable."""


def _as_float_tuple(values: object, name: str) -> tuple[float, ...]:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise CalibrationError(f"{name} must be a sequence of numbers; found {values!r}") from error
    if array.ndim != 1:
        raise CalibrationError(f"{name} must be one-dimensional; found shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise CalibrationError(f"{name} must be finite; found {array.tolist()}")
    return tuple(float(v) for v in array)


@dataclass(frozen=True)
class CalibrationTable:
    """A CT calibration curve: CT number to mass density and relative electron density.

    Parameters
    ----------
    hu : sequence of float
        CT numbers of the nodes, HU, strictly increasing; at least two.
    mass_density_g_cm3 : sequence of float
        Mass density at each node, g/cm3, positive.
    relative_electron_density : sequence of float
        Electron density relative to water at each node, positive.
    source : str
        Where the table comes from (scanner, phantom, publication): shown in reports.

    Raises
    ------
    CalibrationError
        If the lengths differ, there are fewer than two nodes, the CT numbers
        do not strictly increase, or a density is not positive and finite.
        Densities need not increase (real stoichiometric tables can dip
        slightly between adipose and water), but they must stay positive.

    References
    ----------
    Schneider, Pedroni and Lomax, Phys. Med. Biol. 41, 111-124 (1996).
    """

    hu: tuple[float, ...]
    mass_density_g_cm3: tuple[float, ...]
    relative_electron_density: tuple[float, ...]
    source: str = "user supplied"

    def __post_init__(self) -> None:
        hu = _as_float_tuple(self.hu, "hu")
        mass = _as_float_tuple(self.mass_density_g_cm3, "mass_density_g_cm3")
        electron = _as_float_tuple(self.relative_electron_density, "relative_electron_density")
        if not (len(hu) == len(mass) == len(electron)):
            raise CalibrationError(
                "hu, mass_density_g_cm3 and relative_electron_density must have one value per node; "
                f"found lengths {len(hu)}, {len(mass)} and {len(electron)}"
            )
        if len(hu) < 2:
            raise CalibrationError(f"a calibration table needs at least two nodes; found {len(hu)}")
        steps = np.diff(hu)
        if np.any(steps <= 0):
            where = int(np.argmax(steps <= 0))
            raise CalibrationError(
                "hu must be strictly increasing; "
                f"node {where + 1} ({hu[where + 1]} HU) does not exceed node {where} ({hu[where]} HU)"
            )
        for name, values in (("mass_density_g_cm3", mass), ("relative_electron_density", electron)):
            bad = [(h, v) for h, v in zip(hu, values) if not v > 0]
            if bad:
                raise CalibrationError(f"{name} must be positive at every node; found {bad[0][1]} at {bad[0][0]} HU")
        if not isinstance(self.source, str):
            raise CalibrationError(f"source must be a string; found {type(self.source).__name__}")
        object.__setattr__(self, "hu", hu)
        object.__setattr__(self, "mass_density_g_cm3", mass)
        object.__setattr__(self, "relative_electron_density", electron)

    @classmethod
    def from_mass_density(
        cls,
        hu: Sequence[float],
        mass_density_g_cm3: Sequence[float],
        electrons_per_mass_relative_to_water: Sequence[float] | float = 1.0,
        source: str = "user supplied",
    ) -> CalibrationTable:
        """Build a table from HU -> mass density, deriving electron densities.

        Parameters
        ----------
        hu : sequence of float
            CT numbers of the nodes, HU.
        mass_density_g_cm3 : sequence of float
            Mass density at each node, g/cm3.
        electrons_per_mass_relative_to_water : float or sequence of float
            ``(Z/A) / (Z/A)_water`` at each node (one value for all nodes, or
            one per node); 1 treats every node as water-like in composition.
        source : str
            Provenance, for reports.

        Returns
        -------
        CalibrationTable

        Raises
        ------
        CalibrationError
            As the constructor, or if the ratio is not positive or has the wrong length.
        """
        mass = np.asarray(_as_float_tuple(mass_density_g_cm3, "mass_density_g_cm3"))
        if np.ndim(electrons_per_mass_relative_to_water) == 0:
            ratio = np.full(mass.shape, float(electrons_per_mass_relative_to_water))  # type: ignore[arg-type]
        else:
            ratio = np.asarray(
                _as_float_tuple(electrons_per_mass_relative_to_water, "electrons_per_mass_relative_to_water")
            )
        if ratio.shape != mass.shape:
            raise CalibrationError(
                f"electrons_per_mass_relative_to_water has {ratio.size} values for {mass.size} nodes"
            )
        if not np.all(np.isfinite(ratio) & (ratio > 0)):
            raise CalibrationError(f"electrons_per_mass_relative_to_water must be positive; found {ratio.tolist()}")
        return cls(tuple(hu), tuple(mass), tuple(mass * ratio), source)

    def mass_density_g_cm3_at(self, hu: np.ndarray | float) -> np.ndarray:
        """Mass density (g/cm3) at the given CT numbers; see :func:`hu_to_mass_density`."""
        return _interpolate(hu, self.hu, self.mass_density_g_cm3)

    def relative_electron_density_at(self, hu: np.ndarray | float) -> np.ndarray:
        """Relative electron density at the given CT numbers; see :func:`hu_to_relative_electron_density`."""
        return _interpolate(hu, self.hu, self.relative_electron_density)


def _interpolate(hu: np.ndarray | float, nodes_hu: tuple[float, ...], values: tuple[float, ...]) -> np.ndarray:
    array = np.asarray(hu, dtype=np.float64)
    if array.size and not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise CalibrationError(f"CT numbers contain {bad} NaN or infinite value(s); expected finite HU")
    # np.interp clamps at both ends, which is the documented behaviour.
    return np.interp(array, nodes_hu, values).astype(np.float32)


_Z_OVER_A_WATER = 0.55508
_RATIO_AIR = 0.49919 / _Z_OVER_A_WATER
_RATIO_LUNG = 0.54965 / _Z_OVER_A_WATER
_RATIO_ADIPOSE = 0.55579 / _Z_OVER_A_WATER
_RATIO_MUSCLE = 0.54938 / _Z_OVER_A_WATER
_RATIO_CORTICAL = 0.51478 / _Z_OVER_A_WATER


def _bone_mix_ratio(mass_density_g_cm3: float) -> float:
    """Z/A ratio of a muscle/cortical-bone mixture of the given density (linear in density)."""
    low, high = 1.062, 1.92
    fraction = min(max((mass_density_g_cm3 - low) / (high - low), 0.0), 1.0)
    return _RATIO_MUSCLE + fraction * (_RATIO_CORTICAL - _RATIO_MUSCLE)


_GENERIC_HU = (-1000.0, -837.0, -525.0, -67.0, -35.0, 10.0, 52.0, 256.0, 1002.0, 2067.0, 4000.0)
_GENERIC_MASS = (0.00121, 0.195, 0.495, 0.967, 0.991, 1.000, 1.062, 1.161, 1.609, 2.15, 2.82)
_GENERIC_RATIO = (
    _RATIO_AIR, _RATIO_LUNG, _RATIO_LUNG, _RATIO_ADIPOSE, _RATIO_ADIPOSE, 1.0, _RATIO_MUSCLE,
    _bone_mix_ratio(1.161), _bone_mix_ratio(1.609), _RATIO_CORTICAL, _RATIO_CORTICAL,
)

#: The generic table described in the module docstring.
GENERIC_CALIBRATION = CalibrationTable.from_mass_density(
    _GENERIC_HU,
    _GENERIC_MASS,
    _GENERIC_RATIO,
    source=(
        "generic HU->mass density table of an open-source TPS (REFERENCE.md); "
        "electron densities derived with ICRU-44 Z/A ratios"
    ),
)


def hu_to_mass_density(hu: np.ndarray | float, table: CalibrationTable = GENERIC_CALIBRATION) -> np.ndarray:
    """Mass density of CT numbers through a calibration table.

    Parameters
    ----------
    hu : array_like
        CT numbers, HU; finite.
    table : CalibrationTable, optional
        The calibration (default :data:`GENERIC_CALIBRATION`).

    Returns
    -------
    numpy.ndarray
        Mass density, g/cm3, float32, same shape; piecewise-linear between
        nodes and clamped to the end nodes outside the table.

    Raises
    ------
    CalibrationError
        If a CT number is NaN or infinite.

    References
    ----------
    Schneider, Pedroni and Lomax, Phys. Med. Biol. 41, 111-124 (1996).
    """
    return _require_table(table).mass_density_g_cm3_at(hu)


def hu_to_relative_electron_density(
    hu: np.ndarray | float, table: CalibrationTable = GENERIC_CALIBRATION
) -> np.ndarray:
    """Electron density relative to water of CT numbers through a calibration table.

    Parameters
    ----------
    hu : array_like
        CT numbers, HU; finite.
    table : CalibrationTable, optional
        The calibration (default :data:`GENERIC_CALIBRATION`).

    Returns
    -------
    numpy.ndarray
        Relative electron density (water = 1), float32, same shape;
        piecewise-linear between nodes and clamped outside the table.

    Raises
    ------
    CalibrationError
        If a CT number is NaN or infinite.

    References
    ----------
    Thomas, Br. J. Radiol. 72, 781-786 (1999).
    """
    return _require_table(table).relative_electron_density_at(hu)


def relative_electron_density_volume(ct_hu: Volume, table: CalibrationTable = GENERIC_CALIBRATION) -> Volume:
    """A CT (or sCT) volume in HU converted to relative electron density on the same grid.

    Parameters
    ----------
    ct_hu : models.volume.Volume
        CT numbers, HU.
    table : CalibrationTable, optional
        The calibration (default :data:`GENERIC_CALIBRATION`).

    Returns
    -------
    models.volume.Volume
        Relative electron density, float32, the input's geometry: the input
        that :func:`dosimetry.engine.compute_dose` expects.

    Raises
    ------
    CalibrationError
        If ``ct_hu`` is not a Volume or holds NaN or infinite values.
    """
    if not isinstance(ct_hu, Volume):
        raise CalibrationError(f"ct_hu must be a models.volume.Volume; found {type(ct_hu).__name__}")
    return ct_hu.with_array(hu_to_relative_electron_density(ct_hu.array, table))


def _require_table(table: object) -> CalibrationTable:
    if not isinstance(table, CalibrationTable):
        raise CalibrationError(f"table must be a CalibrationTable; found {type(table).__name__}")
    return table

