"""The MR series reader: geometry, transfer syntaxes, multi-frame, and every refusal with its message."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from models.volume import Volume
from sct_node.dicom.reader import ReaderOptions, read_series
from sct_node.dicom.uids import CT_IMAGE_STORAGE, derive_uid
from sct_node.errors import (
    CorruptFileError,
    DuplicatePositionError,
    InconsistentGeometryError,
    MissingPixelDataError,
    MissingSliceError,
    MixedOrientationError,
    MixedSeriesError,
    MultiVolumeError,
    NoDicomInputError,
    NonUniformSpacingError,
    NotDicomError,
    TooFewSlicesError,
    UnsupportedInstanceError,
)
from tests.factories.enhanced_mr import write_enhanced_mr
from tests.factories.mr_series import TRANSFER_SYNTAXES, make_volume, write_mr_series

SAGITTAL = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # columns: row dir, column dir, normal
OBLIQUE = np.linalg.qr(np.array([[1.0, 0.2, 0.1], [0.1, 1.0, 0.3], [0.2, 0.1, 1.0]]))[0]


def _files(folder: Path) -> list[Path]:
    """Files of a written series in slice order (the factory names them by UID, not by position)."""
    return sorted(folder.glob("*.dcm"), key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))


# --- geometry and values --------------------------------------------------------------------------


@pytest.mark.parametrize("syntax", sorted(TRANSFER_SYNTAXES))
def test_every_transfer_syntax_reads_the_same_volume(tmp_path, mr_volume, syntax):
    files = write_mr_series(mr_volume, tmp_path / syntax, transfer_syntax=syntax)
    assert str(pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID) == TRANSFER_SYNTAXES[syntax]
    series = read_series([tmp_path / syntax])
    assert series.volume.same_grid(mr_volume)
    np.testing.assert_array_equal(series.volume.array, np.rint(mr_volume.array))


@pytest.mark.parametrize("name", [
    "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
])
def test_pydicom_reference_files_decode_to_the_uncompressed_pixels(name):
    """pydicom ships one MR image in many transfer syntaxes; all must equal MR_small.dcm."""
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    options = ReaderOptions(min_slices=1)
    reference = read_series([folder / "MR_small.dcm"], options=options)
    series = read_series([folder / name], options=options)
    np.testing.assert_array_equal(series.volume.array, reference.volume.array)
    assert series.volume.same_grid(reference.volume)


@pytest.mark.parametrize("direction", [np.eye(3), SAGITTAL, OBLIQUE], ids=["axial", "sagittal", "oblique"])
def test_geometry_follows_the_patient_coordinates(tmp_path, direction):
    volume = make_volume(direction=direction, origin_mm=(12.5, -40.0, 7.25))
    write_mr_series(volume, tmp_path / "mr")
    series = read_series([tmp_path / "mr"])
    np.testing.assert_allclose(series.volume.direction, direction, atol=1e-6)
    np.testing.assert_allclose(series.volume.origin_mm, volume.origin_mm, atol=1e-4)
    np.testing.assert_allclose(series.volume.spacing_mm, volume.spacing_mm, atol=1e-4)
    np.testing.assert_array_equal(series.volume.array, volume.array)


def test_slices_are_sorted_by_position_not_instance_number_or_file_name(tmp_path, mr_volume):
    nz = mr_volume.shape[0]

    def scramble(k, dataset):  # instance numbers run backwards and file names are random UIDs
        dataset.InstanceNumber = nz - k

    write_mr_series(mr_volume, tmp_path / "mr", mutate=scramble)
    series = read_series([tmp_path / "mr"])
    np.testing.assert_array_equal(series.volume.array, mr_volume.array)
    assert [s.sop_instance_uid for s in series.slices] == [
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        for f in sorted(_files(tmp_path / "mr"), key=lambda p: -int(pydicom.dcmread(p).InstanceNumber))
    ]


def test_rescale_slope_and_intercept_are_applied(tmp_path, mr_volume):
    def rescale(k, dataset):
        dataset.RescaleSlope, dataset.RescaleIntercept = "0.5", str(-100 - k)

    write_mr_series(mr_volume, tmp_path / "mr", mutate=rescale)
    series = read_series([tmp_path / "mr"])
    expected = mr_volume.array * 0.5 + (-100 - np.arange(mr_volume.shape[0]))[:, None, None]
    np.testing.assert_allclose(series.volume.array, expected)


def test_a_list_of_files_is_read_like_a_folder(mr_series_dir, mr_volume):
    series = read_series(sorted(mr_series_dir.glob("*.dcm"), reverse=True))
    np.testing.assert_array_equal(series.volume.array, mr_volume.array)


def test_series_is_selected_by_uid_from_a_mixed_folder(tmp_path, mr_volume):
    write_mr_series(mr_volume, tmp_path / "mixed", case="a")
    other = make_volume(seed=3)
    write_mr_series(other, tmp_path / "mixed", case="b")
    uids = {str(pydicom.dcmread(f).SeriesInstanceUID) for f in (tmp_path / "mixed").glob("*.dcm")}
    assert len(uids) == 2
    with pytest.raises(MixedSeriesError, match="holds 2 series, expected one"):
        read_series([tmp_path / "mixed"])
    for uid in uids:
        series = read_series([tmp_path / "mixed"], series_instance_uid=uid)
        assert series.series_instance_uid == uid
        assert len(series.files) == mr_volume.shape[0]


def test_identical_copies_at_one_position_are_kept_once(mr_series_dir, mr_volume):
    source = _files(mr_series_dir)[2]
    copy = pydicom.dcmread(source)
    copy.SOPInstanceUID = derive_uid("copy")
    copy.file_meta.MediaStorageSOPInstanceUID = copy.SOPInstanceUID
    copy.save_as(mr_series_dir / "copy.dcm")
    series = read_series([mr_series_dir])
    np.testing.assert_array_equal(series.volume.array, mr_volume.array)


# --- Enhanced MR (multi-frame) ----------------------------------------------------------------------


@pytest.mark.parametrize("per_frame_geometry", [True, False], ids=["per-frame", "shared"])
@pytest.mark.parametrize("order", ["shuffled", "descending"])
def test_enhanced_mr_frames_are_placed_by_position(tmp_path, per_frame_geometry, order):
    volume = make_volume(shape_zyx=(7, 20, 16), spacing_mm=(0.9, 1.2, 2.5), direction=SAGITTAL)
    write_enhanced_mr(volume, tmp_path / "e" / "enhanced.dcm", per_frame_geometry=per_frame_geometry,
                      frame_order=order)
    series = read_series([tmp_path / "e"])
    assert series.volume.same_grid(volume)
    np.testing.assert_array_equal(series.volume.array, volume.array)
    assert all(s.frame_number is not None for s in series.slices)


def test_enhanced_mr_pixel_value_transformation_is_applied(tmp_path):
    volume = make_volume(shape_zyx=(5, 16, 16))
    write_enhanced_mr(volume, tmp_path / "e" / "enhanced.dcm", rescale=(0.5, -100.0))
    series = read_series([tmp_path / "e"])
    np.testing.assert_allclose(series.volume.array, volume.array, atol=0.25 + 1e-6)


def test_enhanced_mr_rle_compressed(tmp_path):
    volume = make_volume(shape_zyx=(5, 16, 16))
    write_enhanced_mr(volume, tmp_path / "e" / "enhanced.dcm", transfer_syntax=pydicom.uid.RLELossless)
    np.testing.assert_array_equal(read_series([tmp_path / "e"]).volume.array, volume.array)


def test_multi_echo_needs_a_selection(tmp_path):
    volume = make_volume(shape_zyx=(5, 16, 16))
    write_enhanced_mr(volume, tmp_path / "e" / "enhanced.dcm", echo_times_ms=(15.0, 90.0))
    with pytest.raises(MultiVolumeError, match=r"2 volumes .*echo times ms: \[15.0, 90.0\].*--echo-time-ms"):
        read_series([tmp_path / "e"])
    first = read_series([tmp_path / "e"], options=ReaderOptions(echo_time_ms=15.0))
    second = read_series([tmp_path / "e"], options=ReaderOptions(echo_time_ms=90.0))
    np.testing.assert_array_equal(first.volume.array, volume.array)
    np.testing.assert_allclose(second.volume.array, volume.array * 1.1, atol=1.0)
    with pytest.raises(MultiVolumeError, match="no image has echo time 40"):
        read_series([tmp_path / "e"], options=ReaderOptions(echo_time_ms=40.0))


def test_single_frame_multi_echo_series_is_refused_without_selection(tmp_path, mr_volume):
    write_mr_series(mr_volume, tmp_path / "mr", case="echo")

    def second_echo(k, dataset):
        dataset.EchoTime, dataset.EchoNumbers = "90", 2
        dataset.SOPInstanceUID = derive_uid("echo2", k)
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.PixelData = (np.frombuffer(dataset.PixelData, "<u2") // 2).astype("<u2").tobytes()

    write_mr_series(mr_volume, tmp_path / "echo2", case="echo", mutate=second_echo)
    for path in (tmp_path / "echo2").glob("*.dcm"):
        shutil.move(path, tmp_path / "mr" / ("e2-" + path.name))
    with pytest.raises(MultiVolumeError, match="2 volumes at the same slice positions"):
        read_series([tmp_path / "mr"])
    series = read_series([tmp_path / "mr"], options=ReaderOptions(echo_time_ms=90.0))
    np.testing.assert_array_equal(series.volume.array, np.floor(mr_volume.array / 2))


# --- refusals -------------------------------------------------------------------------------------


def test_non_dicom_file_is_named(mr_series_dir):
    (mr_series_dir / "notes.txt").write_text("not an image\n")
    with pytest.raises(NotDicomError, match=r"notes\.txt: not a DICOM file") as caught:
        read_series([mr_series_dir])
    assert caught.value.path == mr_series_dir / "notes.txt"


def test_hidden_files_and_dicomdir_are_ignored(mr_series_dir, mr_volume):
    (mr_series_dir / ".DS_Store").write_bytes(b"\0\1\2")
    (mr_series_dir / "DICOMDIR").write_bytes(b"junk")
    np.testing.assert_array_equal(read_series([mr_series_dir]).volume.array, mr_volume.array)


def test_truncated_pixel_data_is_named(mr_series_dir):
    victim = _files(mr_series_dir)[3]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 500])
    with pytest.raises(CorruptFileError, match=rf"{victim.name}.*pixel data") as caught:
        read_series([mr_series_dir])
    assert caught.value.path == victim


def test_truncated_header_is_named(mr_series_dir):
    victim = _files(mr_series_dir)[1]
    victim.write_bytes(victim.read_bytes()[:300])
    with pytest.raises((CorruptFileError, NotDicomError), match=rf"{victim.name}"):
        read_series([mr_series_dir])


def test_missing_pixel_data_is_named(mr_series_dir):
    victim = _files(mr_series_dir)[0]
    dataset = pydicom.dcmread(victim)
    del dataset.PixelData
    dataset.save_as(victim)
    with pytest.raises(MissingPixelDataError, match=rf"{victim.name}: no Pixel Data"):
        read_series([mr_series_dir])


def test_mixed_orientation_is_named(tmp_path, mr_volume):
    def tilt(k, dataset):
        if k == 4:
            dataset.ImageOrientationPatient = [1, 0, 0, 0, 0.99, 0.141067]

    files = write_mr_series(mr_volume, tmp_path / "mr", mutate=tilt)
    with pytest.raises(MixedOrientationError, match=rf"{files[4].name}: Image Orientation"):
        read_series([tmp_path / "mr"])


def test_missing_slice_is_named_with_its_neighbours(mr_series_dir):
    files = _files(mr_series_dir)
    os.remove(files[3])
    with pytest.raises(MissingSliceError, match=rf"1 slice\(s\) missing between {files[2]}.* and {files[4]}"):
        read_series([mr_series_dir])


def test_non_uniform_spacing_is_refused(tmp_path, mr_volume):
    def shift(k, dataset):
        if k >= 3:
            position = [float(v) for v in dataset.ImagePositionPatient]
            dataset.ImagePositionPatient = [position[0], position[1], position[2] + 1.2]

    write_mr_series(mr_volume, tmp_path / "mr", mutate=shift)
    with pytest.raises(NonUniformSpacingError, match=r"non-uniform slice spacing .*gap 4\.200 mm, expected 3\.000"):
        read_series([tmp_path / "mr"])


def test_different_images_at_one_position_are_refused(mr_series_dir):
    files = _files(mr_series_dir)
    impostor = pydicom.dcmread(files[2])
    impostor.SOPInstanceUID = derive_uid("impostor")
    impostor.file_meta.MediaStorageSOPInstanceUID = impostor.SOPInstanceUID
    impostor.PixelData = bytes(len(impostor.PixelData))
    impostor.save_as(mr_series_dir / "impostor.dcm")
    with pytest.raises(DuplicatePositionError, match=r"same slice position .* with different pixels"):
        read_series([mr_series_dir])


def test_different_image_sizes_are_refused(tmp_path):
    small = make_volume(shape_zyx=(3, 40, 48))
    write_mr_series(small, tmp_path / "mr")
    other = make_volume(shape_zyx=(3, 40, 40), origin_mm=(-10.0, -12.0, 39.0))
    write_mr_series(other, tmp_path / "mr2")
    for path in (tmp_path / "mr2").glob("*.dcm"):  # same series UID (same case), other size
        shutil.move(path, tmp_path / "mr" / ("b-" + path.name))
    with pytest.raises(InconsistentGeometryError, match="image size 40x40 differs from 40x48"):
        read_series([tmp_path / "mr"])


def test_sheared_stack_is_refused(tmp_path, mr_volume):
    def shear(k, dataset):
        position = [float(v) for v in dataset.ImagePositionPatient]
        dataset.ImagePositionPatient = [position[0], position[1] + 0.5 * k, position[2]]

    write_mr_series(mr_volume, tmp_path / "mr", mutate=shear)
    with pytest.raises(InconsistentGeometryError, match="tilted or sheared stack"):
        read_series([tmp_path / "mr"])


def test_a_ct_is_not_accepted_as_mr(tmp_path, mr_series_dir):
    for path in mr_series_dir.glob("*.dcm"):
        dataset = pydicom.dcmread(path)
        dataset.SOPClassUID = CT_IMAGE_STORAGE
        dataset.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        dataset.Modality = "CT"
        dataset.save_as(path)
    with pytest.raises(UnsupportedInstanceError, match="CT Image Storage.*is not accepted here"):
        read_series([mr_series_dir])
    assert read_series([mr_series_dir], sop_classes=[CT_IMAGE_STORAGE]).modality == "CT"


def test_one_slice_is_not_a_volume(tmp_path, mr_series_dir):
    with pytest.raises(TooFewSlicesError, match="at least 2 slices"):
        read_series([_files(mr_series_dir)[0]])


def test_empty_or_missing_input(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoDicomInputError, match="no files found"):
        read_series([tmp_path / "empty"])
    with pytest.raises(NoDicomInputError, match="does not exist"):
        read_series([tmp_path / "nowhere"])


def test_error_messages_carry_no_patient_identity(mr_series_dir):
    """Errors reach logs; they name files and UIDs, never the patient."""
    files = _files(mr_series_dir)
    os.remove(files[2])
    with pytest.raises(MissingSliceError) as caught:
        read_series([mr_series_dir])
    header = pydicom.dcmread(files[0])
    for value in (str(header.PatientName), str(header.PatientID)):
        assert value and value not in str(caught.value)


def test_volume_rejects_malformed_geometry():
    from models.errors import GeometryError

    with pytest.raises(GeometryError, match="spacing_mm must be three positive numbers"):
        Volume(np.zeros((2, 2, 2)), (1.0, 0.0, 1.0))
    with pytest.raises(GeometryError, match="orthonormal"):
        Volume(np.zeros((2, 2, 2)), (1.0, 1.0, 1.0), direction=np.diag([1.0, 2.0, 1.0]))


@pytest.mark.skipif(shutil.which("dcmcjpeg") is None,
                    reason="dcmtk's dcmcjpeg makes the JPEG Lossless files (tests/install-system-tools.sh installs it)")
@pytest.mark.parametrize("option, uid", [("+e1", "1.2.840.10008.1.2.4.70"), ("+el", "1.2.840.10008.1.2.4.57")],
                         ids=["process 14 SV1", "process 14"])
def test_jpeg_lossless_gives_the_same_volume_and_sct_as_the_uncompressed_series(tmp_path, mr_volume, option, uid):
    """The syntax PACS archives hold MR in: decoded by python-gdcm (BSD), bit for bit, and so is the sCT."""
    import subprocess

    from sct_node.cli import EXIT_OK, main

    plain = write_mr_series(mr_volume, tmp_path / "plain")
    (tmp_path / "jpeg").mkdir()
    for path in plain:  # dcmtk encodes, pydicom (with python-gdcm) decodes: two independent implementations
        subprocess.run(["dcmcjpeg", option, str(path), str(tmp_path / "jpeg" / path.name)], check=True,
                       capture_output=True, timeout=60)
    assert {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            for p in (tmp_path / "jpeg").iterdir()} == {uid}
    np.testing.assert_array_equal(read_series([tmp_path / "jpeg"]).volume.array,
                                  read_series([tmp_path / "plain"]).volume.array)
    sct = {}
    for name in ("plain", "jpeg"):
        assert main(["translate", "--input", str(tmp_path / name), "--output", str(tmp_path / f"sct-{name}"),
                     "--model", "bulk", "--quiet"]) == EXIT_OK
        sct[name] = read_series([tmp_path / f"sct-{name}"], sop_classes=[CT_IMAGE_STORAGE]).volume.array
    np.testing.assert_array_equal(sct["jpeg"], sct["plain"])
