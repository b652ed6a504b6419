"""CT numbers of an sCT inside the body: the share of each tissue class, class means, invalid values.

:func:`hu_statistics` measures, inside the body, the share of each tissue
class (:mod:`dosimetry.tissue_classes`), the mean HU of soft tissue and of
bone, NaN/inf counts, the HU extremes and the share of values that are not a
valid CT number in [-1024, 3071] HU (the 12-bit range SynthRAD2025 stores).
It runs on every sCT, with or without a reference CT, and returns measured
values only: thresholds and PASS/WARN/FAIL live in :mod:`dosimetry.verdict`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dosimetry._grids import as_mask, require_nonempty, require_volume
from dosimetry.tissue_classes import TISSUE_CLASSES, TissueClass, TissueThresholdsHu
from models.volume import Volume

__all__ = ["HU_VALID_RANGE", "HuStatistics", "TissueFraction", "hu_statistics"]

#: Valid CT numbers (inclusive): the 12-bit range of a CT stored as int16, as SynthRAD2025 clips it.
HU_VALID_RANGE: tuple[float, float] = (-1024.0, 3071.0)


@dataclass(frozen=True)
class TissueFraction:
    """Share of the body in one tissue class.

    Attributes
    ----------
    tissue : TissueClass
    lower_hu, upper_hu : float
        The class interval ``[lower_hu, upper_hu)``.
    voxel_count : int
    fraction : float
        ``voxel_count`` over the body's voxel count, in [0, 1].
    """

    tissue: TissueClass
    lower_hu: float
    upper_hu: float
    voxel_count: int
    fraction: float

    @property
    def percent(self) -> float:
        """:attr:`fraction` in percent."""
        return 100.0 * self.fraction


@dataclass(frozen=True)
class HuStatistics:
    """CT numbers of an sCT inside the body.

    Attributes
    ----------
    body_voxel_count : int
    tissue_fractions : tuple of TissueFraction
        In :data:`~dosimetry.tissue_classes.TISSUE_CLASSES` order. NaN voxels
        belong to no class, so the fractions sum to 1 minus the NaN share.
    soft_tissue_mean_hu, bone_mean_hu : float or None
        Mean HU of the body voxels in that class; None when it has none.
    nan_count, inf_count : int
        NaN and +/-infinite voxels inside the body.
    nonfinite_count_outside_body : int
        NaN or infinite voxels elsewhere (a dose engine reads those too).
    min_hu, max_hu : float or None
        Extremes of the finite body voxels; None when there are none.
    invalid_count : int
        Body voxels that are not a CT number in :data:`HU_VALID_RANGE`
        (below, above, infinite or NaN).
    invalid_fraction : float
        ``invalid_count`` over ``body_voxel_count``.
    """

    body_voxel_count: int
    tissue_fractions: tuple[TissueFraction, ...]
    soft_tissue_mean_hu: float | None
    bone_mean_hu: float | None
    nan_count: int
    inf_count: int
    nonfinite_count_outside_body: int
    min_hu: float | None
    max_hu: float | None
    invalid_count: int
    invalid_fraction: float

    def tissue(self, tissue: TissueClass | str) -> TissueFraction:
        """The entry of ``tissue`` (a :class:`TissueClass` or its value, e.g. ``"bone"``)."""
        wanted = TissueClass(tissue)
        return next(entry for entry in self.tissue_fractions if entry.tissue == wanted)


def hu_statistics(sct: Volume, body_mask: np.ndarray, thresholds: TissueThresholdsHu | None = None) -> HuStatistics:
    """Tissue shares, class means and invalid values of an sCT inside the body.

    Parameters
    ----------
    sct : Volume
        Synthetic CT in HU.
    body_mask : numpy.ndarray
        Body mask on the sCT's grid (boolean, or numeric binarised at > 0),
        normally the MR body mask.
    thresholds : TissueThresholdsHu, optional
        Tissue class boundaries; the documented defaults when omitted.

    Returns
    -------
    HuStatistics

    Raises
    ------
    DosimetryError
        If ``sct`` is not a Volume, the mask does not fit its grid or is empty.
    """
    require_volume(sct, "sCT")
    body = as_mask(body_mask, sct.shape, "body mask")
    body_count = require_nonempty(body, "body mask")
    thresholds = thresholds or TissueThresholdsHu()
    values = sct.array[body].astype(np.float64)
    labels = thresholds.classify(values)
    fractions = []
    class_means: dict[TissueClass, float | None] = {}
    for index, tissue in enumerate(TISSUE_CLASSES):
        selected = labels == index
        count = int(np.count_nonzero(selected))
        lower, upper = thresholds.interval_hu(tissue)
        fractions.append(TissueFraction(tissue, lower, upper, count, count / body_count))
        # +/-inf voxels are classified (as bone/air) but would make a mean meaningless.
        finite = values[selected & np.isfinite(values)]
        class_means[tissue] = float(np.mean(finite)) if finite.size else None
    finite_values = values[np.isfinite(values)]
    low, high = HU_VALID_RANGE
    with np.errstate(invalid="ignore"):
        valid = (values >= low) & (values <= high)  # False for NaN and +/-inf
    outside = sct.array[~body]
    invalid_count = int(values.size - np.count_nonzero(valid))
    return HuStatistics(
        body_voxel_count=body_count,
        tissue_fractions=tuple(fractions),
        soft_tissue_mean_hu=class_means[TissueClass.SOFT_TISSUE],
        bone_mean_hu=class_means[TissueClass.BONE],
        nan_count=int(np.count_nonzero(np.isnan(values))),
        inf_count=int(np.count_nonzero(np.isinf(values))),
        nonfinite_count_outside_body=int(np.count_nonzero(~np.isfinite(outside))),
        min_hu=float(finite_values.min()) if finite_values.size else None,
        max_hu=float(finite_values.max()) if finite_values.size else None,
        invalid_count=invalid_count,
        invalid_fraction=invalid_count / body_count,
    )
