"""Photon beams for the dose engine: geometry (IEC 61217) and apertures (jaws, MLC).

A :class:`Beam` is one static beam direction (gantry, collimator and couch
angles, isocentre, SAD) with its monitor units and one or more
:class:`BeamSegment` apertures, each delivering a fraction of the MU (step and
shoot).

Plans with moving parts (:func:`beams_from_plan`)
-------------------------------------------------
The dose of a continuous arc (VMAT, dynamic conformal arc) is approximated
by static sub-arcs of at most :data:`MAX_ARC_STEP_DEG` (2.5 degrees): each
control-point segment of an arc becomes ``ceil(rotation / 2.5 deg)`` static
beams at the mid-angles of equal sub-arcs, with jaws and MLC leaves linearly
interpolated to the same midpoints and the segment's MU (cumulative meterset
weight difference x beam MU) shared equally. Collimator and couch rotation
during an arc are interpolated the same way. A static-gantry segment with
moving leaves or jaws (sliding-window IMRT) becomes apertures at the
midpoints of sub-steps of at most :data:`MAX_LEAF_STEP_MM` (2 mm) of leaf
travel, so its fluence is the time average of the moving aperture.
Step-and-shoot segments (identical apertures at both ends) are used as they
are. Neither step depends on :class:`dosimetry.engine.EngineOptions`.

Coordinate conventions
----------------------
IEC 61217 fixed system ``f``: origin at the isocentre, ``Z_f`` up (towards
the ceiling), ``Y_f`` from the isocentre towards the gantry, ``X_f`` to the
right of an observer at the foot of the couch facing the gantry. Every
rotation is right-handed (mathematically positive) about its axis:

* gantry angle ``theta`` about ``Y_f``: the source lies at
  ``SAD * (sin theta, 0, cos theta)``; gantry 0 is above the isocentre,
  gantry 90 on the ``+X_f`` side (clockwise seen from the foot of the couch);
* collimator angle ``phi`` about the beam axis ``Z_b`` (pointing to the
  source): counter-clockwise in the beam's-eye view;
* couch (patient support) angle ``psi`` about ``Z_s`` (vertical):
  counter-clockwise seen from above.

The patient lies in the support system ``s``; :class:`PatientPosition` maps
it to DICOM patient coordinates (LPS). For head-first supine (HFS),
``X_s`` is the patient's left (+x), ``Y_s`` superior (+z) and ``Z_s``
anterior (-y). Hence, for HFS at couch 0:

* gantry 0: source anterior, the beam travels towards posterior (+y);
* gantry 90: source at the patient's left, the beam travels to the right (-x);
* gantry 180: source posterior; gantry 270: source at the patient's right.

The beam-limiting-device axes ``X_b`` (X jaws, MLC leaf travel) and ``Y_b``
(Y jaws, leaf-pair index) coincide with ``X_f`` and ``Y_f`` at gantry,
collimator and couch 0; so for HFS at all zero angles the X jaws open along
the patient's left-right axis and Y1 is the inferior jaw. Jaw and leaf
positions are in mm projected to the isocentre plane, negative on the X1/Y1
side, as in DICOM (``LeafJawPositions``).

References
----------
IEC 61217:2011, Radiotherapy equipment - Coordinates, movements and scales.

DICOM PS3.3 C.8.8.14 (RT Beams Module: Gantry Angle, Beam Limiting Device
Angle, Patient Support Angle, Leaf/Jaw Positions, Leaf Position Boundaries)
and C.7.3.1.1.2 (Patient Position).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, overload

import numpy as np
import torch

from dosimetry.errors import DosimetryError
from dosimetry.plans import ControlPoint, energy_problem, gantry_travel_deg

if TYPE_CHECKING:
    from dosimetry.plans import PhotonPlan

__all__ = [
    "ARC_GANTRY_BIN_DEG",
    "MAX_ARC_STEP_DEG",
    "MAX_LEAF_STEP_MM",
    "Beam",
    "BeamError",
    "BeamGeometry",
    "BeamSegment",
    "MlcAperture",
    "PatientPosition",
    "aperture_fluence",
    "beam_geometry",
    "beams_from_plan",
]


class BeamError(DosimetryError):
    """A beam, its geometry or its aperture is invalid."""


class PatientPosition(enum.StrEnum):
    """DICOM Patient Position (0018,5100) values the engine supports."""

    HFS = "HFS"
    FFS = "FFS"
    HFP = "HFP"
    FFP = "FFP"


# Columns: the LPS directions of the support axes X_s, Y_s, Z_s (see module docstring).
_SUPPORT_TO_LPS = {
    PatientPosition.HFS: np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float64),
    PatientPosition.FFS: np.array([[-1, 0, 0], [0, 0, -1], [0, -1, 0]], dtype=np.float64),
    PatientPosition.HFP: np.array([[-1, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=np.float64),
    PatientPosition.FFP: np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=np.float64),
}


def _finite(value: object, name: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        raise BeamError(f"{name} must be a number; found {value!r}") from error
    if not math.isfinite(number):
        raise BeamError(f"{name} must be finite; found {value!r}")
    return number


def _pair(value: object, name: str) -> tuple[float, float]:
    try:
        items: tuple[object, ...] = tuple(value)  # type: ignore[arg-type]
    except TypeError as error:
        raise BeamError(f"{name} must be a pair of numbers; found {value!r}") from error
    if len(items) != 2:
        raise BeamError(f"{name} must be a pair of numbers; found {len(items)} values {value!r}")
    return _finite(items[0], f"{name}[0]"), _finite(items[1], f"{name}[1]")


@dataclass(frozen=True)
class MlcAperture:
    """A multileaf collimator (MLCX: leaves travel along ``X_b``) setting.

    Parameters
    ----------
    leaf_boundaries_mm : sequence of float
        ``n + 1`` leaf-pair boundaries along ``Y_b``, mm at the isocentre
        plane, strictly increasing (DICOM Leaf Position Boundaries).
    leaf_positions_mm : sequence of (float, float)
        ``n`` pairs ``(x1, x2)``: the tips of the X1-bank and X2-bank leaves of
        each pair, mm at the isocentre plane, ``x1 <= x2`` (a closed pair has
        ``x1 == x2``).

    Raises
    ------
    BeamError
        If the lengths do not match, the boundaries do not increase or a leaf
        pair overlaps (``x1 > x2``).

    Notes
    -----
    Outside the span of the leaf boundaries the MLC is taken as closed.
    Leaf transmission, tongue-and-groove and rounded leaf tips are not modelled.

    References
    ----------
    DICOM PS3.3 C.8.8.14.3 (Leaf Position Boundaries) and C.8.8.14.5 (Leaf/Jaw Positions).
    """

    leaf_boundaries_mm: tuple[float, ...]
    leaf_positions_mm: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        boundaries = tuple(_finite(v, f"leaf_boundaries_mm[{i}]") for i, v in enumerate(self.leaf_boundaries_mm))
        pairs = tuple(_pair(p, f"leaf_positions_mm[{i}]") for i, p in enumerate(self.leaf_positions_mm))
        if len(boundaries) < 2:
            raise BeamError(f"an MLC needs at least two leaf boundaries; found {len(boundaries)}")
        if len(pairs) != len(boundaries) - 1:
            raise BeamError(
                f"an MLC with {len(boundaries)} leaf boundaries has {len(boundaries) - 1} leaf pairs; "
                f"found {len(pairs)} leaf positions"
            )
        for i in range(len(boundaries) - 1):
            if not boundaries[i + 1] > boundaries[i]:
                raise BeamError(
                    f"leaf_boundaries_mm must increase strictly; boundary {i + 1} ({boundaries[i + 1]} mm) "
                    f"does not exceed boundary {i} ({boundaries[i]} mm)"
                )
        for i, (x1, x2) in enumerate(pairs):
            if x1 > x2:
                raise BeamError(f"leaf pair {i} overlaps: X1 leaf at {x1} mm is beyond the X2 leaf at {x2} mm")
        object.__setattr__(self, "leaf_boundaries_mm", boundaries)
        object.__setattr__(self, "leaf_positions_mm", pairs)

    @classmethod
    def from_dicom(cls, leaf_boundaries_mm: Sequence[float], leaf_jaw_positions_mm: Sequence[float]) -> MlcAperture:
        """Build from DICOM order: all X1-bank positions, then all X2-bank positions.

        Raises
        ------
        BeamError
            If the number of positions is not twice the number of leaf pairs.
        """
        positions = [float(v) for v in leaf_jaw_positions_mm]
        pairs_count = len(leaf_boundaries_mm) - 1
        if len(positions) != 2 * pairs_count:
            raise BeamError(
                f"{pairs_count} leaf pairs need {2 * pairs_count} Leaf/Jaw Positions; found {len(positions)}"
            )
        pairs = tuple(zip(positions[:pairs_count], positions[pairs_count:]))
        return cls(tuple(float(v) for v in leaf_boundaries_mm), pairs)


@dataclass(frozen=True)
class BeamSegment:
    """One static aperture of a beam and the share of the beam's MU it delivers.

    Parameters
    ----------
    jaw_x_mm : (float, float)
        X1 and X2 jaw positions, mm at the isocentre plane; ``X1 < X2``.
    jaw_y_mm : (float, float)
        Y1 and Y2 jaw positions, mm at the isocentre plane; ``Y1 < Y2``.
    mlc : MlcAperture or None
        The MLC setting, or None for a jaw-defined field.
    meterset_weight : float
        Relative share of the beam's MU, non-negative; the weights of a
        beam's segments are normalised to sum to 1.

    Raises
    ------
    BeamError
        If a jaw pair is inverted or closed, or the weight is negative.
    """

    jaw_x_mm: tuple[float, float]
    jaw_y_mm: tuple[float, float]
    mlc: MlcAperture | None = None
    meterset_weight: float = 1.0

    def __post_init__(self) -> None:
        jaw_x = _pair(self.jaw_x_mm, "jaw_x_mm")
        jaw_y = _pair(self.jaw_y_mm, "jaw_y_mm")
        for name, (low, high) in (("X", jaw_x), ("Y", jaw_y)):
            if not low < high:
                raise BeamError(
                    f"{name} jaws inverted or closed: {name}1 = {low} mm must be less than {name}2 = {high} mm "
                    "(positions at the isocentre plane, negative on the 1 side)"
                )
        if self.mlc is not None and not isinstance(self.mlc, MlcAperture):
            raise BeamError(f"mlc must be an MlcAperture or None; found {type(self.mlc).__name__}")
        weight = _finite(self.meterset_weight, "meterset_weight")
        if weight < 0:
            raise BeamError(f"meterset_weight must be non-negative; found {weight}")
        object.__setattr__(self, "jaw_x_mm", jaw_x)
        object.__setattr__(self, "jaw_y_mm", jaw_y)
        object.__setattr__(self, "meterset_weight", weight)

    def open_extent_mm(self) -> tuple[float, float, float, float] | None:
        """Bounding box ``(x_min, x_max, y_min, y_max)`` of the open area, or None when it is closed."""
        x_low, x_high = self.jaw_x_mm
        y_low, y_high = self.jaw_y_mm
        if self.mlc is None:
            return x_low, x_high, y_low, y_high
        boxes = []
        edges = self.mlc.leaf_boundaries_mm
        for i, (x1, x2) in enumerate(self.mlc.leaf_positions_mm):
            box = (max(x1, x_low), min(x2, x_high), max(edges[i], y_low), min(edges[i + 1], y_high))
            if box[0] < box[1] and box[2] < box[3]:
                boxes.append(box)
        if not boxes:
            return None
        array = np.asarray(boxes)
        return float(array[:, 0].min()), float(array[:, 1].max()), float(array[:, 2].min()), float(array[:, 3].max())


@dataclass(frozen=True)
class Beam:
    """A static photon beam: direction, isocentre, monitor units and apertures.

    Parameters
    ----------
    gantry_deg : float
        IEC 61217 gantry angle, degrees (normalised to [0, 360)).
    isocentre_mm : (float, float, float)
        Isocentre in DICOM patient coordinates (LPS), mm.
    monitor_units : float
        MU of the beam, positive.
    segments : sequence of BeamSegment
        At least one aperture; their weights must not all be zero.
    collimator_deg : float, optional
        Beam limiting device angle, degrees (default 0).
    couch_deg : float, optional
        Patient support angle, degrees (default 0).
    source_axis_distance_mm : float, optional
        SAD, mm (default 1000), between 500 and 2000.
    patient_position : PatientPosition or str, optional
        DICOM Patient Position (default HFS).
    name : str, optional
        Label for messages and reports.

    Raises
    ------
    BeamError
        For non-finite angles, non-positive MU, an implausible SAD, no
        segments, all-zero segment weights, or an unknown patient position.

    References
    ----------
    IEC 61217:2011; DICOM PS3.3 C.8.8.14.
    """

    gantry_deg: float
    isocentre_mm: tuple[float, float, float]
    monitor_units: float
    segments: tuple[BeamSegment, ...]
    collimator_deg: float = 0.0
    couch_deg: float = 0.0
    source_axis_distance_mm: float = 1000.0
    patient_position: PatientPosition = PatientPosition.HFS
    name: str = field(default="")

    def __post_init__(self) -> None:
        label = f"beam {self.name!r}" if self.name else "beam"
        angles = {}
        for attribute in ("gantry_deg", "collimator_deg", "couch_deg"):
            angles[attribute] = _finite(getattr(self, attribute), f"{label}: {attribute}") % 360.0
        try:
            isocentre = tuple(float(v) for v in self.isocentre_mm)
        except (TypeError, ValueError) as error:
            raise BeamError(f"{label}: isocentre_mm must be three numbers; found {self.isocentre_mm!r}") from error
        if len(isocentre) != 3 or not all(math.isfinite(v) for v in isocentre):
            raise BeamError(
                f"{label}: isocentre_mm must be three finite numbers (LPS, mm); found {self.isocentre_mm!r}"
            )
        monitor_units = _finite(self.monitor_units, f"{label}: monitor_units")
        if monitor_units <= 0:
            raise BeamError(f"{label}: monitor_units must be positive; found {monitor_units}")
        sad = _finite(self.source_axis_distance_mm, f"{label}: source_axis_distance_mm")
        if not 500.0 <= sad <= 2000.0:
            raise BeamError(f"{label}: source_axis_distance_mm must lie in [500, 2000] mm; found {sad}")
        segments = tuple(self.segments) if not isinstance(self.segments, BeamSegment) else (self.segments,)
        if not segments:
            raise BeamError(f"{label}: needs at least one BeamSegment")
        for i, segment in enumerate(segments):
            if not isinstance(segment, BeamSegment):
                raise BeamError(f"{label}: segments[{i}] must be a BeamSegment; found {type(segment).__name__}")
        if sum(s.meterset_weight for s in segments) <= 0:
            raise BeamError(f"{label}: the segments' meterset weights are all zero")
        try:
            position = PatientPosition(self.patient_position)
        except ValueError as error:
            raise BeamError(
                f"{label}: patient_position {self.patient_position!r} is not supported; "
                f"expected one of {', '.join(p.value for p in PatientPosition)}"
            ) from error
        for attribute, value in angles.items():
            object.__setattr__(self, attribute, value)
        object.__setattr__(self, "isocentre_mm", isocentre)
        object.__setattr__(self, "monitor_units", monitor_units)
        object.__setattr__(self, "source_axis_distance_mm", sad)
        object.__setattr__(self, "segments", segments)
        object.__setattr__(self, "patient_position", position)

    @classmethod
    def open_field(
        cls,
        gantry_deg: float,
        isocentre_mm: tuple[float, float, float],
        field_x_mm: float,
        field_y_mm: float,
        monitor_units: float,
        **kwargs: object,
    ) -> Beam:
        """A symmetric jaw-defined rectangular field (sizes at the isocentre plane, mm).

        Other keyword arguments are passed to the constructor.
        """
        half_x, half_y = _finite(field_x_mm, "field_x_mm") / 2, _finite(field_y_mm, "field_y_mm") / 2
        segment = BeamSegment((-half_x, half_x), (-half_y, half_y))
        return cls(gantry_deg, isocentre_mm, monitor_units, (segment,), **kwargs)  # type: ignore[arg-type]

    @property
    def label(self) -> str:
        """A short description for messages: name, or gantry angle."""
        return self.name or f"gantry {self.gantry_deg:g}"


@dataclass(frozen=True)
class BeamGeometry:
    """Where a beam is, in patient coordinates (LPS, mm).

    Attributes
    ----------
    source_mm : numpy.ndarray
        Position of the source, shape (3,).
    axis : numpy.ndarray
        Unit vector from the source towards the isocentre (the direction of travel).
    x_axis, y_axis : numpy.ndarray
        Unit vectors of ``X_b`` and ``Y_b``, the jaw/MLC axes.
    isocentre_mm : numpy.ndarray
        Isocentre, shape (3,).
    source_axis_distance_mm : float
        SAD, mm.
    """

    source_mm: np.ndarray
    axis: np.ndarray
    x_axis: np.ndarray
    y_axis: np.ndarray
    isocentre_mm: np.ndarray
    source_axis_distance_mm: float


def _rotation_y(angle_deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rotation_z(angle_deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def beam_geometry(beam: Beam) -> BeamGeometry:
    """The source position and beam axes of ``beam`` in patient coordinates.

    Parameters
    ----------
    beam : Beam

    Returns
    -------
    BeamGeometry

    References
    ----------
    IEC 61217:2011 (fixed, gantry, beam limiting device and patient support
    systems); DICOM PS3.3 C.7.3.1.1.2 (Patient Position).
    """
    if not isinstance(beam, Beam):
        raise BeamError(f"expected a Beam; found {type(beam).__name__}")
    device_in_fixed = _rotation_y(beam.gantry_deg) @ _rotation_z(beam.collimator_deg)
    # A fixed-system vector seen from the rotated support: rotate by -psi, then map the support axes to LPS.
    fixed_to_patient = _SUPPORT_TO_LPS[beam.patient_position] @ _rotation_z(beam.couch_deg).T
    device_in_patient = fixed_to_patient @ device_in_fixed
    x_axis, y_axis, towards_source = device_in_patient[:, 0], device_in_patient[:, 1], device_in_patient[:, 2]
    isocentre = np.asarray(beam.isocentre_mm, dtype=np.float64)
    sad = beam.source_axis_distance_mm
    return BeamGeometry(isocentre + sad * towards_source, -towards_source, x_axis, y_axis, isocentre, sad)


def _coverage(low: torch.Tensor, high: torch.Tensor, centres: torch.Tensor, width: float) -> torch.Tensor:
    """Fraction of each pixel ``[c - w/2, c + w/2]`` inside each interval ``[low, high]``: shape (n, pixels)."""
    start = torch.maximum(low[:, None], centres[None, :] - width / 2)
    stop = torch.minimum(high[:, None], centres[None, :] + width / 2)
    return ((stop - start) / width).clamp(0.0, 1.0)


def aperture_fluence(
    segments: Sequence[BeamSegment], u_mm: torch.Tensor, v_mm: torch.Tensor
) -> torch.Tensor:
    """Relative primary fluence of a beam's apertures on a beam's-eye-view grid.

    Each pixel gets the fraction of its area that is open (inside the jaws
    and inside an open leaf pair), so that fields need not align with the
    grid; the segments are summed with their normalised meterset weights.

    Parameters
    ----------
    segments : sequence of BeamSegment
        The apertures.
    u_mm, v_mm : torch.Tensor
        Uniformly spaced pixel centres along ``X_b`` and ``Y_b`` at the
        isocentre plane, mm (1-D, at least two each).

    Returns
    -------
    torch.Tensor
        Fluence, shape ``(len(v_mm), len(u_mm))``, 1 inside an aperture
        delivering all the MU, 0 outside; dtype and device of ``u_mm``.
    """
    du = float(u_mm[1] - u_mm[0])
    dv = float(v_mm[1] - v_mm[0])
    total_weight = sum(s.meterset_weight for s in segments)
    fluence = torch.zeros((v_mm.numel(), u_mm.numel()), dtype=u_mm.dtype, device=u_mm.device)
    for segment in segments:
        if segment.meterset_weight == 0:
            continue
        (x_low, x_high), (y_low, y_high) = segment.jaw_x_mm, segment.jaw_y_mm
        if segment.mlc is None:
            boxes = np.array([[x_low, x_high, y_low, y_high]])
        else:
            edges = np.asarray(segment.mlc.leaf_boundaries_mm)
            leaves = np.asarray(segment.mlc.leaf_positions_mm).reshape(-1, 2)
            boxes = np.stack(
                [
                    np.maximum(leaves[:, 0], x_low),
                    np.minimum(leaves[:, 1], x_high),
                    np.maximum(edges[:-1], y_low),
                    np.minimum(edges[1:], y_high),
                ],
                axis=1,
            )
        box = torch.as_tensor(boxes, dtype=u_mm.dtype, device=u_mm.device)
        along_u = _coverage(box[:, 0], box[:, 1], u_mm, du)
        along_v = _coverage(box[:, 2], box[:, 3], v_mm, dv)
        fluence += (segment.meterset_weight / total_weight) * (along_v.T @ along_u)
    return fluence


#: Largest gantry (or collimator, couch) rotation, degrees, that one static sub-arc stands for. 2.5 rather than
#: 2: the usual VMAT export (178 control points per 358-degree arc, 2.02 degrees apart) is then computed at one
#: sub-arc per control-point segment instead of two, and coarser exports (4 degrees) are still split.
MAX_ARC_STEP_DEG = 2.5
#: Largest leaf or jaw travel, mm at the isocentre plane, that one sub-step of a static-gantry dynamic
#: (sliding-window) segment stands for.
MAX_LEAF_STEP_MM = 2.0
#: Gantry bin, degrees, in which the QA and ``sct-node dose`` compute an arc's sub-arcs as one beam (their
#: apertures kept): the arc's dose from static beams at most this far apart (beams_from_plan).
ARC_GANTRY_BIN_DEG = 5.0


def beams_from_plan(
    plan: PhotonPlan,
    *,
    patient_position: PatientPosition | str | None = None,
    max_arc_step_deg: float = MAX_ARC_STEP_DEG,
    max_leaf_step_mm: float = MAX_LEAF_STEP_MM,
    gantry_bin_deg: float = 0.0,
) -> tuple[Beam, ...]:
    """Engine beams from a :class:`dosimetry.plans.PhotonPlan`: control-point segments as static beams.

    Between control points *i* and *i + 1* a plan beam delivers (cumulative meterset weight difference) x
    its MU (:meth:`dosimetry.plans.PlanBeam.segments`). What the engine computes for such a segment:

    * **arc** (the gantry, collimator or couch turns): the continuous arc is approximated by
      ``ceil(rotation / max_arc_step_deg)`` static sub-arcs of equal rotation, each a static :class:`Beam`
      at the sub-arc's mid-angle with the jaws and MLC leaves linearly interpolated to that midpoint and an
      equal share of the segment's MU. With the default 2.5 degrees, the sub-arcs of a VMAT arc with
      control points 2-4 degrees apart lie 2-2.5 degrees apart: the approximation is that of replacing a
      continuous rotation by static beams at most 2.5 degrees apart, as planning systems compute arcs;
    * **static gantry, moving leaves or jaws** (sliding-window IMRT, dynamic jaws): the motion is split into
      ``ceil(travel / max_leaf_step_mm)`` sub-steps (travel: the largest leaf or jaw movement), each an
      aperture at its sub-step's midpoint with an equal share of the MU, so the fluence is the time average
      of the moving aperture (exact for its integral over the field while no leaf crosses a jaw);
    * **static gantry and aperture** (static fields, step-and-shoot segments): the aperture as it is.

    Consecutive segments at the same gantry, collimator, couch and isocentre form one :class:`Beam` with
    several :class:`BeamSegment` apertures; each sub-arc is a beam of its own.

    Parameters
    ----------
    plan : dosimetry.plans.PhotonPlan
        The plan (read from an RT Plan, or a template).
    patient_position : PatientPosition or str or None, optional
        Patient Position of the planning image; default: the plan's (from its patient setup), else HFS.
    max_arc_step_deg : float, optional
        Largest rotation one static sub-arc stands for, degrees (default :data:`MAX_ARC_STEP_DEG`).
    max_leaf_step_mm : float, optional
        Largest leaf or jaw travel one sub-step of a static-gantry dynamic segment stands for, mm
        (default :data:`MAX_LEAF_STEP_MM`).
    gantry_bin_deg : float, optional
        0 (default): every sub-arc is a beam of its own. Positive: consecutive sub-arcs of a plan beam whose
        gantry angles fall in the same ``gantry_bin_deg`` bin (bins start at 0 degrees) become one beam at
        their MU-weighted mean angle, with every sub-arc's aperture as one of its segments: the apertures
        keep their ``max_arc_step_deg`` sampling, the geometry is computed once per bin
        (:data:`ARC_GANTRY_BIN_DEG` is what the QA and ``sct-node dose`` use; benchmarks/dose_engine_timing.py
        measures what it costs in dose and saves in time).

    Returns
    -------
    tuple of Beam

    Raises
    ------
    BeamError
        For a beam at an energy the beam data do not cover (they are 6 MV only), an isocentre that moves
        during a segment, non-positive steps, or a control point the engine cannot use.
    """
    for name, value in (("max_arc_step_deg", max_arc_step_deg), ("max_leaf_step_mm", max_leaf_step_mm)):
        if not (_finite(value, name) > 0):
            raise BeamError(f"{name} must be positive; found {value!r}")
    if not _finite(gantry_bin_deg, "gantry_bin_deg") >= 0:
        raise BeamError(f"gantry_bin_deg must be 0 (no binning) or positive; found {gantry_bin_deg!r}")
    position = plan.patient_position if patient_position is None else patient_position
    try:
        position = PatientPosition(position or PatientPosition.HFS)
    except ValueError:
        raise BeamError(f"patient position {position!r} is not supported; expected one of "
                        f"{', '.join(p.value for p in PatientPosition)}") from None
    beams: list[Beam] = []
    for plan_beam in plan.beams:
        problem = energy_problem(f"beam {plan_beam.name!r}", plan_beam.energy_mv)
        if problem:
            raise BeamError(problem)
        groups: list[tuple[tuple, list[BeamSegment], list[float]]] = []
        for start, end, monitor_units in plan_beam.segments():
            if tuple(start.isocentre_mm) != tuple(end.isocentre_mm):
                raise BeamError(f"beam {plan_beam.name!r}: the isocentre moves from {start.isocentre_mm} to "
                                f"{end.isocentre_mm} mm while the beam is on; couch motion during irradiation "
                                "is not modelled")
            for point, share in _sub_steps(start, end, monitor_units, float(max_arc_step_deg),
                                           float(max_leaf_step_mm)):
                # The angle as a Beam keeps it (359.999999999 is 0), so a bin is never split at 360.
                angle = round(point.gantry_deg, 9) % 360.0
                where = math.floor(angle / gantry_bin_deg) if gantry_bin_deg > 0 else point.gantry_deg
                key = (where, point.collimator_deg, point.couch_deg, tuple(point.isocentre_mm))
                mlc = None
                if point.mlc_boundaries_mm is not None and point.mlc_positions_mm is not None:
                    mlc = MlcAperture.from_dicom(point.mlc_boundaries_mm, point.mlc_positions_mm)
                segment = BeamSegment(point.jaw_x_mm, point.jaw_y_mm, mlc, share)
                if groups and groups[-1][0] == key:
                    groups[-1][1].append(segment)
                    groups[-1][2].append(angle)
                else:
                    groups.append((key, [segment], [angle]))
        for index, ((_, collimator, couch, isocentre), segments, angles) in enumerate(groups):
            suffix = f" [{index + 1}/{len(groups)}]" if len(groups) > 1 else ""
            weights = [s.meterset_weight for s in segments]
            beams.append(
                Beam(
                    float(np.average(angles, weights=weights)) if sum(weights) > 0 else angles[0],
                    isocentre,
                    sum(s.meterset_weight for s in segments),
                    tuple(segments),
                    collimator_deg=collimator,
                    couch_deg=couch,
                    source_axis_distance_mm=plan_beam.source_axis_distance_mm,
                    patient_position=position,
                    name=f"{plan_beam.name}{suffix}",
                )
            )
    return tuple(beams)


def _shorter_turn_deg(start: float, end: float) -> float:
    difference = (end - start) % 360.0
    return difference - 360.0 if difference > 180.0 else difference


def _sub_steps(start: ControlPoint, end: ControlPoint, monitor_units: float, max_arc_step_deg: float,
               max_leaf_step_mm: float) -> list[tuple[ControlPoint, float]]:
    """The static states (at each sub-step's midpoint) a control-point segment is computed as, with their MU."""
    turns = (gantry_travel_deg(start, end), _shorter_turn_deg(start.collimator_deg, end.collimator_deg),
             _shorter_turn_deg(start.couch_deg, end.couch_deg))
    moving: list[tuple[Sequence[float], Sequence[float]]] = [(start.jaw_x_mm, end.jaw_x_mm),
                                                            (start.jaw_y_mm, end.jaw_y_mm)]
    leaves: tuple[Sequence[float], Sequence[float]] | None = None  # (start, end) leaf positions when both have them
    if start.mlc_positions_mm is not None and end.mlc_positions_mm is not None:
        leaves = (start.mlc_positions_mm, end.mlc_positions_mm)
        moving.append(leaves)
    travel_mm = max(float(np.max(np.abs(np.subtract(b, a)))) for a, b in moving)
    rotation_deg = max(abs(t) for t in turns)
    if rotation_deg > 1e-9:
        count = math.ceil(rotation_deg / max_arc_step_deg - 1e-9)
    elif travel_mm > 1e-9:
        count = math.ceil(travel_mm / max_leaf_step_mm - 1e-9)
    else:
        return [(start, monitor_units)]
    result = []
    for k in range(count):
        t = (k + 0.5) / count
        point = ControlPoint(
            (start.gantry_deg + t * turns[0]) % 360.0, (start.collimator_deg + t * turns[1]) % 360.0,
            (start.couch_deg + t * turns[2]) % 360.0, start.isocentre_mm, _between(start.jaw_x_mm, end.jaw_x_mm, t),
            _between(start.jaw_y_mm, end.jaw_y_mm, t), start.mlc_boundaries_mm if leaves is not None else None,
            _between(*leaves, t) if leaves is not None else None,
            start.cumulative_meterset_weight)
        result.append((point, monitor_units / count))
    return result


@overload
def _between(start: tuple[float, float], end: tuple[float, float], t: float) -> tuple[float, float]: ...
@overload
def _between(start: Sequence[float], end: Sequence[float], t: float) -> tuple[float, ...]: ...
def _between(start: Sequence[float], end: Sequence[float], t: float) -> tuple[float, ...]:
    """Linear interpolation, a fraction ``t`` of the way from ``start`` to ``end``."""
    return tuple(float(a + t * (b - a)) for a, b in zip(start, end, strict=True))
