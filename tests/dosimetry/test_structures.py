"""RT Structure Set -> masks on any grid: exact on the drawing grid, sensible on others, clear refusals."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from dosimetry.structures import StructureError, read_structures
from models.phantoms import generate_phantom
from models.volume import Volume
from sct_node.dicom.phantom_writer import write_phantom_dicom


@pytest.fixture(scope="module")
def phantom_case(tmp_path_factory):
    """A non-square, anisotropic grid, the case rt-utils got wrong."""
    phantom = generate_phantom("pelvis", 4, shape_zyx=(14, 48, 64), spacing_mm=(7.0, 5.0, 10.0))
    written = write_phantom_dicom(phantom, "structures", tmp_path_factory.mktemp("dicom"))
    return phantom, written


def test_masks_round_trip_exactly_on_the_image_grid(phantom_case):
    phantom, written = phantom_case
    masks = read_structures(written.rtstruct_path, phantom.ct_hu, frame_of_reference_uid=written.frame_of_reference_uid)
    assert {m.name for m in masks} == {s.name for s in phantom.structures}
    for mask in masks:
        np.testing.assert_array_equal(mask.mask, phantom.structure(mask.name).mask, err_msg=mask.name)
    assert {m.name: m.interpreted_type for m in masks}["BODY"] == "EXTERNAL"
    assert {m.name: m.interpreted_type for m in masks}["PTV"] == "PTV"


def test_masks_on_a_finer_grid_keep_volume_and_position(phantom_case):
    phantom, written = phantom_case
    grid = phantom.ct_hu
    nz, ny, nx = grid.shape
    fine = Volume(np.zeros((nz, 2 * ny, 2 * nx), np.float32), (grid.spacing_mm[0] / 2, grid.spacing_mm[1] / 2,
                                                                 grid.spacing_mm[2]),
                  tuple(np.asarray(grid.origin_mm) - np.array([grid.spacing_mm[0] / 4, grid.spacing_mm[1] / 4, 0])))
    (body,) = read_structures(written.rtstruct_path, fine, names=["BODY"])
    coarse_cc = phantom.structure("BODY").mask.sum() * np.prod(grid.spacing_mm)
    fine_cc = body.mask.sum() * np.prod(fine.spacing_mm)
    assert abs(fine_cc - coarse_cc) / coarse_cc < 0.03


def test_refusals_name_the_problem(phantom_case, tmp_path):
    phantom, written = phantom_case
    with pytest.raises(StructureError, match="frame of reference .* not the image's 1.2.3"):
        read_structures(written.rtstruct_path, phantom.ct_hu, frame_of_reference_uid="1.2.3")
    with pytest.raises(StructureError, match="drawn on series .* not on 9.9"):
        read_structures(written.rtstruct_path, phantom.ct_hu, referenced_series_uid="9.9")
    with pytest.raises(StructureError, match="no ROI named LIVER"):
        read_structures(written.rtstruct_path, phantom.ct_hu, names=["LIVER"])
    ct_file = next(written.ct_dir.glob("*.dcm"))
    with pytest.raises(StructureError, match="not an RT Structure Set"):
        read_structures(ct_file, phantom.ct_hu)
    elsewhere = Volume(np.zeros((4, 8, 8), np.float32), (1.0, 1.0, 1.0), (5000.0, 5000.0, 5000.0))
    with pytest.raises(StructureError, match="no voxel on the image grid"):
        read_structures(written.rtstruct_path, elsewhere, names=["PTV"])
    dataset = pydicom.dcmread(written.rtstruct_path)
    assert read_structures(dataset, elsewhere, names=["PTV"], allow_empty=True)[0].mask.sum() == 0
