"""HU checks of an sCT: hand-built volumes with known answers, and the pelvis phantom."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from dosimetry.errors import DosimetryError
from dosimetry.hu_checks import (
    body_outline_agreement,
    compare_masks,
    field_of_view_truncation,
    hu_statistics,
    sct_body_outline,
    slice_coverage,
    uncertainty_region,
)
from dosimetry.tissue_classes import TISSUE_CLASSES
from models.phantoms import Tissue, generate_phantom
from models.volume import Volume


@pytest.fixture(scope="module")
def pelvis():
    return generate_phantom("pelvis", 3, shape_zyx=(16, 64, 64), spacing_mm=(6.5, 6.5, 12))


# ----------------------------------------------------------------------------------------------- HU statistics


def test_hu_statistics_by_hand():
    sct = Volume(np.array([[[-1000.0, -500.0, -100.0, 40.0],
                            [300.0, 5000.0, np.nan, np.inf],
                            [-1024.0, np.nan, 0.0, 0.0]]]), (1.0, 1.0, 1.0))
    body = np.zeros((1, 3, 4), dtype=bool)
    body[0, :2] = True  # the first two rows: 8 voxels
    stats = hu_statistics(sct, body)
    assert stats.body_voxel_count == 8
    counts = [entry.voxel_count for entry in stats.tissue_fractions]
    # air, lung-like, fat, soft tissue one each; bone 300, 5000 and +inf; NaN in no class.
    assert counts == [1, 1, 1, 1, 3]
    assert [entry.tissue for entry in stats.tissue_fractions] == list(TISSUE_CLASSES)
    assert stats.tissue("bone").fraction == 3 / 8 and stats.tissue("bone").percent == 37.5
    assert stats.soft_tissue_mean_hu == 40.0
    assert stats.bone_mean_hu == (300.0 + 5000.0) / 2  # the infinite voxel is left out of the mean
    assert (stats.nan_count, stats.inf_count, stats.nonfinite_count_outside_body) == (1, 1, 1)
    assert (stats.min_hu, stats.max_hu) == (-1000.0, 5000.0)
    # Not a CT number in [-1024, 3071]: 5000, NaN and inf.
    assert (stats.invalid_count, stats.invalid_fraction) == (3, 3 / 8)


def test_hu_statistics_of_the_phantom_and_of_an_sct_without_bone(pelvis):
    ct, body, labels = pelvis.ct_hu, pelvis.body_mask, pelvis.labels.array
    stats = hu_statistics(ct, body)
    bone_labels = (labels == Tissue.CORTICAL_BONE) | (labels == Tissue.MARROW)
    # The phantom's bone (cortical 1300 HU, marrow 300 HU, noise 15 HU) is exactly the >= 200 HU class.
    assert stats.tissue("bone").voxel_count == int(np.count_nonzero(bone_labels & body))
    assert 0.05 < stats.tissue("bone").fraction < 0.12
    assert 30.0 < stats.soft_tissue_mean_hu < 50.0  # muscle 45, soft tissue 40, skin/prostate 40 HU
    assert stats.invalid_count == 0 and stats.nan_count == 0

    no_bone = ct.with_array(np.where(bone_labels, 0, ct.array).astype(np.int16))
    stripped = hu_statistics(no_bone, body)
    assert stripped.tissue("bone").voxel_count == 0 and stripped.bone_mean_hu is None
    assert stripped.tissue("soft_tissue").voxel_count == (
        stats.tissue("soft_tissue").voxel_count + stats.tissue("bone").voxel_count
    )


# ------------------------------------------------------------------------------------------------- body outline


def test_compare_masks_of_a_cube_and_its_shift_by_hand():
    first = np.zeros((14, 14, 14), dtype=bool)
    first[2:12, 2:12, 2:12] = True
    second = np.roll(first, 1, axis=2)  # one voxel along x, whose spacing is 2 mm
    result = compare_masks(first, second, spacing_mm=(2.0, 1.0, 1.0))
    assert result.dice == pytest.approx(2 * 900 / 2000)
    # Per direction, of the 10**3 - 8**3 = 488 surface voxels: the 100 of the face the other cube leaves are
    # 2 mm (one x step) from it; of the 8 x 8 inner voxels of the face that ends one voxel short, the 6 x 6
    # centre is 2 mm from the other's end face and the ring of 28 only 1 mm (one y or z step) from its side
    # faces; all the rest lie on the other's surface.
    assert result.max_surface_distance_mm == 2.0
    assert result.surface_distance_95_mm == 2.0  # 136 of 488 voxels (28 %) are at 2 mm
    assert result.mean_surface_distance_mm == pytest.approx((100 * 2.0 + 36 * 2.0 + 28 * 1.0) / 488)
    same = compare_masks(first, first, spacing_mm=(2.0, 1.0, 1.0))
    assert (same.dice, same.max_surface_distance_mm, same.mean_surface_distance_mm) == (1.0, 0.0, 0.0)


def test_sct_outline_keeps_internal_air_and_drops_other_objects():
    hu = np.full((6, 20, 20), -1000.0)
    hu[:, 4:16, 4:16] = 40.0  # the body
    hu[2:4, 8:11, 8:11] = -1000.0  # enclosed gas
    hu[5, 9:11, 9:11] = -1000.0  # gas that opens onto the last slice: only slice-wise filling keeps it
    hu[:, 18:20, 0:3] = 100.0  # a separate, smaller object (couch, coil)
    outline = sct_body_outline(Volume(hu, (1.0, 1.0, 2.0)))
    expected = np.zeros_like(outline)
    expected[:, 4:16, 4:16] = True
    np.testing.assert_array_equal(outline, expected)
    with pytest.raises(DosimetryError, match="no voxel above -400 HU"):
        sct_body_outline(Volume(np.full((3, 4, 4), -1000.0), (1.0, 1.0, 1.0)))


def test_outline_agreement_on_the_phantom(pelvis):
    same = body_outline_agreement(pelvis.ct_hu, pelvis.body_mask)
    assert same.dice == 1.0 and same.max_surface_distance_mm == 0.0
    # An sCT that loses a 1-voxel rim of the body (outline shrinks by 6.5 mm in-plane).
    body = pelvis.body_mask
    eroded = np.stack([ndimage.binary_erosion(s) for s in body])
    shrunk = pelvis.ct_hu.with_array(np.where(body & ~eroded, -1000, pelvis.ct_hu.array).astype(np.int16))
    result = body_outline_agreement(shrunk, body)
    assert 0.8 < result.dice < 0.99
    assert result.surface_distance_95_mm == pytest.approx(6.5)
    assert result.first_voxel_count == int(eroded.sum()) and result.second_voxel_count == int(body.sum())


# ---------------------------------------------------------------------------------------- field of view, slices


def test_field_of_view_truncation_by_hand():
    body = np.zeros((5, 10, 10), dtype=bool)
    body[:, 3:7, 3:7] = True  # inside the image on every slice
    body[2, 0:4, :] = True  # slice 2 runs over the whole first row (10 of the 36 ring pixels)
    body[3, 4:6, 6:10] = True  # slice 3 reaches the last column in 2 pixels
    body[4] = False
    result = field_of_view_truncation(body)
    assert result.body_slice_count == 4
    assert result.truncated_slices == (2, 3) and result.truncated_slice_count == 2
    assert result.truncated_slice_fraction == 0.5
    # Slice 2: row 0 (10) plus rows 1-3 at columns 0 and 9 (6) = 16 of 36 border pixels.
    assert result.max_border_fraction == pytest.approx(16 / 36)
    assert result.border_voxel_count == 16 + 2


def test_slice_coverage_finds_missing_and_shifted_slices():
    mr = Volume(np.zeros((10, 4, 4)), (1.0, 1.0, 3.0), (0.0, 0.0, 100.0))
    same = slice_coverage(Volume(np.zeros((10, 4, 4)), (1.0, 1.0, 3.0), (0.0, 0.0, 100.0)), mr)
    assert (same.matched_slice_count, same.max_offset_mm, same.in_plane_grid_matches) == (10, 0.0, True)
    assert same.mr_slices_without_sct == () and same.sct_slices_without_mr == ()

    cropped = slice_coverage(Volume(np.zeros((8, 4, 4)), (1.0, 1.0, 3.0), (0.0, 0.0, 103.0)), mr)
    assert cropped.matched_slice_count == 8
    assert cropped.mr_slices_without_sct == (0, 9) and cropped.sct_slices_without_mr == ()
    assert cropped.max_offset_mm == pytest.approx(3.0)  # MR slice 0 is one slice from the sCT's first

    shifted = slice_coverage(Volume(np.zeros((10, 4, 4)), (1.0, 1.0, 3.0), (0.0, 0.0, 101.5)), mr)
    assert shifted.matched_slice_count == 0 and shifted.max_offset_mm == pytest.approx(1.5)

    resampled = slice_coverage(Volume(np.zeros((10, 4, 4)), (1.2, 1.0, 3.0), (0.0, 0.0, 100.0)), mr)
    assert resampled.matched_slice_count == 10 and not resampled.in_plane_grid_matches
    with pytest.raises(DosimetryError, match="tolerance_mm"):
        slice_coverage(mr, mr, tolerance_mm=0.0)


# --------------------------------------------------------------------------------------------------- uncertainty


def test_uncertainty_region_by_hand():
    std = np.full((4, 6, 8), 10.0)
    std[1:3, 2:4, 5:7] = 80.0  # 8 voxels above the level
    std[0, 0, 0] = 500.0  # above, but outside the body
    body = np.zeros(std.shape, dtype=bool)
    body[:, 1:6, 1:8] = True
    volume = Volume(std, (2.0, 3.0, 5.0), (-10.0, 20.0, 100.0))
    region = uncertainty_region(volume, body, level_hu=50.0)
    assert (region.body_voxel_count, region.above_count) == (140, 8)
    assert region.above_fraction == pytest.approx(8 / 140)
    assert region.bounding_box_zyx == ((1, 2), (2, 3), (5, 6))
    # x = -10 + 2 * (5..6), y = 20 + 3 * (2..3), z = 100 + 5 * (1..2)
    assert region.bounding_box_min_mm == (0.0, 26.0, 105.0)
    assert region.bounding_box_max_mm == (2.0, 29.0, 110.0)
    assert region.centroid_mm == pytest.approx((1.0, 27.5, 107.5))
    assert region.max_std_hu == 80.0 and region.mean_std_hu == pytest.approx((132 * 10 + 8 * 80) / 140)

    calm = uncertainty_region(volume, body, level_hu=100.0)
    assert calm.above_count == 0 and calm.bounding_box_zyx is None and calm.centroid_mm is None


def test_uncertainty_region_rejects_bad_input():
    volume = Volume(np.zeros((3, 3, 3)), (1.0, 1.0, 1.0))
    body = np.ones((3, 3, 3), dtype=bool)
    with pytest.raises(DosimetryError, match="level_hu"):
        uncertainty_region(volume, body, level_hu=-1.0)
    with pytest.raises(DosimetryError, match="not on the same voxel grid: origin_mm"):
        uncertainty_region(volume, body, 10.0, sct=Volume(np.zeros((3, 3, 3)), (1.0, 1.0, 1.0), (0.0, 0.0, 5.0)))
    negative = volume.with_array(np.full((3, 3, 3), -1.0))
    with pytest.raises(DosimetryError, match="negative"):
        uncertainty_region(negative, body, 10.0)
    broken = volume.with_array(np.full((3, 3, 3), math.nan))
    with pytest.raises(DosimetryError, match="27 NaN"):
        uncertainty_region(broken, body, 10.0)


def test_checks_reject_masks_that_do_not_fit():
    sct = Volume(np.zeros((3, 4, 4)), (1.0, 1.0, 1.0))
    with pytest.raises(DosimetryError, match=r"body mask has shape \(3, 4\)"):
        hu_statistics(sct, np.ones((3, 4), dtype=bool))
    with pytest.raises(DosimetryError, match="body mask is empty"):
        hu_statistics(sct, np.zeros((3, 4, 4), dtype=bool))
    with pytest.raises(DosimetryError, match="MR body mask is empty"):
        body_outline_agreement(sct, np.zeros((3, 4, 4), dtype=bool))
    with pytest.raises(DosimetryError, match="must be a models.volume.Volume"):
        hu_statistics(np.zeros((3, 4, 4)), np.ones((3, 4, 4), dtype=bool))
