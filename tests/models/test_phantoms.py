"""Tests of the seeded paired MR/CT phantoms (models.phantoms)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from models.errors import GeometryError, ModelsError, PhantomError
from models.phantoms import (
    DEFAULT_GRIDS,
    T1_WEIGHTED,
    T2_WEIGHTED,
    TISSUE_PROPERTIES,
    Phantom,
    PhantomStructure,
    Site,
    SpinEchoSequence,
    Tissue,
    bias_field,
    generate_phantom,
    property_lookup,
    read_synthrad_case,
    spin_echo_signal,
    write_synthrad_case,
)
from models.volume import Volume

SMALL_SHAPE = (24, 64, 64)
SMALL_SPACING = (4.0, 4.0, 10.0)
CT_NOISE_HU = 15.0  # simulate_ct default
MR_NOISE_SIGMA = 0.01 * 2000.0  # simulate_mr defaults: noise_fraction * full_scale
OARS = {"head": {"BRAINSTEM", "EYE_L", "EYE_R"}, "pelvis": {"BLADDER", "RECTUM", "FEMUR_HEAD_L", "FEMUR_HEAD_R"}}


@pytest.fixture(scope="module")
def head() -> Phantom:
    return generate_phantom("head", 11, (32, 96, 96))


@pytest.fixture(scope="module")
def pelvis() -> Phantom:
    return generate_phantom("pelvis", 11, (32, 96, 96))


@pytest.fixture(scope="module", params=["head", "pelvis"])
def phantom(request: pytest.FixtureRequest, head: Phantom, pelvis: Phantom) -> Phantom:
    return head if request.param == "head" else pelvis


def _interior(mask: np.ndarray) -> np.ndarray:
    """Voxels whose in-plane neighbours share the label: free of blur from the edges."""
    return ndimage.binary_erosion(mask, structure=np.ones((1, 3, 3), bool))


def _centroid_mm(volume: Volume, mask: np.ndarray) -> np.ndarray:
    """Patient position (x, y, z) in mm of the centre of a (z, y, x) mask."""
    z, y, x = np.nonzero(mask)
    return volume.index_to_patient(np.array([x.mean(), y.mean(), z.mean()]))


# --- tissue table and signal model -------------------------------------------------------------


def test_every_tissue_has_properties_and_lookup_tables_follow_the_labels():
    assert set(TISSUE_PROPERTIES) == set(Tissue)
    hu = property_lookup("hu")
    assert hu.shape == (max(Tissue) + 1,)
    assert hu[Tissue.FAT] == TISSUE_PROPERTIES[Tissue.FAT].hu
    with pytest.raises(PhantomError, match="property name"):
        property_lookup("density")


def test_tissue_table_holds_published_ranges():
    p = TISSUE_PROPERTIES
    assert p[Tissue.OUTSIDE_AIR].hu == -1000 and p[Tissue.OUTSIDE_AIR].pd_relative == 0
    assert -150 <= p[Tissue.FAT].hu <= -50
    assert 35 <= p[Tissue.MUSCLE].hu <= 55
    assert p[Tissue.BRAIN_WM].hu < p[Tissue.BRAIN_GM].hu
    assert 0 <= p[Tissue.CSF].hu <= 15 and 0 <= p[Tissue.BLADDER_URINE].hu <= 15
    assert 1000 <= p[Tissue.CORTICAL_BONE].hu <= 1500
    assert 200 <= p[Tissue.MARROW].hu <= 400
    # Bone is bright on CT but has almost no mobile protons and a sub-millisecond T2.
    assert p[Tissue.CORTICAL_BONE].pd_relative <= 0.2 and p[Tissue.CORTICAL_BONE].t2_ms < 1.0
    # 1.5 T ordering: T1 of fat < WM < GM < CSF (Stanisz 2005, de Bazelaire 2004).
    assert p[Tissue.FAT].t1_ms < p[Tissue.BRAIN_WM].t1_ms < p[Tissue.BRAIN_GM].t1_ms < p[Tissue.CSF].t1_ms


def test_spin_echo_signal_matches_analytic_limits():
    assert spin_echo_signal(1.0, 800.0, 80.0, tr_ms=1e9, te_ms=0.0) == pytest.approx(1.0)
    assert spin_echo_signal(0.5, 800.0, 80.0, tr_ms=1e9, te_ms=80.0) == pytest.approx(0.5 * np.exp(-1))
    assert spin_echo_signal(1.0, 1000.0, 1e9, tr_ms=1000.0 * np.log(2), te_ms=0.0) == pytest.approx(0.5)
    with pytest.raises(PhantomError, match="te_ms"):
        SpinEchoSequence("bad", tr_ms=10.0, te_ms=20.0)


def test_weightings_give_textbook_contrast():
    def signal(tissue: Tissue, seq: SpinEchoSequence) -> float:
        p = TISSUE_PROPERTIES[tissue]
        return float(spin_echo_signal(p.pd_relative, p.t1_ms, p.t2_ms, seq.tr_ms, seq.te_ms))

    assert signal(Tissue.FAT, T1_WEIGHTED) > 2 * signal(Tissue.MUSCLE, T1_WEIGHTED)
    assert signal(Tissue.CSF, T1_WEIGHTED) < signal(Tissue.BRAIN_WM, T1_WEIGHTED)
    assert signal(Tissue.CSF, T2_WEIGHTED) > 2 * signal(Tissue.BRAIN_GM, T2_WEIGHTED)
    assert signal(Tissue.BRAIN_GM, T2_WEIGHTED) > 2 * signal(Tissue.MUSCLE, T2_WEIGHTED)
    assert signal(Tissue.BLADDER_URINE, T2_WEIGHTED) > 5 * signal(Tissue.MUSCLE, T2_WEIGHTED)


def test_bias_field_is_smooth_and_bounded():
    field = bias_field((20, 40, 50), np.random.default_rng(3), amplitude=0.2)
    assert field.dtype == np.float32
    assert field.min() == pytest.approx(0.8, abs=1e-5) and field.max() == pytest.approx(1.2, abs=1e-5)
    # Low-order polynomial: neighbouring voxels differ by far less than the full range.
    assert np.abs(np.diff(field, axis=2)).max() < 0.05
    with pytest.raises(PhantomError, match="amplitude"):
        bias_field((8, 8, 8), np.random.default_rng(0), amplitude=1.5)


# --- geometry ------------------------------------------------------------------------------------


def test_all_images_share_one_centred_axial_grid(phantom: Phantom):
    vols = [phantom.labels, phantom.ct_hu, phantom.mr_t1, phantom.mr_t2]
    assert all(phantom.labels.same_grid(v) for v in vols)
    assert phantom.labels.array.dtype == np.uint8 and phantom.ct_hu.array.dtype == np.int16
    assert phantom.mr_t1.array.dtype == np.float32 and phantom.mr_t2.array.dtype == np.float32
    np.testing.assert_array_equal(phantom.labels.direction, np.eye(3))
    centre_index = (np.array(phantom.labels.size_xyz) - 1) / 2.0
    np.testing.assert_allclose(phantom.labels.index_to_patient(centre_index), [0.0, 0.0, 0.0], atol=1e-9)
    for s in phantom.structures:
        assert s.mask.shape == phantom.labels.shape and s.mask.dtype == np.bool_


def test_shape_only_keeps_the_default_field_of_view(head: Phantom):
    shape, spacing = DEFAULT_GRIDS[Site.HEAD]
    fov = np.array(shape[::-1]) * np.array(spacing)
    np.testing.assert_allclose(np.array(head.labels.size_xyz) * np.array(head.labels.spacing_mm), fov)


@pytest.mark.parametrize("site", ["head", "pelvis"])
def test_default_grid_holds_every_structure(site: str):
    p = generate_phantom(site, 5)
    shape, spacing = DEFAULT_GRIDS[Site(site)]
    assert p.labels.shape == shape and p.labels.spacing_mm == spacing
    assert {s.name for s in p.structures} == {"BODY", "BONES", "PTV"} | OARS[site]
    assert all(s.mask.any() for s in p.structures)


# --- CT and MR values ----------------------------------------------------------------------------


def test_ct_median_in_each_tissue_matches_the_table(phantom: Phantom):
    labels, ct = phantom.labels.array, phantom.ct_hu.array.astype(np.float64)
    checked = 0
    for tissue in Tissue:
        inner = _interior(labels == tissue)
        if inner.sum() < 50:  # thin layers (skin, cortical shells) have no blur-free interior here
            continue
        assert np.median(ct[inner]) == pytest.approx(TISSUE_PROPERTIES[tissue].hu, abs=8.0), tissue.name
        checked += 1
    assert checked >= 6


def test_ct_noise_has_the_configured_standard_deviation(phantom: Phantom):
    labels, ct = phantom.labels.array, phantom.ct_hu.array.astype(np.float64)
    tissue = Tissue.BRAIN_WM if phantom.site == "head" else Tissue.MUSCLE
    inner = ndimage.binary_erosion(labels == tissue, structure=np.ones((3, 3, 3), bool))
    assert inner.sum() > 500
    assert np.std(ct[inner]) == pytest.approx(CT_NOISE_HU, rel=0.1)


def test_bone_is_bright_on_ct_and_dark_on_mr(phantom: Phantom):
    labels = phantom.labels.array
    cortical, marrow, muscle = (labels == t for t in (Tissue.CORTICAL_BONE, Tissue.MARROW, Tissue.MUSCLE))
    ct = phantom.ct_hu.array
    assert np.median(ct[cortical]) > 700
    for mr in (phantom.mr_t1.array, phantom.mr_t2.array):
        assert np.median(mr[cortical]) < 0.25 * np.median(mr[muscle])
    # Marrow: denser than soft tissue but far below cortex on CT; fatty, hence bright on T1w.
    assert 150 < np.median(ct[marrow]) < 0.5 * np.median(ct[cortical])
    assert np.median(phantom.mr_t1.array[marrow]) > 3 * np.median(phantom.mr_t1.array[cortical])


def test_air_outside_is_noise_only(phantom: Phantom):
    far_air = ~ndimage.binary_dilation(phantom.body_mask, iterations=3)
    assert np.median(phantom.ct_hu.array[far_air]) == pytest.approx(-1000, abs=3)
    for mr in (phantom.mr_t1.array, phantom.mr_t2.array):
        air = mr[far_air].astype(np.float64)
        # Zero signal under Rician noise is Rayleigh: mean sigma*sqrt(pi/2), mean/std = 1.913.
        assert air.mean() == pytest.approx(MR_NOISE_SIGMA * np.sqrt(np.pi / 2), rel=0.03)
        assert air.mean() / air.std() == pytest.approx(np.sqrt(np.pi / 2) / np.sqrt(2 - np.pi / 2), rel=0.05)
        assert air.min() >= 0


def test_mr_contrast_in_the_images(head: Phantom, pelvis: Phantom):
    def median(p: Phantom, mr: np.ndarray, tissue: Tissue) -> float:
        return float(np.median(mr[_interior(p.labels.array == tissue)]))

    t1, t2 = head.mr_t1.array, head.mr_t2.array
    assert median(head, t2, Tissue.CSF) > 2 * median(head, t2, Tissue.BRAIN_WM)
    assert median(head, t1, Tissue.FAT) > 1.5 * median(head, t1, Tissue.BRAIN_WM)
    t2_pelvis = pelvis.mr_t2.array
    assert median(pelvis, t2_pelvis, Tissue.BLADDER_URINE) > 4 * median(pelvis, t2_pelvis, Tissue.MUSCLE)


# --- structures and anatomy ----------------------------------------------------------------------


@pytest.mark.parametrize("site", ["head", "pelvis"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_small_grid_holds_the_whole_body_and_every_structure(site: str, seed: int):
    p = generate_phantom(site, seed, SMALL_SHAPE, SMALL_SPACING)
    body = p.body_mask
    assert {s.name for s in p.structures} == {"BODY", "BONES", "PTV"} | OARS[site]
    for s in p.structures:
        assert isinstance(s, PhantomStructure)
        assert s.mask.any(), s.name
        assert not (s.mask & ~body).any(), s.name
    # The body never touches the image sides (it may leave through the top or bottom slice).
    assert not body[:, 0, :].any() and not body[:, -1, :].any()
    assert not body[:, :, 0].any() and not body[:, :, -1].any()
    kinds = {s.name: s.kind for s in p.structures}
    assert kinds["BODY"] == "EXTERNAL" and kinds["PTV"] == "PTV" and kinds["BONES"] == "BONE"


def test_structure_masks_match_their_tissues(head: Phantom, pelvis: Phantom):
    bone_labels = np.isin(head.labels.array, [Tissue.CORTICAL_BONE, Tissue.MARROW])
    assert np.array_equal(head.structure("BONES").mask, bone_labels)
    assert np.all(head.labels.array[head.structure("EYE_L").mask] == Tissue.EYE)
    assert np.all(pelvis.labels.array[pelvis.structure("FEMUR_HEAD_R").mask] != Tissue.SOFT_TISSUE)
    assert np.array_equal(pelvis.body_mask, pelvis.labels.array != Tissue.OUTSIDE_AIR)


def test_head_orientation(head: Phantom):
    lab, vol = head.labels.array, head.labels
    brain = _centroid_mm(vol, np.isin(lab, [Tissue.BRAIN_GM, Tissue.BRAIN_WM]))
    eye_l = _centroid_mm(vol, head.structure("EYE_L").mask)
    eye_r = _centroid_mm(vol, head.structure("EYE_R").mask)
    stem = _centroid_mm(vol, head.structure("BRAINSTEM").mask)
    assert eye_l[0] > 0 > eye_r[0]  # patient left is +x
    assert eye_l[1] < brain[1] - 40 and eye_r[1] < brain[1] - 40  # eyes anterior (-y)
    assert eye_l[2] < brain[2] and stem[2] < brain[2]  # below the brain centre (+z superior)
    assert stem[1] > eye_l[1]
    # Head-first supine: the vertex is near the last slice, the neck leaves through slice 0.
    assert head.body_mask[0].any() and not head.body_mask[-1].any()


def test_pelvis_orientation(pelvis: Phantom):
    lab, vol = pelvis.labels.array, pelvis.labels
    prostate = _centroid_mm(vol, lab == Tissue.PROSTATE)
    rectum = _centroid_mm(vol, pelvis.structure("RECTUM").mask)
    bladder = _centroid_mm(vol, pelvis.structure("BLADDER").mask)
    femur_l = _centroid_mm(vol, pelvis.structure("FEMUR_HEAD_L").mask)
    femur_r = _centroid_mm(vol, pelvis.structure("FEMUR_HEAD_R").mask)
    assert rectum[1] > prostate[1]  # rectum posterior (+y) of the prostate
    assert bladder[2] > prostate[2] and bladder[1] < rectum[1]  # bladder superior, anterior of the rectum
    assert femur_l[0] > prostate[0] + 50 and femur_r[0] < prostate[0] - 50  # femoral heads lateral, L at +x


def test_pelvis_ptv_is_the_prostate_plus_a_7_mm_margin(pelvis: Phantom):
    prostate = pelvis.labels.array == Tissue.PROSTATE
    ptv = pelvis.structure("PTV").mask
    assert not (prostate & ~ptv).any()
    assert ptv.sum() > 1.5 * prostate.sum()
    spacing_zyx = pelvis.labels.spacing_mm[::-1]
    distance = ndimage.distance_transform_edt(~prostate, sampling=spacing_zyx)
    assert distance[ptv].max() <= 7.0 + 1e-6


def test_head_ptv_lies_in_the_brain(head: Phantom):
    ptv = head.structure("PTV").mask
    in_brain = np.isin(head.labels.array[ptv], [Tissue.BRAIN_GM, Tissue.BRAIN_WM, Tissue.CSF])
    assert in_brain.mean() > 0.8


# --- determinism and validation ------------------------------------------------------------------


def test_same_seed_is_bit_identical_and_another_seed_differs():
    a, b = (generate_phantom("pelvis", 42, SMALL_SHAPE, SMALL_SPACING) for _ in range(2))
    c = generate_phantom("pelvis", 43, SMALL_SHAPE, SMALL_SPACING)
    for name in ("labels", "ct_hu", "mr_t1", "mr_t2"):
        assert np.array_equal(getattr(a, name).array, getattr(b, name).array), name
        assert not np.array_equal(getattr(a, name).array, getattr(c, name).array), name
    for sa, sb in zip(a.structures, b.structures):
        assert sa.name == sb.name and np.array_equal(sa.mask, sb.mask)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"site": "knee"}, "site"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
        ({"shape_zyx": (4, 64, 64)}, "shape_zyx"),
        ({"shape_zyx": (24, 64)}, "shape_zyx"),
        ({"spacing_mm": (4.0, 0.0, 10.0)}, "spacing_mm"),
        ({"spacing_mm": (4.0, -4.0, 10.0)}, "spacing_mm"),
        ({"spacing_mm": (4.0, float("nan"), 10.0)}, "spacing_mm"),
        ({"shape_zyx": (8, 8, 8), "spacing_mm": None}, "holds no voxel"),
    ],
)
def test_invalid_arguments_raise_phantom_error(kwargs: dict, match: str):
    args = {"site": "head", "seed": 0, "shape_zyx": SMALL_SHAPE, "spacing_mm": SMALL_SPACING}
    args.update(kwargs)
    with pytest.raises(PhantomError, match=match):
        generate_phantom(**args)


def test_phantom_error_is_a_models_error_and_lookups_fail_clearly(head: Phantom):
    assert issubclass(PhantomError, ModelsError)
    with pytest.raises(PhantomError, match="no structure 'LIVER'"):
        head.structure("LIVER")
    with pytest.raises(PhantomError, match="weighting"):
        head.mr("pd")
    with pytest.raises(PhantomError, match="kind"):
        PhantomStructure("X", np.zeros((2, 2, 2), bool), "TARGET", (0, 0, 0))


# --- SynthRAD layout -----------------------------------------------------------------------------


@pytest.mark.parametrize("weighting", ["t1", "t2"])
def test_synthrad_round_trip_keeps_geometry_and_values(tmp_path: Path, head: Phantom, weighting: str):
    case = write_synthrad_case(head, tmp_path / "1HA001", mr=weighting)
    names = sorted(p.name for p in case.case_dir.iterdir())
    assert names == ["acquisition.json", "ct.mha", "labels.mha", "mask.mha", "mr.mha"]  # no temporaries
    assert json.loads((case.case_dir / "acquisition.json").read_text())["weighting"] == weighting.upper()
    images = read_synthrad_case(case.case_dir)
    for vol in (images.mr, images.ct, images.mask):
        assert vol.same_grid(head.labels, tolerance_mm=1e-6)
    np.testing.assert_array_equal(images.mr.array, head.mr(weighting).array)
    np.testing.assert_array_equal(images.ct.array, head.ct_hu.array)
    assert images.ct.array.dtype == np.int16 and images.mask.array.dtype == np.uint8
    np.testing.assert_array_equal(images.mask.array.astype(bool), head.body_mask)
    import SimpleITK as sitk  # the tissue label map, for MR appearance randomisation

    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(case.case_dir / "labels.mha"))),
                                  head.labels.array)


def test_central_slab_is_the_same_anatomy_on_the_same_grid(tmp_path: Path, head: Phantom):
    from models.phantoms.synthrad import write_central_slab

    case = write_synthrad_case(head, tmp_path / "whole")
    depth = head.ct_hu.shape[0]
    slab = read_synthrad_case(write_central_slab(case.case_dir, tmp_path / "slab", 3))
    start = (depth - 3) // 2
    np.testing.assert_array_equal(slab.ct.array, head.ct_hu.array[start:start + 3])
    np.testing.assert_array_equal(slab.mr.array, head.mr_t1.array[start:start + 3])
    np.testing.assert_allclose(slab.ct.origin_mm, head.ct_hu.slice_position_mm(start), atol=1e-6)
    assert slab.ct.spacing_mm == pytest.approx(head.ct_hu.spacing_mm)
    with pytest.raises(PhantomError, match=f"has {depth} slices"):
        write_central_slab(case.case_dir, tmp_path / "too-thick", depth + 1)
    with pytest.raises(PhantomError, match="positive integer"):
        write_central_slab(case.case_dir, tmp_path / "none", 0)


def test_volume_slab_keeps_its_slices_where_they_were(head: Phantom):
    ct = head.ct_hu
    slab = ct.slab(2, 5)
    np.testing.assert_array_equal(slab.array, ct.array[2:5])
    np.testing.assert_allclose(slab.slice_position_mm(1), ct.slice_position_mm(3), atol=1e-9)
    assert slab.spacing_mm == ct.spacing_mm
    for start, stop in ((3, 3), (-1, 2), (0, ct.shape[0] + 1)):
        with pytest.raises(GeometryError, match="slab"):
            ct.slab(start, stop)


def test_synthrad_reads_nifti_cases(tmp_path: Path, pelvis: Phantom):
    import SimpleITK as sitk

    case_dir = tmp_path / "1PA001"
    case_dir.mkdir()
    sitk.WriteImage(pelvis.mr_t2.to_sitk(), str(case_dir / "mr.nii.gz"))
    sitk.WriteImage(pelvis.ct_hu.to_sitk(), str(case_dir / "ct.nii.gz"))
    mask = pelvis.labels.with_array(pelvis.body_mask.astype(np.uint8))
    sitk.WriteImage(mask.to_sitk(), str(case_dir / "mask.nii.gz"))
    images = read_synthrad_case(case_dir)
    assert images.ct.same_grid(pelvis.ct_hu)
    np.testing.assert_array_equal(images.ct.array, pelvis.ct_hu.array)
    np.testing.assert_allclose(images.mr.array, pelvis.mr_t2.array)


def test_synthrad_reader_names_missing_or_ambiguous_files(tmp_path: Path, head: Phantom):
    case = write_synthrad_case(head, tmp_path / "case")
    case.ct_path.unlink()
    with pytest.raises(PhantomError, match=r"missing ct\.mha or ct\.nii\.gz"):
        read_synthrad_case(case.case_dir)
    write_synthrad_case(head, case.case_dir)
    (case.case_dir / "mask.nii.gz").write_bytes(b"")
    with pytest.raises(PhantomError, match="both mask.mha and mask.nii.gz"):
        read_synthrad_case(case.case_dir)
    with pytest.raises(PhantomError, match="not a folder"):
        read_synthrad_case(tmp_path / "nowhere")
    with pytest.raises(PhantomError, match="weighting"):
        write_synthrad_case(head, tmp_path / "other", mr="flair")


def test_synthrad_reader_rejects_mismatched_grids(tmp_path: Path, head: Phantom):
    case = write_synthrad_case(head, tmp_path / "case")
    import SimpleITK as sitk

    shifted = Volume(head.ct_hu.array, head.ct_hu.spacing_mm, (5.0, 0.0, 0.0))
    sitk.WriteImage(shifted.to_sitk(), str(case.ct_path))
    with pytest.raises(GeometryError, match="ct grid"):
        read_synthrad_case(case.case_dir)
