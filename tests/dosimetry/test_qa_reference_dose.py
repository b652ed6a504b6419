"""The reference dose computed before the sCT exists (the node does it while the model works) changes nothing:
the QA with it is the QA without it, bit for bit, and one computed for other inputs is not used."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

import dosimetry.qa
from dosimetry.errors import DosimetryError
from dosimetry.plans import template_plan
from dosimetry.qa import QaInputs, reference_dose, run_qa
from dosimetry.structures import StructureMask
from models.phantoms import Tissue, generate_phantom


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom("pelvis", 5, shape_zyx=(20, 64, 64), spacing_mm=(5.0, 5.0, 6.0))


@pytest.fixture(scope="module")
def case(phantom):
    """(reference CT, sCT with its bone turned to water: a dose that differs, structures, MR-grid volume)."""
    ct = phantom.ct_hu.with_array(phantom.ct_hu.array.astype(np.float32))
    bone = np.isin(phantom.labels.array, [Tissue.CORTICAL_BONE, Tissue.MARROW])
    sct = ct.with_array(np.where(bone, 40, ct.array).astype(np.float32))
    structures = tuple(StructureMask(s.name, i + 1, str(s.kind), s.mask) for i, s in enumerate(phantom.structures))
    mr_grid = ct.with_array(np.zeros(ct.shape, dtype=np.float32))  # the MR: same grid, other values
    return ct, sct, structures, mr_grid


@pytest.fixture
def engine_calls(monkeypatch):
    """Count the dose engine's runs inside the QA."""
    calls = []
    real = dosimetry.qa.compute_dose_and_points

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(dosimetry.qa, "compute_dose_and_points", counting)
    return calls


def _same(a, b) -> None:
    assert a.result == b.result
    for name in ("dose_sct_gy", "dose_reference_gy", "dose_difference_percent", "gamma"):
        assert np.array_equal(getattr(a.maps, name).array, getattr(b.maps, name).array, equal_nan=True), name
    assert len(a.maps.dvh_curves) == len(b.maps.dvh_curves) > 0
    for x, y in zip(a.maps.dvh_curves, b.maps.dvh_curves, strict=True):
        for name in ("dose_gy", "reference_volume_percent", "sct_volume_percent"):
            assert np.array_equal(getattr(x, name), getattr(y, name), equal_nan=True), (x.structure, name)


def _real_plan(ct, structures):
    ptv = next(s for s in structures if s.name == "PTV")
    centre = tuple(ct.index_to_patient(np.argwhere(ptv.mask).mean(axis=0)[::-1]))
    template = template_plan("pelvis", centre, (60.0, 60.0, 60.0))
    return dataclasses.replace(template, label="Prostate 60/30", is_template=False, fractions=30,
                               prescription_gy=60.0,
                               beams=tuple(dataclasses.replace(b, monitor_units=180.0) for b in template.beams))


@pytest.mark.parametrize("real_plan", [False, True], ids=["template plan", "real plan"])
def test_the_qa_with_the_reference_dose_computed_beforehand_is_the_same_qa(phantom, case, engine_calls, real_plan):
    ct, sct, structures, mr_grid = case
    plan = _real_plan(ct, structures) if real_plan else None
    plain = run_qa(QaInputs(sct=sct, mr_body_mask=phantom.body_mask, reference_ct=ct, plan=plan,
                            structures=structures))
    assert len(engine_calls) == 2  # the sCT's dose and the reference's
    ahead = reference_dose(mr_grid, phantom.body_mask, ct, plan=plan, structures=structures)
    assert len(engine_calls) == 3
    used = run_qa(QaInputs(sct=sct, mr_body_mask=phantom.body_mask, reference_ct=ct, plan=plan,
                           structures=structures, reference_dose=ahead))
    assert len(engine_calls) == 4  # only the sCT's dose: the reference's was not computed again
    _same(plain, used)
    assert plain.result.dose.dvh_of("PTV").worst.difference_percent_of_prescription != 0  # the doses differ


def test_a_reference_dose_computed_for_other_inputs_is_not_used(phantom, case, engine_calls):
    ct, sct, structures, mr_grid = case
    inputs = QaInputs(sct=sct, mr_body_mask=phantom.body_mask, reference_ct=ct, structures=structures)
    plain = run_qa(inputs)
    smaller_body = phantom.body_mask.copy()
    smaller_body[:, :, : smaller_body.shape[2] // 2] = False  # moves the template's isocentre
    shifted = mr_grid.with_array(mr_grid.array)
    shifted = dataclasses.replace(shifted, origin_mm=(shifted.origin_mm[0] + 5.0, *shifted.origin_mm[1:]))
    others = {
        "body": reference_dose(mr_grid, smaller_body, ct, structures=structures),
        "grid": reference_dose(shifted, phantom.body_mask, ct, structures=structures),
        "dose grid": reference_dose(mr_grid, phantom.body_mask, ct, structures=structures, dose_grid_mm=6.0),
        "structures": reference_dose(mr_grid, phantom.body_mask, ct, structures=structures[:1]),
        "reference CT": reference_dose(mr_grid, phantom.body_mask, ct.with_array(ct.array + 0),
                                       structures=structures),
    }
    for what, other in others.items():
        assert other.mismatch(inputs, phantom.body_mask) is not None, what
        before = len(engine_calls)
        _same(plain, run_qa(dataclasses.replace(inputs, reference_dose=other)))
        assert len(engine_calls) - before == 2, f"a reference dose for another {what} was used"
    # The body mask is compared by value: an equal copy matches.
    assert reference_dose(mr_grid, phantom.body_mask.copy(), ct, structures=structures).mismatch(
        inputs, phantom.body_mask) is None


def test_a_reference_dose_is_not_used_for_another_plan_nor_without_the_real_ct(phantom, case, engine_calls, caplog):
    """The template plan's dose on the real CT serves neither a QA of a real plan nor one that compares with the
    bulk-density sCT (no real CT); the QA says why at DEBUG."""
    ct, sct, structures, _ = case
    ahead = reference_dose(sct, phantom.body_mask, ct, structures=structures)
    common = {"sct": sct, "mr_body_mask": phantom.body_mask, "structures": structures}
    for what, inputs in {"plan": QaInputs(**common, reference_ct=ct, plan=_real_plan(ct, structures)),
                         "reference CT": QaInputs(**common)}.items():
        plain = run_qa(inputs)
        before = len(engine_calls)
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="dosimetry.qa"):
            _same(plain, run_qa(dataclasses.replace(inputs, reference_dose=ahead)))
        assert len(engine_calls) - before == 2, f"a reference dose for another {what} was used"
        assert f"not used (another {what})" in caplog.text
    assert plain.result.dose.reference == "bulk-density sCT"


def test_a_plan_whose_isocentre_is_outside_the_image_is_refused_beforehand_too(phantom, case):
    ct, _, _, mr_grid = case
    far = tuple(float(v) for v in ct.index_to_patient(np.array([0.0, 0.0, ct.shape[0] + 40.0])))
    with pytest.raises(DosimetryError, match="isocentre .* lies outside the image"):
        reference_dose(mr_grid, ct.array > -500, ct, plan=template_plan("pelvis", far, (50.0, 50.0, 50.0)))
