"""SynthRAD2023 image metrics: hand-computed cases, an independent SSIM, a scikit-image golden value, phantoms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from dosimetry.errors import DosimetryError
from dosimetry.image_metrics import image_metrics, mae_hu, psnr_db, ssim, tissue_errors
from dosimetry.tissue_classes import TISSUE_CLASSES, TissueClass, TissueThresholdsHu
from models.phantoms import Tissue, generate_phantom
from models.volume import Volume


def _volume(array, spacing_mm=(1.0, 1.0, 1.0)) -> Volume:
    return Volume(np.asarray(array, dtype=np.float64), spacing_mm)


def _reference_ssim(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray) -> float:
    """The SynthRAD2023 SSIM written out directly: explicit 7x7x7 windows, two-pass (co)variances.

    Independent of the module's uniform_filter running sums; numpy's 'symmetric' padding is scipy's
    'reflect' border, which skimage uses.
    """
    data_range = 4024.0

    def prepare(image):
        return np.where(mask, np.clip(image, -1024.0, 3000.0), -1024.0) + 1024.0

    windows_x = sliding_window_view(np.pad(prepare(ct), 3, mode="symmetric"), (7, 7, 7))
    windows_y = sliding_window_view(np.pad(prepare(sct), 3, mode="symmetric"), (7, 7, 7))
    axes = (-3, -2, -1)
    mean_x = windows_x.mean(axis=axes)
    mean_y = windows_y.mean(axis=axes)
    dev_x = windows_x - mean_x[..., None, None, None]
    dev_y = windows_y - mean_y[..., None, None, None]
    n = 7**3
    var_x = (dev_x**2).sum(axis=axes) / (n - 1)
    var_y = (dev_y**2).sum(axis=axes) / (n - 1)
    cov = (dev_x * dev_y).sum(axis=axes) / (n - 1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)) / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2))
    core = (slice(3, -3),) * 3
    return float(ssim_map[core][mask[core]].mean())


def _smooth_case():
    """A deterministic CT/sCT pair with values beyond both clip limits, some inside the mask."""
    z, y, x = np.mgrid[0:9, 0:11, 0:10].astype(np.float64)
    ct = 600.0 * np.sin(0.7 * x + 0.3 * y) * np.cos(0.5 * z) + 100.0 * y - 400.0
    sct = ct + 150.0 * np.cos(1.3 * x * y / 7.0 + z)
    ct[0, 0, 0] = -2000.0  # outside the mask
    sct[8, 10, 9] = 5000.0  # outside the mask
    sct[4, 5, 5] = 3500.0  # inside: clipped for PSNR and SSIM, not for MAE
    mask = np.zeros(ct.shape, dtype=bool)
    mask[1:8, 2:10, 1:9] = True
    return ct, sct, mask


# ------------------------------------------------------------------------------------------- MAE and PSNR by hand


def test_mae_is_unclipped_and_psnr_clipped_by_hand():
    ct = _volume([[[0.0, 100.0], [-1100.0, 3100.0]]])
    sct = _volume([[[10.0, 80.0], [-1000.0, 2900.0]]])
    mask = np.ones((1, 2, 2), dtype=bool)
    # |10| + |-20| + |100| + |-200| over 4 voxels, no clipping.
    assert mae_hu(ct, sct, mask) == pytest.approx(330.0 / 4)
    # Clipped to [-1024, 3000]: ct -> (0, 100, -1024, 3000); differences 10, 20, 24, 100 HU.
    mse = (10**2 + 20**2 + 24**2 + 100**2) / 4  # 2769
    assert psnr_db(ct, sct, mask) == pytest.approx(10 * math.log10(4024.0**2 / mse), abs=1e-12)


def test_numeric_mask_is_binarised_and_voxels_outside_are_ignored():
    ct = _volume([[[0.0, 100.0], [-1100.0, 3100.0]]])
    sct = _volume([[[10.0, 80.0], [-1000.0, 2900.0]]])
    mask = np.array([[[2.0, 0.5], [0.0, 1.0]]])  # > 0 selects three voxels
    assert mae_hu(ct, sct, mask) == pytest.approx((10 + 20 + 200) / 3)
    assert psnr_db(ct, sct, mask) == pytest.approx(10 * math.log10(4024.0**2 / ((100 + 400 + 10000) / 3)))


def test_psnr_of_identical_images_is_infinite_and_clipping_can_hide_differences():
    ct = _volume([[[-3000.0, 50.0, 4000.0]]])
    assert psnr_db(ct, ct, np.ones((1, 1, 3), dtype=bool)) == math.inf
    # -3000 vs -2000 and 4000 vs 3500 both clip to the same values: PSNR sees no error, MAE does.
    other = _volume([[[-2000.0, 50.0, 3500.0]]])
    assert psnr_db(ct, other, np.ones((1, 1, 3), dtype=bool)) == math.inf
    assert mae_hu(ct, other, np.ones((1, 1, 3), dtype=bool)) == pytest.approx(1500.0 / 3)


# ----------------------------------------------------------------------------------------------------------- SSIM


def test_ssim_matches_an_independent_implementation_and_scikit_image():
    ct, sct, mask = _smooth_case()
    value = ssim(_volume(ct), _volume(sct), mask)
    assert value == pytest.approx(_reference_ssim(ct, sct, mask), abs=1e-12)
    # Golden values from the challenge's own code path: skimage 0.26.0
    # structural_similarity(gt, pred, data_range=4024, full=True) and peak_signal_noise_ratio, run (float64)
    # on this case exactly as SynthRAD2023/metrics functions/image_metrics.py does, crop(map, 3) included.
    assert value == pytest.approx(0.954923829720863, abs=1e-12)
    metrics = image_metrics(_volume(ct), _volume(sct), mask)
    assert metrics.ssim == pytest.approx(value, abs=1e-15)
    assert metrics.psnr_db == pytest.approx(27.782344074618955, abs=1e-9)
    assert metrics.mae_hu == pytest.approx(102.08708665479688, abs=1e-9)


def test_ssim_in_slabs_equals_the_whole_volume_computation():
    # 40 slices span two slabs (32 + 8) and both the volume faces and the internal slab seam.
    z, y, x = np.mgrid[0:40, 0:9, 0:8].astype(np.float64)
    ct = 800.0 * np.sin(0.45 * z + 0.8 * x) + 40.0 * y
    sct = ct + 200.0 * np.cos(0.9 * z * x / 5.0 + y)
    mask = np.zeros(ct.shape, dtype=bool)
    mask[2:38, 1:8, 1:7] = True
    assert ssim(_volume(ct), _volume(sct), mask) == pytest.approx(_reference_ssim(ct, sct, mask), abs=1e-12)


def test_ssim_of_identical_images_is_one_and_ignores_values_outside_the_mask():
    ct, sct, mask = _smooth_case()
    assert ssim(_volume(ct), _volume(ct), mask) == pytest.approx(1.0, abs=1e-12)
    # The challenge sets voxels outside the mask to -1024 before filtering: changes there are invisible.
    changed = sct.copy()
    changed[~mask] = 2500.0
    assert ssim(_volume(ct), _volume(changed), mask) == ssim(_volume(ct), _volume(sct), mask)


def test_ssim_needs_a_window_sized_grid_and_mask_voxels_inside_the_crop():
    small = _volume(np.zeros((6, 10, 10)))
    with pytest.raises(DosimetryError, match="at least 7 voxels"):
        ssim(small, small, np.ones((6, 10, 10), dtype=bool))
    grid = _volume(np.zeros((8, 8, 8)))
    rim = np.zeros((8, 8, 8), dtype=bool)
    rim[0] = True  # only on a face, which the challenge crops away
    with pytest.raises(DosimetryError, match="3 voxels inside"):
        ssim(grid, grid, rim)


# --------------------------------------------------------------------------------------------- per-tissue errors


def test_per_tissue_mae_and_mean_error_by_hand():
    # One voxel or two per class of the reference CT, with values on the class boundaries.
    ct = _volume([[[-1000.0, -950.0, -190.0, -30.0, 200.0, 1300.0]]])
    sct = _volume([[[-990.0, -970.0, -190.0, -10.0, 0.0, 1000.0]]])
    mask = np.ones((1, 1, 6), dtype=bool)
    errors = {entry.tissue: entry for entry in tissue_errors(ct, sct, mask)}
    assert [e.tissue for e in tissue_errors(ct, sct, mask)] == list(TISSUE_CLASSES)
    # -1000 is air (< -950); -950 opens lung-like; -190 opens fat; -30 opens soft tissue; 200 opens bone.
    assert (errors[TissueClass.AIR].voxel_count, errors[TissueClass.AIR].mae_hu) == (1, 10.0)
    assert errors[TissueClass.AIR].mean_error_hu == 10.0
    assert (errors[TissueClass.LUNG].mae_hu, errors[TissueClass.LUNG].mean_error_hu) == (20.0, -20.0)
    assert (errors[TissueClass.FAT].mae_hu, errors[TissueClass.FAT].mean_error_hu) == (0.0, 0.0)
    assert (errors[TissueClass.SOFT_TISSUE].mae_hu, errors[TissueClass.SOFT_TISSUE].mean_error_hu) == (20.0, 20.0)
    bone = errors[TissueClass.BONE]
    assert (bone.voxel_count, bone.mae_hu, bone.mean_error_hu) == (2, 250.0, -250.0)  # errors -200 and -300
    assert (bone.lower_hu, bone.upper_hu) == (200.0, math.inf)


def test_empty_classes_report_none_and_thresholds_can_move():
    ct = _volume([[[40.0, 250.0]]])
    entries = tissue_errors(ct, ct, np.ones((1, 1, 2), dtype=bool), TissueThresholdsHu(bone_from_hu=300.0))
    by_class = {e.tissue: e for e in entries}
    assert by_class[TissueClass.AIR].voxel_count == 0 and by_class[TissueClass.AIR].mae_hu is None
    assert by_class[TissueClass.SOFT_TISSUE].voxel_count == 2  # 250 HU is soft tissue once bone starts at 300
    with pytest.raises(DosimetryError, match="increase strictly"):
        TissueThresholdsHu(fat_below_hu=-500.0)


# ------------------------------------------------------------------------------------------------- input checks


def test_grid_mask_and_value_errors_are_clear():
    ct = _volume(np.zeros((8, 8, 8)))
    mask = np.ones((8, 8, 8), dtype=bool)
    with pytest.raises(DosimetryError, match=r"not on the same voxel grid: spacing_mm"):
        mae_hu(ct, _volume(np.zeros((8, 8, 8)), spacing_mm=(1.0, 1.0, 2.0)), mask)
    with pytest.raises(DosimetryError, match=r"shape \(z, y, x\) \(8, 8, 8\) vs \(8, 8, 9\)"):
        image_metrics(ct, _volume(np.zeros((8, 8, 9))), mask)
    with pytest.raises(DosimetryError, match=r"mask has shape \(8, 8\)"):
        mae_hu(ct, ct, np.ones((8, 8), dtype=bool))
    with pytest.raises(DosimetryError, match="mask is empty"):
        psnr_db(ct, ct, np.zeros((8, 8, 8), dtype=bool))
    broken = np.zeros((8, 8, 8))
    broken[4, 4, 4] = np.nan
    with pytest.raises(DosimetryError, match="sCT has 1 NaN or infinite voxel"):
        ssim(ct, _volume(broken), mask)
    broken_outside = mask.copy()
    broken_outside[4, 4, 4] = False  # NaN outside the mask is allowed: the metrics never read it
    assert mae_hu(ct, _volume(broken), broken_outside) == 0.0


# ------------------------------------------------------------------------------------------------------ phantoms


@pytest.fixture(scope="module")
def pelvis():
    return generate_phantom("pelvis", 3, shape_zyx=(16, 64, 64), spacing_mm=(6.5, 6.5, 12))


def test_phantom_ct_against_itself(pelvis):
    metrics = image_metrics(pelvis.ct_hu, pelvis.ct_hu, pelvis.body_mask)
    assert metrics.mae_hu == 0.0
    assert metrics.psnr_db == math.inf
    assert metrics.ssim == pytest.approx(1.0, abs=1e-12)
    assert metrics.mask_voxel_count == int(pelvis.body_mask.sum())
    assert all(e.mae_hu in (None, 0.0) for e in metrics.per_tissue)


def test_phantom_with_bone_replaced_by_water(pelvis):
    labels = pelvis.labels.array
    bone_labels = (labels == Tissue.CORTICAL_BONE) | (labels == Tissue.MARROW)
    sct = pelvis.ct_hu.with_array(np.where(bone_labels, 0, pelvis.ct_hu.array).astype(np.int16))
    metrics = image_metrics(pelvis.ct_hu, sct, pelvis.body_mask)
    bone = metrics.tissue("bone")
    ct_bone = pelvis.ct_hu.array[pelvis.body_mask & (pelvis.ct_hu.array >= 200)].astype(np.float64)
    # Every bone-class voxel (reference CT >= 200 HU) is now 0 HU, so its error is minus its CT number:
    # bone MAE = mean bone HU, about 1020 HU here (cortical bone 1300 HU and marrow 300 HU, 759:283 voxels).
    assert bone.voxel_count == ct_bone.size > 500
    assert bone.mae_hu == pytest.approx(ct_bone.mean(), rel=1e-9)
    assert 900.0 < bone.mae_hu < 1100.0
    assert bone.mean_error_hu == pytest.approx(-bone.mae_hu)
    assert metrics.tissue("fat").mae_hu == 0.0  # untouched classes keep no error
    # The body MAE is the bone error diluted by the body: bone share x bone MAE (+ the odd partial voxel).
    share = bone.voxel_count / metrics.mask_voxel_count
    assert metrics.mae_hu == pytest.approx(share * bone.mae_hu, rel=0.02)
    assert metrics.ssim < 0.99
