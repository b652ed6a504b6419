"""Body outline of an sCT and mask agreement: hand-built masks with known answers, and the pelvis phantom."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from dosimetry.errors import DosimetryError
from dosimetry.outline import body_outline_agreement, compare_masks, sct_body_outline
from models.volume import Volume


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
