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

What :func:`read_rt_plan` reads
-------------------------------
Standard RT Plans of photon beams on a C-arm linac: static fields,
step-and-shoot and sliding-window IMRT, dynamic and VMAT arcs (control points
are kept; :func:`dosimetry.beam.beams_from_plan` turns them into static
sub-arcs). Every fraction group is read and one is computed (the only one,
the first with treatment beams with MU, or the one asked for); beams that
deliver no dose in it (Treatment Delivery Type SETUP, no or 0 MU: set-up and
CBCT fields) are skipped. Both are said in :attr:`PhotonPlan.notes`, which
the QA report shows. Everything the engine does not model is refused by name
with a :class:`PlanError` (docs/dose.md lists each message), never dropped
silently: wedges, bolus, blocks, compensators, applicators, FFF beams,
energies other than the beam data's 6 MV, electrons, protons and ions,
Gamma Knife, CyberKnife and TomoTherapy, helical delivery, vendor-private
SOP classes.

Files without DICOM file meta (raw data sets, e.g. Monaco exports) are opened
by the project's DICOM opener (``sct_node.dicom.files.open_dataset``) and
handed over as a Dataset; this package, which must not import ``sct_node``,
reads Part 10 files itself and says so for anything else.

References
----------
DICOM PS3.3 C.8.8.14 (RT Beams Module), C.8.8.13 (RT Fraction Scheme),
C.8.8.10 (RT Prescription); IEC 61217 (radiotherapy equipment coordinates).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pydicom.uid
from pydicom.errors import InvalidDicomError

from dosimetry._grids import xyz_floats
from dosimetry.errors import DosimetryError

__all__ = [
    "MODELLED_ENERGY_MV",
    "ControlPoint",
    "PhotonPlan",
    "PlanBeam",
    "PlanError",
    "energy_problem",
    "gantry_travel_deg",
    "read_rt_plan",
    "template_plan",
]

# The numbers are written once, in pydicom's registry.
RT_PLAN_STORAGE = pydicom.uid.RTPlanStorage
RT_ION_PLAN_STORAGE = pydicom.uid.RTIonPlanStorage
#: UID root of the standard SOP classes; any other SOP Class UID is a vendor's private class.
_STANDARD_UID_ROOT = "1.2.840.10008."
#: Organisation UID roots named in the refusal of a private SOP class.
_PRIVATE_UID_ROOTS = {"1.2.246.352.": "Varian Medical Systems"}
#: Nominal energy of the engine's beam data, MV, and where the data are (dosimetry.beam_model).
MODELLED_ENERGY_MV = 6.0
BEAM_DATA_FILE = "dosimetry/beam_data/elekta_agility_6mv.json"
#: Patient positions the engine places beams for (the values of dosimetry.beam.PatientPosition).
_ENGINE_POSITIONS = ("HFS", "FFS", "HFP", "FFP")
#: RT Beam Limiting Device Types the engine models: X and Y jaws (symmetric or not) and one MLC along X.
_MODELLED_DEVICES = frozenset({"X", "Y", "ASYMX", "ASYMY", "MLCX"})


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
    gantry_rotation_direction : str
        ``CW``, ``CC`` or ``NONE``: how the gantry turns from this control point to the next (DICOM
        Gantry Rotation Direction, carried forward).
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
    gantry_rotation_direction: str = "NONE"


@dataclass(frozen=True)
class PlanBeam:
    """A treatment beam."""

    number: int
    name: str
    energy_mv: float
    source_axis_distance_mm: float
    monitor_units: float
    control_points: tuple[ControlPoint, ...]

    def segments(self) -> list[tuple[ControlPoint, ControlPoint, float]]:
        """(start, end, MU) of every control-point segment that delivers dose.

        Between control points *i* and *i + 1* the beam delivers (cumulative meterset weight difference /
        final cumulative meterset weight) x the beam's MU while the machine moves from the state at *i*
        to the state at *i + 1*; segments with no MU (step-and-shoot transitions) are left out. A static
        beam (two control points, weights 0 and 1) is one segment with all its MU; a beam with a single
        control point is one segment from it to itself.
        """
        points = self.control_points
        final = points[-1].cumulative_meterset_weight or 1.0
        result = []
        for current, following in itertools.pairwise(points):
            weight = (following.cumulative_meterset_weight - current.cumulative_meterset_weight) / final
            if weight > 0:
                result.append((current, following, self.monitor_units * weight))
        if not result:
            result.append((points[0], points[0], self.monitor_units))
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
    #: The RT Plan's Fraction Group Number whose beams these are (None: a template plan).
    fraction_group_number: int | None = None
    #: What the reader did that the dose does not show, one sentence each: beams skipped because they
    #: deliver no dose (set-up, imaging, 0 MU), the fraction group used and those not computed.
    notes: tuple[str, ...] = ()
    #: DICOM Patient Position of the plan's patient setup (HFS, FFS, ...), None when the plan gives none.
    patient_position: str | None = None

    def with_monitor_units_scaled(self, factor: float, normalisation: str,
                                  point_mm: tuple[float, float, float] | None = None) -> PhotonPlan:
        """The same plan with every beam's MU multiplied by ``factor`` (dose is linear in MU)."""
        if not (np.isfinite(factor) and factor > 0):
            raise PlanError(f"plan {self.label!r}: an MU scale factor must be positive; found {factor}")
        beams = tuple(dataclasses.replace(beam, monitor_units=beam.monitor_units * float(factor)) for beam in self.beams)
        point = xyz_floats(point_mm) if point_mm is not None else None
        return dataclasses.replace(self, beams=beams, normalisation=normalisation, normalisation_point_mm=point)

    @property
    def isocentre_mm(self) -> tuple[float, float, float]:
        """The first beam's isocentre (the plan's, for the single-isocentre plans the QA normalises)."""
        return self.beams[0].control_points[0].isocentre_mm


def read_rt_plan(source: Path | pydicom.Dataset, *, frame_of_reference_uid: str | None = None,
                 fraction_group: int | None = None, source_name: str | None = None) -> PhotonPlan:
    """Read the beams of a photon RT Plan that deliver dose, in one fraction group.

    Parameters
    ----------
    source : pathlib.Path or pydicom.Dataset
        A DICOM Part 10 file, or a data set already opened. Files without a file meta header (raw data
        sets, as Monaco exports them) are opened by the project's DICOM opener,
        :func:`sct_node.dicom.files.open_dataset`, and passed here as a Dataset: the command line and the
        node do so; this package reads only Part 10 files itself (it must not import ``sct_node``).
    frame_of_reference_uid : str or None
        When given, the plan must be in this frame of reference (the image's).
    fraction_group : int or None
        Fraction Group Number to compute. None: the plan's only fraction group or, when it has several,
        the first that holds a treatment beam with MU; the others are named in :attr:`PhotonPlan.notes`.
    source_name : str or None
        How messages name a Dataset source (e.g. its file path); default ``"RT Plan"``.

    Returns
    -------
    PhotonPlan
        The beams of the chosen fraction group that deliver dose, its number of fractions, and notes
        saying which fraction group was used and which beams were skipped (set-up beams, 0 MU).

    Raises
    ------
    PlanError
        One line naming what is not supported (docs/dose.md lists every refusal): a file that is not a
        Part 10 DICOM file, a vendor-private or non-RT-Plan SOP class, ion plans, Gamma Knife, CyberKnife
        and TomoTherapy plans, helical delivery, electron/proton beams, energies other than the beam
        data's 6 MV, flattening-filter-free beams, wedges, bolus, blocks, compensators, applicators,
        beam limiting devices other than X/Y jaws and an MLCX, another frame of reference, no fraction
        group, an unknown ``fraction_group``, or no beam with MU.
    """
    dataset, where = _open_plan(source, source_name)
    _refuse_machine(dataset, where)
    _refuse_sop_class(dataset, where)
    plan_frame = str(dataset.get("FrameOfReferenceUID", "")) or None
    if frame_of_reference_uid is not None and plan_frame != frame_of_reference_uid:
        raise PlanError(f"{where}: plan is in frame of reference {plan_frame}, not the image's {frame_of_reference_uid}")
    beam_items = {int(beam.BeamNumber): beam for beam in dataset.get("BeamSequence", [])}
    groups = _fraction_groups(dataset, where)
    group = _choose_fraction_group(groups, beam_items, fraction_group, where)
    notes = [] if len(groups) == 1 else [_fraction_group_note(group, groups, beam_items)]
    beams, setups = [], set()
    for number, beam in beam_items.items():
        label = f"beam {number} {str(beam.get('BeamName', '') or '')!r}"
        if number not in group.meterset:
            if len(groups) == 1:
                notes.append(f"{label} skipped: not referenced by the fraction group (delivers no dose)")
            continue
        delivery = str(beam.get("TreatmentDeliveryType", "TREATMENT") or "TREATMENT")
        meterset = group.meterset[number]
        if delivery == "SETUP":
            notes.append(f"{label} skipped: a set-up beam (Treatment Delivery Type SETUP) delivers no treatment dose")
            continue
        if meterset is None or meterset <= 0:
            notes.append(f"{label} skipped: {'no' if meterset is None else '0'} MU in fraction group "
                         f"{group.number} (an imaging or set-up beam; it delivers no dose)")
            continue
        _refuse_beam(beam, label, where)
        energy = _energy(beam)
        if energy is None:
            notes.append(f"{label} gives no Nominal Beam Energy: taken as {MODELLED_ENERGY_MV:g} MV")
            energy = MODELLED_ENERGY_MV
        problem = energy_problem(label, energy)
        if problem:
            raise PlanError(f"{where}: {problem}")
        points = _control_points(beam, where)
        _refuse_motion(points, label, where)
        beams.append(PlanBeam(number, str(beam.get("BeamName", f"Beam {number}")), energy,
                              float(beam.get("SourceAxisDistance", 1000.0) or 1000.0), meterset, points))
        setups.add(beam.get("ReferencedPatientSetupNumber", None))
    if not beams:
        skipped = "; ".join(notes[1:] if len(groups) > 1 else notes)
        raise PlanError(f"{where}: fraction group {group.number} holds no treatment beam with MU"
                        + (f" ({skipped})" if skipped else ""))
    prescription = None
    for reference in dataset.get("DoseReferenceSequence", []):
        if reference.get("TargetPrescriptionDose", None) is not None:
            prescription = float(reference.TargetPrescriptionDose)
            break
    return PhotonPlan(str(dataset.get("RTPlanLabel", "RT Plan")), plan_frame, tuple(beams), group.fractions,
                      prescription, str(dataset.get("SOPInstanceUID", "")) or None, False,
                      fraction_group_number=group.number, notes=tuple(notes),
                      patient_position=_patient_position(dataset, setups, where))


def energy_problem(label: str, energy_mv: float) -> str | None:
    """Why a beam of ``energy_mv`` cannot be computed, or None when the engine's beam data cover it.

    The one place the energy check lives: :func:`read_rt_plan` and :func:`dosimetry.beam.beams_from_plan`
    both use it.
    """
    if math.isclose(energy_mv, MODELLED_ENERGY_MV, abs_tol=0.05):
        return None
    return (f"{label} is {energy_mv:g} MV: the dose engine's beam data are {MODELLED_ENERGY_MV:g} MV only "
            f"({BEAM_DATA_FILE}); a {energy_mv:g} MV dose computed with {MODELLED_ENERGY_MV:g} MV depth doses and "
            "penumbrae would be wrong by several per cent at depth. Compute this plan in the planning system, "
            "or commission beam data for this energy first")


@dataclass(frozen=True)
class _FractionGroup:
    number: int
    fractions: int
    #: Beam number -> Beam Meterset (MU per fraction), None where the reference gives none.
    meterset: dict[int, float | None]


def _open_plan(source: Path | pydicom.Dataset, source_name: str | None) -> tuple[pydicom.Dataset, str]:
    if isinstance(source, pydicom.Dataset):
        return source, source_name or "RT Plan"
    try:
        return pydicom.dcmread(source), str(source)
    except InvalidDicomError:
        raise PlanError(f"{source}: not a DICOM Part 10 file (no file meta header); open it with "
                        "sct_node.dicom.files.open_dataset, which reads raw data sets too, and pass the Dataset") \
            from None
    except OSError as error:
        raise PlanError(f"{source}: cannot be read ({error.strerror or error})") from None


def _names(dataset: pydicom.Dataset) -> dict[str, str]:
    """Manufacturer, model and treatment machine names of the plan and its beams: what identifies the machine."""
    found: dict[str, str] = {}
    for item in (dataset, *dataset.get("BeamSequence", []), *dataset.get("IonBeamSequence", [])):
        for keyword in ("Manufacturer", "ManufacturerModelName", "TreatmentMachineName"):
            value = str(item.get(keyword, "") or "").strip()
            if value and keyword not in found:
                found[keyword] = value
    return found


def _describe(names: dict[str, str]) -> str:
    labels = {"Manufacturer": "Manufacturer", "ManufacturerModelName": "model", "TreatmentMachineName": "machine"}
    return ", ".join(f"{labels[key]} {value!r}" for key, value in names.items()) or "no manufacturer or machine named"


#: Machines the engine does not model, recognised by their manufacturer, model or machine names.
_MACHINES = (
    (re.compile(r"GAMMA ?KNIFE|GAMMAPLAN|LEKSELL|PERFEXION", re.IGNORECASE), "Gamma Knife",
     "the engine models isocentric C-arm linacs with jaws and an MLC, not the Gamma Knife's cobalt-60 sources"),
    (re.compile(r"CYBER ?KNIFE|MULTIPLAN", re.IGNORECASE), "CyberKnife",
     ("the engine models isocentric C-arm linacs (SAD 1000 mm, jaws and MLC), not a robot-mounted "
      "non-isocentric linac with cones or an Iris/InCise collimator")),
)
_TOMOTHERAPY = re.compile(r"TOMO|HI-?ART|RADIXACT", re.IGNORECASE)


def _refuse_machine(dataset: pydicom.Dataset, where: str) -> None:
    names = _names(dataset)
    text = " ".join(names.values())
    for pattern, machine, reason in _MACHINES:
        if pattern.search(text):
            raise PlanError(f"{where}: {machine} plans are not supported: {_describe(names)}; {reason}")
    if _TOMOTHERAPY.search(text):
        beams = list(dataset.get("BeamSequence", []))
        points = max((len(beam.get("ControlPointSequence", [])) for beam in beams), default=0)
        dynamic = any(str(beam.get("BeamType", "")) == "DYNAMIC" for beam in beams)
        if dynamic or points > 2:
            raise PlanError(f"{where}: helical TomoTherapy plans are not supported: {_describe(names)}, "
                            f"{points:,} control points, Beam Type {'DYNAMIC' if dynamic else 'STATIC'}; the engine "
                            "computes static and arc beams of a C-arm linac, not a rotating fan beam with a binary "
                            "MLC and a moving couch")
        raise PlanError(f"{where}: TomoTherapy plans are not supported: {_describe(names)}; the engine models a "
                        "C-arm linac with jaws and an MLC, not the TomoTherapy fan beam and binary MLC")


def _refuse_sop_class(dataset: pydicom.Dataset, where: str) -> None:
    sop_class = str(dataset.get("SOPClassUID", "") or "")
    if sop_class == RT_ION_PLAN_STORAGE or "IonBeamSequence" in dataset:
        raise PlanError(f"{where}: ion (proton or carbon ion) plans are not supported (RT Ion Plan); the dose engine "
                        f"models {MODELLED_ENERGY_MV:g} MV photons only")
    if sop_class == RT_PLAN_STORAGE:
        return
    if sop_class and not sop_class.startswith(_STANDARD_UID_ROOT):
        owner = next((name for root, name in _PRIVATE_UID_ROOTS.items() if sop_class.startswith(root)), None)
        raise PlanError(f"{where}: private SOP Class UID {sop_class}"
                        + (f" (UID root of {owner})" if owner else "")
                        + f", {_describe(_names(dataset))}: a vendor-specific object, not a standard RT Plan "
                        f"({RT_PLAN_STORAGE}); export the plan from the planning system as a standard DICOM RT Plan")
    name = pydicom.uid.UID(sop_class).name if sop_class else ""
    shown = f"{sop_class} ({name})" if name and name != sop_class else (sop_class or "none")
    raise PlanError(f"{where}: not an RT Plan (SOP Class {shown}); the dose engine reads RT Plan Storage "
                    f"({RT_PLAN_STORAGE})")


def _fraction_groups(dataset: pydicom.Dataset, where: str) -> list[_FractionGroup]:
    groups = []
    for index, group in enumerate(dataset.get("FractionGroupSequence", []), start=1):
        meterset: dict[int, float | None] = {}
        for reference in group.get("ReferencedBeamSequence", []):
            value = reference.get("BeamMeterset", None)
            meterset[int(reference.ReferencedBeamNumber)] = float(value) if value not in (None, "") else None
        number = group.get("FractionGroupNumber", None)
        groups.append(_FractionGroup(int(number) if number not in (None, "") else index,
                                     int(group.get("NumberOfFractionsPlanned", 1) or 1), meterset))
    if not groups:
        raise PlanError(f"{where}: no Fraction Group Sequence, so no MU per beam; export the plan with its fraction "
                        "groups (an approved or planned plan, not a beam template)")
    return groups


def _delivers_dose(group: _FractionGroup, beam_items: dict[int, pydicom.Dataset]) -> list[int]:
    """Beam numbers of ``group`` that are treatment beams with MU."""
    return [number for number, mu in group.meterset.items() if mu is not None and mu > 0 and number in beam_items
            and str(beam_items[number].get("TreatmentDeliveryType", "TREATMENT") or "TREATMENT") != "SETUP"]


def _choose_fraction_group(groups: list[_FractionGroup], beam_items: dict[int, pydicom.Dataset],
                           wanted: int | None, where: str) -> _FractionGroup:
    if wanted is not None:
        for group in groups:
            if group.number == int(wanted):
                return group
        raise PlanError(f"{where}: no fraction group {wanted}; the plan has fraction group(s) "
                        f"{', '.join(str(g.number) for g in groups)}")
    return next((g for g in groups if _delivers_dose(g, beam_items)), groups[0])


def _fraction_group_note(used: _FractionGroup, groups: list[_FractionGroup],
                         beam_items: dict[int, pydicom.Dataset]) -> str:
    def described(group: _FractionGroup) -> str:
        numbers = _delivers_dose(group, beam_items)
        beams = f"beam{'s' if len(numbers) != 1 else ''} {', '.join(map(str, numbers))}" if numbers else "no beam with MU"
        return f"fraction group {group.number} ({beams}; {group.fractions} fraction{'s' if group.fractions != 1 else ''})"

    others = "; ".join(described(g) for g in groups if g is not used)
    return (f"{described(used)} used; the plan has {len(groups)} fraction groups, not computed: {others} "
            "(choose another by its number)")


def _refuse_beam(beam: pydicom.Dataset, label: str, where: str) -> None:
    """Refuse, by name, a dose-delivering beam the engine does not model."""
    radiation = str(beam.get("RadiationType", "PHOTON") or "PHOTON")
    if radiation != "PHOTON":
        kind = {"ELECTRON": "electron", "PROTON": "proton", "ION": "ion", "NEUTRON": "neutron"}.get(radiation,
                                                                                                  radiation.lower())
        energy = _energy(beam)
        unit = " MeV" if radiation == "ELECTRON" else ""
        shown = f"{radiation}" + (f" ({energy:g}{unit})" if energy is not None and unit else "")
        raise PlanError(f"{where}: {kind} beams are not supported: {label} is {shown}; the dose engine models "
                        f"{MODELLED_ENERGY_MV:g} MV photons only")
    for mode in beam.get("PrimaryFluenceModeSequence", []):
        if str(mode.get("FluenceMode", "STANDARD")) == "NON_STANDARD":
            identifier = str(mode.get("FluenceModeID", "") or "?")
            kind = "flattening-filter-free" if identifier.upper() in ("FFF", "SRS") else "non-standard fluence mode"
            raise PlanError(f"{where}: {kind} beams are not supported: {label} has Primary Fluence Mode NON_STANDARD "
                            f"({identifier}); the engine's beam data are the flattened {MODELLED_ENERGY_MV:g} MV beam's "
                            f"({BEAM_DATA_FILE}), whose profiles an FFF beam does not have")
    wedges = list(beam.get("WedgeSequence", []))
    if wedges or int(beam.get("NumberOfWedges", 0) or 0) > 0:
        shown = ", ".join(f"{w.get('WedgeID', '') or '?'!s} ({w.get('WedgeType', '') or '?'!s}, "
                          f"{w.get('WedgeAngle', '?')} deg)" for w in wedges) or f"{beam.NumberOfWedges} wedge(s)"
        raise PlanError(f"{where}: wedges are not modelled: {label} has wedge {shown}; refused rather than computed "
                        "as an open field")
    boli = list(beam.get("ReferencedBolusSequence", []))
    if boli or int(beam.get("NumberOfBoli", 0) or 0) > 0:
        rois = ", ".join(str(b.get("ReferencedROINumber", "?")) for b in boli) or "?"
        raise PlanError(f"{where}: bolus is not modelled: {label} references bolus (ROI {rois}); the engine computes "
                        "on the image alone and would leave the bolus out; refused rather than computed without it")
    for keyword, count, what in (("BlockSequence", "NumberOfBlocks", "blocks"),
                                 ("CompensatorSequence", "NumberOfCompensators", "compensators"),
                                 ("ApplicatorSequence", None, "applicators (cones)")):
        if len(beam.get(keyword, [])) or (count and int(beam.get(count, 0) or 0) > 0):
            raise PlanError(f"{where}: {what} are not modelled: {label} has {what}; refused rather than computed "
                            "without them")
    kinds = [str(d.RTBeamLimitingDeviceType) for d in beam.get("BeamLimitingDeviceSequence", [])]
    unknown = [kind for kind in kinds if kind not in _MODELLED_DEVICES]
    if unknown:
        raise PlanError(f"{where}: beam limiting device {', '.join(unknown)} is not modelled: {label} uses "
                        f"{', '.join(kinds)}; the engine models X and Y jaws and one MLCX (a dual-layer MLC such as "
                        "Halcyon's MLCX1/MLCX2 is not)")


def _refuse_motion(points: tuple[ControlPoint, ...], label: str, where: str) -> None:
    """Refuse helical delivery: the isocentre moving while dose is delivered, or more than one gantry turn."""
    travel = 0.0
    for index, (current, following) in enumerate(itertools.pairwise(points)):
        delivers = following.cumulative_meterset_weight > current.cumulative_meterset_weight
        if delivers and current.isocentre_mm != following.isocentre_mm:
            raise PlanError(f"{where}: helical delivery is not supported: {label} moves its isocentre while "
                            f"irradiating (control points {index} to {index + 1}: couch motion during the beam)")
        travel += abs(gantry_travel_deg(current, following))
    if travel > 360.0 + 1e-6:
        raise PlanError(f"{where}: helical delivery is not supported: {label} turns the gantry through "
                        f"{travel:,.0f} degrees (more than one rotation)")


def gantry_travel_deg(start: ControlPoint, end: ControlPoint) -> float:
    """Signed gantry rotation from ``start`` to ``end``, degrees: along the start's Gantry Rotation Direction
    (CW positive, CC negative), or the shorter way when it is NONE."""
    difference = (end.gantry_deg - start.gantry_deg) % 360.0
    if start.gantry_rotation_direction == "CW":
        return difference
    if start.gantry_rotation_direction == "CC":
        return difference - 360.0 if difference > 0 else 0.0
    return difference - 360.0 if difference > 180.0 else difference


def _patient_position(dataset: pydicom.Dataset, setups: set, where: str) -> str | None:
    positions = {}
    for setup in dataset.get("PatientSetupSequence", []):
        number = setup.get("PatientSetupNumber", None)
        position = str(setup.get("PatientPosition", "") or "")
        if position:
            positions[int(number) if number not in (None, "") else None] = position
    used = {positions[int(s)] for s in setups if s not in (None, "") and int(s) in positions}
    if not used and len(set(positions.values())) == 1:
        used = set(positions.values())
    if len(used) > 1:
        raise PlanError(f"{where}: the beams use patient setups in different positions ({', '.join(sorted(used))}); "
                        "the engine computes one patient position per plan")
    chosen = next(iter(used), None)
    if chosen is not None and chosen not in _ENGINE_POSITIONS:
        raise PlanError(f"{where}: patient position {chosen} is not supported: the engine places beams for "
                        f"{', '.join(_ENGINE_POSITIONS)} (dosimetry.beam.PatientPosition)")
    return chosen


def _energy(beam: pydicom.Dataset) -> float | None:
    points = beam.get("ControlPointSequence", [])
    value = points[0].get("NominalBeamEnergy", None) if points else None
    return float(value) if value not in (None, "") else None


def _control_points(beam: pydicom.Dataset, where: str) -> tuple[ControlPoint, ...]:
    mlc_boundaries = None
    for device in beam.get("BeamLimitingDeviceSequence", []):
        if str(device.RTBeamLimitingDeviceType) in ("MLCX",) and "LeafPositionBoundaries" in device:
            mlc_boundaries = tuple(float(v) for v in device.LeafPositionBoundaries)
    state: dict = {"gantry": 0.0, "collimator": 0.0, "couch": 0.0, "isocentre": None,
                   "x": (-200.0, 200.0), "y": (-200.0, 200.0), "mlc": None, "direction": "NONE"}
    result = []
    for point in beam.get("ControlPointSequence", []):
        if point.get("GantryAngle", None) is not None:
            state["gantry"] = float(point.GantryAngle)
        if point.get("GantryRotationDirection", None):
            state["direction"] = str(point.GantryRotationDirection)
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
                                   float(point.get("CumulativeMetersetWeight", 0.0) or 0.0),
                                   gantry_rotation_direction=state["direction"]))
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
        point = ControlPoint(gantry, 0.0, 0.0, xyz_floats(isocentre_mm), (-half_x, half_x),
                             (-half_y, half_y), None, None, 0.0)
        final = ControlPoint(gantry, 0.0, 0.0, point.isocentre_mm, point.jaw_x_mm, point.jaw_y_mm, None, None, 1.0)
        beams.append(PlanBeam(number, f"G{gantry:03.0f}", 6.0, 1000.0, monitor_units, (point, final)))
    label = {"pelvis": "4-field box (template)", "head": "opposed laterals (template)"}[site]
    return PhotonPlan(label, None, tuple(beams), 1, prescription_gy, None, True)
