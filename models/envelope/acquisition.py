"""What an MR series was acquired with, from its DICOM header or a training case's ``acquisition.json``.

The acquisition half of the envelope (the package docstring of :mod:`models.envelope` has the whole
picture): weighting, sequence family and variants, timing, fat suppression, Dixon, contrast agent, field
strength, body site (DICOM PS3.3 C.8.3.1, C.7.3.1, C.7.6.4, C.8.13.5.1).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import ModelError

__all__ = ["SIDECAR_FILE", "Acquisition", "acquisition_from_header", "acquisition_from_sidecar", "body_site",
           "infer_weighting", "read_sidecar"]

#: Per-case acquisition description next to ``mr.mha`` in a SynthRAD-layout case folder.
SIDECAR_FILE = "acquisition.json"
#: Body Part Examined values (upper case) that mean one of the sites the phantoms have; others are kept as given.
_SITE_SYNONYMS = {
    "head": ("HEAD", "BRAIN", "SKULL", "HEADNECK", "HEAD_NECK", "CRANIUM", "NEURO"),
    "pelvis": ("PELVIS", "PROSTATE", "BLADDER", "RECTUM", "CERVIX", "UTERUS", "HIP", "PELVIC"),
}
#: Scan Options / Sequence Variant / Image Type values that mean fat suppression or a Dixon image.
_FAT_SUPPRESSION_OPTIONS = {"FS", "SFS", "FSA", "FSS", "FSI", "FSP", "FSW", "SPAIR", "SPIR", "WE", "FATSAT"}
_DIXON_IMAGE_TYPES = {"DIXON", "WATER", "FAT", "IN_PHASE", "OUT_PHASE", "OPP_PHASE", "W", "F", "IP", "OP"}
#: Enhanced MR (multi-frame) Echo Pulse Sequence -> the Scanning Sequence family it corresponds to.
_ECHO_PULSE = {"SPIN": "SE", "GRADIENT": "GR", "BOTH": "SE+GR"}
#: The DICOM keyword behind each acquisition field (what ``fields_missing`` names).
_KEYWORDS = {
    "scanning_sequence": "ScanningSequence", "sequence_variant": "SequenceVariant",
    "repetition_time_ms": "RepetitionTime", "echo_time_ms": "EchoTime", "inversion_time_ms": "InversionTime",
    "flip_angle_deg": "FlipAngle", "field_strength_t": "MagneticFieldStrength", "fat_suppressed": "ScanOptions",
    "dixon": "ImageType", "contrast_agent": "ContrastBolusAgent", "body_site": "BodyPartExamined",
    "weighting": "RepetitionTime/EchoTime",
}



@dataclass(frozen=True)
class Acquisition:
    """How one MR series (or one training case) was acquired; every field None where it is not known.

    Attributes
    ----------
    weighting : str or None
        ``T1``, ``T2``, ``PD``, ``T2*``, ``FLAIR``, ``STIR`` or ``mixed`` (:func:`infer_weighting`).
    sequence_family : str or None
        Scanning Sequence values, sorted and joined by ``+`` (``SE``, ``GR``, ``GR+IR``).
    sequence_variant : tuple of str or None
        Sequence Variant values (``NONE``, ``SK``, ``SP``, ...).
    repetition_time_ms, echo_time_ms, inversion_time_ms, flip_angle_deg : float or None
        Sequence timing and flip angle.
    field_strength_t : float or None
        Magnetic Field Strength, tesla.
    fat_suppressed, dixon, contrast_agent : bool or None
        Fat saturation (Scan Options, or an STIR inversion), a Dixon image (Image Type), a contrast agent given.
    body_site : str or None
        ``head``, ``pelvis`` or the lower-case Body Part Examined (:func:`body_site`).
    """

    weighting: str | None = None
    sequence_family: str | None = None
    sequence_variant: tuple[str, ...] | None = None
    repetition_time_ms: float | None = None
    echo_time_ms: float | None = None
    inversion_time_ms: float | None = None
    flip_angle_deg: float | None = None
    field_strength_t: float | None = None
    fat_suppressed: bool | None = None
    dixon: bool | None = None
    contrast_agent: bool | None = None
    body_site: str | None = None


def infer_weighting(sequence_family: str | None, repetition_time_ms: float | None, echo_time_ms: float | None,
                    inversion_time_ms: float | None = None, flip_angle_deg: float | None = None) -> str | None:
    """The contrast weighting that the sequence timing implies (the radiographer's rule of thumb).

    Spin echo (and unknown families): TR <= 1000 ms and TE <= 40 ms -> ``T1``; TR >= 1500 ms and TE >= 60 ms ->
    ``T2``; TR >= 1500 ms and TE < 40 ms -> ``PD``; otherwise ``mixed``. Inversion recovery: TI >= 1500 ms ->
    ``FLAIR``, TI <= 300 ms -> ``STIR``, a gradient-echo readout with a TI between -> ``T1`` (MPRAGE). Gradient
    echo: TE >= 15 ms -> ``T2*``; a flip angle >= 20 degrees (or none given) with TE < 15 ms -> ``T1``; else ``PD``.

    Returns
    -------
    str or None
        None when TR or TE is unknown.

    References
    ----------
    McRobbie D. W. et al., "MRI from Picture to Proton", 3rd ed., Cambridge 2017, ch. 4 and 7.
    """
    if repetition_time_ms is None or echo_time_ms is None:
        return None
    parts = set((sequence_family or "").split("+"))
    tr, te = repetition_time_ms, echo_time_ms
    if "IR" in parts and inversion_time_ms is not None:
        if inversion_time_ms >= 1500:
            return "FLAIR"
        if inversion_time_ms <= 300:
            return "STIR"
        if "GR" in parts:
            return "T1"
    if "GR" in parts and "SE" not in parts:
        if te >= 15:
            return "T2*"
        return "T1" if flip_angle_deg is None or flip_angle_deg >= 20 else "PD"
    if tr <= 1000 and te <= 40:
        return "T1"
    if tr >= 1500 and te >= 60:
        return "T2"
    if tr >= 1500 and te < 40:
        return "PD"
    return "mixed"


def body_site(body_part: str | None) -> str | None:
    """``head`` or ``pelvis`` for the Body Part Examined values that mean them; other values in lower case."""
    if body_part is None or not str(body_part).strip():
        return None
    value = str(body_part).strip().upper().replace(" ", "")
    for site, names in _SITE_SYNONYMS.items():
        if value in names:
            return site
    return value.lower()


def _values(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        items = raw.replace("\\", " ").split()
    else:
        try:
            items = [str(v) for v in raw]
        except TypeError:
            items = [str(raw)]
    return tuple(s.strip().upper() for s in items if str(s).strip())


def _number(raw: Any) -> float | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        if not isinstance(raw, str | int | float):
            raw = next(iter(raw))  # multi-valued (e.g. several echo times): the first
        value = float(raw)
    except (TypeError, ValueError, IndexError):
        return None
    return value if np.isfinite(value) else None


def _lookup(header: Any, keyword: str) -> tuple[bool, Any]:
    """(present, value) of a keyword at the top level or in the first shared / per-frame functional group item."""
    if _has(header, keyword):
        return True, _get(header, keyword)
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        sequence = _get(header, groups)
        if not sequence:
            continue
        for macro in sequence[0]:
            if getattr(macro, "VR", None) == "SQ" and macro.value:
                item = macro.value[0]
                if _has(item, keyword):
                    return True, _get(item, keyword)
    return False, None


def _has(header: Any, keyword: str) -> bool:
    try:
        return keyword in header
    except TypeError:
        return False


def _get(header: Any, keyword: str) -> Any:
    try:
        return header.get(keyword)
    except AttributeError:
        return None


def acquisition_from_header(header: Any) -> tuple[Acquisition, tuple[str, ...]]:
    """What a DICOM MR header says about the acquisition, and which keywords it lacks.

    Parameters
    ----------
    header : pydicom.Dataset or mapping
        The series' header (``ImageSeries.header``), or a mapping from DICOM keyword to value. Enhanced MR
        attributes are looked up in the first shared or per-frame functional group item.

    Returns
    -------
    tuple
        ``(acquisition, missing)``: the :class:`Acquisition` (None where the header is silent) and the DICOM
        keywords that were absent or empty. An absent Contrast/Bolus Agent means no contrast (the module is
        present only when one was given); an absent Scan Options means fat suppression is unknown.
    """
    missing: list[str] = []

    def value(keyword: str) -> Any:
        present, raw = _lookup(header, keyword)
        if not present or raw is None or (isinstance(raw, str) and not raw.strip()):
            missing.append(keyword)
            return None
        return raw

    sequence = _values(value("ScanningSequence"))
    if not sequence:
        present, pulse = _lookup(header, "EchoPulseSequence")
        if present and pulse:
            missing.remove("ScanningSequence")
            sequence = tuple(_ECHO_PULSE.get(str(pulse).upper(), str(pulse).upper()).split("+"))
            if str(_lookup(header, "InversionRecovery")[1] or "").upper() == "YES":
                sequence += ("IR",)
    family = "+".join(sorted(set(sequence))) or None
    variant = _values(value("SequenceVariant")) or None
    tr = _number(value("RepetitionTime"))
    te = _number(value("EchoTime"))
    if te is None:
        present, effective = _lookup(header, "EffectiveEchoTime")
        if present and _number(effective) is not None:
            missing.remove("EchoTime")
            te = _number(effective)
    ti = _number(_lookup(header, "InversionTime")[1])
    flip = _number(_lookup(header, "FlipAngle")[1])
    field_t = _number(value("MagneticFieldStrength"))
    present, options = _lookup(header, "ScanOptions")
    image_type = _values(value("ImageType"))
    frame_type = _values(_lookup(header, "FrameType")[1])
    fat = None
    if present or variant is not None:
        fat = bool((set(_values(options)) | set(variant or ())) & _FAT_SUPPRESSION_OPTIONS)
    weighting = infer_weighting(family, tr, te, ti, flip)
    if weighting == "STIR":
        fat = True
    dixon = bool((set(image_type) | set(frame_type)) & _DIXON_IMAGE_TYPES) if image_type or frame_type else None
    present_agent, agent = _lookup(header, "ContrastBolusAgent")
    contrast = bool(present_agent and agent is not None and str(agent).strip())
    site = body_site(value("BodyPartExamined"))
    return (Acquisition(weighting=weighting, sequence_family=family, sequence_variant=variant,
                        repetition_time_ms=tr, echo_time_ms=te, inversion_time_ms=ti, flip_angle_deg=flip,
                        field_strength_t=field_t, fat_suppressed=fat, dixon=dixon, contrast_agent=contrast,
                        body_site=site),
            tuple(missing))


def acquisition_from_sidecar(data: Mapping[str, Any], where: str = "acquisition.json") -> Acquisition:
    """An :class:`Acquisition` from a training case's sidecar (JSON object; every key optional).

    Keys: ``weighting`` (``T1``, ``T2``, ...; inferred from the timing when absent), ``scanning_sequence`` (list,
    e.g. ``["SE"]``), ``sequence_variant`` (list), ``repetition_time_ms``, ``echo_time_ms``,
    ``inversion_time_ms``, ``flip_angle_deg``, ``field_strength_t``, ``fat_suppressed``, ``dixon``,
    ``contrast_agent`` (booleans), ``body_part`` (Body Part Examined, e.g. ``PELVIS``).

    Raises
    ------
    ModelError
        If ``data`` is not an object, a key is unknown, or a value has the wrong type; the message names it.
    """
    known = {"weighting", "scanning_sequence", "sequence_variant", "repetition_time_ms", "echo_time_ms",
             "inversion_time_ms", "flip_angle_deg", "field_strength_t", "fat_suppressed", "dixon",
             "contrast_agent", "body_part", "note"}
    if not isinstance(data, Mapping):
        raise ModelError(f"{where}: expected a JSON object; found {type(data).__name__}")
    unknown = sorted(set(data) - known)
    if unknown:
        raise ModelError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    numbers: dict[str, float | None] = {}
    for key in ("repetition_time_ms", "echo_time_ms", "inversion_time_ms", "flip_angle_deg", "field_strength_t"):
        raw = data.get(key)
        if raw is not None and (isinstance(raw, bool) or not isinstance(raw, int | float) or not raw > 0):
            raise ModelError(f"{where}: {key} must be a positive number or null; found {raw!r}")
        numbers[key] = None if raw is None else float(raw)
    flags: dict[str, bool | None] = {}
    for key in ("fat_suppressed", "dixon", "contrast_agent"):
        raw = data.get(key)
        if raw is not None and not isinstance(raw, bool):
            raise ModelError(f"{where}: {key} must be true, false or null; found {raw!r}")
        flags[key] = raw
    lists: dict[str, tuple[str, ...] | None] = {}
    for key in ("scanning_sequence", "sequence_variant"):
        raw = data.get(key)
        if raw is not None and (not isinstance(raw, list) or not all(isinstance(v, str) for v in raw)):
            raise ModelError(f"{where}: {key} must be a list of strings or null; found {raw!r}")
        lists[key] = None if raw is None else tuple(v.strip().upper() for v in raw)
    family = "+".join(sorted(set(lists["scanning_sequence"]))) if lists["scanning_sequence"] else None
    weighting = data.get("weighting")
    if weighting is not None and not isinstance(weighting, str):
        raise ModelError(f"{where}: weighting must be a string or null; found {weighting!r}")
    weighting = weighting.strip().upper().replace("W", "") if weighting else \
        infer_weighting(family, numbers["repetition_time_ms"], numbers["echo_time_ms"],
                        numbers["inversion_time_ms"], numbers["flip_angle_deg"])
    return Acquisition(weighting=weighting, sequence_family=family, sequence_variant=lists["sequence_variant"],
                       repetition_time_ms=numbers["repetition_time_ms"], echo_time_ms=numbers["echo_time_ms"],
                       inversion_time_ms=numbers["inversion_time_ms"], flip_angle_deg=numbers["flip_angle_deg"],
                       field_strength_t=numbers["field_strength_t"], fat_suppressed=flags["fat_suppressed"],
                       dixon=flags["dixon"], contrast_agent=flags["contrast_agent"],
                       body_site=body_site(data.get("body_part")))


def read_sidecar(case_dir: Path) -> Acquisition | None:
    """The :data:`SIDECAR_FILE` of a case folder as an :class:`Acquisition`, or None when there is none.

    Raises
    ------
    ModelError
        If the file exists but is not valid JSON or not a valid sidecar.
    """
    path = Path(case_dir) / SIDECAR_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path} is not readable JSON: {exc}") from exc
    return acquisition_from_sidecar(data, str(path))
