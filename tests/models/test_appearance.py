"""MR appearance randomisation: the sequence families' contrasts and the training pool built from label maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.errors import ModelError, PhantomError
from models.learned.data import SliceDataset, load_cases
from models.learned.normalisation import BACKGROUND
from models.learned.randomisation import RandomisationConfig, perturbed_normalise
from models.phantoms import generate_phantom
from models.phantoms.appearance import (
    FAMILIES,
    HELD_OUT_FAMILY,
    TRAINING_FAMILIES,
    draw_appearance,
    render_appearance,
    tissue_signal,
)
from models.phantoms.synthrad import write_synthrad_case
from models.phantoms.tissues import Tissue

SHAPE = (12, 96, 96)


def _signal(family: str, seed: int = 0) -> np.ndarray:
    return tissue_signal(family, np.random.default_rng(seed), jitter=0.0)[0]


@pytest.mark.parametrize("seed", range(5))
def test_each_family_has_the_contrast_of_its_sequence(seed):
    """Brightest tissue per family, from the signal equations: what makes 'brightest = fat' fail as a rule."""
    t1, t2 = _signal("t1_se", seed), _signal("t2", seed)
    fs, water, fat = _signal("t1_fs", seed), _signal("dixon_water", seed), _signal("dixon_fat", seed)
    assert t1[Tissue.FAT] > t1[Tissue.BRAIN_WM] > t1[Tissue.CSF]  # T1: fat bright, fluid dark
    assert t2[Tissue.CSF] > t2[Tissue.FAT] > t2[Tissue.MUSCLE]  # T2: fluid brightest
    assert fs[Tissue.FAT] < fs[Tissue.MUSCLE]  # fat suppressed
    assert water[Tissue.FAT] < water[Tissue.MUSCLE] and fat[Tissue.FAT] > 5 * fat[Tissue.MUSCLE]
    for family in FAMILIES:
        signal = _signal(family, seed)
        assert signal[Tissue.OUTSIDE_AIR] == signal[Tissue.AIR_CAVITY] == 0.0
        assert np.all(signal >= 0) and signal[Tissue.CORTICAL_BONE] < signal.max() / 5  # bone stays dark


def test_contrast_agent_brightens_enhancing_tissue_but_not_the_brain():
    """Over many draws, prostate relative to white matter (no uptake behind the blood-brain barrier) is brighter
    after gadolinium than in the same T1 sequences without it: 1/T1 grows by r1 C where tissue takes it up."""
    def relative(family):
        rng = np.random.default_rng(0)
        ratios = [s[Tissue.PROSTATE] / s[Tissue.BRAIN_WM]
                  for s in (tissue_signal(family, rng, jitter=0.0)[0] for _ in range(100))]
        return float(np.mean(ratios))

    plain = 0.5 * (relative("t1_se") + relative("t1_gre"))
    assert relative("t1_post_contrast") > 1.1 * plain


def test_the_held_out_family_is_not_drawn_in_training():
    rng = np.random.default_rng(0)
    assert HELD_OUT_FAMILY not in TRAINING_FAMILIES
    assert {draw_appearance(rng).family for _ in range(200)} == set(TRAINING_FAMILIES)


def test_unknown_family_and_bad_labels_are_refused():
    with pytest.raises(PhantomError, match="unknown MR sequence family 'flair'"):
        tissue_signal("flair", np.random.default_rng(0))
    with pytest.raises(ModelError, match="unknown or no sequence families"):
        RandomisationConfig(families=("t2x",))
    with pytest.raises(PhantomError, match="uint8"):
        render_appearance(np.zeros(SHAPE, np.int16), (1, 1, 1), draw_appearance(np.random.default_rng(0)),
                          np.random.default_rng(0))


def test_rendering_is_reproducible_and_noise_only_outside_the_body():
    phantom = generate_phantom("head", 5, shape_zyx=SHAPE)
    draw = draw_appearance(np.random.default_rng(1))
    a = render_appearance(phantom.labels.array, phantom.labels.spacing_mm, draw, np.random.default_rng(2))
    b = render_appearance(phantom.labels.array, phantom.labels.spacing_mm, draw, np.random.default_rng(2))
    assert a.dtype == np.float32 and a.shape == SHAPE and np.array_equal(a, b)
    body = phantom.body_mask
    assert np.median(a[~body]) < 0.2 * np.percentile(a[body], 90)


def test_perturbed_normalisation_keeps_the_range_and_the_background():
    phantom = generate_phantom("pelvis", 5, shape_zyx=SHAPE)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        out = perturbed_normalise(phantom.mr("t1").array, phantom.body_mask, RandomisationConfig(), g)
        assert np.all(out[~phantom.body_mask] == BACKGROUND)
        assert out.min() >= -1.0 and out.max() <= 1.0 and out[phantom.body_mask].std() > 0.05


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cases")
    for site in ("head", "pelvis"):
        write_synthrad_case(generate_phantom(site, 7, shape_zyx=SHAPE), folder / f"{site}-7")
    return load_cases(folder)


def test_phantom_cases_carry_their_label_map(cases):
    for case in cases:
        assert case.labels is not None and case.labels.shape == case.mr.shape
        assert np.array_equal(case.labels > 0, case.body)


def test_randomised_patches_are_reproducible_and_unlike_the_stored_mr(cases):
    plain = SliceDataset(cases, patch_size=32, seed=4)
    randomised = SliceDataset(cases, patch_size=32, seed=4, randomisation=RandomisationConfig(probability=1.0))
    a = plain.sample_batch(6, torch.Generator().manual_seed(9))
    b = randomised.sample_batch(6, torch.Generator().manual_seed(9))
    again = SliceDataset(cases, patch_size=32, seed=4, randomisation=RandomisationConfig(probability=1.0))
    c = again.sample_batch(6, torch.Generator().manual_seed(9))
    assert torch.equal(b["mr"], c["mr"]) and torch.equal(b["ct"], c["ct"])  # reproducible from the seed
    assert b["mr"].shape == a["mr"].shape
    assert not torch.equal(a["mr"], b["mr"])
    centre = b["mr"][:, 1:2]  # the neighbours' bodies differ from the centre slice's
    assert torch.all(centre[~b["body"].bool()] == BACKGROUND)


def test_probability_zero_is_the_plain_dataset(cases):
    plain = SliceDataset(cases, patch_size=32, seed=4)
    off = SliceDataset(cases, patch_size=32, seed=4, randomisation=RandomisationConfig(probability=0.0))
    a, b = (d.sample_batch(4, torch.Generator().manual_seed(1)) for d in (plain, off))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_randomisation_needs_label_maps(cases):
    from dataclasses import replace

    foreign = [replace(case, labels=np.full_like(case.labels, 41)) for case in cases]  # e.g. a SynthSeg label map
    with pytest.raises(ModelError, match=r"tissue labels \(0-14.*head-7, pelvis-7 hold larger label values"):
        SliceDataset(foreign, randomisation=RandomisationConfig())

    without = [replace(case, labels=None) for case in cases]
    with pytest.raises(ModelError, match=r"needs a tissue label map per case \(labels.mha.*missing in head-7, pelvis-7"):
        SliceDataset(without, randomisation=RandomisationConfig())
