"""RT Structure Set -> masks on any grid: exact on the drawing grid, sensible on others, clear refusals."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from dosimetry.structures import StructureError, read_structures
from models.phantoms import generate_phantom
from models.volume import Volume
from sct_node.tools.phantom_writer import write_phantom_dicom


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


@pytest.fixture(scope="module")
def thin_slices(tmp_path_factory):
    """Contours on 2.5 mm planes, as a CT's."""
    phantom = generate_phantom("pelvis", 4, shape_zyx=(48, 48, 64), spacing_mm=(7.0, 5.0, 2.5))
    return phantom, write_phantom_dicom(phantom, "thin", tmp_path_factory.mktemp("thin"))


@pytest.mark.parametrize("slice_factor", [2.0, 3.0, 0.5])
def test_grids_coarser_or_finer_in_z_than_the_contours_keep_the_volume(thin_slices, slice_factor):
    """Coarser slices take the nearest contour plane (they XORed several planes before: 39-48 % of the volume);
    finer slices repeat each plane across its slab instead of leaving slices empty."""
    phantom, written = thin_slices
    grid = phantom.ct_hu
    nz, ny, nx = grid.shape
    depth = int(round(nz / slice_factor))
    spacing_z = grid.spacing_mm[2] * nz / depth
    # Same outer edges in z: the first slice centre moves by half the spacing change.
    origin = np.asarray(grid.origin_mm) + np.array([0.0, 0.0, (spacing_z - grid.spacing_mm[2]) / 2])
    other = Volume(np.zeros((depth, ny, nx), np.float32), (grid.spacing_mm[0], grid.spacing_mm[1], spacing_z),
                   tuple(origin))
    for name in ("PTV", "BLADDER", "BODY"):
        (structure,) = read_structures(written.rtstruct_path, other, names=[name])
        truth_cc = phantom.structure(name).mask.sum() * np.prod(grid.spacing_mm) / 1000
        measured_cc = structure.mask.sum() * np.prod(other.spacing_mm) / 1000
        # One contour plane per slice stands for the slice's slab: off by the planes at the ends only.
        assert abs(measured_cc - truth_cc) / truth_cc < 0.1, (name, measured_cc, truth_cc)


def test_supersampled_boundary_converges_to_the_polygon_area(phantom_case):
    phantom, written = phantom_case
    dataset = pydicom.dcmread(written.rtstruct_path)
    number = next(int(r.ROINumber) for r in dataset.StructureSetROISequence if r.ROIName == "PTV")
    contours = next(c for c in dataset.ROIContourSequence if int(c.ReferencedROINumber) == number)
    area = 0.0
    for contour in contours.ContourSequence:
        xy = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)[:, :2]
        area += abs(0.5 * np.sum(xy[:, 0] * np.roll(xy[:, 1], -1) - np.roll(xy[:, 0], -1) * xy[:, 1]))
    polygon_cc = area * phantom.ct_hu.spacing_mm[2] / 1000
    voxel_cc = np.prod(phantom.ct_hu.spacing_mm) / 1000
    errors = {}
    for factor in (1, 4, 8):
        (ptv,) = read_structures(written.rtstruct_path, phantom.ct_hu, names=["PTV"])
        _, weights = ptv.dose_samples(factor)
        errors[factor] = abs(weights.sum() * voxel_cc - polygon_cc) / polygon_cc
        np.testing.assert_array_equal(ptv.mask, phantom.structure("PTV").mask)  # the mask itself is unchanged
    assert errors[4] < 0.01 and errors[8] <= errors[4] + 0.002 and errors[4] < errors[1]


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
