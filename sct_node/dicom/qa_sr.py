"""The sCT QA result as a DICOM Structured Report (TID 1500 Measurement Report), and reading it back.

The PDF report is for people; this SR carries the same verdict and
measurements for software (PACS, registries, a planning workflow engine),
which can read them without parsing a PDF. It is built with highdicom:

* IOD: **Enhanced SR**. The content has no 3D spatial coordinates
  (SCOORD3D, which would need Comprehensive 3D SR) and no by-reference
  relationships (which would need Comprehensive SR); Enhanced SR is the least
  capable SR IOD that holds it, so the most receivers accept it.
* Root: TID 1500 "Imaging Measurement Report" with a device observer (TID
  1004: sct-node, Device Observer Model Name = the sCT model's identity),
  procedure reported (110002, DCM, "Quality Control") and
  (SCTQA, 99SCTNODE, "Synthetic CT dosimetric quality assurance").
* One TID 1501 measurement group per check, tracking identifier = check
  name, holding: the check's verdict as a CODE qualitative evaluation; the
  value as a TID 300 measurement with a UCUM unit; the pass and fail limits
  as two more TID 300 measurements in the same unit; whether higher values
  are better (CODE, SCT Yes/No); the check's reason and the limits' source
  as TEXT. A check that could not be measured has no value measurement (no
  NaN is written): a CODE item with the check's concept name and the value
  (114006, DCM, "Measurement failure") from CID 42 says why.
* One more group, tracking identifier ``overall``, with the overall verdict
  and one TEXT item per reason.

Why limits are measurements and not TID 312 "Normal Range Properties": TID
312 gives one range (CID 223 lower/upper limit) hung under the value's NUM;
a check has two limits (PASS and FAIL, with WARN between) and a check that
could not be measured has no NUM to hang them on. As separate NUMs in the
group they are always present, machine-readable and carry the unit.

Codes: DICOM has no codes for these checks nor for PASS/WARN/FAIL, so they
are private codes of the scheme ``99SCTNODE`` (designators beginning with
"99" are private, PS3.16 8; declared in the Coding Scheme Identification
Sequence). Standard codes are used where one means exactly what is meant;
all codes are in :data:`QA_CODES`. Considered and rejected for verdicts:
CID 6042 (111222 "Succeeded", 111224 "Failed", 111225 "Not Attempted") is the
status of a CAD algorithm's processing, not a pass/fail judgement; CID 6044
(111235-111237 "Usable/Unusable ... quality control standard") is mammography
image usability; SCT 260385009 "Negative" is a test-result finding.

The sCT instances are listed in the Current Requested Procedure Evidence
Sequence (same study); highdicom copies patient and study from them. No TID
1600 Image Library is written: it is optional in TID 1500, would add one
entry per slice, and the evidence already names every instance. Synthetic
Data (0008,001C) is an attribute of the SOP Common module (PS3.3
C.12.1.1.10), which every SR IOD includes, so it is written (YES): the
measurements describe a synthetic image.

References
----------
DICOM PS3.3 A.35.2 (Enhanced SR IOD), C.17.2 (SR Document General Module),
C.12.1 (SOP Common Module); PS3.16 TID 1500 (Measurement Report), TID 1501
(Measurement and Qualitative Evaluation Group), TID 300 (Measurement), TID
1004 (Device Observer Identifying Attributes), TID 4019 (Algorithm
Identification), CID 42 (Numeric Value Qualifier), CID 230 (Yes-No), CID
7021 (Measurement Report Document Titles); UCUM (unitsofmeasure.org).
C. Bridge et al., "Highdicom", J. Digit. Imaging 35:1719, 2022.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import highdicom as hd
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept, RelationshipTypeValues
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.valuerep import DA, DT, TM

from dosimetry.qa_result import QaResult
from dosimetry.verdict import Check, Verdict
from sct_node import __version__
from sct_node.dicom.image_writer import (
    IMPLEMENTATION_VERSION_NAME,
    dicom_date_time,
    write_dataset_atomic,
)
from sct_node.dicom.sct_writer import MANUFACTURER
from sct_node.dicom.uids import IMPLEMENTATION_CLASS_UID, derive_uid
from sct_node.errors import InputError, OutputError

__all__ = [
    "CODING_SCHEME",
    "QA_CODES",
    "SR_SERIES_NUMBER_OFFSET",
    "UCUM_UNITS",
    "read_qa_sr",
    "write_qa_sr",
]

#: Private coding scheme of the node's QA concepts (PS3.16 8: designators starting with "99" are private).
CODING_SCHEME = "99SCTNODE"
#: The SR's series number is the sCT's plus this (the RT Structure Set uses +100, the PDF report +300).
SR_SERIES_NUMBER_OFFSET = 200
#: Tracking identifier of the group that holds the overall verdict.
OVERALL_TRACKING_ID = "overall"


def _private(value: str, meaning: str) -> Code:
    return Code(value, CODING_SCHEME, meaning)


#: Every coded concept of the QA SR. Standard codes are used where one exists with exactly this meaning
#: (checked against pydicom's copy of PS3.16); everything else is private (``99SCTNODE``).
QA_CODES: dict[str, Code] = {
    # Document
    "title": codes.cid7021.ImagingMeasurementReport,           # (126000, DCM), CID 7021, TID 1500 root
    "procedure": codes.DCM.QualityControl,                       # (110002, DCM, "Quality Control")
    "procedure_sct": _private("SCTQA", "Synthetic CT dosimetric quality assurance"),
    # Group items
    "check_verdict": _private("CHECKVERDICT", "sCT QA check verdict"),
    "overall_verdict": _private("OVERALLVERDICT", "sCT QA overall verdict"),
    "reason": _private("REASON", "Verdict reason"),
    "limit_source": _private("LIMITSOURCE", "Source of the limits"),
    "pass_limit": _private("PASSLIMIT", "Pass limit"),
    "fail_limit": _private("FAILLIMIT", "Fail limit"),
    "higher_is_better": _private("HIGHERISBETTER", "Higher value is better"),
    "yes": codes.SCT.Yes,                                        # (373066001, SCT), CID 230
    "no": codes.SCT.No,                                          # (373067005, SCT), CID 230
    "not_measured": codes.DCM.MeasurementFailure,                # (114006, DCM), CID 42
    # Verdicts (dosimetry.verdict.Verdict)
    "PASS": _private("PASS", "Pass"),
    "WARN": _private("WARN", "Warning"),
    "FAIL": _private("FAIL", "Fail"),
    # Quantities of the checks (dosimetry.qa.run_qa); "dvh" is used for every "dvh_<structure>" check and
    # "check" for a check this table does not know yet (its tracking identifier still names it).
    "check:out_of_range": _private("OUTOFRANGE", "Voxels outside the CT number range"),
    "check:bone_fraction": _private("BONEFRACTION", "Bone fraction of the body"),
    # Kept so that an SR of an older qa.json (before the soft-tissue peak replaced the mean) still reads.
    "check:soft_tissue_mean": _private("SOFTTISSUEDEV", "Soft-tissue mean CT number deviation"),
    "check:soft_tissue_peak": _private("SOFTPEAKDEV", "Soft-tissue peak CT number deviation"),
    "check:fat_share": _private("FATSHARE", "Fat share of fat and soft tissue in the body"),
    "check:bone_slices": _private("BONESLICES", "Body slices holding bone"),
    "check:hu_distribution": _private("HUDISTANCE", "Body HU distribution distance from the site reference"),
    "check:input_envelope": _private("INPUTENVELOPE", "Input against the model's training envelope"),
    "check:body_dice": _private("BODYDICE", "Body outline Dice coefficient, sCT vs MR"),
    "check:body_surface_distance_95": _private("BODYSD95", "Body outline 95th percentile surface distance"),
    "check:slice_coverage": _private("MISSINGSLICES", "Missing sCT slices"),
    "check:field_of_view": _private("FOVTRUNCATED", "Body slices truncated by the field of view"),
    "check:uncertainty": _private("UNCERTAINTY", "Body fraction with model ensemble disagreement"),
    "check:mae_body": _private("MAEBODY", "Mean absolute CT number error in the body"),
    "check:gamma": _private("GAMMA2PCT2MM", "Gamma 2%/2 mm pass rate"),
    "check:dvh": _private("DVHDIFF", "Largest DVH point difference"),
    "check:check": _private("QACHECK", "sCT QA check value"),
}

#: UCUM code of each unit a QA check reports in. Code Meaning keeps the qa.json unit text where UCUM's
#: code alone would lose it ("% of body voxels" is UCUM "%"), so reading gives the same text back.
UCUM_UNITS: dict[str, Code] = {
    "%": Code("%", "UCUM", "percent"),
    "level": Code("{level}", "UCUM", "level"),
    "% of prescription": Code("%", "UCUM", "% of prescription"),
    "% of body voxels": Code("%", "UCUM", "% of body voxels"),
    "% of voxels": Code("%", "UCUM", "% of voxels"),
    "% of body slices": Code("%", "UCUM", "% of body slices"),
    "% of fat and soft-tissue voxels": Code("%", "UCUM", "% of fat and soft-tissue voxels"),
    "HU": codes.UCUM.HounsfieldUnit,                             # ("[hnsf'U]", UCUM, "Hounsfield unit")
    "mm": Code("mm", "UCUM", "mm"),
    "": codes.UCUM.NoUnits,                                      # ("1", UCUM, "no units")
    "slices": Code("{slices}", "UCUM", "slices"),                # a count: UCUM annotation, dimension 1
}

#: Coding Scheme Identification Sequence item declaring the private scheme (PS3.3 C.12.1.1.4).
_CODING_SCHEME_ITEM = CodingSchemeIdentificationItem(
    designator=CODING_SCHEME, name="sct-node synthetic CT QA concepts", responsible_organization=MANUFACTURER)


def write_qa_sr(
    *,
    qa: QaResult,
    sct_headers: Sequence[pydicom.Dataset],
    path: Path,
    sop_instance_uid: str,
    series_instance_uid: str,
    series_description: str,
    model_identity: str,
    now: _dt.datetime | None = None,
) -> Path:
    """Write a QA result as an Enhanced SR Measurement Report in the sCT's patient and study.

    Parameters
    ----------
    qa : QaResult
        The QA (:func:`dosimetry.qa_result.read_qa`): its verdict, reasons and checks are written (a check
        value that is NaN, not measured, is written as such); the other measurements are in the PDF.
    sct_headers : sequence of pydicom.Dataset
        Headers of every instance of the sCT series the QA judged (pixel data not needed); they become the
        SR's evidence, and patient and study are copied from the first.
    path : pathlib.Path
        Output file.
    sop_instance_uid, series_instance_uid : str
        Identity of the SR and its series.
    series_description : str
        Series Description (at most 64 characters are kept); the caller says "QA FAIL" here when it failed.
    model_identity : str
        Identity of the model that made the sCT (:attr:`models.base.ModelCard.identity`), recorded as the
        device observer's model.
    now : datetime or None
        Content, series and creation date/time (default: the current local time).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OutputError
        If ``qa`` cannot be coded (a unit without a UCUM code, a duplicate check name, an infinite value or limit),
        the headers are missing or of more than one series, or the file cannot be written.

    References
    ----------
    DICOM PS3.16 TID 1500, TID 1501, TID 300; PS3.3 A.35.2 (Enhanced SR IOD).
    """
    verdict, reasons = Verdict(qa.verdict), [str(r) for r in qa.reasons]
    checks = _checks(qa.checks)
    first = _check_headers(sct_headers)
    moment = now or _dt.datetime.now()

    groups = [_check_group(check, sop_instance_uid) for check in checks]
    groups.append(_overall_group(verdict, reasons, sop_instance_uid))
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derive_uid("sct-node device observer", model_identity),
        name="sct-node",
        manufacturer_name=MANUFACTURER,
        model_name=model_identity,
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(observer_type=codes.DCM.Device,
                                                          observer_identifying_attributes=device)),
        procedure_reported=[QA_CODES["procedure"], QA_CODES["procedure_sct"]],
        imaging_measurements=groups,
        title=QA_CODES["title"],
    )
    series_number = _series_number(first) + SR_SERIES_NUMBER_OFFSET
    try:
        sr = hd.sr.EnhancedSR(
            evidence=list(sct_headers),
            content=report,
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,    # every check the QA ran is here
            is_final=True,       # the node will not amend it
            is_verified=False,   # no person has signed it
            series_description=series_description[:64],
            manufacturer_model_name="sct-node",
            software_versions=__version__,
            content_date=moment.date(),
            content_time=moment.time(),
            series_date=moment.date(),
            series_time=moment.time(),
            coding_schemes=[_CODING_SCHEME_ITEM],
        )
    except (ValueError, TypeError, AttributeError) as error:
        raise OutputError(f"cannot build the QA SR {sop_instance_uid}: {error}") from error
    date, time = dicom_date_time(moment)
    sr.InstanceCreationDate, sr.InstanceCreationTime = DA(date), TM(time)
    sr.SyntheticData = "YES"  # the measurements describe a synthetic image
    # highdicom lists the evidence's equipment as "Acquisition Equipment": the sCT was synthesised, not
    # acquired (its own Contributing Equipment says so), so only highdicom's own entry is kept.
    sr.ContributingEquipmentSequence = [
        item for item in sr.get("ContributingEquipmentSequence", [])
        if item.PurposeOfReferenceCodeSequence[0].CodeValue != codes.DCM.AcquisitionEquipment.value
    ]
    for item in sr.ContributingEquipmentSequence:
        item.ContributionDateTime = DT(date + time)
    if not sr.ContributingEquipmentSequence:
        del sr.ContributingEquipmentSequence
    # The node wrote the file: its Implementation Class UID, as on every other output.
    sr.file_meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    sr.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return write_dataset_atomic(sr, path)


def read_qa_sr(path: Path) -> dict:
    """Read the verdict and the checks back from an SR written by :func:`write_qa_sr`.

    An example of reading the QA outcome with highdicom instead of parsing the PDF.

    Parameters
    ----------
    path : pathlib.Path
        The SR file.

    Returns
    -------
    dict
        ``{"verdict": Verdict, "reasons": [str], "checks": {name: {"verdict": Verdict, "value": float | None,
        "unit": str}}}``; ``value`` is None for a check that could not be measured, ``unit`` is the
        qa.json unit text.

    Raises
    ------
    InputError
        If the file is not a TID 1500 SR with an overall verdict.
    """
    path = Path(path)
    try:
        sr = hd.sr.srread(path)
    except (OSError, RuntimeError, ValueError, AttributeError, pydicom.errors.InvalidDicomError) as error:
        raise InputError(f"{path} is not a readable Structured Report: {error}", path) from error
    report = sr.content
    if not isinstance(report, hd.sr.MeasurementReport):
        raise InputError(f"{path} is not a TID 1500 Measurement Report", path)
    verdict, reasons, checks = None, [], {}
    for group in report.get_image_measurement_groups():
        name = group.tracking_identifier
        overall = group.get_qualitative_evaluations(QA_CODES["overall_verdict"])
        if overall:
            verdict = _verdict_of(overall[0])
            reasons = _texts(group, QA_CODES["reason"])
            continue
        evaluations = group.get_qualitative_evaluations(QA_CODES["check_verdict"])
        if not evaluations or name is None:
            continue  # a group some other software added
        measurements = group.get_measurements()
        values = [m for m in measurements if _key(m.name) not in _LIMITS]
        # The limits carry the unit too, so a check without a value still has one.
        unit_source = values[0] if values else measurements[0] if measurements else None
        checks[name] = {
            "verdict": _verdict_of(evaluations[0]),
            "value": float(values[0].value) if values else None,
            "unit": _unit_text(unit_source.unit) if unit_source is not None else "",
        }
    if verdict is None:
        raise InputError(f"{path} holds no overall sCT QA verdict ({OVERALL_TRACKING_ID!r} group)", path)
    return {"verdict": verdict, "reasons": reasons, "checks": checks}


# --- writing -------------------------------------------------------------------------------------------


def _finite(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OutputError(f"{where}: expected a number; found {value!r}")
    if not math.isfinite(value):
        raise OutputError(f"{where}: {value!r} is not a finite number")
    return float(value)


def _checks(checks: Sequence[Check]) -> list[Check]:
    """The checks, once each, with a unit that has a UCUM code and finite limits; a NaN value is "not measured"
    (written as such), an infinite one cannot be coded."""
    seen: set[str] = set()
    for index, check in enumerate(checks):
        where = f"check {index} ({check.name!r})"
        if not check.name or check.name == OVERALL_TRACKING_ID or check.name in seen:
            raise OutputError(f"{where}: the check name is empty, reserved or repeated")
        seen.add(check.name)
        if check.unit not in UCUM_UNITS:
            raise OutputError(f"{where}: unit {check.unit!r} has no UCUM code here; known units: "
                              f"{', '.join(repr(u) for u in UCUM_UNITS)}")
        if math.isinf(check.value):
            raise OutputError(f"{where}: value {check.value!r} is not a finite number")
        _finite(check.pass_limit, f"{where} pass_limit")
        _finite(check.fail_limit, f"{where} fail_limit")
    if not checks:
        raise OutputError("the QA has no check: a QA SR needs at least one")
    return list(checks)


def _check_headers(sct_headers: Sequence[pydicom.Dataset]) -> pydicom.Dataset:
    if not sct_headers:
        raise OutputError("no sCT header given: the QA SR must reference the sCT series it judged")
    series = {str(h.get("SeriesInstanceUID", "")) for h in sct_headers}
    if len(series) != 1:
        raise OutputError(f"sCT headers belong to {len(series)} series; expected the instances of one sCT series")
    return sct_headers[0]


def _series_number(header: pydicom.Dataset) -> int:
    number = header.get("SeriesNumber", None)
    return int(number) if number not in (None, "") else 0


def _check_concept(name: str) -> Code:
    if f"check:{name}" in QA_CODES:
        return QA_CODES[f"check:{name}"]
    return QA_CODES["check:dvh"] if name.startswith("dvh_") else QA_CODES["check:check"]


def _tracking(name: str, sop_instance_uid: str) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(uid=derive_uid(sop_instance_uid, "tracking", name), identifier=name)


def _algorithm() -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name="sct-node dosimetric QA", version=__version__,
                                         manufacturer=MANUFACTURER)


def _text(concept: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=concept, value=value, relationship_type=RelationshipTypeValues.CONTAINS)


def _check_group(check: Check, sop_instance_uid: str) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    concept, unit = _check_concept(check.name), UCUM_UNITS[check.unit]
    measured = not math.isnan(check.value)
    measurements = []
    if measured:
        measurements.append(hd.sr.Measurement(name=concept, value=check.value, unit=unit))
    measurements.append(hd.sr.Measurement(name=QA_CODES["pass_limit"], value=check.pass_limit, unit=unit))
    measurements.append(hd.sr.Measurement(name=QA_CODES["fail_limit"], value=check.fail_limit, unit=unit))
    evaluations = [
        hd.sr.QualitativeEvaluation(QA_CODES["check_verdict"], QA_CODES[check.verdict.value]),
        hd.sr.QualitativeEvaluation(QA_CODES["higher_is_better"],
                                    QA_CODES["yes"] if check.higher_is_better else QA_CODES["no"]),
    ]
    if not measured:
        # No NUM at all rather than a NaN: the quantity, coded, with the reason it has no value (CID 42).
        evaluations.append(hd.sr.QualitativeEvaluation(concept, QA_CODES["not_measured"]))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(check.name, sop_instance_uid),
        algorithm_id=_algorithm(),
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )
    if check.reason:
        group[0].ContentSequence.append(_text(QA_CODES["reason"], check.reason))
    if check.source:
        group[0].ContentSequence.append(_text(QA_CODES["limit_source"], check.source))
    return group


def _overall_group(verdict: Verdict, reasons: Sequence[str],
                   sop_instance_uid: str) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(OVERALL_TRACKING_ID, sop_instance_uid),
        algorithm_id=_algorithm(),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(QA_CODES["overall_verdict"], QA_CODES[verdict.value])],
    )
    for reason in reasons:
        group[0].ContentSequence.append(_text(QA_CODES["reason"], reason))
    return group


# --- reading -------------------------------------------------------------------------------------------


def _key(concept: Code | CodedConcept) -> tuple[str, str]:
    return (str(concept.value), str(concept.scheme_designator))


_LIMITS = {_key(QA_CODES["pass_limit"]), _key(QA_CODES["fail_limit"])}
_VERDICT_OF = {_key(QA_CODES[v.value]): v for v in Verdict}
_UNIT_OF = {(code.value, code.meaning): text for text, code in UCUM_UNITS.items()}


def _verdict_of(evaluation: hd.sr.QualitativeEvaluation) -> Verdict:
    # highdicom annotates QualitativeEvaluation.value as int | float; it is the CODE item's CodedConcept.
    concept = cast(CodedConcept, evaluation.value)
    try:
        return _VERDICT_OF[_key(concept)]
    except KeyError:
        raise InputError(f"unknown verdict code ({concept.value}, {concept.scheme_designator}, "
                         f"{concept.meaning!r})") from None


def _unit_text(unit: CodedConcept) -> str:
    """The qa.json unit text of a UCUM code (its meaning when the code is not one this module writes)."""
    return _UNIT_OF.get((unit.value, unit.meaning), unit.meaning)


def _texts(group: hd.sr.MeasurementsAndQualitativeEvaluations, concept: Code) -> list[str]:
    return [item.TextValue for item in group[0].ContentSequence
            if item.ValueType == "TEXT" and _key(item.ConceptNameCodeSequence[0]) == _key(concept)]
