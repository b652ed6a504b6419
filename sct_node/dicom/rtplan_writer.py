"""Write a photon plan (the QA's template plans) as an RT Plan object on the synthetic CT.

The QA computes its dose from a :class:`~dosimetry.plans.PhotonPlan`; when
that plan is one of the site templates (pelvis four-field box, head opposed
laterals) no RT Plan exists anywhere, yet the RT Dose we send must reference
the plan it was computed from, and a planner may want to open the template.
This module writes that plan, in the sCT's patient, study and Frame of
Reference, marked UNAPPROVED and described as a QA template.

Choices the standard leaves open, and why:

* **RT Plan Geometry** is PATIENT only when a structure set is referenced:
  PS3.3 C.8.8.9 requires the Referenced Structure Set Sequence when the
  geometry is PATIENT ("RT Structure Set exists"), and defines
  TREATMENT_DEVICE for a plan without one. Pass the UID of the structure set
  written on the same sCT whenever there is one.
* **Synthetic Data** (0008,001C) lives in the SOP Common Module (PS3.3
  C.12.1, Type 3), so every IOD, the RT Plan included, may carry it. It is
  copied from the sCT, as the RT Structure Set writer does: the plan is placed
  on a synthetic image.
* **Beam Meterset** is what the QA's engine needs to deliver the prescription
  at the template's normalisation point or volume (the QA scales the template's
  MU; its engine is calibrated to 1 cGy/MU at d_max for 10 x 10 cm at SSD 100
  cm), so the RT Dose that references this plan is the plan's dose; the Dose
  Reference says where the prescription is (COORDINATES of the isocentre, or
  the target VOLUME).
* **Target Prescription Dose** is written as the total over all fractions
  (prescription per fraction times fractions), as planning systems write it;
  for the QA templates (one fraction) the two coincide.
* **Beam Type** is STATIC when every control point of a beam has the same
  machine state, DYNAMIC otherwise. Later control points carry only what
  changes (PS3.3 C.8.8.14: the 1C attributes are required in the first
  control point and wherever their value changes).

References
----------
DICOM PS3.3 A.20 (RT Plan IOD), C.8.8.1 (RT Series), C.8.8.9 (RT General
Plan), C.8.8.10 (RT Prescription), C.8.8.12 (RT Patient Setup), C.8.8.13
(RT Fraction Scheme), C.8.8.14 (RT Beams), C.8.8.16 (Approval), C.12.1 (SOP
Common); IEC 61217 (equipment coordinates and angles).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence as SequenceOf
from pathlib import Path

import numpy as np
import pydicom
from pydicom.sequence import Sequence

from dosimetry.plans import ControlPoint, PhotonPlan, PlanBeam
from sct_node.dicom.image_writer import (
    decimal_string,
    derived_object,
    dicom_date_time,
    write_dataset_atomic,
)
from sct_node.dicom.uids import RT_PLAN_STORAGE, RT_STRUCTURE_SET_STORAGE, derive_uid
from sct_node.errors import OutputError

__all__ = ["MACHINE_NAME", "RT_PLAN_STORAGE", "write_rt_plan"]

#: Treatment Machine Name of every beam: no real machine is meant, and a TPS must not match one.
MACHINE_NAME = "QA-TEMPLATE"
#: A plan sorts after the sCT (+0) and its structure set (+100) in a viewer.
SERIES_NUMBER_OFFSET = 200
#: Patient Position when the sCT does not say (the phantoms and most pelvis/head scans are head-first supine).
DEFAULT_PATIENT_POSITION = "HFS"
_PLAN_DESCRIPTION = ("QA template plan made by sct-node for the dosimetric QA of a synthetic CT. "
                     "UNAPPROVED; not a treatment plan; beams are generic (machine QA-TEMPLATE).")
#: Control point state compared to decide STATIC vs DYNAMIC and what later points must repeat.
_STATE_FIELDS = ("gantry_deg", "collimator_deg", "couch_deg", "isocentre_mm", "jaw_x_mm", "jaw_y_mm",
                 "mlc_positions_mm")


def write_rt_plan(
    *,
    plan: PhotonPlan,
    sct_headers: SequenceOf[pydicom.Dataset],
    path: Path,
    sop_instance_uid: str,
    series_instance_uid: str,
    series_description: str,
    referenced_structure_set_uid: str | None = None,
    dose_reference_roi_number: int | None = None,
    now: _dt.datetime | None = None,
) -> Path:
    """Write ``plan`` as an RT Plan in the synthetic CT's patient, study and Frame of Reference.

    Parameters
    ----------
    plan : PhotonPlan
        Beams, MU per fraction, fractions and (optionally) the prescription per fraction in Gy.
    sct_headers : sequence of pydicom.Dataset
        Headers of the written sCT series (one is enough); patient, study, Frame of Reference,
        Patient Position and Synthetic Data are taken from the first.
    path : pathlib.Path
        Output file (written atomically).
    sop_instance_uid, series_instance_uid : str
        Identity of the plan.
    series_description : str
        Series Description (at most 64 characters are kept).
    referenced_structure_set_uid : str or None
        SOP Instance UID of an RT Structure Set on the same sCT. With it the plan geometry is
        PATIENT; without it TREATMENT_DEVICE (PS3.3 C.8.8.9).
    dose_reference_roi_number : int or None
        ROI Number, in that structure set, of the volume a template plan was normalised to (its median
        dose is the prescription): the Dose Reference is then that VOLUME. A plan normalised to a point
        references the point's COORDINATES; otherwise the Dose Reference is the SITE.
    now : datetime or None
        Plan and instance creation date/time (default: now).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OutputError
        If there is no sCT header or Frame of Reference, the plan is in another Frame of
        Reference, or a beam is unusable (no control points, non-positive MU, closed jaws,
        MLC positions without leaf boundaries).

    References
    ----------
    DICOM PS3.3 A.20 (RT Plan IOD) and the modules listed in the module docstring.
    """
    first = _first_header(sct_headers)
    frame_of_reference_uid = str(first.FrameOfReferenceUID)
    if plan.frame_of_reference_uid is not None and plan.frame_of_reference_uid != frame_of_reference_uid:
        raise OutputError(f"plan {plan.label!r} is in frame of reference {plan.frame_of_reference_uid}, "
                          f"not the sCT's {frame_of_reference_uid}; it cannot be written on this sCT")
    _check_plan(plan)
    date, time = dicom_date_time(now or _dt.datetime.now())

    # SOP Common, Patient, General Study, RT Series, Frame of Reference (the sCT's, so isocentres are in its
    # patient coordinates), General Equipment.
    dataset = derived_object(RT_PLAN_STORAGE, sop_instance_uid, first, modality="RTPLAN",
                             series_instance_uid=series_instance_uid, series_number_offset=SERIES_NUMBER_OFFSET,
                             series_description=series_description, date=date, time=time)
    # RT General Plan
    # RT Plan Label is SH (16 characters): a longer label would be cut mid-word, so it goes to the name.
    fallback_label = "QA TEMPLATE" if plan.is_template else "QA PLAN"
    dataset.RTPlanLabel = plan.label if plan.label and len(plan.label) <= 16 else fallback_label
    dataset.RTPlanName = (plan.label or "QA template")[:64]
    dataset.RTPlanDescription = _PLAN_DESCRIPTION if plan.is_template else (
        "Plan written by sct-node for the dosimetric QA of a synthetic CT. UNAPPROVED; not for treatment.")
    dataset.InstanceNumber = 1
    dataset.RTPlanDate, dataset.RTPlanTime = date, time
    dataset.PlanIntent = "VERIFICATION"  # C.8.8.9: a plan used for (dosimetric) verification, not treatment
    if referenced_structure_set_uid:
        dataset.RTPlanGeometry = "PATIENT"
        reference = pydicom.Dataset()
        reference.ReferencedSOPClassUID = RT_STRUCTURE_SET_STORAGE
        reference.ReferencedSOPInstanceUID = referenced_structure_set_uid
        dataset.ReferencedStructureSetSequence = Sequence([reference])
    else:
        dataset.RTPlanGeometry = "TREATMENT_DEVICE"  # PATIENT would require a structure set reference
    # RT Prescription
    if plan.prescription_gy is not None:
        dataset.DoseReferenceSequence = Sequence([_dose_reference(plan, plan.prescription_gy, sop_instance_uid,
                                                                  dose_reference_roi_number)])
    # RT Patient Setup
    setup = pydicom.Dataset()
    setup.PatientSetupNumber = 1
    setup.PatientPosition = str(first.get("PatientPosition", "") or DEFAULT_PATIENT_POSITION)
    setup.SetupTechnique = "ISOCENTRIC"
    dataset.PatientSetupSequence = Sequence([setup])
    # RT Fraction Scheme
    group = pydicom.Dataset()
    group.FractionGroupNumber = 1
    group.NumberOfFractionsPlanned = int(plan.fractions)
    group.NumberOfBeams = len(plan.beams)
    group.NumberOfBrachyApplicationSetups = 0
    group.ReferencedBeamSequence = Sequence()
    for beam in plan.beams:
        item = pydicom.Dataset()
        item.ReferencedBeamNumber = int(beam.number)
        item.BeamMeterset = decimal_string(beam.monitor_units)
        group.ReferencedBeamSequence.append(item)
    dataset.FractionGroupSequence = Sequence([group])
    # RT Beams
    dataset.BeamSequence = Sequence([_beam(beam) for beam in plan.beams])
    # Approval: never approved; Review Date/Time/Name are only for APPROVED or REJECTED.
    dataset.ApprovalStatus = "UNAPPROVED"
    return write_dataset_atomic(dataset, path)


def _first_header(sct_headers: SequenceOf[pydicom.Dataset]) -> pydicom.Dataset:
    if not sct_headers:
        raise OutputError("no sCT header given: the RT object needs the sCT's patient, study and frame of reference")
    first = sct_headers[0]
    if not str(first.get("FrameOfReferenceUID", "") or ""):
        raise OutputError(f"sCT instance {first.get('SOPInstanceUID', '?')} has no Frame of Reference UID")
    return first


def _check_plan(plan: PhotonPlan) -> None:
    if not plan.beams:
        raise OutputError(f"plan {plan.label!r} has no beams")
    if int(plan.fractions) < 1:
        raise OutputError(f"plan {plan.label!r}: fractions must be at least 1; found {plan.fractions}")
    if plan.prescription_gy is not None and not (np.isfinite(plan.prescription_gy) and plan.prescription_gy > 0):
        raise OutputError(f"plan {plan.label!r}: prescription must be a positive dose in Gy; found {plan.prescription_gy}")
    numbers = [beam.number for beam in plan.beams]
    if len(set(numbers)) != len(numbers):
        raise OutputError(f"plan {plan.label!r}: beam numbers {numbers} are not unique")
    for beam in plan.beams:
        where = f"plan {plan.label!r}, beam {beam.number}"
        if not (np.isfinite(beam.monitor_units) and beam.monitor_units > 0):
            raise OutputError(f"{where}: monitor units must be positive; found {beam.monitor_units}")
        if not beam.control_points:
            raise OutputError(f"{where}: no control points")
        for point in beam.control_points:
            if point.jaw_x_mm[0] >= point.jaw_x_mm[1] or point.jaw_y_mm[0] >= point.jaw_y_mm[1]:
                raise OutputError(f"{where}: jaws closed or inverted (X {point.jaw_x_mm}, Y {point.jaw_y_mm})")
            if point.mlc_positions_mm is not None:
                if point.mlc_boundaries_mm is None:
                    raise OutputError(f"{where}: MLC leaf positions without leaf position boundaries")
                if len(point.mlc_positions_mm) != 2 * (len(point.mlc_boundaries_mm) - 1):
                    raise OutputError(f"{where}: {len(point.mlc_positions_mm)} leaf positions for "
                                      f"{len(point.mlc_boundaries_mm) - 1} leaf pairs; expected twice as many")


def _dose_reference(plan: PhotonPlan, prescription_gy: float, plan_uid: str, roi_number: int | None) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.DoseReferenceNumber = 1
    item.DoseReferenceUID = derive_uid(plan_uid, "dose-reference", 1)
    where = f" at the {plan.normalisation}" if plan.normalisation else ""
    if plan.normalisation_point_mm is not None:  # C.8.8.10.1: a point given by its coordinates
        item.DoseReferenceStructureType = "COORDINATES"
        item.DoseReferencePointCoordinates = [decimal_string(v) for v in plan.normalisation_point_mm]
    elif roi_number is not None:  # the volume (the target) whose median dose is the prescription
        item.DoseReferenceStructureType = "VOLUME"
        item.ReferencedROINumber = int(roi_number)
    else:  # no ROI or point is referenced: the prescription site (a volume would need the structure's ROI)
        item.DoseReferenceStructureType = "SITE"
    item.DoseReferenceDescription = f"{prescription_gy:g} Gy per fraction{where}"[:64]
    item.DoseReferenceType = "TARGET"
    item.TargetPrescriptionDose = decimal_string(prescription_gy * int(plan.fractions))
    return item


def _beam(beam: PlanBeam) -> pydicom.Dataset:
    points = beam.control_points
    mlc_boundaries = next((p.mlc_boundaries_mm for p in points if p.mlc_positions_mm is not None), None)
    static = all(_state(p) == _state(points[0]) for p in points)
    item = pydicom.Dataset()
    item.BeamNumber = int(beam.number)
    item.BeamName = str(beam.name)[:64]
    item.BeamType = "STATIC" if static else "DYNAMIC"
    item.RadiationType = "PHOTON"
    item.TreatmentMachineName = MACHINE_NAME
    item.PrimaryDosimeterUnit = "MU"
    item.SourceAxisDistance = decimal_string(beam.source_axis_distance_mm)
    devices = Sequence()
    for kind in ("ASYMX", "ASYMY"):
        device = pydicom.Dataset()
        device.RTBeamLimitingDeviceType = kind
        device.NumberOfLeafJawPairs = 1
        devices.append(device)
    if mlc_boundaries is not None:
        device = pydicom.Dataset()
        device.RTBeamLimitingDeviceType = "MLCX"
        device.NumberOfLeafJawPairs = len(mlc_boundaries) - 1
        device.LeafPositionBoundaries = [decimal_string(v) for v in mlc_boundaries]
        devices.append(device)
    item.BeamLimitingDeviceSequence = devices
    item.ReferencedPatientSetupNumber = 1
    item.TreatmentDeliveryType = "TREATMENT"
    item.NumberOfWedges = 0
    item.NumberOfCompensators = 0
    item.NumberOfBoli = 0
    item.NumberOfBlocks = 0
    item.FinalCumulativeMetersetWeight = decimal_string(points[-1].cumulative_meterset_weight or 1.0)
    item.NumberOfControlPoints = len(points)
    item.ControlPointSequence = Sequence(
        [_control_point(index, point, points[index - 1] if index else None, beam.energy_mv, mlc_boundaries)
         for index, point in enumerate(points)])
    return item


def _state(point: ControlPoint) -> tuple:
    return tuple(getattr(point, name) for name in _STATE_FIELDS)


def _control_point(index: int, point: ControlPoint, previous: ControlPoint | None, energy_mv: float,
                   mlc_boundaries: tuple[float, ...] | None) -> pydicom.Dataset:
    """One control point: the full state at index 0, afterwards only what changed."""
    item = pydicom.Dataset()
    item.ControlPointIndex = index
    first = previous is None

    def changed(name: str) -> bool:
        return first or getattr(point, name) != getattr(previous, name)

    if first:
        item.NominalBeamEnergy = decimal_string(energy_mv)
    positions = Sequence()
    if changed("jaw_x_mm"):
        positions.append(_device_position("ASYMX", point.jaw_x_mm))
    if changed("jaw_y_mm"):
        positions.append(_device_position("ASYMY", point.jaw_y_mm))
    if mlc_boundaries is not None and changed("mlc_positions_mm"):
        leaves = point.mlc_positions_mm
        if leaves is None:  # an MLC beam whose point has no leaf data: leaves open to the jaws
            pairs = len(mlc_boundaries) - 1
            leaves = (point.jaw_x_mm[0],) * pairs + (point.jaw_x_mm[1],) * pairs
        positions.append(_device_position("MLCX", leaves))
    if len(positions):
        item.BeamLimitingDevicePositionSequence = positions
    if changed("gantry_deg"):
        item.GantryAngle = decimal_string(point.gantry_deg % 360.0)
        item.GantryRotationDirection = "NONE"
    if changed("collimator_deg"):
        item.BeamLimitingDeviceAngle = decimal_string(point.collimator_deg % 360.0)
        item.BeamLimitingDeviceRotationDirection = "NONE"
    if changed("couch_deg"):
        item.PatientSupportAngle = decimal_string(point.couch_deg % 360.0)
        item.PatientSupportRotationDirection = "NONE"
    if first:
        item.TableTopEccentricAngle = "0"
        item.TableTopEccentricRotationDirection = "NONE"
        item.TableTopPitchAngle = 0.0
        item.TableTopPitchRotationDirection = "NONE"
        item.TableTopRollAngle = 0.0
        item.TableTopRollRotationDirection = "NONE"
        # Type 2C: required in the first control point; unknown for a template (no couch position planned).
        item.TableTopVerticalPosition = None
        item.TableTopLongitudinalPosition = None
        item.TableTopLateralPosition = None
    if changed("isocentre_mm"):
        item.IsocenterPosition = [decimal_string(v) for v in point.isocentre_mm]
    item.CumulativeMetersetWeight = decimal_string(point.cumulative_meterset_weight)
    return item


def _device_position(kind: str, positions: tuple[float, ...]) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.RTBeamLimitingDeviceType = kind
    item.LeafJawPositions = [decimal_string(v) for v in positions]
    return item
