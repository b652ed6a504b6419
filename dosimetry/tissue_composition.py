"""Tissue plausibility of an sCT without a reference CT: where soft tissue lies, how much fat, where bone is.

The class fractions of :func:`dosimetry.hu_statistics.hu_statistics` say how much
of the body falls in each HU window, but not whether the tissue in a window
belongs there. A model that turns brain (about +30 HU) into -89 HU moves it
into the fat window; averaging only the voxels that stayed in the soft-tissue
window then still gives a normal soft-tissue mean. :func:`tissue_composition`
measures three things that do notice:

* **The soft-tissue peak** (:attr:`TissueComposition.soft_tissue_peak_hu`):
  the histogram of the body voxels in the fat and soft-tissue windows
  ([-190, 200) HU by default), smoothed, and its local maxima; the soft-tissue
  peak is the densest maximum that is at least
  :data:`PEAK_MIN_RELATIVE_PROMINENCE` of the tallest one. Soft tissue is the
  densest tissue below bone, so it is the right-most peak whatever the share
  of fat; fat only adds a peak near -100 HU on its left. When soft tissue has
  been moved into the fat window there is no peak left where soft tissue
  should be, and the right-most peak is the misplaced one.
* **The fat share** (:attr:`TissueComposition.fat_share_percent`): fat over
  fat plus soft tissue, in percent. It does not depend on how much air or bone
  the field of view holds. A head is mostly brain and muscle with a thin
  scalp fat layer; a pelvis can hold more fat than muscle.
* **Bone where the anatomy needs it** (:attr:`TissueComposition.bone_slice_percent`):
  the share of body slices whose body cross-section holds bone. Every axial
  slice of a head (skull vault, skull base, mandible, cervical spine) and of a
  pelvis (ilium, sacrum, acetabula, femoral heads) cuts bone; an sCT without a
  skull or a pelvis has none, however many stray voxels above 200 HU it holds.

Typical CT numbers (the sources of the limits in :mod:`dosimetry.verdict`):

=====================  ===================  =========================================================
tissue                 HU                   source
=====================  ===================  =========================================================
fat (adipose)          -100 +/- 20          Schneider et al. 2000 (adipose tissue about -100 HU);
                                            Kvist et al. 1988 window -190...-30 HU
brain white matter     about 20-30          Bushberg et al. 2012, ch. 10 (white matter about 30)
brain grey matter      about 35-45          Bushberg et al. 2012, ch. 10 (grey matter about 40)
skeletal muscle        about 40-50          Bushberg et al. 2012; Mitsiopoulos et al. 1998 (-29...150)
spongiosa              about 200-400        Schneider et al. 2000
cortical bone          above 700 (to 2000)  Schneider et al. 2000 (cortical bone above 1000 HU)
=====================  ===================  =========================================================

What this cannot know: a soft tissue a few tens of HU off, a fat layer of the
wrong thickness or a bone of the wrong shape still look plausible; only a real
CT shows those. The limits are for whole heads and pelves; a field of view
cut to a skull-stripped brain has no bone and fails on purpose (the model
sees no skull, so the sCT has none and the dose behind it is wrong).

References
----------
W. Schneider, T. Bortfeld and W. Schlegel, "Correlation between CT numbers
and tissue parameters needed for Monte Carlo simulations of clinical dose
distributions", Phys. Med. Biol. 45(2), 459-478 (2000).

J. T. Bushberg et al., "The Essential Physics of Medical Imaging", 3rd ed.,
Lippincott Williams & Wilkins (2012), ch. 10 (typical CT numbers).

H. Kvist et al., Am. J. Clin. Nutr. 48(6), 1351-1361 (1988) (adipose window).

N. Mitsiopoulos et al., J. Appl. Physiol. 85(1), 115-122 (1998) (muscle
-29...150 HU, adipose -190...-30 HU).

ICRU Report 44, "Tissue substitutes in radiation dosimetry and measurement"
(1989) (composition of the reference tissues).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal

from dosimetry._grids import as_mask, require_nonempty, require_volume
from dosimetry.errors import DosimetryError
from dosimetry.tissue_classes import TissueClass, TissueThresholdsHu
from models.volume import Volume

__all__ = [
    "HISTOGRAM_BIN_HU",
    "HISTOGRAM_SMOOTHING_HU",
    "PEAK_MIN_RELATIVE_PROMINENCE",
    "SLICE_BONE_MIN_PERCENT",
    "SLICE_MIN_BODY_PERCENT",
    "TissueComposition",
    "tissue_composition",
]

#: Bin width of the histogram the peaks are found in.
HISTOGRAM_BIN_HU: float = 2.0
#: Gaussian smoothing of that histogram (standard deviation): about CT noise in soft tissue, so that noise
#: and small organs (urine at 10 HU next to muscle at 45 HU) do not split one tissue into several peaks.
HISTOGRAM_SMOOTHING_HU: float = 10.0
#: A local maximum counts as a tissue peak when its prominence is at least this share of the tallest peak.
PEAK_MIN_RELATIVE_PROMINENCE: float = 0.1
#: A slice holds bone when at least this share of its body cross-section is bone (a vertebra is 2-5 % of
#: an abdominal section, a femoral head 3-5 % of a pelvic one, the skull 10-40 % of a head section).
SLICE_BONE_MIN_PERCENT: float = 1.0
#: Slices whose body cross-section is smaller than this share of the largest one (the top of the scalp,
#: the last slice through the thighs) are not judged for bone: they may cut only skin.
SLICE_MIN_BODY_PERCENT: float = 10.0


@dataclass(frozen=True)
class TissueComposition:
    """Where the tissues of an sCT body lie and how much of each there is.

    Attributes
    ----------
    soft_tissue_peak_hu : float
        The densest tissue peak of the body histogram in the fat and
        soft-tissue windows (module docstring); NaN when the body has no voxel there.
    fat_peak_hu : float
        The peak in the fat window with the most voxels under it, NaN without one
        (reported, not judged: with little fat it is only noise).
    peaks_hu : tuple of float
        Every tissue peak found, in increasing HU.
    fat_share_percent : float
        Fat voxels over fat plus soft-tissue voxels of the body, in percent;
        NaN when the body holds neither.
    bone_slice_percent : float
        Judged body slices holding bone, over judged body slices, in percent.
    judged_slice_count : int
        Body slices judged for bone (see :data:`SLICE_MIN_BODY_PERCENT`).
    slices_without_bone : tuple of int
        Indices of the judged slices without bone.
    """

    soft_tissue_peak_hu: float
    fat_peak_hu: float
    peaks_hu: tuple[float, ...]
    fat_share_percent: float
    bone_slice_percent: float
    judged_slice_count: int
    slices_without_bone: tuple[int, ...]


def tissue_composition(sct: Volume, body_mask: np.ndarray, thresholds: TissueThresholdsHu | None = None,
                       smoothing_hu: float = HISTOGRAM_SMOOTHING_HU) -> TissueComposition:
    """Soft-tissue peak, fat share and bone per slice of an sCT inside the body.

    Parameters
    ----------
    sct : Volume
        Synthetic CT in HU (z, y, x).
    body_mask : numpy.ndarray
        Body mask on the sCT's grid (boolean, or numeric binarised at > 0).
    thresholds : TissueThresholdsHu, optional
        Tissue class boundaries (the fat window is ``[lung_below_hu, fat_below_hu)``,
        soft tissue ``[fat_below_hu, bone_from_hu)``); the documented defaults when omitted.
    smoothing_hu : float
        Standard deviation (HU) of the Gaussian that smooths the histogram; positive.

    Returns
    -------
    TissueComposition

    Raises
    ------
    DosimetryError
        If ``sct`` is not a 3D Volume, the mask does not fit its grid or is
        empty, or ``smoothing_hu`` is not a positive number.

    References
    ----------
    Schneider et al. 2000; Bushberg et al. 2012 (module docstring).
    """
    require_volume(sct, "sCT")
    if len(sct.shape) != 3:
        raise DosimetryError(f"the sCT must be 3D (z, y, x); found shape {sct.shape}")
    if not (math.isfinite(smoothing_hu) and smoothing_hu > 0):
        raise DosimetryError(f"smoothing_hu must be a positive number of HU; found {smoothing_hu}")
    body = as_mask(body_mask, sct.shape, "body mask")
    require_nonempty(body, "body mask")
    thresholds = thresholds or TissueThresholdsHu()
    fat_low, fat_high = thresholds.interval_hu(TissueClass.FAT)
    soft_low, soft_high = thresholds.interval_hu(TissueClass.SOFT_TISSUE)
    array = np.asarray(sct.array)
    values = array[body].astype(np.float64)

    with np.errstate(invalid="ignore"):  # NaN belongs to no window
        fat_count = int(np.count_nonzero((values >= fat_low) & (values < fat_high)))
        soft_count = int(np.count_nonzero((values >= soft_low) & (values < soft_high)))
        window = values[(values >= fat_low) & (values < soft_high)]
    fat_share = 100.0 * fat_count / (fat_count + soft_count) if fat_count + soft_count else math.nan
    peaks = _peaks_hu(window, fat_low, soft_high, smoothing_hu)
    soft_peak = peaks[-1][0] if peaks else math.nan
    fat_peaks = [p for p in peaks if fat_low <= p[0] < fat_high]
    fat_peak = max(fat_peaks, key=lambda p: p[1])[0] if fat_peaks else math.nan

    with np.errstate(invalid="ignore"):
        bone = body & (array >= thresholds.bone_from_hu)
    area = np.count_nonzero(body, axis=(1, 2))
    bone_area = np.count_nonzero(bone, axis=(1, 2))
    judged = np.flatnonzero(area >= SLICE_MIN_BODY_PERCENT / 100.0 * area.max())
    without = judged[bone_area[judged] < SLICE_BONE_MIN_PERCENT / 100.0 * area[judged]]
    return TissueComposition(
        soft_tissue_peak_hu=soft_peak,
        fat_peak_hu=fat_peak,
        peaks_hu=tuple(p[0] for p in peaks),
        fat_share_percent=fat_share,
        bone_slice_percent=100.0 * (judged.size - without.size) / judged.size,
        judged_slice_count=int(judged.size),
        slices_without_bone=tuple(int(k) for k in without),
    )


def _peaks_hu(values: np.ndarray, low_hu: float, high_hu: float,
              smoothing_hu: float) -> list[tuple[float, float]]:
    """Tissue peaks ``(hu, voxels under the peak)`` of ``values`` in ``[low_hu, high_hu)``, increasing HU."""
    if values.size == 0:
        return []
    edges = np.arange(low_hu, high_hu + HISTOGRAM_BIN_HU, HISTOGRAM_BIN_HU)
    counts, _ = np.histogram(values, bins=edges)
    # Zero padding on both sides: a tissue piled up at a window edge still makes a peak.
    pad = math.ceil(4 * smoothing_hu / HISTOGRAM_BIN_HU)
    padded = np.concatenate([np.zeros(pad), counts.astype(np.float64), np.zeros(pad)])
    smooth = ndimage.gaussian_filter1d(padded, smoothing_hu / HISTOGRAM_BIN_HU, mode="constant")
    index, properties = signal.find_peaks(smooth, prominence=PEAK_MIN_RELATIVE_PROMINENCE * smooth.max())
    centres = np.concatenate([low_hu - HISTOGRAM_BIN_HU * (np.arange(pad, 0, -1) - 0.5),
                              (edges[:-1] + edges[1:]) / 2.0,
                              edges[-1] + HISTOGRAM_BIN_HU * (np.arange(pad) + 0.5)])
    # A peak at a padded position lies beyond the window edge: it belongs to the edge.
    peaks = []
    for i, left, right in zip(index, properties["left_bases"], properties["right_bases"]):
        hu = float(np.clip(centres[i], edges[0] + HISTOGRAM_BIN_HU / 2, edges[-1] - HISTOGRAM_BIN_HU / 2))
        peaks.append((hu, float(smooth[left:right + 1].sum())))
    return sorted(peaks)
