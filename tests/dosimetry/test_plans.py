"""RT Plan reading (photons only, carried-forward control points) and template plans."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.sequence import Sequence

from dosimetry.plans import PlanError, read_rt_plan, template_plan


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
    (segment,) = plan.beams[0].segments()
    assert segment[1] == 120.0


def test_unsupported_and_mismatched_plans_are_refused():
    with pytest.raises(PlanError, match="ion .* not supported"):
        read_rt_plan(_plan(sop_class="1.2.840.10008.5.1.4.1.1.481.8"))
    with pytest.raises(PlanError, match="ELECTRON; only photon beams are supported"):
        read_rt_plan(_plan(radiation="ELECTRON"))
    with pytest.raises(PlanError, match="frame of reference 1.2.3, not the image's 4.5.6"):
        read_rt_plan(_plan(), frame_of_reference_uid="4.5.6")
    broken = _plan()
    del broken.FractionGroupSequence[0].ReferencedBeamSequence[1].BeamMeterset
    with pytest.raises(PlanError, match="beam 2 has no Beam Meterset"):
        read_rt_plan(broken)


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
