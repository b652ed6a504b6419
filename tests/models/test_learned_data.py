"""Data plumbing of the learned models: normalisation, cases, sampling, edge maps, checkpoints."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from models.base import HU_MAX, HU_MIN
from models.errors import ModelError
from models.learned.checkpoint import (
    CARD_FIELDS,
    MODEL_FILE,
    TRAIN_STATE_FILE,
    load_checkpoint,
    load_train_state,
    save_checkpoint,
)
from models.learned.data import (
    Case,
    SliceDataset,
    context_stack,
    load_cases,
    validation_slices,
)
from models.learned.edges import edge_map, outline
from models.learned.normalisation import (
    MR_PERCENTILE,
    denormalise_ct,
    normalise_ct,
    normalise_mr,
)
from models.phantoms import Phantom, generate_phantom, write_synthrad_case
from models.volume import Volume

REPO_ROOT = Path(__file__).resolve().parents[2]
PELVIS_SHAPE = (8, 40, 48)
HEAD_SHAPE = (12, 40, 48)  # the smallest head grid with every structure; its top slices hold no body
ODD_SHAPE = (8, 42, 45)  # not a multiple of 8 in-plane


@pytest.fixture(scope="module")
def pelvis() -> Phantom:
    return generate_phantom("pelvis", 2, PELVIS_SHAPE)


@pytest.fixture(scope="module")
def head() -> Phantom:
    return generate_phantom("head", 2, HEAD_SHAPE)


def _write_nifti_case(phantom: Phantom, case_dir: Path) -> None:
    """The SynthRAD2023 form of a case: ``{mr,ct,mask}.nii.gz``."""
    case_dir.mkdir(parents=True)
    mr = phantom.mr_t1
    sitk.WriteImage(mr.with_array(mr.array.astype(np.float32)).to_sitk(), str(case_dir / "mr.nii.gz"))
    sitk.WriteImage(phantom.ct_hu.to_sitk(), str(case_dir / "ct.nii.gz"))
    sitk.WriteImage(mr.with_array(phantom.body_mask.astype(np.uint8)).to_sitk(), str(case_dir / "mask.nii.gz"))


@pytest.fixture(scope="module")
def cases_root(tmp_path_factory: pytest.TempPathFactory, pelvis: Phantom, head: Phantom) -> Path:
    root = tmp_path_factory.mktemp("cases")
    _write_nifti_case(pelvis, root / "1PA002")  # SynthRAD2023 form (.nii.gz)
    write_synthrad_case(head, root / "1HNA002", mr="t1")  # SynthRAD2025 form (.mha)
    (root / "overview").mkdir()  # a folder without images is not a case
    return root


@pytest.fixture(scope="module")
def cases(cases_root: Path) -> list[Case]:
    return load_cases(cases_root)


# --- normalisation -------------------------------------------------------------------------------------------------


def test_ct_normalisation_is_an_exact_inverse_on_the_hu_range():
    hu = np.arange(HU_MIN, HU_MAX + 1, dtype=np.float32)
    x = normalise_ct(hu)
    assert x.dtype == np.float32
    assert x[0] == -1.0 and x[-1] == 1.0
    assert np.all(np.diff(x) > 0)
    np.testing.assert_allclose(denormalise_ct(x), hu, atol=1e-3)  # float32 rounding of the [-1, 1] value only
    x_grid = np.linspace(-1, 1, 1001, dtype=np.float32)
    np.testing.assert_allclose(normalise_ct(denormalise_ct(x_grid)), x_grid, atol=1e-6)
    # Clipped first: out-of-range values land on the ends.
    np.testing.assert_array_equal(normalise_ct(np.array([-3000.0, 8000.0])), [-1.0, 1.0])
    np.testing.assert_array_equal(denormalise_ct(np.array([-1.5, 2.0])), [HU_MIN, HU_MAX])
    assert normalise_ct(np.array([1023.5]))[0] == pytest.approx(0.0, abs=1e-7)  # the middle of the range


def test_mr_normalisation_maps_the_body_percentile_to_zero_and_the_outside_to_minus_one():
    # 201 body values 1..201: the 99.5th percentile falls exactly on the element 200 (index 199 = 0.995 * 200).
    body_values = np.arange(1, 202, dtype=np.float32)
    mr = np.full((3, 201), 5000.0, dtype=np.float32)  # the outside is brighter than the body: it must not count
    mr[1] = body_values
    body = np.zeros(mr.shape, bool)
    body[1] = True
    assert np.percentile(body_values, MR_PERCENTILE) == 200.0
    x = normalise_mr(mr, body)
    assert x.dtype == np.float32
    assert x[1, 199] == 0.0  # value 200
    assert x[1, 99] == pytest.approx(-0.5)  # value 100: half the reference
    assert x[1, 200] == pytest.approx(201 / 200 - 1)
    np.testing.assert_array_equal(x[0], -1.0)
    np.testing.assert_array_equal(x[2], -1.0)
    # Clipped at twice the reference: a bright spot saturates at 1.
    mr[1, 0] = 10_000.0
    assert normalise_mr(mr, body)[1, 0] == 1.0


def test_mr_normalisation_is_scale_invariant_and_refuses_what_it_cannot_scale():
    rng = np.random.default_rng(0)
    mr = rng.uniform(10, 100, (4, 16, 16)).astype(np.float32)
    body = np.zeros(mr.shape, bool)
    body[:, 4:12, 4:12] = True
    np.testing.assert_allclose(normalise_mr(mr, body), normalise_mr(7.5 * mr, body), atol=1e-6)
    with pytest.raises(ModelError, match="empty"):
        normalise_mr(mr, np.zeros_like(body))
    with pytest.raises(ModelError, match="percentile"):
        normalise_mr(np.zeros_like(mr), body)
    with pytest.raises(ModelError, match="shape"):
        normalise_mr(mr, body[:, :8])


# --- cases -----------------------------------------------------------------------------------------------------------


def test_load_cases_reads_both_synthrad_forms_sorted(cases: list[Case], pelvis: Phantom, head: Phantom):
    assert [c.case_id for c in cases] == ["1HNA002", "1PA002"]
    for case, phantom in zip(cases, (head, pelvis), strict=True):
        assert case.mr.shape == phantom.ct_hu.shape
        np.testing.assert_array_equal(case.mr.array, phantom.mr_t1.array)
        np.testing.assert_array_equal(case.ct.array, phantom.ct_hu.array)
        np.testing.assert_array_equal(case.body, phantom.body_mask)
        assert case.body.dtype == np.bool_
        assert case.mr.same_grid(phantom.ct_hu)  # NIfTI's RAS is converted back to LPS


def test_load_cases_accepts_one_case_folder(cases_root: Path):
    (case,) = load_cases(cases_root / "1PA002")
    assert case.case_id == "1PA002"


def test_load_cases_reads_sct_node_phantom_output(tmp_path: Path):
    # The real writer: <output>/<site>-<seed>/{mr,ct,mask}.mha next to a dicom/ folder.
    subprocess.run(
        [sys.executable, "-m", "sct_node", "phantom", "-o", str(tmp_path), "--site", "pelvis", "--cases", "2",
         "--shape", *map(str, PELVIS_SHAPE), "--quiet"],
        check=True, cwd=REPO_ROOT, capture_output=True,
    )
    assert (tmp_path / "pelvis-0000" / "dicom").is_dir()
    loaded = load_cases(tmp_path)
    assert [c.case_id for c in loaded] == ["pelvis-0000", "pelvis-0001"]
    assert all(c.ct is not None and c.body.any() for c in loaded)


def test_load_cases_computes_a_missing_mask(tmp_path: Path, pelvis: Phantom, caplog: pytest.LogCaptureFixture):
    case_dir = tmp_path / "1PA009"
    write_synthrad_case(pelvis, case_dir, mr="t1")
    (case_dir / "mask.mha").unlink()
    with caplog.at_level(logging.INFO, logger="models.learned.data"):
        (case,) = load_cases(tmp_path)
    assert "1PA009" in caplog.text and "mask" in caplog.text
    dice = 2 * np.sum(case.body & pelvis.body_mask) / (case.body.sum() + pelvis.body_mask.sum())
    assert dice > 0.95  # 0.98 measured at these 8.5 x 10 mm pixels; partial volume at the skin costs the rest


def test_load_cases_accepts_a_case_without_ct(tmp_path: Path, pelvis: Phantom):
    case_dir = tmp_path / "mr_only"
    write_synthrad_case(pelvis, case_dir, mr="t1")
    (case_dir / "ct.mha").unlink()
    (case,) = load_cases(case_dir)
    assert case.ct is None
    with pytest.raises(ModelError, match="mr_only has no ct"):
        SliceDataset([case])


@pytest.mark.parametrize("with_mask", [True, False], ids=["complete", "no-mask"])
def test_load_cases_refuses_images_of_different_shapes(tmp_path: Path, pelvis: Phantom, with_mask: bool):
    case_dir = tmp_path / "bad"
    write_synthrad_case(pelvis, case_dir, mr="t1")
    if not with_mask:
        (case_dir / "mask.mha").unlink()
    cropped = pelvis.ct_hu.array[:, :-2]
    smaller = Volume(cropped, pelvis.ct_hu.spacing_mm, pelvis.ct_hu.origin_mm)
    sitk.WriteImage(smaller.to_sitk(), str(case_dir / "ct.mha"))
    with pytest.raises(ModelError, match=r"bad.*ct.*\(8, 38, 48\)"):
        load_cases(tmp_path)


def test_load_cases_refuses_an_empty_folder_naming_the_expected_files(tmp_path: Path):
    (tmp_path / "dicom").mkdir()
    with pytest.raises(ModelError, match=r"no cases found.*mr\.mha or mr\.nii\.gz.*mask\.mha"):
        load_cases(tmp_path)
    with pytest.raises(ModelError, match="does not exist"):
        load_cases(tmp_path / "missing")


def test_load_cases_refuses_a_case_in_both_formats(tmp_path: Path, pelvis: Phantom):
    write_synthrad_case(pelvis, tmp_path / "twice", mr="t1")
    _write_nifti_case(pelvis, tmp_path / "nifti")
    (tmp_path / "nifti" / "mr.nii.gz").rename(tmp_path / "twice" / "mr.nii.gz")
    with pytest.raises(ModelError, match="both mr.mha and mr.nii.gz"):
        load_cases(tmp_path)


# --- 2.5D slices and sampling ----------------------------------------------------------------------------------------


def test_context_stack_repeats_the_border_slices():
    volume = np.broadcast_to(np.arange(5, dtype=np.float32)[:, None, None], (5, 2, 3))
    assert context_stack(volume, 0, 2)[:, 0, 0].tolist() == [0, 0, 0, 1, 2]
    assert context_stack(volume, 4, 2)[:, 0, 0].tolist() == [2, 3, 4, 4, 4]
    assert context_stack(volume, 2, 1)[:, 0, 0].tolist() == [1, 2, 3]
    assert context_stack(volume, 3, 0).shape == (1, 2, 3)
    assert context_stack(volume[:1], 0, 1)[:, 0, 0].tolist() == [0, 0, 0]
    with pytest.raises(ModelError, match="slice index"):
        context_stack(volume, 5, 1)
    with pytest.raises(ModelError, match="context"):
        context_stack(volume, 0, -1)


@pytest.mark.parametrize("context", [0, 1, 2])
def test_sample_batch_shapes(cases: list[Case], context: int):
    batch = SliceDataset(cases, context=context, patch_size=32).sample_batch(4, torch.Generator().manual_seed(1))
    assert set(batch) == {"mr", "ct", "body"}
    assert batch["mr"].shape == (4, 2 * context + 1, 32, 32)
    assert batch["ct"].shape == batch["body"].shape == (4, 1, 32, 32)
    assert all(t.dtype == torch.float32 for t in batch.values())
    assert batch["mr"].min() >= -1 and batch["mr"].max() <= 1
    assert set(torch.unique(batch["body"]).tolist()) <= {0.0, 1.0}
    # Outside the body both images are background.
    outside = batch["body"] == 0
    assert torch.all(batch["ct"][outside] == -1)
    assert torch.all(batch["mr"][:, context:context + 1][outside] == -1)


def test_sample_batch_is_deterministic_given_the_generator(cases: list[Case]):
    dataset = SliceDataset(cases, patch_size=16)
    first = dataset.sample_batch(6, torch.Generator().manual_seed(3))
    again = dataset.sample_batch(6, torch.Generator().manual_seed(3))
    other = dataset.sample_batch(6, torch.Generator().manual_seed(4))
    for key in first:
        assert torch.equal(first[key], again[key])
    assert not torch.equal(first["mr"], other["mr"])
    # The dataset's own generator follows its seed.
    seeded = [SliceDataset(cases, patch_size=16, seed=9).sample_batch(3)["ct"] for _ in range(2)]
    assert torch.equal(*seeded)


def test_patches_are_centred_in_the_body(cases: list[Case]):
    p = 24
    inside = SliceDataset(cases, patch_size=p, body_fraction=1.0).sample_batch(64, torch.Generator().manual_seed(0))
    assert torch.all(inside["body"][:, 0, p // 2, p // 2] == 1)
    anywhere = SliceDataset(cases, patch_size=p, body_fraction=0.0).sample_batch(64, torch.Generator().manual_seed(0))
    # Uniform centres: the bodies cover 8-28 % of these slices, so some centres must be in air.
    assert 0 < anywhere["body"][:, 0, p // 2, p // 2].mean() < 1


def test_patches_leaving_the_image_are_padded_with_the_background(cases: list[Case]):
    # 64 px patches on 40-row slices: at least 24 rows of every patch lie outside the image.
    batch = SliceDataset(cases, patch_size=64, body_fraction=0.5).sample_batch(16, torch.Generator().manual_seed(5))
    for key, fill in (("mr", -1.0), ("ct", -1.0), ("body", 0.0)):
        padded_rows = torch.all(batch[key] == fill, dim=3).all(dim=1).sum(dim=1)  # rows of every channel
        assert torch.all(padded_rows >= 24), key


def test_whole_slices_are_padded_to_a_multiple_of_8(tmp_path: Path):
    phantom = generate_phantom("pelvis", 5, ODD_SHAPE)
    write_synthrad_case(phantom, tmp_path / "odd", mr="t2")
    (case,) = load_cases(tmp_path)
    batch = SliceDataset([case], context=1, patch_size=None).sample_batch(3, torch.Generator().manual_seed(0))
    assert batch["mr"].shape == (3, 3, 48, 48)
    mr_norm = normalise_mr(case.mr.array, case.body)
    ct_norm = normalise_ct(case.ct.array)
    for b in range(3):
        # Padding on the bottom and right only: the slice itself is untouched.
        assert torch.all(batch["mr"][b, :, 42:, :] == -1) and torch.all(batch["mr"][b, :, :, 45:] == -1)
        assert torch.all(batch["body"][b, :, 42:, :] == 0)
        centre = batch["mr"][b, 1, :42, :45].numpy()
        matches = [k for k in range(case.mr.shape[0]) if np.array_equal(centre, mr_norm[k])]
        assert len(matches) == 1
        k = matches[0]
        np.testing.assert_array_equal(batch["ct"][b, 0, :42, :45].numpy(), np.where(case.body[k], ct_norm[k], -1))
        np.testing.assert_array_equal(batch["mr"][b, 0, :42, :45].numpy(), mr_norm[max(k - 1, 0)])


def test_sampling_skips_slices_without_body(cases: list[Case]):
    head = cases[0]
    assert not head.body[-1].any()  # the top slices of the small head phantom are air
    batch = SliceDataset([head], patch_size=None).sample_batch(32, torch.Generator().manual_seed(2))
    assert torch.all(batch["body"].sum(dim=(1, 2, 3)) > 0)


def test_ct_only_sampling_returns_ct_edges_and_outline(cases: list[Case]):
    dataset = SliceDataset(cases, patch_size=32, ct_only=True)
    batch = dataset.sample_batch(8, torch.Generator().manual_seed(0))
    assert set(batch) == {"ct", "body", "edges", "outline"}
    assert all(t.shape == (8, 1, 32, 32) for t in batch.values())
    assert torch.equal(batch["outline"], batch["body"])  # the outline channel is the filled mask
    assert batch["edges"].sum() > 0
    grown = torch.nn.functional.max_pool2d(batch["body"], 3, stride=1, padding=1)
    assert torch.all(batch["edges"] <= grown)  # edges only within the body dilated by a pixel


def test_sampler_refuses_bad_arguments(cases: list[Case]):
    with pytest.raises(ModelError, match="patch_size"):
        SliceDataset(cases, patch_size=30)
    with pytest.raises(ModelError, match="body_fraction"):
        SliceDataset(cases, body_fraction=1.5)
    with pytest.raises(ModelError, match="at least one case"):
        SliceDataset([])
    with pytest.raises(ModelError, match="batch_size"):
        SliceDataset(cases).sample_batch(0)


def test_validation_slices_are_evenly_spaced_body_slices(cases: list[Case]):
    total = sum(int(c.body.any(axis=(1, 2)).sum()) for c in cases)
    picked = validation_slices(cases, context=1, max_slices=5)
    assert len(picked) == 5
    assert (picked[0]["case_id"], picked[0]["slice_index"]) == ("1HNA002", 0)
    assert picked[-1]["case_id"] == "1PA002"
    assert picked[-1]["slice_index"] == 7  # the last body slice of the last case
    for s in picked:
        assert s["mr"].shape == (3, 40, 48)
        for key in ("ct", "body", "mr_edges", "outline"):
            assert s[key].shape == (1, 40, 48) and s[key].dtype == np.float32, key
        assert s["body"].sum() > 0 and np.array_equal(s["outline"], s["body"])
        assert s["mr_edges"].sum() > 0
        assert np.all(s["ct"][s["body"] == 0] == -1)
    assert len(validation_slices(cases, context=0, max_slices=1000)) == total


# --- edge maps -------------------------------------------------------------------------------------------------------


def _square(noise_sigma: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((48, 56), -0.2, dtype=np.float32)
    image[12:36, 14:42] = 0.5
    rng = np.random.default_rng(seed)
    return image + rng.normal(0, noise_sigma, image.shape).astype(np.float32), np.ones(image.shape, bool)


@pytest.mark.parametrize("noise_sigma", [0.0, 0.03, 0.06])
def test_edge_map_finds_the_outline_of_a_square(noise_sigma: float):
    image, body = _square(noise_sigma)
    edges = edge_map(image, body)
    assert edges.dtype == np.float32 and set(np.unique(edges)) <= {0.0, 1.0}
    square = np.zeros(body.shape, bool)
    square[12:36, 14:42] = True
    # The true boundary lies between the last pixel inside and the first outside.
    boundary = (square ^ ndimage.binary_erosion(square)) | (ndimage.binary_dilation(square) ^ square)
    distance_to_boundary = ndimage.distance_transform_edt(~boundary)
    assert distance_to_boundary[edges > 0].max() <= 1.0
    # Every side is found: each inner-boundary pixel has an edge within 1 px (corners included).
    distance_to_edge = ndimage.distance_transform_edt(edges == 0)
    inner = square ^ ndimage.binary_erosion(square)
    assert np.mean(distance_to_edge[inner] <= 1.0) > 0.95
    # One pixel wide: far fewer edge pixels than the two-pixel boundary band (2 x perimeter).
    assert edges.sum() < 1.3 * inner.sum()


def test_edge_map_is_restricted_to_the_body_and_works_slice_by_slice():
    image, _ = _square(0.0)
    body = np.zeros(image.shape, bool)
    body[:, :28] = True  # the left half of the square
    edges = edge_map(image, body)
    assert edges[:, 29:].sum() == 0  # nothing beyond the body dilated by one pixel
    assert edges[:, :28].sum() > 0
    volume = np.stack([image, image * 0.5, np.full_like(image, -1.0)])
    bodies = np.stack([body, np.ones_like(body), np.zeros_like(body)])
    stacked = edge_map(volume, bodies)
    for k in range(3):
        np.testing.assert_array_equal(stacked[k], edge_map(volume[k], bodies[k]))
    assert stacked[2].sum() == 0  # an empty body has no edges
    assert edge_map(np.full_like(image, 0.3), np.ones_like(body)).sum() == 0  # a flat image has none either
    with pytest.raises(ModelError, match="shape"):
        edge_map(image, body[:10])


def test_outline_is_the_filled_body():
    body = np.zeros((5, 6), bool)
    body[1:4, 2:5] = True
    np.testing.assert_array_equal(outline(body), body.astype(np.float32))
    assert outline(body).dtype == np.float32


def _overlap(edges_a: np.ndarray, edges_b: np.ndarray, tolerance_px: float, where: np.ndarray) -> float:
    """Fraction of the ``edges_a`` pixels in ``where`` that lie within ``tolerance_px`` (in-plane) of ``edges_b``."""
    distance = np.stack([ndimage.distance_transform_edt(s == 0) if s.any() else np.full(s.shape, np.inf)
                         for s in edges_b])
    selected = (edges_a > 0) & where
    return float(np.mean(distance[selected] <= tolerance_px))


@pytest.mark.parametrize("site", ["head", "pelvis"])
def test_ct_edges_at_bone_and_skin_are_mr_edges(site: str):
    phantom = generate_phantom(site, 5, (12, 128, 128))
    body = phantom.body_mask
    ct_edges = edge_map(normalise_ct(phantom.ct_hu.array), body)
    bone = phantom.structure("BONES").mask
    # Boundaries both modalities show: the skin and bone surfaces (within 2 px in-plane).
    in_plane = np.ones((1, 5, 5), bool)
    near_boundaries = np.zeros(body.shape, bool)
    for mask in (body, bone):
        near_boundaries |= ndimage.binary_dilation(mask, in_plane) & ~ndimage.binary_erosion(mask, in_plane)
    assert ((ct_edges > 0) & near_boundaries).sum() > 300
    for weighting in ("t1", "t2"):
        mr_edges = edge_map(normalise_mr(phantom.mr(weighting).array, body), body)
        agreement = _overlap(ct_edges, mr_edges, 2.0, near_boundaries)
        # Chance level: the same MR edges moved 6 px, which keeps their density but not their place.
        chance = _overlap(ct_edges, np.roll(mr_edges, 6, axis=2), 2.0, near_boundaries)
        # Measured with seed 5: head 0.95 (T1) / 0.93 (T2), pelvis 0.87 / 0.86, chance 0.53-0.61;
        # seeds 1-3 give 0.79-0.95. Below 1 because near bone the CT draws edges the MR lacks: the
        # outer skull table next to the thin scalp merges into one MR edge after smoothing, and
        # cortical bone next to dark tissue or air has no MR contrast on one side.
        assert agreement > 0.8, (weighting, agreement, chance)
        assert agreement > chance + 0.25, (weighting, agreement, chance)


# --- checkpoints -----------------------------------------------------------------------------------------------------


def _card(**overrides) -> dict:
    card = {
        "name": "unet-test",
        "version": "0.1.0",
        "description": "A tiny test network.",
        "intended_use": "Tests only.",
        "training_data": "two phantoms",
        "created": "2026-01-01T00:00:00Z",
        "code_version": "test",
        "evaluation": {"mae_hu": 12.5},
        "architecture": "unet",
    }
    card.update(overrides)
    return card


@pytest.fixture
def module() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 1, 1))


CONFIG = {"architecture": "unet", "arch_kwargs": {"base_channels": 8}, "context": 1, "steps": 20,
          "normalisation": {"mr_percentile": 99.5}}


def test_checkpoint_round_trip(tmp_path: Path, module: torch.nn.Module):
    state = module.state_dict()
    train_state = {"step": 17, "rng": torch.Generator().manual_seed(5).get_state(), "lr": [1e-4, 2e-4]}
    digest = save_checkpoint(tmp_path / "ckpt", model_state=state, config=CONFIG, card=_card(),
                             train_state=train_state)
    config, loaded, card = load_checkpoint(tmp_path / "ckpt")
    assert config == CONFIG
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key  # float32 stored exactly
    assert loaded["1.num_batches_tracked"].dtype == torch.int64
    assert card["content_hash"] == digest and len(digest) == 16
    assert {k: v for k, v in card.items() if k != "content_hash"} == _card()
    assert json.loads((tmp_path / "ckpt" / "card.json").read_text())["evaluation"] == {"mae_hu": 12.5}
    resumed = load_train_state(tmp_path / "ckpt")
    assert resumed["step"] == 17 and torch.equal(resumed["rng"], train_state["rng"])
    fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 1, 1))
    fresh.load_state_dict(loaded)
    # Saving again without a train state removes the stale one.
    save_checkpoint(tmp_path / "ckpt", model_state=state, config=CONFIG, card=card)
    assert load_train_state(tmp_path / "ckpt") is None
    assert not list((tmp_path / "ckpt").glob(".*tmp"))


def test_checkpoint_stores_float16_weights(tmp_path: Path, module: torch.nn.Module):
    # Large enough that the weights, not the zip container, set the file size.
    big = {"w": torch.randn(256, 256, generator=torch.Generator().manual_seed(0)), "steps": torch.tensor(3)}
    save_checkpoint(tmp_path / "full", model_state=big, config=CONFIG, card=_card())
    save_checkpoint(tmp_path / "half", model_state=big, config=CONFIG, card=_card(), half=True)
    raw = torch.load(tmp_path / "half" / MODEL_FILE, weights_only=True)
    assert raw["state_dict"]["w"].dtype == torch.float16
    assert raw["state_dict"]["steps"].dtype == torch.int64
    ratio = (tmp_path / "half" / MODEL_FILE).stat().st_size / (tmp_path / "full" / MODEL_FILE).stat().st_size
    assert ratio < 0.55
    _, loaded, _ = load_checkpoint(tmp_path / "half")
    assert loaded["w"].dtype == torch.float32
    torch.testing.assert_close(loaded["w"], big["w"], rtol=1e-3, atol=1e-4)  # float16: 11 significant bits
    with pytest.raises(ModelError, match="float16"):
        save_checkpoint(tmp_path / "over", model_state={"w": torch.tensor([1e6])}, config=CONFIG, card=_card(),
                        half=True)


def test_checkpoint_refuses_tampered_and_missing_files(tmp_path: Path, module: torch.nn.Module):
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, model_state=module.state_dict(), config=CONFIG, card=_card())
    model_path = folder / MODEL_FILE
    data = bytearray(model_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"model\.pt does not match its card"):
        load_checkpoint(folder)
    model_path.write_bytes(bytes(data[: len(data) // 2]))  # a partial file
    with pytest.raises(ModelError, match=r"model\.pt does not match"):
        load_checkpoint(folder)
    model_path.unlink()
    with pytest.raises(ModelError, match=r"missing model\.pt"):
        load_checkpoint(folder)
    with pytest.raises(ModelError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    # A corrupt model.pt whose card was updated to match: the hash passes, reading fails.
    model_path.write_bytes(b"garbage")
    card = json.loads((folder / "card.json").read_text())
    card["content_hash"] = hashlib.sha256(b"garbage").hexdigest()[:16]
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=r"model\.pt is not a readable checkpoint"):
        load_checkpoint(folder)
    (folder / TRAIN_STATE_FILE).write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="train_state.pt"):
        load_train_state(folder)


def test_checkpoint_refuses_malformed_arguments(tmp_path: Path, module: torch.nn.Module):
    state = module.state_dict()
    incomplete = {k: v for k, v in _card().items() if k != "created"}
    with pytest.raises(ModelError, match="created"):
        save_checkpoint(tmp_path, model_state=state, config=CONFIG, card=incomplete)
    assert "created" in CARD_FIELDS
    with pytest.raises(ModelError, match="config"):
        save_checkpoint(tmp_path, model_state=state, config={"path": Path("x")}, card=_card())
    with pytest.raises(ModelError, match="model_state"):
        save_checkpoint(tmp_path, model_state={"w": [1.0]}, config=CONFIG, card=_card())
    assert not (tmp_path / MODEL_FILE).exists()
