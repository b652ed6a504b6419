"""The site HU reference and the QA's hu_distribution check: PASS, WARN and FAIL, files, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dosimetry.errors import DosimetryError
from dosimetry.hu_reference import QUANTILES, HuReference, build_hu_reference, hu_quantiles, load_hu_reference
from dosimetry.qa import QaInputs, run_qa
from models.phantoms import generate_phantom
from models.phantoms.tissues import Tissue

SHAPE = (24, 128, 128)


@pytest.fixture(scope="module")
def head():
    """A head reference of three phantom CTs and a fourth, held-out phantom."""
    phantoms = [generate_phantom("head", seed, shape_zyx=SHAPE) for seed in range(4)]
    reference = build_hu_reference("head", [(f"head-{i}", p.ct_hu, p.body_mask) for i, p in enumerate(phantoms[:3])])
    return reference, phantoms[3]


def _check(reference, ct, body, site="head"):
    result = run_qa(QaInputs(sct=ct, site=site, mr_body_mask=body, compute_dose=False, hu_reference=reference)).result
    (check,) = [c for c in result.checks if c.name == "hu_distribution"]
    return check, result.hu_reference


def test_w1_is_the_mean_hu_shift():
    """Shifting every voxel by d moves every quantile by d: the distance is d (1-Wasserstein in HU)."""
    phantom = generate_phantom("pelvis", 1, shape_zyx=SHAPE)
    ct = phantom.ct_hu.with_array(np.clip(phantom.ct_hu.array.astype(np.float32), -900, 1800))
    shifted = ct.with_array(ct.array + 37.0)
    reference = build_hu_reference("pelvis", [("a", ct, phantom.body_mask)])
    distance, nearest = reference.nearest(hu_quantiles(shifted, phantom.body_mask))
    assert nearest == "a" and distance == pytest.approx(37.0, abs=0.01)


def test_a_held_out_ct_passes(head):
    reference, phantom = head
    check, measured = _check(reference, phantom.ct_hu, phantom.body_mask)
    assert check.verdict.value == "PASS", check.reason
    assert measured.cases == 3 and len(measured.leave_one_out_hu) == 3


def test_half_the_brain_as_fat_warns_and_all_soft_tissue_as_fat_fails(head):
    reference, phantom = head
    brain = np.isin(phantom.labels.array, [int(Tissue.BRAIN_GM), int(Tissue.BRAIN_WM)])
    cells = np.argwhere(brain)
    lower_half = tuple(cells[np.argsort(cells[:, 0], kind="stable")[: len(cells) // 2]].T)
    half = phantom.ct_hu.array.copy()
    half[lower_half] = -89  # the median HU the real failing case showed
    check, _ = _check(reference, phantom.ct_hu.with_array(half), phantom.body_mask)
    assert check.verdict.value == "WARN", check.reason
    soft = (phantom.ct_hu.array > 0) & (phantom.ct_hu.array < 100)
    moved = phantom.ct_hu.array.copy()
    moved[soft] -= 120
    check, _ = _check(reference, phantom.ct_hu.with_array(moved), phantom.body_mask)
    assert check.verdict.value == "FAIL", check.reason
    assert "from the nearest of 3 reference CT(s)" in check.reason


def test_a_reference_of_another_site_is_refused(head):
    reference, _ = head
    pelvis = generate_phantom("pelvis", 2, shape_zyx=SHAPE)
    with pytest.raises(DosimetryError, match="HU reference is for site 'head' but the QA runs for 'pelvis'"):
        _check(reference, pelvis.ct_hu, pelvis.body_mask, site="pelvis")


def test_the_reference_file_round_trips_and_bad_files_are_named(head, tmp_path):
    reference, _ = head
    path = tmp_path / "head.json"
    path.write_text(json.dumps(reference.to_json()))
    again = load_hu_reference(path)
    assert again.site == "head" and again.case_ids == reference.case_ids
    assert np.allclose(again.quantiles, reference.quantiles, atol=0.01)
    path.write_text("{}")
    with pytest.raises(DosimetryError, match="is not an sct-node HU reference"):
        load_hu_reference(path)
    data = reference.to_json() | {"schema": 99}
    path.write_text(json.dumps(data))
    with pytest.raises(DosimetryError, match="schema 99"):
        load_hu_reference(path)
    with pytest.raises(DosimetryError, match=f"needs {len(QUANTILES)} quantiles"):
        HuReference("head", ("a",), ((1.0, 2.0),))
    with pytest.raises(DosimetryError, match="cannot read the HU reference"):
        load_hu_reference(tmp_path / "missing.json")


def test_cli_builds_a_reference_and_the_qa_uses_it(tmp_path, capsys):
    from models.phantoms.synthrad import write_synthrad_case
    from sct_node.cli import EXIT_OK, main
    from sct_node.tools.phantom_writer import write_phantom_dicom

    cases = []
    for seed in range(3):
        cases.append(write_synthrad_case(generate_phantom("pelvis", seed, shape_zyx=SHAPE),
                                         tmp_path / f"pelvis-{seed}").case_dir)
    reference = tmp_path / "pelvis.json"
    assert main(["hu-reference", "--site", "pelvis", "--output", str(reference), *map(str, cases)]) == EXIT_OK
    assert "HU reference for pelvis: 3 CT(s)" in capsys.readouterr().out
    held_out = write_phantom_dicom(generate_phantom("pelvis", 9, shape_zyx=SHAPE), "pelvis-9", tmp_path / "dicom")
    code = main(["qa", "--sct", str(held_out.ct_dir), "--site", "pelvis", "--no-dose", "--hu-reference",
                 str(reference), "--output", str(tmp_path / "qa")])
    qa = json.loads((tmp_path / "qa" / "qa.json").read_text())
    (check,) = [c for c in qa["checks"] if c["name"] == "hu_distribution"]
    assert check["verdict"] == "PASS" and code == EXIT_OK
    # A DICOM CT series folder works as a reference source too; a head reference is refused for a pelvis route.
    head_ref = tmp_path / "head.json"
    head_dicom = write_phantom_dicom(generate_phantom("head", 3, shape_zyx=SHAPE), "head-3", tmp_path / "hd")
    assert main(["hu-reference", "--site", "head", "--output", str(head_ref), str(head_dicom.ct_dir)]) == EXIT_OK
    from pydantic import ValidationError

    from sct_node.config import RouteConfig

    with pytest.raises(ValidationError, match="was built for site 'head'; this route's qa_site is 'pelvis'"):
        RouteConfig(name="r", qa_site="pelvis", qa_hu_reference=head_ref)
    assert RouteConfig(name="r", qa_site="head", qa_hu_reference=head_ref).qa_hu_reference == head_ref
