"""QA end to end on phantoms: a faithful sCT passes, a corrupted one fails with the right reasons."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from dosimetry.errors import DosimetryError
from dosimetry.plans import template_plan
from dosimetry.qa import QaInputs, run_qa
from dosimetry.qa_result import SCHEMA_VERSION, read_qa, write_qa
from dosimetry.structures import StructureMask
from dosimetry.verdict import Verdict
from models.phantoms import Tissue, generate_phantom
from models.volume import Volume
from sct_node.cli import EXIT_INPUT, EXIT_OK, EXIT_QA_FAIL, main
from sct_node.tools.phantom_writer import write_phantom_dicom


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom("pelvis", 3, shape_zyx=(24, 72, 72), spacing_mm=(5.0, 5.0, 6.0))


def _structures(phantom):
    return tuple(StructureMask(s.name, i + 1, str(s.kind), s.mask) for i, s in enumerate(phantom.structures))


def _without_bone(phantom):
    bone = np.isin(phantom.labels.array, [Tissue.CORTICAL_BONE, Tissue.MARROW])
    return phantom.ct_hu.with_array(np.where(bone, 40, phantom.ct_hu.array).astype(np.float32))


def test_the_real_ct_as_its_own_sct_passes_every_check(phantom):
    ct = phantom.ct_hu.with_array(phantom.ct_hu.array.astype(np.float32))
    result = run_qa(QaInputs(sct=ct, mr_body_mask=phantom.body_mask, reference_ct=ct,
                             structures=_structures(phantom))).result
    assert result.verdict == Verdict.PASS and result.reasons == ()
    assert result.dose.gamma.pass_rate_percent == 100.0
    assert result.image_metrics.mae_hu == 0.0


def test_bone_set_to_water_fails_for_the_bone_and_the_target_dose(phantom):
    ct = phantom.ct_hu.with_array(phantom.ct_hu.array.astype(np.float32))
    result = run_qa(QaInputs(sct=_without_bone(phantom), mr_body_mask=phantom.body_mask, reference_ct=ct,
                             structures=_structures(phantom))).result
    assert result.verdict == Verdict.FAIL
    failed = {c.name for c in result.checks if c.verdict == Verdict.FAIL}
    assert "bone_fraction" in failed
    assert any(reason.startswith("bone (>= 200 HU) inside the body 0 %") for reason in result.reasons)
    # Water instead of bone puts more dose in the target: the DVH comparison notices.
    ptv = result.dose.dvh_of("PTV")
    assert abs(ptv.worst.difference_percent_of_prescription) > 1.0


def test_qa_cli_writes_qa_json_and_signals_fail(phantom, tmp_path, capsys):
    written = write_phantom_dicom(phantom, "qa", tmp_path / "dicom")
    ok = main(["qa", "--sct", str(written.ct_dir), "--mr", str(written.mr_t1_dir),
               "--structures", str(written.rtstruct_path), "--output", str(tmp_path / "qa-ct")])
    record = read_qa(tmp_path / "qa-ct")
    summary, maps = record.result, record.maps
    assert ok == EXIT_OK, summary.reasons
    assert summary.verdict in (Verdict.PASS, Verdict.WARN)
    assert {c.name for c in summary.checks} >= {"bone_fraction", "body_dice", "gamma", "dvh_PTV"}
    assert summary.dose.reference == "bulk-density sCT"
    assert json.loads((tmp_path / "qa-ct" / "qa.json").read_text())["schema_version"] == SCHEMA_VERSION
    prescription = summary.dose.prescription_gy
    np.testing.assert_allclose(maps.dose_difference_percent.array,
                               (maps.dose_sct_gy.array - maps.dose_reference_gy.array) / prescription * 100, atol=1e-4)
    assert [c.structure for c in maps.dvh_curves] == [d.structure for d in summary.dose.dvh]
    # The same CT with its bone replaced by water fails.
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in written.ct_dir.glob("*.dcm"):
        dataset = pydicom.dcmread(path)
        stored = dataset.pixel_array.astype(np.int32)
        stored[stored > 1024 + 200] = 1024 + 40
        dataset.PixelData = stored.astype("<u2").tobytes()
        dataset.save_as(broken / path.name)
    capsys.readouterr()
    assert main(["qa", "--sct", str(broken), "--structures", str(written.rtstruct_path), "--no-dose",
                 "--output", str(tmp_path / "qa-broken")]) == EXIT_QA_FAIL
    assert "QA FAIL" in capsys.readouterr().out


def test_slice_coverage_and_field_of_view_are_judged(phantom):
    ct = phantom.ct_hu.with_array(phantom.ct_hu.array.astype(np.float32))
    same = run_qa(QaInputs(sct=ct, mr_body_mask=phantom.body_mask, mr_grid=ct, compute_dose=False)).result
    checks = {c.name: c for c in same.checks}
    assert checks["slice_coverage"].verdict == Verdict.PASS and checks["slice_coverage"].value == 0
    assert checks["field_of_view"].verdict == Verdict.PASS
    # An MR with two more slices than the sCT: the sCT is missing anatomy.
    longer = Volume(np.zeros((ct.shape[0] + 2, *ct.shape[1:])), ct.spacing_mm, ct.origin_mm, ct.direction)
    missing = run_qa(QaInputs(sct=ct, mr_grid=longer, compute_dose=False)).result
    coverage = {c.name: c for c in missing.checks}["slice_coverage"]
    assert coverage.verdict == Verdict.FAIL and coverage.value == 2
    assert missing.slice_coverage.mr_slices_without_sct == (ct.shape[0], ct.shape[0] + 1)
    assert missing.dose is None and missing.outline is None  # steps that did not run
    # Cutting the image through the body in-plane truncates every body slice.
    rows = np.flatnonzero(phantom.body_mask.any(axis=(0, 2)))
    top, bottom = rows[0] + 4, rows[-1] - 4  # four rows inside the body at both ends
    cropped = Volume(ct.array[:, top:bottom, :], ct.spacing_mm, ct.index_to_patient(np.array([0.0, top, 0.0])),
                     ct.direction)
    truncated = run_qa(QaInputs(sct=cropped, compute_dose=False)).result
    field = {c.name: c for c in truncated.checks}["field_of_view"]
    assert field.verdict == Verdict.FAIL and field.value > 50


def test_a_plan_whose_isocentre_is_outside_the_image_is_refused(phantom):
    ct = phantom.ct_hu.with_array(phantom.ct_hu.array.astype(np.float32))
    far = tuple(float(v) for v in ct.index_to_patient(np.array([0.0, 0.0, ct.shape[0] + 40.0])))
    with pytest.raises(DosimetryError, match="isocentre .* lies outside the image"):
        run_qa(QaInputs(sct=ct, plan=template_plan("pelvis", far, (50.0, 50.0, 50.0))))


def test_qa_cli_refuses_structures_drawn_on_another_series(phantom, tmp_path, capsys):
    written = write_phantom_dicom(phantom, "qa-series", tmp_path / "dicom")
    other = pydicom.dcmread(written.rtstruct_path)
    for frame in other.ReferencedFrameOfReferenceSequence:
        for study in frame.RTReferencedStudySequence:
            for series in study.RTReferencedSeriesSequence:
                series.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.999"
    other.save_as(tmp_path / "other-series.dcm")
    assert main(["qa", "--sct", str(written.ct_dir), "--structures", str(tmp_path / "other-series.dcm"),
                 "--no-dose", "--output", str(tmp_path / "qa")]) == EXIT_INPUT
    assert "drawn on series 1.2.826.0.1.3680043.2.1125.999" in capsys.readouterr().err
    # The phantom's own structure set (drawn on its CT) is accepted.
    assert main(["qa", "--sct", str(written.ct_dir), "--structures", str(written.rtstruct_path),
                 "--no-dose", "--output", str(tmp_path / "qa-ok")]) in (EXIT_OK, EXIT_QA_FAIL)


def test_a_real_plan_keeps_its_mu_and_its_dose_is_put_at_the_prescription(phantom):
    """A clinical plan's MU are for its machine's calibration: the dose is scaled to the prescription at the
    target's median, the factor recorded, and the plan (which the RT Dose references) left as it is."""
    import dataclasses as dc

    ct = phantom.ct_hu.with_array(phantom.ct_hu.array.astype(np.float32))
    structures = _structures(phantom)
    ptv = next(s for s in structures if s.name == "PTV")
    centre = tuple(ct.index_to_patient(np.argwhere(ptv.mask).mean(axis=0)[::-1]))
    template = template_plan("pelvis", centre, (60.0, 60.0, 60.0))
    clinical = dc.replace(template, label="Prostate 60/30", is_template=False, fractions=30, prescription_gy=60.0,
                          beams=tuple(dc.replace(b, monitor_units=180.0) for b in template.beams))
    result = run_qa(QaInputs(sct=ct, mr_body_mask=phantom.body_mask, reference_ct=ct, plan=clinical,
                             structures=structures)).result
    dose = result.dose
    assert dose.prescription_gy == 2.0  # 60 Gy in 30 fractions, per fraction
    assert dose.normalisation.method.startswith("real plan: its dose scaled by")
    assert dose.normalisation.dose_scale != 1.0
    assert dose.dvh_of("PTV").comparison.d50.reference_gy == pytest.approx(2.0, rel=1e-6)
    assert set(dose.monitor_units.values()) == {180.0}  # the clinical plan's own MU
    assert not dose.plan.is_template
    # Without a target and with the isocentre off the fields, a real plan is left unscaled and says so.
    off_axis = dc.replace(clinical, beams=tuple(
        dc.replace(b, control_points=tuple(dc.replace(p, jaw_x_mm=(20.0, 60.0)) for p in b.control_points))
        for b in clinical.beams))
    unscaled = run_qa(QaInputs(sct=ct, mr_body_mask=phantom.body_mask, plan=off_axis)).result
    assert unscaled.dose.normalisation.dose_scale == 1.0
    assert "not in the high dose" in unscaled.dose.normalisation.method


def test_a_template_is_refused_a_normalisation_point_outside_the_high_dose(phantom):
    import dataclasses as dc

    ct = phantom.ct_hu.with_array(phantom.ct_hu.array.astype(np.float32))
    centre = tuple(ct.index_to_patient(np.argwhere(phantom.body_mask).mean(axis=0)[::-1]))
    template = template_plan("pelvis", centre, (60.0, 60.0, 60.0))
    shifted = dc.replace(template, beams=tuple(
        dc.replace(b, control_points=tuple(dc.replace(p, jaw_x_mm=(20.0, 60.0), jaw_y_mm=(20.0, 60.0))
                                           for p in b.control_points)) for b in template.beams))
    with pytest.raises(DosimetryError, match="not a place to normalise"):
        run_qa(QaInputs(sct=ct, mr_body_mask=phantom.body_mask, plan=shifted))


def test_a_written_qa_reads_back_as_the_same_typed_result(phantom, tmp_path):
    """write_qa then read_qa gives an equal QaResult (every measurement, NaN and infinity included) and the
    same maps; nothing is lost to a dict on the way."""
    ct = phantom.ct_hu.with_array(phantom.ct_hu.array.astype(np.float32))
    uncertainty = ct.with_array(np.full(ct.shape, 20.0, dtype=np.float32))
    run = run_qa(QaInputs(sct=ct, mr_body_mask=phantom.body_mask, mr_grid=ct, reference_ct=ct,
                          uncertainty_hu=uncertainty, structures=_structures(phantom),
                          input_guard=("soft", ("echo time 30 ms outside 8-15 ms",))))
    assert run.result.image_metrics.psnr_db == float("inf")  # identical images: written as "Infinity"
    write_qa(run, tmp_path, context={"site": "pelvis"})
    back = read_qa(tmp_path)
    assert back.result == run.result
    assert back.context == {"site": "pelvis"} and len(back.digest) == 64
    assert back.result.input_guard.verdict == "soft" and back.result.uncertainty.percent_above == 0.0
    np.testing.assert_array_equal(back.maps.body_mask, phantom.body_mask)
    np.testing.assert_allclose(back.maps.dose_sct_gy.array, run.maps.dose_sct_gy.array, rtol=1e-6)
    assert back.maps.dose_sct_gy.same_grid(run.maps.dose_sct_gy)
    assert [c.structure for c in back.maps.dvh_curves] == [c.structure for c in run.maps.dvh_curves]
    text = (tmp_path / "qa.json").read_text()
    assert "NaN" not in text.replace('"NaN"', "") and "Infinity" in text  # standard JSON only


def test_read_qa_refuses_an_older_layout_and_names_a_malformed_field(phantom, tmp_path):
    ct = phantom.ct_hu.with_array(phantom.ct_hu.array.astype(np.float32))
    write_qa(run_qa(QaInputs(sct=ct, compute_dose=False)), tmp_path)
    content = json.loads((tmp_path / "qa.json").read_text())
    older = {key: value for key, value in content.items() if key != "schema_version"}
    (tmp_path / "qa.json").write_text(json.dumps(older))
    with pytest.raises(DosimetryError, match="written by an earlier sct-node; run `sct-node qa`"):
        read_qa(tmp_path)
    content["verdict"] = "MAYBE"
    content["measurements"]["field_of_view"]["truncated_slices"] = "none"
    (tmp_path / "qa.json").write_text(json.dumps(content))
    with pytest.raises(DosimetryError, match=r"verdict: Input should be 'PASS', 'WARN' or 'FAIL'.*"
                                             r"field_of_view.truncated_slices"):
        read_qa(tmp_path)
    with pytest.raises(DosimetryError, match="cannot read the QA result"):
        read_qa(tmp_path / "nowhere")
