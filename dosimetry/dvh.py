"""Cumulative dose-volume histograms, their dose and volume metrics, and DVH comparison.

A structure is a boolean mask on the dose grid; every voxel counts with the
same volume (the grid's voxel volume), whole or not at all. The cumulative
DVH is

    V(D) = fraction of the structure's voxels whose dose is >= D,

known exactly at each distinct voxel dose ``d_1 < ... < d_m`` and drawn as
straight lines between consecutive ones (``V = 1`` below ``d_1``, ``V = 0``
above ``d_m``). Metrics read off that polyline:

* ``V(D)`` ("V_D"): the polyline at ``D``; ``V95%`` is ``V(0.95 * prescription)``.
* ``D_x%``: the largest dose ``D`` with ``V(D) >= x %``, i.e. the dose that at
  least ``x %`` of the volume receives (ICRU 83's definition of D98%, D50%,
  D2%). Between two distinct doses it is interpolated linearly, so
  ``V(D_x%) = x %`` wherever the polyline passes through ``x %``; where ``x %``
  falls in the last step (``x %`` below the share of voxels at the maximum
  dose) it is the maximum dose.
* ``Dmean`` and ``Dmax``: the mean and largest voxel dose.

Because each voxel holds its whole volume at its dose, ``D_x%`` of a dose
sampled on voxels sits up to half a dose step above the value of the
continuous distribution it samples: across a linear gradient of ``N`` voxel
steps, D50% is the dose of step ``N/2`` (the lower edge of the hotter half),
half a step above the midpoint of the dose range. The offset shrinks with the
grid spacing; a comparison of two DVHs on one grid (CT vs sCT) cancels it.

References
----------
ICRU Report 83, "Prescribing, recording, and reporting photon-beam
intensity-modulated radiation therapy (IMRT)", J. ICRU 10(1) (2010), section
3 (D98%, D50%, D2%; near-minimum and near-maximum dose).

R. E. Drzymala et al., "Dose-volume histograms", Int. J. Radiat. Oncol.
Biol. Phys. 21(1), 71-78 (1991).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dosimetry._grids import as_mask, require_finite, require_nonempty, require_volume
from dosimetry.errors import DosimetryError
from models.volume import Volume

__all__ = [
    "CumulativeDvh",
    "DoseMetricDifference",
    "DvhComparison",
    "DvhMetrics",
    "VolumeMetricDifference",
    "compare_dvh_metrics",
    "cumulative_dvh",
    "dvh_from_samples",
    "dvh_metrics",
]

_MM3_PER_CC = 1000.0


@dataclass(frozen=True, eq=False)
class CumulativeDvh:
    """The cumulative DVH of one structure.

    Attributes
    ----------
    structure : str
        Structure name.
    dose_gy : numpy.ndarray
        Distinct voxel doses in Gy, increasing (read-only).
    volume_fraction : numpy.ndarray
        Fraction of the structure receiving at least ``dose_gy[i]``; strictly
        decreasing from 1 (read-only).
    voxel_count : int
    voxel_volume_cc : float
    mean_dose_gy : float
    """

    structure: str
    dose_gy: np.ndarray
    volume_fraction: np.ndarray
    voxel_count: int
    voxel_volume_cc: float
    mean_dose_gy: float

    @property
    def volume_cc(self) -> float:
        """Structure volume in cm^3."""
        return self.voxel_count * self.voxel_volume_cc

    @property
    def min_dose_gy(self) -> float:
        """Smallest voxel dose."""
        return float(self.dose_gy[0])

    @property
    def max_dose_gy(self) -> float:
        """Largest voxel dose (Dmax)."""
        return float(self.dose_gy[-1])

    def volume_percent_at_dose(self, dose_gy: float) -> float:
        """``V(dose_gy)``: percent of the volume receiving at least ``dose_gy`` (interpolated).

        Raises
        ------
        DosimetryError
            If ``dose_gy`` is not finite.
        """
        if not math.isfinite(dose_gy):
            raise DosimetryError(f"dose_gy must be a finite dose; found {dose_gy}")
        return 100.0 * float(np.interp(dose_gy, self.dose_gy, self.volume_fraction, left=1.0, right=0.0))

    def volume_cc_at_dose(self, dose_gy: float) -> float:
        """``V(dose_gy)`` in cm^3."""
        return self.volume_percent_at_dose(dose_gy) / 100.0 * self.volume_cc

    def dose_at_volume_percent(self, volume_percent: float) -> float:
        """``D_x%`` in Gy: the largest dose that ``volume_percent`` % of the volume receives.

        Raises
        ------
        DosimetryError
            If ``volume_percent`` is outside [0, 100].
        """
        if not (math.isfinite(volume_percent) and 0.0 <= volume_percent <= 100.0):
            raise DosimetryError(f"volume_percent must lie in [0, 100]; found {volume_percent}")
        # volume_fraction is strictly decreasing, so reversed it is a valid abscissa for np.interp; fractions
        # below the last step (the share at the maximum dose) map to the maximum dose.
        return float(np.interp(volume_percent / 100.0, self.volume_fraction[::-1], self.dose_gy[::-1]))

    def dose_at_volume_cc(self, volume_cc: float) -> float:
        """``D_V`` in Gy for an absolute volume in cm^3 (at most the structure volume).

        Raises
        ------
        DosimetryError
            If ``volume_cc`` is negative or larger than the structure.
        """
        if not (math.isfinite(volume_cc) and 0.0 <= volume_cc <= self.volume_cc * (1 + 1e-12)):
            raise DosimetryError(
                f"volume_cc must lie in [0, {self.volume_cc:g}] cc (the volume of {self.structure!r}); "
                f"found {volume_cc}"
            )
        return self.dose_at_volume_percent(min(100.0, 100.0 * volume_cc / self.volume_cc))


def cumulative_dvh(dose: Volume, structure_mask: np.ndarray, structure: str) -> CumulativeDvh:
    """The cumulative DVH of a structure.

    Parameters
    ----------
    dose : Volume
        Dose in Gy.
    structure_mask : numpy.ndarray
        Boolean (or numeric, binarised at > 0) mask on the dose grid (z, y, x).
    structure : str
        Its name, carried into the results and error messages.

    Returns
    -------
    CumulativeDvh

    Raises
    ------
    DosimetryError
        If ``dose`` is not a Volume, the mask's shape is not the dose grid's,
        the structure has no voxel, or a dose inside it is NaN or infinite.

    References
    ----------
    Drzymala et al. 1991 (module docstring).
    """
    require_volume(dose, "dose")
    mask = as_mask(structure_mask, dose.shape, f"mask of structure {structure!r}")
    require_nonempty(mask, f"structure {structure!r} on the dose grid")
    return dvh_from_samples(dose.array[mask], float(np.prod(dose.spacing_mm)) / _MM3_PER_CC, structure)


def dvh_from_samples(doses: np.ndarray, voxel_volume_cc: float, structure: str,
                     weights: np.ndarray | None = None) -> CumulativeDvh:
    """The cumulative DVH of dose samples that each stand for ``weights`` voxels of ``voxel_volume_cc``.

    The samples are the dose at the structure's voxels on the image grid and, with a super-sampled
    boundary, at sub-voxel points weighted by their share of a voxel
    (:meth:`dosimetry.structures.StructureMask.dose_samples`): that is how the QA's DVHs avoid
    down-sampling structures to the coarser dose grid. Without ``weights`` each sample is one voxel. With
    them, ``voxel_count`` is the number of samples and ``voxel_volume_cc`` their mean volume, so that
    ``volume_cc`` is the structure's volume.

    Raises
    ------
    DosimetryError
        No sample, a NaN or infinite one, a non-positive voxel volume or weight.
    """
    samples = np.asarray(doses, dtype=np.float64).ravel()
    count = require_nonempty(np.ones(samples.shape, dtype=bool), f"structure {structure!r}")
    require_finite(samples, None, f"dose in structure {structure!r}")
    if not (math.isfinite(voxel_volume_cc) and voxel_volume_cc > 0):
        raise DosimetryError(f"voxel_volume_cc must be a positive volume; found {voxel_volume_cc}")
    weight = np.ones(count) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if weight.shape != samples.shape or not np.all(np.isfinite(weight)) or np.any(weight <= 0):
        raise DosimetryError(f"weights of structure {structure!r} must be one positive number per dose sample")
    distinct, inverse = np.unique(samples, return_inverse=True)
    per_dose = np.bincount(inverse.ravel(), weights=weight, minlength=len(distinct))
    total = float(weight.sum())
    at_least = np.cumsum(per_dose[::-1])[::-1] / total
    distinct.setflags(write=False)
    at_least.setflags(write=False)
    return CumulativeDvh(structure, distinct, at_least, count, float(voxel_volume_cc) * total / count,
                         float(np.dot(samples, weight) / total))


@dataclass(frozen=True)
class DvhMetrics:
    """The standard DVH points of one structure.

    Attributes
    ----------
    structure : str
    prescription_dose_gy : float
    volume_cc : float
    d98_gy, d95_gy, d50_gy, d2_gy : float
        ``D_x%`` (near-minimum D98%, median D50%, near-maximum D2%).
    dmean_gy, dmax_gy : float
    v95_percent : float
        Percent of the volume receiving at least 95 % of the prescription.
    """

    structure: str
    prescription_dose_gy: float
    volume_cc: float
    d98_gy: float
    d95_gy: float
    d50_gy: float
    d2_gy: float
    dmean_gy: float
    dmax_gy: float
    v95_percent: float


def dvh_metrics(dvh: CumulativeDvh, prescription_dose_gy: float) -> DvhMetrics:
    """D98%, D95%, D50%, D2%, Dmean, Dmax and V95% of a DVH.

    Parameters
    ----------
    dvh : CumulativeDvh
    prescription_dose_gy : float
        Prescribed dose in Gy, positive (the reference of V95% and of the
        percentage differences).

    Returns
    -------
    DvhMetrics

    Raises
    ------
    DosimetryError
        If the prescription is not a positive dose.

    References
    ----------
    ICRU Report 83 (module docstring).
    """
    if not isinstance(dvh, CumulativeDvh):
        raise DosimetryError(f"dvh must be a CumulativeDvh; found {type(dvh).__name__}")
    _require_prescription(prescription_dose_gy)
    return DvhMetrics(
        structure=dvh.structure,
        prescription_dose_gy=float(prescription_dose_gy),
        volume_cc=dvh.volume_cc,
        d98_gy=dvh.dose_at_volume_percent(98.0),
        d95_gy=dvh.dose_at_volume_percent(95.0),
        d50_gy=dvh.dose_at_volume_percent(50.0),
        d2_gy=dvh.dose_at_volume_percent(2.0),
        dmean_gy=dvh.mean_dose_gy,
        dmax_gy=dvh.max_dose_gy,
        v95_percent=dvh.volume_percent_at_dose(0.95 * prescription_dose_gy),
    )


@dataclass(frozen=True)
class DoseMetricDifference:
    """One dose metric of two DVHs.

    Attributes
    ----------
    name : str
        ``"D98%"``, ``"D95%"``, ``"D50%"``, ``"D2%"``, ``"Dmean"`` or ``"Dmax"``.
    reference_gy, evaluated_gy : float
    difference_gy : float
        ``evaluated_gy - reference_gy``.
    difference_percent_of_prescription : float
        ``100 * difference_gy / prescription``.
    """

    name: str
    reference_gy: float
    evaluated_gy: float
    difference_gy: float
    difference_percent_of_prescription: float


@dataclass(frozen=True)
class VolumeMetricDifference:
    """One volume metric of two DVHs.

    Attributes
    ----------
    name : str
        ``"V95%"``.
    reference_percent, evaluated_percent : float
        Percent of the structure volume.
    difference_percent_points : float
        ``evaluated_percent - reference_percent``.
    """

    name: str
    reference_percent: float
    evaluated_percent: float
    difference_percent_points: float


@dataclass(frozen=True)
class DvhComparison:
    """Differences (evaluated minus reference) of every DVH metric of one structure.

    Attributes
    ----------
    structure : str
    prescription_dose_gy : float
    d98, d95, d50, d2, dmean, dmax : DoseMetricDifference
    v95 : VolumeMetricDifference
    """

    structure: str
    prescription_dose_gy: float
    d98: DoseMetricDifference
    d95: DoseMetricDifference
    d50: DoseMetricDifference
    d2: DoseMetricDifference
    dmean: DoseMetricDifference
    dmax: DoseMetricDifference
    v95: VolumeMetricDifference

    @property
    def dose_differences(self) -> tuple[DoseMetricDifference, ...]:
        """The six dose metrics, in the order D98%, D95%, D50%, D2%, Dmean, Dmax."""
        return (self.d98, self.d95, self.d50, self.d2, self.dmean, self.dmax)


def compare_dvh_metrics(reference: DvhMetrics, evaluated: DvhMetrics) -> DvhComparison:
    """Differences of every DVH metric, in Gy and in percent of the prescription.

    Parameters
    ----------
    reference : DvhMetrics
        Usually the plan's dose on the CT.
    evaluated : DvhMetrics
        The same structure and prescription, usually recomputed on the sCT.

    Returns
    -------
    DvhComparison

    Raises
    ------
    DosimetryError
        If the structures or the prescriptions differ.
    """
    for name, value in (("reference", reference), ("evaluated", evaluated)):
        if not isinstance(value, DvhMetrics):
            raise DosimetryError(f"{name} must be DvhMetrics; found {type(value).__name__}")
    if reference.structure != evaluated.structure:
        raise DosimetryError(
            f"cannot compare DVHs of different structures: {reference.structure!r} vs {evaluated.structure!r}"
        )
    if not math.isclose(reference.prescription_dose_gy, evaluated.prescription_dose_gy, rel_tol=1e-9):
        raise DosimetryError(
            f"DVHs of {reference.structure!r} use different prescriptions: "
            f"{reference.prescription_dose_gy:g} Gy vs {evaluated.prescription_dose_gy:g} Gy"
        )
    prescription = reference.prescription_dose_gy

    def dose_difference(name: str, field: str) -> DoseMetricDifference:
        ref, ev = getattr(reference, field), getattr(evaluated, field)
        return DoseMetricDifference(name, ref, ev, ev - ref, 100.0 * (ev - ref) / prescription)

    return DvhComparison(
        structure=reference.structure,
        prescription_dose_gy=prescription,
        d98=dose_difference("D98%", "d98_gy"),
        d95=dose_difference("D95%", "d95_gy"),
        d50=dose_difference("D50%", "d50_gy"),
        d2=dose_difference("D2%", "d2_gy"),
        dmean=dose_difference("Dmean", "dmean_gy"),
        dmax=dose_difference("Dmax", "dmax_gy"),
        v95=VolumeMetricDifference("V95%", reference.v95_percent, evaluated.v95_percent,
                                   evaluated.v95_percent - reference.v95_percent),
    )


def _require_prescription(prescription_dose_gy: float) -> None:
    if not (isinstance(prescription_dose_gy, (int, float, np.floating, np.integer))
            and not isinstance(prescription_dose_gy, bool)
            and math.isfinite(prescription_dose_gy) and prescription_dose_gy > 0):
        raise DosimetryError(f"prescription_dose_gy must be a positive dose in Gy; found {prescription_dose_gy!r}")
