"""RT Plans built with pydicom that imitate what planning systems export, quirks included.

Nothing here is a real plan: each builder reproduces one vendor habit that the
reader in :mod:`dosimetry.plans` must handle or refuse by name (issue 15):

* :func:`eclipse_with_setup_beams` — Eclipse/ARIA: a SETUP beam without MU and CBCT/kV
  "treatment" beams with 0 or no MU next to the treatment beams;
* :func:`monaco_three_fraction_groups` — Monaco: no file meta header (a raw data set) and
  three fraction groups, each with its own beams;
* :func:`tomotherapy_helical` — a TomoTherapy/Radixact helical beam (thousands of control points,
  Beam Type DYNAMIC);
* :func:`halcyon_private` — a Halcyon plan in a Varian-private SOP class (the UID here is made up
  under Varian's root, 1.2.246.352);
* :func:`gamma_knife`, :func:`cyberknife`, :func:`electron`, :func:`ten_mv`, :func:`fff`,
  :func:`wedge`, :func:`bolus` — one refusal each;
* :func:`vmat_two_arcs`, :func:`sliding_window`, :func:`step_and_shoot`, :func:`static_fields` —
  plans the engine computes.

:func:`write_plan` writes any of them, with or without file meta.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
#: A made-up SOP Class UID under Varian's organisation root, standing in for Halcyon's private plan class.
VARIAN_PRIVATE_PLAN_CLASS = "1.2.246.352.70.1.70"
FRAME = "1.2.826.0.1.3680043.10.999.1"
#: 20 leaf pairs of 10 mm, -100 to 100 mm.
LEAF_BOUNDARIES_MM = tuple(float(v) for v in range(-100, 101, 10))
PAIRS = len(LEAF_BOUNDARIES_MM) - 1


def _device(kind: str, positions) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.RTBeamLimitingDeviceType = kind
    item.LeafJawPositions = [f"{float(p):.3f}" for p in positions]
    return item


def control_point(index: int, weight: float, *, gantry: float | None = None, direction: str | None = None,
                  jaw_x=None, jaw_y=None, leaves=None, isocentre=None, energy: float | None = None,
                  collimator: float | None = None, couch: float | None = None) -> pydicom.Dataset:
    """One control point; attributes left None are carried forward by the reader."""
    item = pydicom.Dataset()
    item.ControlPointIndex = index
    if energy is not None:
        item.NominalBeamEnergy = energy
    positions = []
    if jaw_x is not None:
        positions.append(_device("ASYMX", jaw_x))
    if jaw_y is not None:
        positions.append(_device("ASYMY", jaw_y))
    if leaves is not None:
        positions.append(_device("MLCX", leaves))
    if positions:
        item.BeamLimitingDevicePositionSequence = Sequence(positions)
    if gantry is not None:
        item.GantryAngle = f"{gantry % 360.0:.4f}"
        item.GantryRotationDirection = direction or "NONE"
    if collimator is not None:
        item.BeamLimitingDeviceAngle = collimator
    if couch is not None:
        item.PatientSupportAngle = couch
    if isocentre is not None:
        item.IsocenterPosition = [f"{float(v):.3f}" for v in isocentre]
    item.CumulativeMetersetWeight = f"{weight:.6f}"
    return item


def beam(number: int, name: str, points: list[pydicom.Dataset], *, radiation: str = "PHOTON",
         delivery: str = "TREATMENT", machine: str = "LINAC1", mlc: bool = True, beam_type: str = "STATIC",
         sad_mm: float = 1000.0) -> pydicom.Dataset:
    """A Beam Sequence item with jaws (and an MLCX unless ``mlc`` is False)."""
    item = pydicom.Dataset()
    item.BeamNumber, item.BeamName, item.BeamType = number, name, beam_type
    item.RadiationType, item.TreatmentDeliveryType = radiation, delivery
    item.TreatmentMachineName, item.SourceAxisDistance = machine, f"{sad_mm:g}"
    item.PrimaryDosimeterUnit = "MU"
    devices = []
    for kind in ("ASYMX", "ASYMY"):
        device = pydicom.Dataset()
        device.RTBeamLimitingDeviceType, device.NumberOfLeafJawPairs = kind, 1
        devices.append(device)
    if mlc:
        device = pydicom.Dataset()
        device.RTBeamLimitingDeviceType, device.NumberOfLeafJawPairs = "MLCX", PAIRS
        device.LeafPositionBoundaries = [f"{v:g}" for v in LEAF_BOUNDARIES_MM]
        devices.append(device)
    item.BeamLimitingDeviceSequence = Sequence(devices)
    item.NumberOfWedges = item.NumberOfCompensators = item.NumberOfBoli = item.NumberOfBlocks = 0
    item.ReferencedPatientSetupNumber = 1
    item.FinalCumulativeMetersetWeight = "1"
    item.NumberOfControlPoints = len(points)
    item.ControlPointSequence = Sequence(points)
    return item


def static_beam(number: int, name: str, gantry: float, *, field_mm=(100.0, 100.0), isocentre=(0.0, 0.0, 0.0),
                energy: float = 6.0, **options) -> pydicom.Dataset:
    """A static open field (leaves retracted to the jaws)."""
    half_x, half_y = field_mm[0] / 2, field_mm[1] / 2
    leaves = [-half_x] * PAIRS + [half_x] * PAIRS if options.get("mlc", True) else None
    first = control_point(0, 0.0, gantry=gantry, jaw_x=(-half_x, half_x), jaw_y=(-half_y, half_y), leaves=leaves,
                          isocentre=isocentre, energy=energy, collimator=0.0, couch=0.0)
    return beam(number, name, [first, control_point(1, 1.0)], **options)


def fraction_group(number: int, fractions: int, meterset: dict[int, float | None]) -> pydicom.Dataset:
    """A Fraction Group Sequence item; a None meterset leaves Beam Meterset out."""
    group = pydicom.Dataset()
    group.FractionGroupNumber, group.NumberOfFractionsPlanned = number, fractions
    group.NumberOfBeams, group.NumberOfBrachyApplicationSetups = len(meterset), 0
    references = []
    for beam_number, mu in meterset.items():
        reference = pydicom.Dataset()
        reference.ReferencedBeamNumber = beam_number
        if mu is not None:
            reference.BeamMeterset = f"{mu:g}"
        references.append(reference)
    group.ReferencedBeamSequence = Sequence(references)
    return group


def rt_plan(beams: list[pydicom.Dataset], groups: list[pydicom.Dataset], *, label: str = "TEST",
            manufacturer: str = "Varian Medical Systems", model: str = "ARIA RadOnc",
            sop_class: str = RT_PLAN_STORAGE, frame: str = FRAME, uid: str = "1.2.826.0.1.3680043.10.999.2",
            patient_position: str = "HFS") -> pydicom.Dataset:
    """An RT Plan data set (no file meta yet; :func:`write_plan` adds it)."""
    plan = pydicom.Dataset()
    plan.SOPClassUID, plan.SOPInstanceUID = sop_class, uid
    plan.Modality, plan.Manufacturer, plan.ManufacturerModelName = "RTPLAN", manufacturer, model
    plan.PatientName, plan.PatientID = "PLAN^FACTORY", "PLAN-FACTORY"
    plan.StudyInstanceUID, plan.SeriesInstanceUID = f"{uid}.1", f"{uid}.2"
    plan.FrameOfReferenceUID = frame
    plan.RTPlanLabel, plan.RTPlanGeometry = label, "PATIENT"
    setup = pydicom.Dataset()
    setup.PatientSetupNumber, setup.PatientPosition = 1, patient_position
    plan.PatientSetupSequence = Sequence([setup])
    plan.BeamSequence = Sequence(beams)
    plan.FractionGroupSequence = Sequence(groups)
    return plan


def write_plan(plan: pydicom.Dataset, path: Path, *, file_meta: bool = True) -> Path:
    """Write a plan as a Part 10 file, or (``file_meta=False``) as a raw Implicit VR data set, as Monaco does."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not file_meta:
        pydicom.dcmwrite(path, plan, implicit_vr=True, little_endian=True, enforce_file_format=False)
        return path
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = plan.SOPClassUID, plan.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = pydicom.FileDataset(str(path), plan, file_meta=meta, preamble=b"\0" * 128)
    dataset.save_as(path, enforce_file_format=True)
    return path


# ------------------------------------------------------------------------------------------------ vendor quirks

def static_fields(*, isocentre=(0.0, 0.0, 0.0), frame: str = FRAME, gantries=(0.0, 90.0),
                  field_mm=(80.0, 80.0), mu: float = 100.0, fractions: int = 5, **plan_options) -> pydicom.Dataset:
    """Plain static 6 MV fields, one fraction group."""
    beams = [static_beam(i, f"G{g:03.0f}", g, field_mm=field_mm, isocentre=isocentre)
             for i, g in enumerate(gantries, start=1)]
    return rt_plan(beams, [fraction_group(1, fractions, {i: mu for i in range(1, len(beams) + 1)})],
                   frame=frame, **plan_options)


def eclipse_with_setup_beams(**plan_options) -> pydicom.Dataset:
    """Two treatment beams, a SETUP beam (no MU), a CBCT beam with 0 MU and a kV beam without Beam Meterset."""
    beams = [static_beam(1, "AP", 0.0), static_beam(2, "LAT", 90.0),
             static_beam(3, "Setup AP", 0.0, delivery="SETUP"),
             static_beam(4, "CBCT", 0.0), static_beam(5, "kV lat", 270.0)]
    group = fraction_group(1, 20, {1: 110.0, 2: 95.0, 3: None, 4: 0.0, 5: None})
    return rt_plan(beams, [group], label="PROST ECL", **plan_options)


def monaco_three_fraction_groups(**plan_options) -> pydicom.Dataset:
    """Three fraction groups (a sequential boost): 25 fx of beams 1-2, 5 fx of beam 3, 3 fx of beam 4."""
    beams = [static_beam(1, "1", 0.0), static_beam(2, "2", 180.0), static_beam(3, "3", 90.0),
             static_beam(4, "4", 270.0)]
    groups = [fraction_group(1, 25, {1: 120.0, 2: 118.0}), fraction_group(2, 5, {3: 150.0}),
              fraction_group(3, 3, {4: 140.0})]
    options = {"manufacturer": "Elekta", "model": "Monaco", **plan_options}
    return rt_plan(beams, groups, label="PROST MON", **options)


def tomotherapy_helical(control_points: int = 6579) -> pydicom.Dataset:
    """One helical beam: the gantry turns 51 projections per rotation for ``control_points`` control points."""
    points = [control_point(0, 0.0, gantry=0.0, direction="CW", jaw_x=(-200.0, 200.0), jaw_y=(-12.5, 12.5),
                            isocentre=(0.0, 0.0, 0.0), energy=6.0, collimator=0.0, couch=0.0)]
    points += [control_point(i, i / (control_points - 1), gantry=(i * 360.0 / 51)) for i in range(1, control_points)]
    helical = beam(1, "TomoHelical", points, machine="Radixact1", mlc=False, beam_type="DYNAMIC", sad_mm=850.0)
    return rt_plan([helical], [fraction_group(1, 30, {1: 6000.0})], manufacturer="TomoTherapy Incorporated",
                   model="Hi-Art", label="HN TOMO")


def halcyon_private() -> pydicom.Dataset:
    """A Halcyon plan in a Varian-private SOP class, with the dual-layer MLC (MLCX1, MLCX2)."""
    plan = static_fields(manufacturer="Varian Medical Systems", model="Halcyon",
                         sop_class=VARIAN_PRIVATE_PLAN_CLASS)
    for item in plan.BeamSequence:
        item.TreatmentMachineName = "Halcyon1"
        for device, kind in zip(item.BeamLimitingDeviceSequence, ("MLCX1", "MLCX2", "MLCX")):
            device.RTBeamLimitingDeviceType = kind
    return plan


def gamma_knife() -> pydicom.Dataset:
    """A GammaPlan export: shots are not beams of a linac."""
    plan = static_fields(manufacturer="Elekta Instrument AB", model="Leksell GammaPlan")
    for item in plan.BeamSequence:
        item.TreatmentMachineName = "Gamma Knife Icon"
    return plan


def cyberknife() -> pydicom.Dataset:
    """A CyberKnife plan: non-isocentric beams from a robot (SAD 800 mm)."""
    plan = static_fields(manufacturer="Accuray Inc.", model="Precision")
    for item in plan.BeamSequence:
        item.TreatmentMachineName, item.SourceAxisDistance = "CyberKnife M6", "800"
    return plan


def electron() -> pydicom.Dataset:
    """A 12 MeV electron field with its applicator."""
    field = static_beam(1, "E12", 0.0, radiation="ELECTRON", energy=12.0, mlc=False)
    applicator = pydicom.Dataset()
    applicator.ApplicatorID, applicator.ApplicatorType = "A10", "ELECTRON_SQUARE"
    field.ApplicatorSequence = Sequence([applicator])
    return rt_plan([field], [fraction_group(1, 10, {1: 200.0})], label="CHEST WALL E")


def ten_mv() -> pydicom.Dataset:
    """Static 10 MV fields."""
    plan = static_fields()
    for item in plan.BeamSequence:
        item.ControlPointSequence[0].NominalBeamEnergy = 10
    return plan


def fff() -> pydicom.Dataset:
    """A 6 MV FFF field (Primary Fluence Mode NON_STANDARD, FFF)."""
    plan = static_fields(gantries=(0.0,))
    mode = pydicom.Dataset()
    mode.FluenceMode, mode.FluenceModeID = "NON_STANDARD", "FFF"
    plan.BeamSequence[0].PrimaryFluenceModeSequence = Sequence([mode])
    return plan


def wedge() -> pydicom.Dataset:
    """A field with a 30-degree physical wedge."""
    plan = static_fields(gantries=(90.0,))
    item = pydicom.Dataset()
    item.WedgeNumber, item.WedgeType, item.WedgeID, item.WedgeAngle = 1, "STANDARD", "W30", 30
    item.WedgeFactor, item.WedgeOrientation = "0.6", 0
    plan.BeamSequence[0].NumberOfWedges = 1
    plan.BeamSequence[0].WedgeSequence = Sequence([item])
    return plan


def bolus() -> pydicom.Dataset:
    """A field that references a bolus structure (ROI 7)."""
    plan = static_fields(gantries=(0.0,))
    reference = pydicom.Dataset()
    reference.ReferencedROINumber = 7
    plan.BeamSequence[0].NumberOfBoli = 1
    plan.BeamSequence[0].ReferencedBolusSequence = Sequence([reference])
    return plan


def arc_beam(number: int, name: str, start_deg: float, span_deg: float, direction: str, points: int,
             *, isocentre=(0.0, 0.0, 0.0), field_mm: float = 60.0, modulate: bool = True) -> pydicom.Dataset:
    """A VMAT arc: ``points`` control points over ``span_deg``, leaves sweeping a gap across the field."""
    sign = 1.0 if direction == "CW" else -1.0
    half = field_mm / 2
    result = []
    for i in range(points):
        t = i / (points - 1)
        if modulate:  # a gap that opens and closes, off-centre differently per leaf pair
            offset = 10.0 * np.sin(2 * np.pi * t + np.arange(PAIRS) / 3.0)
            width = 20.0 + 15.0 * np.cos(4 * np.pi * t)
            left, right = np.clip(offset - width / 2, -half, half), np.clip(offset + width / 2, -half, half)
        else:
            left, right = np.full(PAIRS, -half), np.full(PAIRS, half)
        result.append(control_point(
            i, t, gantry=start_deg + sign * span_deg * t, direction=direction if i < points - 1 else "NONE",
            leaves=np.r_[left, right], jaw_x=(-half, half) if i == 0 else None,
            jaw_y=(-half, half) if i == 0 else None, isocentre=isocentre if i == 0 else None,
            energy=6.0 if i == 0 else None, collimator=(30.0 if direction == "CW" else 330.0) if i == 0 else None,
            couch=0.0 if i == 0 else None))
    return beam(number, name, result, beam_type="DYNAMIC")


def vmat_two_arcs(points: int = 178, *, isocentre=(0.0, 0.0, 0.0), mu: float = 300.0, frame: str = FRAME,
                  modulate: bool = True) -> pydicom.Dataset:
    """Two full 6 MV arcs (181 -> 179 CW and back CC, 358 degrees each) with ``points`` control points each."""
    arcs = [arc_beam(1, "Arc CW", 181.0, 358.0, "CW", points, isocentre=isocentre, modulate=modulate),
            arc_beam(2, "Arc CCW", 179.0, 358.0, "CC", points, isocentre=isocentre, modulate=modulate)]
    return rt_plan(arcs, [fraction_group(1, 28, {1: mu, 2: mu})], label="VMAT", frame=frame)


def sliding_window(*, gap_mm: float = 20.0, travel_mm: float = 80.0, mu: float = 200.0) -> pydicom.Dataset:
    """One static-gantry beam whose leaves sweep a ``gap_mm`` window ``travel_mm`` across, at constant speed."""
    start_left = -travel_mm / 2 - gap_mm / 2
    first = control_point(0, 0.0, gantry=0.0, jaw_x=(-60.0, 60.0), jaw_y=(-30.0, 30.0),
                          leaves=[start_left] * PAIRS + [start_left + gap_mm] * PAIRS, isocentre=(0.0, 0.0, 0.0),
                          energy=6.0, collimator=0.0, couch=0.0)
    last = control_point(1, 1.0, leaves=[start_left + travel_mm] * PAIRS + [start_left + gap_mm + travel_mm] * PAIRS)
    sweep = beam(1, "SW", [first, last], beam_type="DYNAMIC")
    return rt_plan([sweep], [fraction_group(1, 1, {1: mu})], label="IMRT SW")


def step_and_shoot(*, mu: float = 100.0) -> pydicom.Dataset:
    """One beam with three segments (weights 0.5, 0.3, 0.2) and zero-MU transitions between them."""
    apertures = [(-40.0, 40.0), (-20.0, 30.0), (-10.0, 10.0)]
    weights = [0.0, 0.5, 0.5, 0.8, 0.8, 1.0]
    points = []
    for index, weight in enumerate(weights):
        left, right = apertures[index // 2]
        points.append(control_point(index, weight, leaves=[left] * PAIRS + [right] * PAIRS,
                                    **({"gantry": 30.0, "jaw_x": (-50.0, 50.0), "jaw_y": (-50.0, 50.0),
                                        "isocentre": (0.0, 0.0, 0.0), "energy": 6.0, "collimator": 0.0,
                                        "couch": 0.0} if index == 0 else {})))
    return rt_plan([beam(1, "SS", points, beam_type="STATIC")], [fraction_group(1, 1, {1: mu})], label="IMRT SS")

