"""The body mask and the ``bulk`` reference model, on phantoms whose true body is known."""

from __future__ import annotations

import numpy as np
import pytest

from models.base import TranslationModel
from models.body_mask import body_mask_from_mr
from models.bulk import AIR_HU, BulkDensityModel
from models.errors import ModelError
from models.phantoms import generate_phantom
from models.registry import available_models, load_model


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.sum(a & b) / (a.sum() + b.sum()))


@pytest.mark.parametrize("site", ["head", "pelvis"])
@pytest.mark.parametrize("weighting", ["t1", "t2"])
def test_body_mask_matches_the_phantom_body(site, weighting):
    phantom = generate_phantom(site, 11, shape_zyx=(24, 96, 96), spacing_mm=(4.0, 4.0, 8.0))
    mask = body_mask_from_mr(phantom.mr(weighting))
    # Plain Otsu gives 0.66 on the T2-weighted head (bright CSF); partial volume at 4 mm costs ~1-2 %.
    assert _dice(mask, phantom.body_mask) > 0.97
    # Dark bone and internal air are inside the body, not holes in it.
    from models.phantoms import Tissue

    for tissue in (Tissue.CORTICAL_BONE, Tissue.AIR_CAVITY):
        inside = phantom.labels.array == tissue
        if inside.any():
            assert mask[inside].mean() > 0.9, tissue.name


def test_bulk_model_assigns_water_inside_and_air_outside():
    phantom = generate_phantom("pelvis", 3, shape_zyx=(16, 64, 64), spacing_mm=(6.5, 6.5, 12.0))
    model = BulkDensityModel()
    assert isinstance(model, TranslationModel)
    calls = []
    result = model.translate(phantom.mr_t1, progress=lambda done, total: calls.append((done, total)))
    assert result.hu.same_grid(phantom.mr_t1)
    np.testing.assert_array_equal(result.hu.array[result.body_mask], 0.0)
    np.testing.assert_array_equal(result.hu.array[~result.body_mask], AIR_HU)
    assert calls and calls[-1] == (16, 16)
    assert result.uncertainty_hu is None


def test_a_given_body_mask_is_used_as_it_is_and_must_fit_the_mr():
    phantom = generate_phantom("pelvis", 3, shape_zyx=(16, 64, 64), spacing_mm=(6.5, 6.5, 12.0))
    model = BulkDensityModel()
    computed = model.translate(phantom.mr_t1)
    given = model.translate(phantom.mr_t1, body_mask=computed.body_mask)
    np.testing.assert_array_equal(given.hu.array, computed.hu.array)
    other = np.zeros(phantom.mr_t1.shape, dtype=bool)
    other[4:8, 20:40, 20:40] = True
    np.testing.assert_array_equal(model.translate(phantom.mr_t1, body_mask=other).body_mask, other)
    with pytest.raises(ModelError, match=r"body mask of shape \(64, 64\) given for an MR of shape"):
        model.translate(phantom.mr_t1, body_mask=other[0])


def test_bulk_tissue_value_is_configurable_and_part_of_the_identity():
    assert BulkDensityModel(-33.0).card.identity != BulkDensityModel().card.identity
    with pytest.raises(ModelError, match=r"tissue_hu must lie in \[-1024, 3071\]; found 5000"):
        BulkDensityModel(5000.0)


def test_constant_image_is_a_clear_model_error():
    from models.volume import Volume

    with pytest.raises(ModelError, match="constant"):
        body_mask_from_mr(Volume(np.ones((4, 8, 8), np.float32), (1.0, 1.0, 1.0)))


def test_registry_knows_bulk_and_names_the_alternatives(tmp_path):
    assert "bulk" in available_models()
    assert load_model("bulk").card.name == "bulk"
    with pytest.raises(ModelError, match="unknown model 'nope'; built-in models: bulk"):
        load_model("nope")
