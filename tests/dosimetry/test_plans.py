"""RT Plan reading (photons only, carried-forward control points, fraction groups, refusals by name),
control-point segments as engine beams (arcs, sliding window, step and shoot), and template plans."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pydicom
import pytest
import torch
from pydicom.sequence import Sequence

from dosimetry.beam import (
    ARC_GANTRY_BIN_DEG,
    MAX_ARC_STEP_DEG,
    BeamError,
    PatientPosition,
    aperture_fluence,
    beams_from_plan,
)
from dosimetry.engine import compute_dose
from dosimetry.plans import (
    _ENGINE_POSITIONS,
    PhotonPlan,
    PlanError,
    read_rt_plan,
    template_plan,
)
from dosimetry.records import from_record, to_record
from models.volume import Volume
from tests.factories import rt_plans


def _device(kind: str, positions):
    item = pydicom.Dataset()
    item.RTBeamLimitingDeviceType = kind
    item.LeafJawPositions = [str(p) for p in positions]
    return item


def _plan(radiation="PHOTON", frame="1.2.3", sop_class="1.2.840.10008.5.1.4.1.1.481.5") -> pydicom.Dataset:
    plan = pydicom.Dataset()
    plan.SOPClassUID, plan.SOPInstanceUID, plan.FrameOfReferenceUID = sop_class, "9.8.7", frame
    plan.RTPlanLabel = "PROSTATE"
    beams = []
    for number, gantry in ((1, 0.0), (2, 90.0)):
        beam = pydicom.Dataset()
        beam.BeamNumber, beam.BeamName, beam.RadiationType = number, f"B{number}", radiation
        beam.TreatmentDeliveryType, beam.SourceAxisDistance = "TREATMENT", "1000"
        mlc = pydicom.Dataset()
        mlc.RTBeamLimitingDeviceType, mlc.NumberOfLeafJawPairs = "MLCX", 2
        mlc.LeafPositionBoundaries = ["-20", "0", "20"]
        beam.BeamLimitingDeviceSequence = Sequence([mlc])
        first, last = pydicom.Dataset(), pydicom.Dataset()
        first.GantryAngle, first.BeamLimitingDeviceAngle, first.PatientSupportAngle = gantry, 10.0, 0.0
        first.IsocenterPosition, first.NominalBeamEnergy = ["1", "2", "3"], 6
        first.CumulativeMetersetWeight = 0.0
        first.BeamLimitingDevicePositionSequence = Sequence([
            _device("ASYMX", (-50, 50)), _device("ASYMY", (-40, 40)), _device("MLCX", (-30, -10, 30, 10))])
        last.CumulativeMetersetWeight = 1.0  # everything else carried forward
        beam.ControlPointSequence = Sequence([first, last])
        beams.append(beam)
    plan.BeamSequence = Sequence(beams)
    group = pydicom.Dataset()
    group.NumberOfFractionsPlanned = 20
    references = []
    for number, mu in ((1, 120.0), (2, 80.0)):
        reference = pydicom.Dataset()
        reference.ReferencedBeamNumber, reference.BeamMeterset = number, mu
        references.append(reference)
    group.ReferencedBeamSequence = Sequence(references)
    plan.FractionGroupSequence = Sequence([group])
    prescription = pydicom.Dataset()
    prescription.TargetPrescriptionDose = 60.0
    plan.DoseReferenceSequence = Sequence([prescription])
    return plan


def test_photon_plan_is_read_with_carried_forward_control_points():
    plan = read_rt_plan(_plan(), frame_of_reference_uid="1.2.3")
    assert [b.monitor_units for b in plan.beams] == [120.0, 80.0]
    assert plan.fractions == 20 and plan.prescription_gy == 60.0 and not plan.is_template
    second = plan.beams[1].control_points[1]
    assert second.gantry_deg == 90.0 and second.collimator_deg == 10.0 and second.isocentre_mm == (1.0, 2.0, 3.0)
    assert second.jaw_x_mm == (-50.0, 50.0) and second.mlc_positions_mm == (-30.0, -10.0, 30.0, 10.0)
    assert second.mlc_boundaries_mm == (-20.0, 0.0, 20.0)
    ((start, end, monitor_units),) = plan.beams[0].segments()
    assert monitor_units == 120.0 and start.cumulative_meterset_weight == 0.0 and end.cumulative_meterset_weight == 1.0
    assert plan.fraction_group_number == 1 and plan.notes == ()


def test_unsupported_and_mismatched_plans_are_refused():
    with pytest.raises(PlanError, match="ion .* not supported"):
        read_rt_plan(_plan(sop_class="1.2.840.10008.5.1.4.1.1.481.8"))
    with pytest.raises(PlanError, match="electron beams are not supported: beam 1 'B1' is ELECTRON"):
        read_rt_plan(_plan(radiation="ELECTRON"))
    with pytest.raises(PlanError, match="frame of reference 1.2.3, not the image's 4.5.6"):
        read_rt_plan(_plan(), frame_of_reference_uid="4.5.6")


def test_a_beam_without_meterset_is_skipped_and_said():
    plan = _plan()
    del plan.FractionGroupSequence[0].ReferencedBeamSequence[1].BeamMeterset
    read = read_rt_plan(plan)
    assert [b.number for b in read.beams] == [1]
    assert read.notes == (("beam 2 'B2' skipped: no MU in fraction group 1 (an imaging or set-up beam; it "
                           "delivers no dose)"),)
    del plan.FractionGroupSequence[0].ReferencedBeamSequence[0].BeamMeterset
    with pytest.raises(PlanError, match="fraction group 1 holds no treatment beam with MU .beam 1 'B1' skipped"):
        read_rt_plan(plan)


# --- Vendor quirks (tests/factories/rt_plans.py) ----------------------------------------------------------------

def test_eclipse_setup_and_cbct_beams_are_skipped_and_said():
    plan = read_rt_plan(rt_plans.eclipse_with_setup_beams())
    assert [(b.number, b.monitor_units) for b in plan.beams] == [(1, 110.0), (2, 95.0)]
    assert plan.notes == (
        "beam 3 'Setup AP' skipped: a set-up beam (Treatment Delivery Type SETUP) delivers no treatment dose",
        "beam 4 'CBCT' skipped: 0 MU in fraction group 1 (an imaging or set-up beam; it delivers no dose)",
        "beam 5 'kV lat' skipped: no MU in fraction group 1 (an imaging or set-up beam; it delivers no dose)",
    )
    assert plan.fractions == 20 and plan.patient_position == "HFS"


def test_a_plan_without_file_meta_is_read_through_the_project_opener(tmp_path):
    from sct_node.dicom.files import open_dataset

    path = rt_plans.write_plan(rt_plans.monaco_three_fraction_groups(), tmp_path / "RP.monaco.dcm", file_meta=False)
    assert path.read_bytes()[128:132] != b"DICM"
    with pytest.raises(PlanError, match="not a DICOM Part 10 file .no file meta header.; open it with "
                                        "sct_node.dicom.files.open_dataset"):
        read_rt_plan(path)
    plan = read_rt_plan(open_dataset(path), source_name=str(path))
    assert [b.number for b in plan.beams] == [1, 2] and plan.fractions == 25


def test_every_fraction_group_is_read_and_the_choice_is_said():
    dataset = rt_plans.monaco_three_fraction_groups()
    first = read_rt_plan(dataset)
    assert first.fraction_group_number == 1 and [b.number for b in first.beams] == [1, 2]
    assert first.notes == (("fraction group 1 (beams 1, 2; 25 fractions) used; the plan has 3 fraction groups, "
                            "not computed: fraction group 2 (beam 3; 5 fractions); fraction group 3 (beam 4; 3 "
                            "fractions) (choose another by its number)"),)
    boost = read_rt_plan(dataset, fraction_group=3)
    assert boost.fraction_group_number == 3 and [b.number for b in boost.beams] == [4] and boost.fractions == 3
    assert boost.beams[0].monitor_units == 140.0
    with pytest.raises(PlanError, match="no fraction group 4; the plan has fraction group.s. 1, 2, 3"):
        read_rt_plan(dataset, fraction_group=4)
    # None picks the first group that holds treatment beams with MU, not simply the first.
    for reference in dataset.FractionGroupSequence[0].ReferencedBeamSequence:
        reference.BeamMeterset = "0"
    assert read_rt_plan(dataset).fraction_group_number == 2


def test_plan_notes_and_fraction_group_survive_the_qa_record():
    plan = read_rt_plan(rt_plans.eclipse_with_setup_beams())
    back = from_record(PhotonPlan, to_record(plan), "plan")
    assert back == plan and len(back.notes) == 3 and back.fraction_group_number == 1


REFUSALS = {
    "tomotherapy_helical": r"helical TomoTherapy plans are not supported: Manufacturer 'TomoTherapy Incorporated', "
                           r"model 'Hi-Art', machine 'Radixact1', 6,579 control points, Beam Type DYNAMIC",
    "halcyon_private": r"private SOP Class UID 1\.2\.246\.352\.70\.1\.70 \(UID root of Varian Medical Systems\), "
                       r"Manufacturer 'Varian Medical Systems', model 'Halcyon', machine 'Halcyon1': a "
                       r"vendor-specific object, not a standard RT Plan",
    "gamma_knife": r"Gamma Knife plans are not supported: Manufacturer 'Elekta Instrument AB'",
    "cyberknife": r"CyberKnife plans are not supported: .*machine 'CyberKnife M6'",
    "electron": r"electron beams are not supported: beam 1 'E12' is ELECTRON \(12 MeV\)",
    "ten_mv": r"beam 1 'G000' is 10 MV: the dose engine's beam data are 6 MV only "
              r"\(dosimetry/beam_data/elekta_agility_6mv.json\)",
    "fff": r"flattening-filter-free beams are not supported: beam 1 'G000' has Primary Fluence Mode NON_STANDARD "
           r"\(FFF\)",
    "wedge": r"wedges are not modelled: beam 1 'G090' has wedge W30 \(STANDARD, 30 deg\); refused rather than "
             r"computed as an open field",
    "bolus": r"bolus is not modelled: beam 1 'G000' references bolus \(ROI 7\)",
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_what_the_engine_does_not_model_is_refused_by_name(name):
    with pytest.raises(PlanError, match=REFUSALS[name]) as refused:
        read_rt_plan(getattr(rt_plans, name)())
    assert "\n" not in str(refused.value)


def test_other_unmodelled_plans_are_refused_by_name():
    with pytest.raises(PlanError, match="not an RT Plan .SOP Class 1.2.840.10008.5.1.4.1.1.481.2 .RT Dose Storage.."):
        read_rt_plan(_plan(sop_class="1.2.840.10008.5.1.4.1.1.481.2"))
    dual_layer = rt_plans.static_fields()
    dual_layer.BeamSequence[0].BeamLimitingDeviceSequence[2].RTBeamLimitingDeviceType = "MLCX2"
    with pytest.raises(PlanError, match="beam limiting device MLCX2 is not modelled"):
        read_rt_plan(dual_layer)
    couch_moving = rt_plans.static_fields()
    couch_moving.BeamSequence[0].ControlPointSequence[1].IsocenterPosition = ["0", "0", "50"]
    with pytest.raises(PlanError, match="helical delivery is not supported: beam 1 'G000' moves its isocentre"):
        read_rt_plan(couch_moving)
    blocked = rt_plans.static_fields()
    blocked.BeamSequence[1].NumberOfBlocks = 1
    with pytest.raises(PlanError, match="blocks are not modelled: beam 2 'G090' has blocks"):
        read_rt_plan(blocked)
    decubitus = rt_plans.static_fields(patient_position="HFDL")
    with pytest.raises(PlanError, match="patient position HFDL is not supported: the engine places beams for HFS"):
        read_rt_plan(decubitus)
    assert _ENGINE_POSITIONS == tuple(position.value for position in PatientPosition)  # the reader's list is the engine's
    no_groups = rt_plans.static_fields()
    del no_groups.FractionGroupSequence
    with pytest.raises(PlanError, match="no Fraction Group Sequence, so no MU per beam"):
        read_rt_plan(no_groups)


def test_template_plans_cover_the_target():
    box = template_plan("pelvis", (0.0, 10.0, -50.0), (60.0, 50.0, 70.0))
    assert [b.control_points[0].gantry_deg for b in box.beams] == [0.0, 90.0, 180.0, 270.0]
    anterior = box.beams[0].control_points[0]
    assert anterior.jaw_x_mm == (-40.0, 40.0) and anterior.jaw_y_mm == (-45.0, 45.0)
    lateral = box.beams[1].control_points[0]
    assert lateral.jaw_x_mm == (-35.0, 35.0)
    head = template_plan("head", (0.0, 0.0, 0.0), (40.0, 40.0, 40.0))
    assert [b.control_points[0].gantry_deg for b in head.beams] == [90.0, 270.0] and head.is_template
    with pytest.raises(PlanError, match="no template plan for site 'thorax'"):
        template_plan("thorax", (0, 0, 0), (1, 1, 1))


# --- Control-point segments as engine beams (dosimetry.beam.beams_from_plan) ------------------------------------

def test_vmat_arcs_conserve_mu_and_become_sub_arcs_of_at_most_the_step():
    plan = read_rt_plan(rt_plans.vmat_two_arcs(points=178, mu=300.0))
    beams = beams_from_plan(plan)
    assert len(beams) == 2 * 177  # 358 degrees in 177 segments of 2.02 degrees: one sub-arc each at 2.5 degrees
    assert sum(b.monitor_units for b in beams) == pytest.approx(600.0, rel=1e-12)
    clockwise = [b for b in beams if b.name.startswith("Arc CW")]
    assert sum(b.monitor_units for b in clockwise) == pytest.approx(300.0, rel=1e-12)
    # Mid-angles of the segments, in the direction of rotation: 181 + 1.01, then every 2.02 degrees through 0.
    step = 358.0 / 177
    assert clockwise[0].gantry_deg == pytest.approx(181.0 + step / 2)
    assert clockwise[-1].gantry_deg == pytest.approx((181.0 + 358.0 - step / 2) % 360.0)
    counter = [b for b in beams if b.name.startswith("Arc CCW")]
    assert counter[0].gantry_deg == pytest.approx(179.0 - step / 2)
    assert counter[0].collimator_deg == 330.0 and clockwise[0].collimator_deg == 30.0
    # The sub-arc count follows the step: 2.02-degree segments at 1 degree are three sub-arcs each.
    fine = beams_from_plan(plan, max_arc_step_deg=1.0)
    assert len(fine) == 2 * 177 * 3 and sum(b.monitor_units for b in fine) == pytest.approx(600.0, rel=1e-12)
    assert MAX_ARC_STEP_DEG == 2.5


def test_gantry_bins_keep_every_aperture_and_the_mu_of_an_arc():
    """One beam per 5-degree gantry bin, at its sub-arcs' MU-weighted mean angle, with every sub-arc's aperture
    as a segment: the apertures and MU of the unbinned sub-arcs are all there, and the binned arc's dose
    differs from the unbinned one only a little (benchmarks/dose_engine_timing.py --compare-unbinned)."""
    plan = read_rt_plan(rt_plans.vmat_two_arcs(points=178, mu=300.0))
    unbinned = beams_from_plan(plan)
    binned = beams_from_plan(plan, gantry_bin_deg=ARC_GANTRY_BIN_DEG)
    assert ARC_GANTRY_BIN_DEG == 5.0
    assert 2 * 72 <= len(binned) <= 2 * 73 < len(unbinned)
    assert sum(len(b.segments) for b in binned) == len(unbinned)
    assert sum(b.monitor_units for b in binned) == pytest.approx(600.0, rel=1e-12)
    for beam in binned:  # at the mean of the sub-arcs of its arc in its bin
        arc, where = beam.name.split(" [")[0], math.floor(beam.gantry_deg / 5.0)
        members = [(u.gantry_deg, u.monitor_units) for u in unbinned
                   if u.name.split(" [")[0] == arc and math.floor(u.gantry_deg / 5.0) == where]
        angles, weights = zip(*members)
        assert beam.gantry_deg == pytest.approx(float(np.average(angles, weights=weights)), abs=1e-9)
    with pytest.raises(BeamError, match="gantry_bin_deg"):
        beams_from_plan(plan, gantry_bin_deg=-1.0)


def test_a_two_point_arc_is_split_along_its_rotation_direction_with_interpolated_leaves():
    dataset = rt_plans.vmat_two_arcs(points=2, mu=144.0)
    plan = read_rt_plan(dataset)
    beams = beams_from_plan(plan)
    clockwise = [b for b in beams if b.name.startswith("Arc CW")]
    assert len(clockwise) == math.ceil(358.0 / MAX_ARC_STEP_DEG) == 144
    assert all(b.monitor_units == pytest.approx(1.0) for b in clockwise)
    angles = np.array([b.gantry_deg for b in clockwise])
    assert angles[0] == pytest.approx(181.0 + 358.0 / 288) and np.all(np.diff(np.unwrap(np.radians(angles))) > 0)
    arc = plan.beams[0]
    start, end = (np.asarray(p.mlc_positions_mm) for p in (arc.control_points[0], arc.control_points[1]))
    middle = np.ravel(clockwise[71].segments[0].mlc.leaf_positions_mm, order="F")  # bank A then bank B
    t = 71.5 / 144
    np.testing.assert_allclose(middle, start + t * (end - start), atol=1e-9)


def test_sliding_window_fluence_is_the_time_average_of_the_leaf_positions():
    plan = read_rt_plan(rt_plans.sliding_window(gap_mm=20.0, travel_mm=80.0, mu=200.0))
    (beam,) = beams_from_plan(plan)
    assert len(beam.segments) == 40 and beam.monitor_units == pytest.approx(200.0)  # 80 mm of travel in 2 mm steps
    u = torch.arange(-80.0, 80.0, 0.5, dtype=torch.float64) + 0.25
    v = torch.arange(-40.0, 40.0, 0.5, dtype=torch.float64) + 0.25
    fluence = aperture_fluence(beam.segments, u, v).numpy()
    # Open area, averaged over the sweep: the 20 mm gap times the 60 mm between the Y jaws (the MLC is wider).
    assert fluence.sum() * 0.25 == pytest.approx(20.0 * 60.0, rel=1e-9)
    # Against a fine time average (1000 positions), and against the analytic profile: 1/4 in the middle, ramps
    # over the gap width at both ends (each point is uncovered for 20 of the 80 mm of travel).
    fine = dataclasses.replace(beam, segments=tuple(
        dataclasses.replace(beam.segments[0], mlc=type(beam.segments[0].mlc)(
            beam.segments[0].mlc.leaf_boundaries_mm,
            tuple((-50.0 + 80.0 * t, -30.0 + 80.0 * t) for _ in beam.segments[0].mlc.leaf_positions_mm)),
            meterset_weight=1.0) for t in (np.arange(1000) + 0.5) / 1000))
    reference = aperture_fluence(fine.segments, u, v).numpy()
    assert np.abs(fluence - reference).max() < 0.02
    profile = fluence[len(v) // 2]
    x = u.numpy()
    expected = np.clip(np.minimum(x + 50.0, 50.0 - x), 0.0, 20.0) / 80.0
    expected[np.abs(x) > 50.0] = 0.0
    assert np.abs(profile - expected).max() < 0.02


def test_step_and_shoot_segments_stay_as_they_are():
    plan = read_rt_plan(rt_plans.step_and_shoot(mu=100.0))
    (beam,) = beams_from_plan(plan)
    assert [s.meterset_weight for s in beam.segments] == pytest.approx([50.0, 30.0, 20.0])
    assert [s.mlc.leaf_positions_mm[0] for s in beam.segments] == [(-40.0, 40.0), (-20.0, 30.0), (-10.0, 10.0)]
    assert beam.gantry_deg == 30.0 and beam.monitor_units == pytest.approx(100.0)


def test_a_full_arc_around_a_water_cylinder_gives_a_nearly_rotationally_symmetric_dose():
    n, spacing = 61, 3.0
    axis = (np.arange(n) - (n - 1) / 2) * spacing
    inside = (axis[None, :] ** 2 + axis[:, None] ** 2) <= 75.0 ** 2
    cylinder = Volume(np.repeat(inside[None].astype(np.float32), 6, axis=0), (spacing, spacing, spacing),
                      (axis[0], axis[0], -7.5))
    dataset = rt_plans.vmat_two_arcs(points=37, modulate=False)
    del dataset.BeamSequence[1]
    del dataset.FractionGroupSequence[0].ReferencedBeamSequence[1]
    arc = dataset.BeamSequence[0]
    for point in arc.ControlPointSequence:  # a full turn, 0 -> 360, in 36 segments of 10 degrees
        point.GantryAngle = f"{(float(point.ControlPointIndex) * 10.0) % 360.0:g}"
    plan = read_rt_plan(dataset)
    assert len(beams_from_plan(plan)) == 36 * 4
    beams = beams_from_plan(plan, max_arc_step_deg=10.0)  # 36 static beams 10 degrees apart keep the test fast
    assert len(beams) == 36 and sum(b.monitor_units for b in beams) == pytest.approx(300.0)
    dose = compute_dose(cylinder, beams).array[3]
    # The beams' mid-angles (5, 15, ... 355 degrees) map onto themselves under a quarter turn: so must the dose.
    assert np.abs(dose - np.rot90(dose)).max() < 0.01 * dose.max()
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    ring = dose[np.abs(np.hypot(xx, yy) - 15.0) < 1.5]  # inside the field, where the dose is flat
    assert ring.std() / ring.mean() < 0.01
    assert dose[30, 30] > dose[np.abs(np.hypot(xx, yy) - 60.0) < 1.5].mean()  # the fields overlap at the centre
