"""Photon treatment plans: read from RT Plan objects, or made from per-site templates.

In MRI-only use there is often no clinical plan yet when the sCT is made, so
the QA carries template plans placed on the target (or body) centroid: a
four-field box for the pelvis, opposed laterals for the head. When a real
RT Plan for the same frame of reference is available, it is used instead.

Geometry follows IEC 61217 as DICOM RT uses it: gantry 0° is a beam from the
ceiling; for a head-first-supine patient it enters anteriorly and travels
towards posterior (+y in LPS); gantry 90° enters from the patient's left
(+x) travelling to the right. Jaw and MLC positions are in mm projected to
the isocentre plane.

References
----------
DICOM PS3.3 C.8.8.14 (RT Beams Module), C.8.8.13 (RT Fraction Scheme),
C.8.8.10 (RT Prescription); IEC 61217 (radiotherapy equipment coordinates).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from dosimetry.errors import DosimetryError

__all__ = ["ControlPoint", "PhotonPlan", "PlanBeam", "PlanError", "read_rt_plan", "template_plan"]

RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
RT_ION_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.8"


class PlanError(DosimetryError):
    """A plan cannot be used for the dose comparison."""


@dataclass(frozen=True)
class ControlPoint:
    """Machine state at one control point (values carried forward from earlier points).

    Attributes
    ----------
    gantry_deg, collimator_deg, couch_deg : float
    isocentre_mm : tuple of float
        LPS patient coordinates.
    jaw_x_mm, jaw_y_mm : tuple of float
        (X1, X2) and (Y1, Y2) at the isocentre plane.
    mlc_boundaries_mm : tuple of float or None
        Leaf pair boundaries along Y (n + 1 values).
    mlc_positions_mm : tuple of float or None
        2n leaf positions along X: bank A (X1 side) then bank B.
    cumulative_meterset_weight : float
    """

    gantry_deg: float
    collimator_deg: float
    couch_deg: float
    isocentre_mm: tuple[float, float, float]
    jaw_x_mm: tuple[float, float]
    jaw_y_mm: tuple[float, float]
    mlc_boundaries_mm: tuple[float, ...] | None
    mlc_positions_mm: tuple[float, ...] | None
    cumulative_meterset_weight: float


@dataclass(frozen=True)
class PlanBeam:
    """A treatment beam."""

    number: int
    name: str
    energy_mv: float
    source_axis_distance_mm: float
    monitor_units: float
    control_points: tuple[ControlPoint, ...]

    def segments(self) -> list[tuple[ControlPoint, float]]:
        """(control point, MU delivered from it to the next) for the dose calculation.

        A static beam (two control points, weights 0 and 1) is one segment with all its MU.
        """
        points = self.control_points
        final = points[-1].cumulative_meterset_weight or 1.0
        result = []
        for current, following in zip(points[:-1], points[1:]):
            weight = (following.cumulative_meterset_weight - current.cumulative_meterset_weight) / final
            if weight > 0:
                result.append((current, self.monitor_units * weight))
        if not result:
            result.append((points[0], self.monitor_units))
        return result


@dataclass(frozen=True)
class PhotonPlan:
    """A photon plan ready for dose calculation."""

    label: str
    frame_of_reference_uid: str | None
    beams: tuple[PlanBeam, ...]
    fractions: int
    prescription_gy: float | None
    sop_instance_uid: str | None
    is_template: bool
    #: Where the prescription is delivered, in words ("isocentre", "median dose of PTV"); None: the plan's MU
    #: stand as they are (a real plan). Set by the QA when it normalises a template plan.
    normalisation: str | None = None
    #: The normalisation point (LPS mm) when the normalisation is a point.
    normalisation_point_mm: tuple[float, float, float] | None = None

    def with_monitor_units_scaled(self, factor: float, normalisation: str,
                                  point_mm: tuple[float, float, float] | None = None) -> PhotonPlan:
        """The same plan with every beam's MU multiplied by ``factor`` (dose is linear in MU)."""
        if not (np.isfinite(factor) and factor > 0):
            raise PlanError(f"plan {self.label!r}: an MU scale factor must be positive; found {factor}")
        beams = tuple(dataclasses.replace(beam, monitor_units=beam.monitor_units * float(factor)) for beam in self.beams)
        point = tuple(float(v) for v in point_mm) if point_mm is not None else None
        return dataclasses.replace(self, beams=beams, normalisation=normalisation, normalisation_point_mm=point)

    @property
    def isocentre_mm(self) -> tuple[float, float, float]:
        """The first beam's isocentre (the plan's, for the single-isocentre plans the QA normalises)."""
        return self.beams[0].control_points[0].isocentre_mm


def read_rt_plan(source: Path | pydicom.Dataset, *, frame_of_reference_uid: str | None = None) -> PhotonPlan:
    """Read the treatment beams of a photon RT Plan.

    Raises
    ------
    PlanError
        For an ion (proton) plan, electron beams, another frame of reference, no treatment beams
        or missing MU.
    """
    dataset = pydicom.dcmread(source) if not isinstance(source, pydicom.Dataset) else source
    where = str(source) if not isinstance(source, pydicom.Dataset) else "RT Plan"
    sop_class = str(dataset.get("SOPClassUID", ""))
    if sop_class == RT_ION_PLAN_STORAGE or "IonBeamSequence" in dataset:
        raise PlanError(f"{where}: ion (proton/carbon) plans are not supported; the dose engine models photons only")
    if sop_class != RT_PLAN_STORAGE:
        raise PlanError(f"{where}: not an RT Plan (SOP Class {sop_class or 'none'})")
    plan_frame = str(dataset.get("FrameOfReferenceUID", "")) or None
    if frame_of_reference_uid is not None and plan_frame != frame_of_reference_uid:
        raise PlanError(f"{where}: plan is in frame of reference {plan_frame}, not the image's {frame_of_reference_uid}")
    meterset = {}
    fractions = 1
    for group in dataset.get("FractionGroupSequence", [])[:1]:
        fractions = int(group.get("NumberOfFractionsPlanned", 1) or 1)
        for reference in group.get("ReferencedBeamSequence", []):
            if reference.get("BeamMeterset", None) is not None:
                meterset[int(reference.ReferencedBeamNumber)] = float(reference.BeamMeterset)
    beams = []
    for beam in dataset.get("BeamSequence", []):
        if str(beam.get("TreatmentDeliveryType", "TREATMENT")) != "TREATMENT":
            continue  # setup fields deliver no dose
        radiation = str(beam.get("RadiationType", "PHOTON"))
        if radiation != "PHOTON":
            raise PlanError(f"{where}: beam {beam.get('BeamName', beam.BeamNumber)} is {radiation}; "
                            "only photon beams are supported")
        number = int(beam.BeamNumber)
        if number not in meterset or meterset[number] <= 0:
            raise PlanError(f"{where}: beam {number} has no Beam Meterset (MU) in the fraction group")
        beams.append(PlanBeam(number, str(beam.get("BeamName", f"Beam {number}")),
                              _energy(beam), float(beam.get("SourceAxisDistance", 1000.0) or 1000.0),
                              meterset[number], _control_points(beam, where)))
    if not beams:
        raise PlanError(f"{where}: no photon treatment beams")
    prescription = None
    for reference in dataset.get("DoseReferenceSequence", []):
        if reference.get("TargetPrescriptionDose", None) is not None:
            prescription = float(reference.TargetPrescriptionDose)
            break
    return PhotonPlan(str(dataset.get("RTPlanLabel", "RT Plan")), plan_frame, tuple(beams), fractions,
                      prescription, str(dataset.get("SOPInstanceUID", "")) or None, False)


def _energy(beam: pydicom.Dataset) -> float:
    points = beam.get("ControlPointSequence", [])
    value = points[0].get("NominalBeamEnergy", None) if points else None
    return float(value) if value not in (None, "") else 6.0


def _control_points(beam: pydicom.Dataset, where: str) -> tuple[ControlPoint, ...]:
    mlc_boundaries = None
    for device in beam.get("BeamLimitingDeviceSequence", []):
        if str(device.RTBeamLimitingDeviceType) in ("MLCX",) and "LeafPositionBoundaries" in device:
            mlc_boundaries = tuple(float(v) for v in device.LeafPositionBoundaries)
    state: dict = {"gantry": 0.0, "collimator": 0.0, "couch": 0.0, "isocentre": None,
                   "x": (-200.0, 200.0), "y": (-200.0, 200.0), "mlc": None}
    result = []
    for point in beam.get("ControlPointSequence", []):
        if point.get("GantryAngle", None) is not None:
            state["gantry"] = float(point.GantryAngle)
        if point.get("BeamLimitingDeviceAngle", None) is not None:
            state["collimator"] = float(point.BeamLimitingDeviceAngle)
        if point.get("PatientSupportAngle", None) is not None:
            state["couch"] = float(point.PatientSupportAngle)
        if point.get("IsocenterPosition", None) is not None:
            state["isocentre"] = tuple(float(v) for v in point.IsocenterPosition)
        for device in point.get("BeamLimitingDevicePositionSequence", []):
            kind = str(device.RTBeamLimitingDeviceType)
            positions = tuple(float(v) for v in device.LeafJawPositions)
            if kind in ("X", "ASYMX"):
                state["x"] = positions[:2]
            elif kind in ("Y", "ASYMY"):
                state["y"] = positions[:2]
            elif kind == "MLCX":
                state["mlc"] = positions
        if state["isocentre"] is None:
            raise PlanError(f"{where}: beam {beam.BeamNumber} has no Isocenter Position")
        if state["x"][0] >= state["x"][1] or state["y"][0] >= state["y"][1]:
            raise PlanError(f"{where}: beam {beam.BeamNumber}: jaws closed or inverted ({state['x']}, {state['y']})")
        result.append(ControlPoint(state["gantry"], state["collimator"], state["couch"], state["isocentre"],
                                   state["x"], state["y"], mlc_boundaries if state["mlc"] else None, state["mlc"],
                                   float(point.get("CumulativeMetersetWeight", 0.0) or 0.0)))
    if not result:
        raise PlanError(f"{where}: beam {beam.BeamNumber} has no control points")
    return tuple(result)


#: Template beam arrangements per site: gantry angles (degrees).
_TEMPLATE_GANTRY_DEG = {"pelvis": (0.0, 90.0, 180.0, 270.0), "head": (90.0, 270.0)}


def template_plan(site: str, isocentre_mm: tuple[float, float, float], target_extent_mm: tuple[float, float, float],
                  *, prescription_gy: float = 2.0, margin_mm: float = 10.0, monitor_units: float = 100.0) -> PhotonPlan:
    """A template plan for a site, centred on the target: pelvis four-field box, head opposed laterals.

    Parameters
    ----------
    site : str
        ``pelvis`` or ``head``.
    isocentre_mm : tuple of float
        Target (or body) centroid in LPS.
    target_extent_mm : tuple of float
        Target size along x, y, z (mm); each field covers it plus ``margin_mm``.
    prescription_gy : float
        Dose per fraction the QA expresses differences against.
    monitor_units : float
        MU per beam (relative comparisons do not depend on it).

    Raises
    ------
    PlanError
        For an unknown site or a non-positive size.
    """
    if site not in _TEMPLATE_GANTRY_DEG:
        raise PlanError(f"no template plan for site {site!r}; available: {', '.join(_TEMPLATE_GANTRY_DEG)}")
    extent = np.asarray(target_extent_mm, dtype=float)
    if extent.shape != (3,) or np.any(extent <= 0):
        raise PlanError(f"target_extent_mm must be three positive sizes; found {target_extent_mm}")
    beams = []
    for number, gantry in enumerate(_TEMPLATE_GANTRY_DEG[site], start=1):
        lateral = extent[1] if gantry in (90.0, 270.0) else extent[0]  # field width across the beam
        half_x = min(lateral / 2 + margin_mm, 200.0)
        half_y = min(extent[2] / 2 + margin_mm, 200.0)
        point = ControlPoint(gantry, 0.0, 0.0, tuple(float(v) for v in isocentre_mm), (-half_x, half_x),
                             (-half_y, half_y), None, None, 0.0)
        final = ControlPoint(gantry, 0.0, 0.0, point.isocentre_mm, point.jaw_x_mm, point.jaw_y_mm, None, None, 1.0)
        beams.append(PlanBeam(number, f"G{gantry:03.0f}", 6.0, 1000.0, monitor_units, (point, final)))
    label = {"pelvis": "4-field box (template)", "head": "opposed laterals (template)"}[site]
    return PhotonPlan(label, None, tuple(beams), 1, prescription_gy, None, True)
