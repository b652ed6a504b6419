"""The envelope of a checkpoint's training data (:class:`Envelope`) and how it is made from the cases."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from models.body_mask import body_mask_from_mr
from models.envelope.acquisition import Acquisition
from models.envelope.signature import (
    HISTOGRAM_BINS,
    IntensitySignature,
    intensity_distance,
    intensity_histogram,
    orientation_of,
)
from models.errors import ModelError
from models.volume import Volume

__all__ = ["ENVELOPE_SCHEMA", "INTENSITY_FLOOR", "INTENSITY_MARGIN", "Envelope", "Range", "envelope_from_cases"]

#: Version of the envelope's JSON layout (``Envelope.to_json``).
ENVELOPE_SCHEMA = 1
#: The intensity threshold is this many times the largest leave-one-out nearest-case distance of the training
#: cases: a new case of the training distribution lies a little farther than the farthest training case does
#: from its neighbours, since it was not among them.
INTENSITY_MARGIN = 1.5
#: ... and never below this (normalised units, [-1, 1] scale): a set of near-identical training cases must not
#: make noise alone a mismatch.
INTENSITY_FLOOR = 0.02


@dataclass(frozen=True)
class Range:
    """A closed interval ``[low, high]`` (units in the field's name)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.low) and np.isfinite(self.high) and self.low <= self.high):
            raise ModelError(f"a range needs finite low <= high; found [{self.low}, {self.high}]")

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Range | None:
        known = [float(v) for v in values if v is not None]
        return cls(min(known), max(known)) if known else None

    def text(self, unit: str) -> str:
        if self.low == self.high:
            return f"{self.low:g} {unit}"
        return f"{self.low:g}-{self.high:g} {unit}"


@dataclass(frozen=True)
class Envelope:
    """What a checkpoint was trained on (see the module docstring); None in a field means "not recorded".

    Set-valued fields hold every value seen in training; ranges the smallest and largest.
    """

    cases: int
    intensity: IntensitySignature
    spacing_mm: tuple[Range | None, Range | None, Range | None]
    fov_mm: tuple[Range | None, Range | None, Range | None]
    orientations: tuple[str, ...]
    weightings: tuple[str, ...] | None = None
    sequence_families: tuple[str, ...] | None = None
    sequence_variants: tuple[str, ...] | None = None
    repetition_time_ms: Range | None = None
    echo_time_ms: Range | None = None
    inversion_time_ms: Range | None = None
    flip_angle_deg: Range | None = None
    field_strength_t: Range | None = None
    fat_suppressed: tuple[bool, ...] | None = None
    dixon: tuple[bool, ...] | None = None
    contrast_agent: tuple[bool, ...] | None = None
    body_sites: tuple[str, ...] | None = None
    cases_with_acquisition: int = 0
    source: str = ""
    schema: int = ENVELOPE_SCHEMA

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``envelope`` field of a model card); :meth:`from_json` reads it back."""
        return _jsonable(asdict(self))

    @classmethod
    def from_json(cls, data: Any, where: str = "envelope") -> Envelope:
        """Read :meth:`to_json`'s output.

        Raises
        ------
        ModelError
            If a field is missing, unknown or malformed, or the schema is newer than this code.
        """
        if not isinstance(data, Mapping):
            raise ModelError(f"{where}: expected a JSON object; found {type(data).__name__}")
        if data.get("schema") != ENVELOPE_SCHEMA:
            raise ModelError(f"{where}: schema {data.get('schema')!r}; this sct-node reads schema {ENVELOPE_SCHEMA}")
        names = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ModelError(f"{where}: unknown field(s) {unknown}")
        try:
            intensity = dict(data["intensity"])
            signature = IntensitySignature(
                case_ids=tuple(str(c) for c in intensity["case_ids"]),
                histograms=tuple(tuple(float(v) for v in h) for h in intensity["histograms"]),
                leave_one_out=tuple(float(v) for v in intensity["leave_one_out"]),
                threshold=float(intensity["threshold"]),
                normalisation=str(intensity.get("normalisation", "")))
            if not signature.histograms or any(len(h) != HISTOGRAM_BINS for h in signature.histograms):
                raise ValueError(f"intensity.histograms must hold one or more vectors of {HISTOGRAM_BINS} values")
            if len(signature.case_ids) != len(signature.histograms) or not signature.threshold > 0:
                raise ValueError("intensity needs one case id per histogram and a positive threshold")

            def rng(value: Any) -> Range | None:
                return None if value is None else Range(float(value["low"]), float(value["high"]))

            def strings(value: Any) -> tuple[str, ...] | None:
                return None if value is None else tuple(str(v) for v in value)

            def flags(value: Any) -> tuple[bool, ...] | None:
                if value is None:
                    return None
                if not all(isinstance(v, bool) for v in value):
                    raise ValueError(f"expected booleans; found {value!r}")
                return tuple(value)

            def per_axis(value: Any, name: str) -> tuple[Range | None, Range | None, Range | None]:
                ranges = [rng(r) for r in value]
                if len(ranges) != 3:
                    raise ValueError(f"{name} must hold one range (or null) per axis x, y, z; found {len(ranges)}")
                return ranges[0], ranges[1], ranges[2]

            return cls(
                cases=int(data["cases"]), intensity=signature,
                spacing_mm=per_axis(data["spacing_mm"], "spacing_mm"), fov_mm=per_axis(data["fov_mm"], "fov_mm"),
                orientations=tuple(str(v) for v in data["orientations"]),
                weightings=strings(data.get("weightings")), sequence_families=strings(data.get("sequence_families")),
                sequence_variants=strings(data.get("sequence_variants")),
                repetition_time_ms=rng(data.get("repetition_time_ms")), echo_time_ms=rng(data.get("echo_time_ms")),
                inversion_time_ms=rng(data.get("inversion_time_ms")), flip_angle_deg=rng(data.get("flip_angle_deg")),
                field_strength_t=rng(data.get("field_strength_t")), fat_suppressed=flags(data.get("fat_suppressed")),
                dixon=flags(data.get("dixon")), contrast_agent=flags(data.get("contrast_agent")),
                body_sites=strings(data.get("body_sites")),
                cases_with_acquisition=int(data.get("cases_with_acquisition", 0)), source=str(data.get("source", "")),
            )
        except (KeyError, TypeError, ValueError, ModelError) as exc:
            raise ModelError(f"{where}: malformed envelope ({type(exc).__name__}: {exc})") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return round(float(value), 6)
    return value


def _geometry(volume: Volume) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Voxel size and field of view (x, y, z) of a volume, mm."""
    sx, sy, sz = (float(s) for s in volume.spacing_mm)
    nx, ny, nz = volume.size_xyz
    return (sx, sy, sz), (float(sx * nx), float(sy * ny), float(sz * nz))


def envelope_from_cases(cases: Sequence[tuple[str, Volume, Acquisition | None]], *,
                        bodies: Sequence[np.ndarray | None] | None = None,
                        normalise: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                        normalisation: str = "mr: p99.5 in body, [-1,1]", source: str = "") -> Envelope:
    """The envelope of a set of training cases.

    Parameters
    ----------
    cases : sequence of (case_id, mr, acquisition)
        Each case's id, MR volume and acquisition (its sidecar; None when it has none).
    bodies : sequence of numpy.ndarray or None
        Body masks for the intensity signature; default (and for None entries)
        :func:`~models.body_mask.body_mask_from_mr`, the mask the model and the guard use at inference.
    normalise : callable or None
        The model's MR normalisation (default ``normalise_mr``).
    normalisation : str
        Its name, recorded.
    source : str
        How the acquisition part was filled (recorded, shown in the docs and the card).

    Raises
    ------
    ModelError
        If there is no case.
    """
    if not cases:
        raise ModelError("an envelope needs at least one training case")
    bodies = list(bodies) if bodies is not None else [None] * len(cases)
    ids, histograms, spacings, fovs, orientations = [], [], [], [], set()
    for (case_id, mr, _), body in zip(cases, bodies):
        mask = body_mask_from_mr(mr) if body is None else np.asarray(body, dtype=bool)
        ids.append(str(case_id))
        histograms.append(intensity_histogram(mr.array, mask, normalise))
        spacing, fov = _geometry(mr)
        spacings.append(spacing)
        fovs.append(fov)
        orientations.add(orientation_of(mr))
    loo = []
    for i, h in enumerate(histograms):
        others = [intensity_distance(h, g) for j, g in enumerate(histograms) if j != i]
        loo.append(min(others) if others else 0.0)
    threshold = max(INTENSITY_MARGIN * max(loo), INTENSITY_FLOOR)
    signature = IntensitySignature(tuple(ids), tuple(tuple(float(v) for v in h) for h in histograms), tuple(loo),
                                   float(threshold), normalisation)
    acquisitions = [a for _, _, a in cases if a is not None]

    def seen(name: str) -> tuple | None:
        values = [getattr(a, name) for a in acquisitions if getattr(a, name) is not None]
        return tuple(sorted(set(values))) if values else None

    variants = [v for a in acquisitions if a.sequence_variant for v in a.sequence_variant]
    return Envelope(
        cases=len(cases), intensity=signature,
        spacing_mm=(Range.of(s[0] for s in spacings), Range.of(s[1] for s in spacings),
                    Range.of(s[2] for s in spacings)),
        fov_mm=(Range.of(f[0] for f in fovs), Range.of(f[1] for f in fovs), Range.of(f[2] for f in fovs)),
        orientations=tuple(sorted(orientations)),
        weightings=seen("weighting"), sequence_families=seen("sequence_family"),
        sequence_variants=tuple(sorted(set(variants))) if variants else None,
        repetition_time_ms=Range.of(a.repetition_time_ms for a in acquisitions),
        echo_time_ms=Range.of(a.echo_time_ms for a in acquisitions),
        inversion_time_ms=Range.of(a.inversion_time_ms for a in acquisitions),
        flip_angle_deg=Range.of(a.flip_angle_deg for a in acquisitions),
        field_strength_t=Range.of(a.field_strength_t for a in acquisitions),
        fat_suppressed=seen("fat_suppressed"), dixon=seen("dixon"), contrast_agent=seen("contrast_agent"),
        body_sites=seen("body_site"), cases_with_acquisition=len(acquisitions), source=source,
    )
