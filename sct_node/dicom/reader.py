"""Read a DICOM image series into one 3D :class:`~models.volume.Volume` with its patient geometry.

The reader trusts geometry, never file order: slices are sorted by their
position along the slice normal (Image Position (Patient) projected on
row x column of Image Orientation (Patient)), not by Instance Number or file
name. It refuses, with a named error that points at the file or slice, every
input that would give a wrong volume: mixed series, mixed orientations,
sheared stacks, missing or unevenly spaced slices, different images at one
position, several volumes (echoes, time points) without a selection, missing
pixel data, truncated or non-DICOM files.

References
----------
DICOM PS3.3 C.7.6.2.1.1 (Image Position and Orientation (Patient)); the same
rules as ITK's GDCMSeriesFileNames / SimpleITK ImageSeriesReader and
dcm2niix, which also sort along the normal and check spacing uniformity.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from models.base import ProgressCallback
from models.volume import Volume
from sct_node.dicom.files import _reason, find_files, open_dataset
from sct_node.dicom.frames import Frame, frames_of
from sct_node.dicom.uids import MR_SOP_CLASSES
from sct_node.errors import (
    CorruptFileError,
    DuplicatePositionError,
    InconsistentGeometryError,
    MissingSliceError,
    MixedOrientationError,
    MixedSeriesError,
    MultiVolumeError,
    NoDicomInputError,
    NonUniformSpacingError,
    TooFewSlicesError,
    UnsupportedInstanceError,
)

__all__ = ["ImageSeries", "ReaderOptions", "SliceSource", "read_series"]

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class ReaderOptions:
    """Tolerances and selection rules of the series reader.

    Attributes
    ----------
    orientation_tolerance : float
        Largest allowed difference of any direction cosine between slices.
    spacing_tolerance_fraction : float
        Largest allowed deviation of a slice gap from the median gap, as a
        fraction of the median (0.05: 5 %).
    in_plane_tolerance_fraction : float
        Largest allowed in-plane drift of slice origins (a tilted or sheared
        stack), as a fraction of the smallest pixel spacing.
    echo_time_ms : float or None
        Keep only images with this echo time (multi-echo series).
    temporal_position : int or None
        Keep only images with this temporal position (dynamic series).
    min_slices : int
        Fewest slices that make a volume.
    """

    orientation_tolerance: float = 1e-3
    spacing_tolerance_fraction: float = 0.05
    in_plane_tolerance_fraction: float = 0.1
    echo_time_ms: float | None = None
    temporal_position: int | None = None
    min_slices: int = 2


@dataclass(frozen=True)
class SliceSource:
    """The source image of one slice of a read volume, for references in derived objects."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None


@dataclass(frozen=True)
class ImageSeries:
    """A series read into a volume.

    Attributes
    ----------
    volume : Volume
        Pixel values after the Modality LUT (Rescale Slope/Intercept), float32.
    header : pydicom.Dataset
        Header of the first slice's instance (no pixel data), the source of
        patient, study and frame-of-reference attributes for derived series.
    slices : tuple of SliceSource
        The instance (and frame) behind each slice, in volume order.
    files : tuple of pathlib.Path
        Every file that contributed.
    """

    volume: Volume
    header: pydicom.Dataset
    slices: tuple[SliceSource, ...]
    files: tuple[Path, ...]

    @property
    def series_instance_uid(self) -> str:
        return str(self.header.SeriesInstanceUID)

    @property
    def study_instance_uid(self) -> str:
        return str(self.header.StudyInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str | None:
        value = self.header.get("FrameOfReferenceUID", None)
        return str(value) if value else None

    @property
    def modality(self) -> str:
        return str(self.header.get("Modality", ""))


def read_series(
    inputs: Iterable[Path | str],
    *,
    series_instance_uid: str | None = None,
    sop_classes: Sequence[str] | None = MR_SOP_CLASSES,
    options: ReaderOptions = ReaderOptions(),
    progress: ProgressCallback | None = None,
) -> ImageSeries:
    """Read one image series from folders and/or files into a volume.

    Parameters
    ----------
    inputs : iterable of path
        Folders (searched recursively) and/or files.
    series_instance_uid : str or None
        The series to read when the input holds several; with None the input
        must hold exactly one image series.
    sop_classes : sequence of str or None
        Accepted SOP Class UIDs (default: MR Image and Enhanced MR Image
        Storage); None accepts any image.
    options : ReaderOptions
        Tolerances and selection rules.
    progress : callable or None
        Called as ``progress(done, total)`` while pixel data is decoded.

    Returns
    -------
    ImageSeries
        The volume with the headers and references it came from.

    Raises
    ------
    InputError
        A subclass naming the file/slice and the reason for every refused
        input (see :mod:`sct_node.errors`).
    """
    files = find_files(inputs)
    datasets = {path: open_dataset(path) for path in files}
    by_series: dict[str, list[Path]] = defaultdict(list)
    for path, dataset in datasets.items():
        by_series[str(dataset.get("SeriesInstanceUID", ""))].append(path)

    if series_instance_uid is not None:
        if series_instance_uid not in by_series:
            raise NoDicomInputError(f"series {series_instance_uid} is not in the input ({len(by_series)} series found)")
        chosen = series_instance_uid
    elif len(by_series) > 1:
        listing = "; ".join(
            f"{uid or '(no SeriesInstanceUID)'}: {len(paths)} file(s), e.g. {paths[0]}"
            for uid, paths in sorted(by_series.items())
        )
        raise MixedSeriesError(f"input holds {len(by_series)} series, expected one: {listing}")
    else:
        chosen = next(iter(by_series))

    frames: list[Frame] = []
    for path in by_series[chosen]:
        dataset = datasets[path]
        if sop_classes is not None and str(dataset.SOPClassUID) not in sop_classes:
            raise UnsupportedInstanceError(
                f"{path}: SOP Class {dataset.SOPClassUID} ({_sop_class_name(dataset)}) is not accepted here; "
                f"expected one of {', '.join(_uid_names(sop_classes))}",
                path,
            )
        frames.extend(frames_of(dataset, path))

    frames = _select_volume(frames, options)
    ordered, positions_mm = _sort_along_normal(frames, options)
    ordered, positions_mm = _drop_identical_duplicates(ordered, positions_mm, datasets, options)
    slice_spacing_mm = _check_spacing(ordered, positions_mm, options, datasets[ordered[0].path])

    first = ordered[0]
    direction = np.column_stack([first.row_direction, first.column_direction, first.normal])
    spacing_mm = (first.pixel_spacing_mm[1], first.pixel_spacing_mm[0], slice_spacing_mm)
    header = _header_without_pixels(datasets[first.path])
    array = _load_pixels(ordered, datasets, progress)
    volume = Volume(array, spacing_mm, tuple(first.position_mm), direction)
    slices = tuple(SliceSource(f.sop_class_uid, f.sop_instance_uid, f.frame_number) for f in ordered)
    return ImageSeries(volume, header, slices, tuple(sorted({f.path for f in ordered})))


def _select_volume(frames: list[Frame], options: ReaderOptions) -> list[Frame]:
    """Apply the echo/temporal selection; refuse several volumes without one."""
    if options.echo_time_ms is not None:
        frames = [f for f in frames if f.volume_key[0] is not None and abs(f.volume_key[0] - options.echo_time_ms) < 1e-3]
        if not frames:
            raise MultiVolumeError(f"no image has echo time {options.echo_time_ms} ms")
    if options.temporal_position is not None:
        frames = [f for f in frames if f.volume_key[1] == options.temporal_position]
        if not frames:
            raise MultiVolumeError(f"no image has temporal position {options.temporal_position}")
    keys = sorted({f.volume_key for f in frames}, key=repr)
    if len(keys) > 1:
        echoes = sorted({k[0] for k in keys if k[0] is not None})
        times = sorted({k[1] for k in keys if k[1] is not None})
        per_position = len(frames) / max(1, len({_position_key(f) for f in frames}))
        if per_position > 1:  # several images per position: a 4D or multi-echo series
            raise MultiVolumeError(
                f"series holds {len(keys)} volumes at the same slice positions "
                f"(echo times ms: {echoes or 'n/a'}; temporal positions: {times or 'n/a'}); "
                "select one with echo_time_ms / temporal_position (CLI: --echo-time-ms, --temporal-position)"
            )
    return frames


def _position_key(frame: Frame) -> float:
    return round(float(frame.position_mm @ frame.normal), 2)


def _sort_along_normal(frames: list[Frame], options: ReaderOptions) -> tuple[list[Frame], np.ndarray]:
    reference = frames[0]
    for frame in frames[1:]:
        if (np.abs(frame.row_direction - reference.row_direction).max() > options.orientation_tolerance
                or np.abs(frame.column_direction - reference.column_direction).max() > options.orientation_tolerance):
            raise MixedOrientationError(
                f"{frame.describe()}: Image Orientation (Patient) "
                f"{np.round(np.r_[frame.row_direction, frame.column_direction], 4).tolist()} differs from "
                f"{np.round(np.r_[reference.row_direction, reference.column_direction], 4).tolist()} "
                f"of {reference.describe()}",
                frame.path,
            )
        if (frame.rows, frame.columns) != (reference.rows, reference.columns):
            raise InconsistentGeometryError(
                f"{frame.describe()}: image size {frame.rows}x{frame.columns} differs from "
                f"{reference.rows}x{reference.columns} of {reference.describe()}",
                frame.path,
            )
        if not np.allclose(frame.pixel_spacing_mm, reference.pixel_spacing_mm, rtol=1e-3, atol=1e-4):
            raise InconsistentGeometryError(
                f"{frame.describe()}: pixel spacing {frame.pixel_spacing_mm} mm differs from "
                f"{reference.pixel_spacing_mm} mm of {reference.describe()}",
                frame.path,
            )
    if len(frames) < options.min_slices:
        raise TooFewSlicesError(
            f"series has {len(frames)} image(s); a volume needs at least {options.min_slices} slices"
        )
    normal = reference.normal
    positions = np.array([f.position_mm @ normal for f in frames])
    order = np.argsort(positions, kind="stable")
    ordered = [frames[i] for i in order]
    positions = positions[order]
    # A stack whose slice origins drift in-plane is tilted (gantry tilt) or sheared: no regular grid.
    in_plane = np.array([[f.position_mm @ reference.row_direction, f.position_mm @ reference.column_direction]
                         for f in ordered])
    drift_mm = np.abs(in_plane - in_plane[0]).max(axis=1)
    tolerance_mm = options.in_plane_tolerance_fraction * min(reference.pixel_spacing_mm)
    if drift_mm.max() > tolerance_mm:
        worst = int(np.argmax(drift_mm))
        raise InconsistentGeometryError(
            f"{ordered[worst].describe()}: slice origin is {drift_mm[worst]:.3f} mm off the slice normal through "
            f"{ordered[0].describe()} (tolerance {tolerance_mm:.3f} mm): tilted or sheared stack",
            ordered[worst].path,
        )
    return ordered, positions


def _drop_identical_duplicates(
    ordered: list[Frame], positions_mm: np.ndarray, datasets: dict[Path, pydicom.Dataset], options: ReaderOptions
) -> tuple[list[Frame], np.ndarray]:
    """Keep one image per position when duplicates are copies; refuse different ones."""
    gaps = np.diff(positions_mm)
    nominal = float(np.median(gaps[gaps > 1e-3])) if np.any(gaps > 1e-3) else 0.0
    duplicate_tolerance_mm = max(1e-3, options.spacing_tolerance_fraction * nominal)
    keep = [0]
    for index in range(1, len(ordered)):
        if positions_mm[index] - positions_mm[keep[-1]] > duplicate_tolerance_mm:
            keep.append(index)
            continue
        kept, other = ordered[keep[-1]], ordered[index]
        if kept.sop_instance_uid == other.sop_instance_uid and kept.frame_index == other.frame_index:
            logger.debug("same instance %s given twice; keeping one", other.sop_instance_uid)
            continue
        a = _pixels(kept, datasets[kept.path])
        b = _pixels(other, datasets[other.path])
        if a.shape == b.shape and np.array_equal(a, b):
            logger.warning("instances %s and %s are identical copies at one position; keeping one",
                           kept.sop_instance_uid, other.sop_instance_uid)
            continue
        raise DuplicatePositionError(
            f"{other.describe()} and {kept.describe()} lie at the same slice position "
            f"({positions_mm[index]:.3f} mm along the normal) with different pixels",
            other.path,
        )
    return [ordered[i] for i in keep], positions_mm[keep]


def _check_spacing(ordered: list[Frame], positions_mm: np.ndarray, options: ReaderOptions,
                   header: pydicom.Dataset) -> float:
    if len(ordered) < options.min_slices:
        raise TooFewSlicesError(
            f"series has {len(ordered)} distinct slice position(s); a volume needs at least {options.min_slices}"
        )
    if len(ordered) == 1:  # only when min_slices allows it: the slice thickness is all we know
        return float(header.get("SpacingBetweenSlices", None) or header.get("SliceThickness", None) or 1.0)
    gaps = np.diff(positions_mm)
    nominal = float(np.median(gaps))
    tolerance = options.spacing_tolerance_fraction * nominal
    for index, gap in enumerate(gaps):
        if abs(gap - nominal) <= tolerance:
            continue
        before, after = ordered[index], ordered[index + 1]
        where = (f"between {before.describe()} ({positions_mm[index]:.3f} mm) and "
                 f"{after.describe()} ({positions_mm[index + 1]:.3f} mm)")
        multiple = gap / nominal
        if multiple > 1.5 and abs(multiple - round(multiple)) * nominal <= tolerance:
            raise MissingSliceError(
                f"{int(round(multiple)) - 1} slice(s) missing {where}: gap {gap:.3f} mm, slice spacing {nominal:.3f} mm",
                after.path,
            )
        raise NonUniformSpacingError(
            f"non-uniform slice spacing {where}: gap {gap:.3f} mm, expected {nominal:.3f} mm "
            f"+/- {tolerance:.3f} mm",
            after.path,
        )
    return float((positions_mm[-1] - positions_mm[0]) / (len(positions_mm) - 1))


def _load_pixels(ordered: list[Frame], datasets: dict[Path, pydicom.Dataset],
                 progress: ProgressCallback | None) -> np.ndarray:
    first = ordered[0]
    array = np.empty((len(ordered), first.rows, first.columns), dtype=np.float32)
    by_file: dict[Path, list[tuple[int, Frame]]] = defaultdict(list)
    for k, frame in enumerate(ordered):
        by_file[frame.path].append((k, frame))
    done = 0
    for path, entries in by_file.items():
        dataset = datasets[path]
        for k, frame in entries:
            stored = _pixels(frame, dataset)
            array[k] = stored.astype(np.float32) * np.float32(frame.rescale_slope) + np.float32(frame.rescale_intercept)
            done += 1
        if progress is not None:
            progress(done, len(ordered))
        del datasets[path]  # frees the decoded pixels of a finished file
    return array


def _header_without_pixels(dataset: pydicom.Dataset) -> pydicom.Dataset:
    """A copy of the top-level header, without pixel data and per-frame groups."""
    header = pydicom.Dataset()
    for element in dataset:
        if element.tag < 0x7FE00000 and element.keyword != "PerFrameFunctionalGroupsSequence":
            header.add(element)
    header.file_meta = dataset.file_meta
    return header


def _pixels(frame: Frame, dataset: pydicom.Dataset) -> np.ndarray:
    """Stored values of one frame, decoding the file's pixel data once."""
    try:
        decoded = dataset.pixel_array
    except Exception as error:  # decoders raise ValueError, RuntimeError, OSError, ...
        raise CorruptFileError(f"{frame.path}: pixel data cannot be decoded ({_reason(error)})", frame.path) from error
    if frame.frame_index is None:
        if decoded.shape != (frame.rows, frame.columns):
            raise CorruptFileError(f"{frame.path}: decoded pixel data has shape {decoded.shape}, "
                                   f"expected {(frame.rows, frame.columns)}", frame.path)
        return decoded
    if decoded.ndim == 2:
        decoded = decoded[np.newaxis]
    if decoded.shape[0] <= frame.frame_index:
        raise CorruptFileError(f"{frame.describe()}: only {decoded.shape[0]} frames could be decoded", frame.path)
    return decoded[frame.frame_index]


def _sop_class_name(dataset: pydicom.Dataset) -> str:
    return getattr(dataset.SOPClassUID, "name", "unknown")


def _uid_names(uids: Sequence[str]) -> list[str]:
    return [pydicom.uid.UID(uid).name for uid in uids]
