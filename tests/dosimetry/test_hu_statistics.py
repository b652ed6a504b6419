"""HU statistics of an sCT: hand-built volumes with known answers, and the pelvis phantom."""

from __future__ import annotations

import numpy as np
import pytest

from dosimetry.errors import DosimetryError
from dosimetry.hu_statistics import hu_statistics
from dosimetry.outline import body_outline_agreement
from dosimetry.tissue_classes import TISSUE_CLASSES
from models.phantoms import Tissue
from models.volume import Volume


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
