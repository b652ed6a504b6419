"""Write masks as an RT Structure Set on an image series.

Contours are the 0.5 iso-lines of each slice's mask (marching squares, via
contourpy, which matplotlib already depends on), so a contour runs midway
between inside and outside pixel centres and rasterising it again gives the
mask back. Every contour references the image of its slice (Contour Image
Sequence), which Eclipse requires.

Holes (the marrow inside a cortical ring, the inside of the skull ring) are
written with the **keyhole** technique of PS3.3 C.8.8.6.3: each hole is joined
to the contour around it by a zero-width channel, so an ROI with holes is one
CLOSED_PLANAR contour per outer boundary. It is the one encoding every reader
gets right: readers that combine a slice's contours by even-odd (XOR) and
readers that fill every contour and take the union (plastimatch 1.9 does; it
filled our separate hole contours, +4 % BONE volume) both recover the mask.
The newer CLOSEDPLANAR_XOR geometric type would say the same with separate
contours, but planning systems that predate it refuse or misread it. The
channel runs horizontally at a half-pixel row when the hole has a vertex
there, so it passes through no pixel centre; an island inside a hole is an
outer contour of its own.

rt-utils is not used for writing: it writes Implicit VR with random UIDs and a
borrowed Implementation Class UID, and has had row/column mix-ups on
non-square images (rt-utils issues 88 and 92).

References
----------
DICOM PS3.3 A.19 (RT Structure Set IOD), C.8.8.5 (Structure Set Module),
C.8.8.6 (ROI Contour Module), C.8.8.8 (RT ROI Observations Module).
W. E. Lorensen, H. E. Cline, "Marching cubes", SIGGRAPH 1987 (the 2D
variant, marching squares).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass
from pathlib import Path

import contourpy
import numpy as np
import pydicom
from matplotlib.path import Path as PolygonPath
from pydicom.sequence import Sequence

from models.volume import Volume
from sct_node.dicom.image_writer import derived_object, dicom_date_time, write_dataset_atomic
from sct_node.dicom.uids import RT_STRUCTURE_SET_STORAGE
from sct_node.errors import OutputError

__all__ = ["INTERPRETED_TYPES", "RoiSpec", "mask_contours", "write_rtstruct"]

#: The defined terms of RT ROI Interpreted Type (PS3.3 C.8.8.8.1); "" is an empty (Type 2) value.
INTERPRETED_TYPES = ("EXTERNAL", "PTV", "CTV", "GTV", "TREATED_VOLUME", "IRRAD_VOLUME", "ORGAN", "AVOIDANCE",
                     "CAVITY", "CONTROL", "BOLUS", "SUPPORT", "FIXATION", "DOSE_REGION", "CONTRAST_AGENT",
                     "MARKER", "REGISTRATION", "ISOCENTER", "BRACHY_CHANNEL", "BRACHY_ACCESSORY",
                     "BRACHY_SRC_APP", "BRACHY_CHNL_SHLD", "")
#: RT ROI Interpreted Type for each kind of structure we write: the defined terms, and BONE (an organ).
_INTERPRETED_TYPE = {term: term for term in INTERPRETED_TYPES} | {"BONE": "ORGAN"}
#: Referenced SOP Class UID in the RT Referenced Study Sequence, as every TPS writes it.
_STUDY_COMPONENT_REFERENCE = "1.2.840.10008.3.1.2.3.1"


@dataclass(frozen=True)
class RoiSpec:
    """One structure to write.

    Attributes
    ----------
    name : str
        ROI Name (at most 64 characters).
    mask : numpy.ndarray
        Boolean (z, y, x) mask on the reference grid.
    kind : str
        EXTERNAL, PTV, CTV, GTV, ORGAN, BONE, CAVITY or CONTROL.
    color_rgb : tuple of int
        ROI Display Color.
    algorithm : str
        ROI Generation Algorithm: AUTOMATIC, SEMIAUTOMATIC or MANUAL.
    description : str
        How it was made (ROI Generation Description).
    """

    name: str
    mask: np.ndarray
    kind: str
    color_rgb: tuple[int, int, int]
    algorithm: str = "AUTOMATIC"
    description: str = ""


def mask_contours(mask_2d: np.ndarray) -> list[np.ndarray]:
    """Closed contours of a 2D mask in continuous (column, row) pixel indices.

    Parameters
    ----------
    mask_2d : numpy.ndarray
        Boolean (rows, columns) mask.

    Returns
    -------
    list of numpy.ndarray
        Each ``(n, 2)`` array is one closed loop (first point not repeated),
        collinear points removed.
    """
    padded = np.pad(mask_2d.astype(np.float64), 1)
    generator = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate)
    loops = []
    for line in generator.lines(0.5):
        points = np.asarray(line, dtype=np.float64) - 1.0  # undo the padding
        if len(points) > 1 and np.allclose(points[0], points[-1]):
            points = points[:-1]
        points = _drop_collinear(points)
        if len(points) >= 3:
            loops.append(points)
    return _with_keyholes(loops)


def _signed_area(loop: np.ndarray) -> float:
    x, y = loop[:, 0], loop[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def _with_keyholes(loops: list[np.ndarray]) -> list[np.ndarray]:
    """Join every hole to the loop around it (PS3.3 C.8.8.6.3 keyhole); islands in holes stay separate loops."""
    if len(loops) < 2:
        return loops
    paths = [PolygonPath(loop) for loop in loops]
    inside = [[j for j in range(len(loops)) if j != i and paths[j].contains_point(loops[i][0])]
              for i in range(len(loops))]
    depth = [len(containing) for containing in inside]
    holes_of: dict[int, list[int]] = {i: [] for i in range(len(loops)) if depth[i] % 2 == 0}
    for i in range(len(loops)):
        if depth[i] % 2 == 1:
            parent = next(j for j in inside[i] if depth[j] == depth[i] - 1)
            holes_of[parent].append(i)
    result = []
    for outer, holes in holes_of.items():
        polygon = loops[outer] if _signed_area(loops[outer]) > 0 else loops[outer][::-1]
        for hole in sorted(holes, key=lambda h: -loops[h][:, 0].max()):
            ring = loops[hole] if _signed_area(loops[hole]) < 0 else loops[hole][::-1]
            polygon = _bridge(polygon, ring)
        result.append(polygon)
    return result


def _bridge(polygon: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """``polygon`` with ``hole`` joined in by a zero-width horizontal channel towards +x.

    Tries the hole's vertices at half-pixel rows first (the channel then meets no pixel centre), rightmost
    first, and takes the first whose ray meets the polygon before the hole itself; the hole's rightmost
    vertex always qualifies (holes are merged rightmost first, so no unmerged hole lies to its right).
    """
    half_row = np.abs(hole[:, 1] - np.round(hole[:, 1])) > 0.25
    order = sorted(range(len(hole)), key=lambda k: (not half_row[k], -hole[k, 0]))
    for k in order:
        mx, my = hole[k]
        hit = _first_crossing(polygon, mx, my)
        own = _first_crossing(np.roll(hole, -k, axis=0), mx, my, skip_incident=True)
        if hit is not None and (own is None or hit[0] < own[0]):
            x, edge = hit
            junction = np.array([[x, my]])
            rotated = np.roll(hole, -k, axis=0)
            return np.concatenate([polygon[: edge + 1], junction, rotated, rotated[:1], junction,
                                   polygon[edge + 1:]])
    raise OutputError("a hole contour has no outer contour to its right: the mask's contours are inconsistent")


def _first_crossing(loop: np.ndarray, x0: float, y0: float, skip_incident: bool = False) -> tuple[float, int] | None:
    """(x, edge index) of the nearest crossing of the ray from (x0, y0) towards +x with the loop's edges.

    With ``skip_incident`` the loop starts at the ray's origin and its two edges at that vertex are ignored.
    """
    a, b = loop, np.roll(loop, -1, axis=0)
    crosses = (a[:, 1] > y0) != (b[:, 1] > y0)
    if skip_incident:
        crosses[0] = crosses[-1] = False
    with np.errstate(divide="ignore", invalid="ignore"):
        x = a[:, 0] + (y0 - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1])
    candidates = np.flatnonzero(crosses & (x > x0))
    if not len(candidates):
        return None
    best = candidates[np.argmin(x[candidates])]
    return float(x[best]), int(best)


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """Remove points that lie on the straight line through their neighbours (closed loop)."""
    if len(points) < 4:
        return points
    previous = np.roll(points, 1, axis=0)
    following = np.roll(points, -1, axis=0)
    cross = ((points - previous)[:, 0] * (following - points)[:, 1]
             - (points - previous)[:, 1] * (following - points)[:, 0])
    return points[np.abs(cross) > 1e-9]


def write_rtstruct(
    *,
    reference_files: SequenceOf[Path],
    reference_volume: Volume,
    rois: SequenceOf[RoiSpec],
    path: Path,
    sop_instance_uid: str,
    series_instance_uid: str,
    label: str,
    series_description: str,
    now: _dt.datetime | None = None,
) -> Path:
    """Write an RT Structure Set whose contours lie on a written image series.

    Parameters
    ----------
    reference_files : sequence of pathlib.Path
        The image series' files (any order); their positions are matched to
        the volume's slices.
    reference_volume : Volume
        The series' grid, which the masks are on.
    rois : sequence of RoiSpec
        The structures.
    path : pathlib.Path
        Output file.
    sop_instance_uid, series_instance_uid : str
        Identity of the structure set.
    label : str
        Structure Set Label (at most 16 characters).
    series_description : str
        Series Description.
    now : datetime or None
        Structure set date/time.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    OutputError
        If a mask does not match the grid, a slice has no image, or a kind is unknown.
    """
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in reference_files]
    slice_of = {}
    for header in headers:
        k = reference_volume.patient_to_index(np.asarray(header.ImagePositionPatient, dtype=float))[2]
        slice_of[int(round(k))] = header
    missing = [k for k in range(reference_volume.shape[0]) if k not in slice_of]
    if missing:
        raise OutputError(f"reference series has no image for slice(s) {missing[:5]} of the grid")
    first = headers[0]
    date, time = dicom_date_time(now or _dt.datetime.now())

    # SOP Common, Patient, General Study, RT Series, Frame of Reference (part of the RT Structure Set IOD in
    # current editions of PS3.3 A.19), General Equipment.
    dataset = derived_object(RT_STRUCTURE_SET_STORAGE, sop_instance_uid, first, modality="RTSTRUCT",
                             series_instance_uid=series_instance_uid, series_number_offset=100,
                             series_description=series_description, date=date, time=time)
    dataset.InstanceNumber = 1
    dataset.StructureSetLabel = label[:16]
    dataset.StructureSetName = label[:64]
    dataset.StructureSetDate, dataset.StructureSetTime = date, time

    contour_images = Sequence()
    for k in range(reference_volume.shape[0]):
        contour_images.append(_image_reference(slice_of[k]))
    series_item = pydicom.Dataset()
    series_item.SeriesInstanceUID = first.SeriesInstanceUID
    series_item.ContourImageSequence = contour_images
    study_item = pydicom.Dataset()
    study_item.ReferencedSOPClassUID = _STUDY_COMPONENT_REFERENCE
    study_item.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study_item.RTReferencedSeriesSequence = Sequence([series_item])
    frame_item = pydicom.Dataset()
    frame_item.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame_item.RTReferencedStudySequence = Sequence([study_item])
    dataset.ReferencedFrameOfReferenceSequence = Sequence([frame_item])

    dataset.StructureSetROISequence = Sequence()
    dataset.ROIContourSequence = Sequence()
    dataset.RTROIObservationsSequence = Sequence()
    for number, roi in enumerate(rois, start=1):
        if roi.mask.shape != reference_volume.shape:
            raise OutputError(f"ROI {roi.name!r}: mask shape {roi.mask.shape} differs from the grid "
                              f"{reference_volume.shape}")
        if roi.kind not in _INTERPRETED_TYPE:
            raise OutputError(f"ROI {roi.name!r}: unknown kind {roi.kind!r}; expected one of "
                              f"{', '.join(_INTERPRETED_TYPE)}")
        roi_item = pydicom.Dataset()
        roi_item.ROINumber = number
        roi_item.ReferencedFrameOfReferenceUID = first.FrameOfReferenceUID
        roi_item.ROIName = roi.name[:64]
        roi_item.ROIGenerationAlgorithm = roi.algorithm
        if roi.description:
            roi_item.ROIGenerationDescription = roi.description[:64]
        dataset.StructureSetROISequence.append(roi_item)

        contour_item = pydicom.Dataset()
        contour_item.ReferencedROINumber = number
        contour_item.ROIDisplayColor = [int(c) for c in roi.color_rgb]
        contour_item.ContourSequence = Sequence(_contours(roi.mask, reference_volume, slice_of))
        dataset.ROIContourSequence.append(contour_item)

        observation = pydicom.Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = _INTERPRETED_TYPE[roi.kind] or None
        observation.ROIInterpreter = None
        dataset.RTROIObservationsSequence.append(observation)
    return write_dataset_atomic(dataset, path)


def _image_reference(header: pydicom.Dataset) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = header.SOPClassUID
    item.ReferencedSOPInstanceUID = header.SOPInstanceUID
    return item


def _contours(mask: np.ndarray, volume: Volume, slice_of: Mapping[int, pydicom.Dataset]) -> list[pydicom.Dataset]:
    items: list[pydicom.Dataset] = []
    for k in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        for loop in mask_contours(mask[k]):
            index = np.column_stack([loop[:, 0], loop[:, 1], np.full(len(loop), float(k))])
            points = volume.index_to_patient(index)
            item = pydicom.Dataset()
            item.ContourImageSequence = Sequence([_image_reference(slice_of[int(k)])])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourNumber = len(items) + 1
            item.ContourData = [_ds3(v) for v in points.ravel()]
            items.append(item)
    return items


def _ds3(value: float) -> str:
    """A coordinate as a Decimal String in micrometre precision."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
