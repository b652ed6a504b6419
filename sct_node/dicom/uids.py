"""UIDs: SOP classes the node handles and deterministic derivation of new UIDs.

New UIDs are derived from their inputs with a name-based UUID (RFC 4122
version 5) written under the UUID-derived ``2.25`` root of PS3.5 B.2,
so re-processing the same source series with the same model gives the same
UIDs and a repeated delivery replaces, rather than duplicates, the output.

UIDs that arrive from the network are checked with :func:`uid_problem`
before anything else uses them (they name spool files and folders).

References
----------
DICOM PS3.5 9 and B.2 (UID encoding, UUID-derived UIDs); PS3.4 B.5 (Standard
SOP Classes).
"""

from __future__ import annotations

import re
import uuid

import pydicom.uid
from pydicom.uid import UID

__all__ = [
    "CT_IMAGE_STORAGE",
    "ENHANCED_MR_IMAGE_STORAGE",
    "IMPLEMENTATION_CLASS_UID",
    "LEGACY_ENHANCED_MR_IMAGE_STORAGE",
    "MR_IMAGE_STORAGE",
    "MR_SOP_CLASSES",
    "REPORT_SOP_CLASSES",
    "RT_DOSE_STORAGE",
    "RT_PLAN_STORAGE",
    "RT_STRUCTURE_SET_STORAGE",
    "STORAGE_COMMITMENT_PUSH_MODEL",
    "STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE",
    "derive_uid",
    "uid_problem",
]

# The SOP Class UIDs the node handles, by the names pydicom's registry gives them (PS3.4 B.5): the one place the
# numbers are written is pydicom; dosimetry uses the same registry.
MR_IMAGE_STORAGE = pydicom.uid.MRImageStorage
ENHANCED_MR_IMAGE_STORAGE = pydicom.uid.EnhancedMRImageStorage
LEGACY_ENHANCED_MR_IMAGE_STORAGE = pydicom.uid.LegacyConvertedEnhancedMRImageStorage
MR_SOP_CLASSES: tuple[str, ...] = (MR_IMAGE_STORAGE, ENHANCED_MR_IMAGE_STORAGE, LEGACY_ENHANCED_MR_IMAGE_STORAGE)
CT_IMAGE_STORAGE = pydicom.uid.CTImageStorage
RT_STRUCTURE_SET_STORAGE = pydicom.uid.RTStructureSetStorage
RT_PLAN_STORAGE = pydicom.uid.RTPlanStorage
RT_DOSE_STORAGE = pydicom.uid.RTDoseStorage
#: Where the node's reports go besides the RT objects (sct_node.report, the demo's planning system).
REPORT_SOP_CLASSES: tuple[str, ...] = (pydicom.uid.EnhancedSRStorage, pydicom.uid.ComprehensiveSRStorage,
                                       pydicom.uid.EncapsulatedPDFStorage)
#: Storage Commitment Push Model SOP Class and its well-known SOP Instance (PS3.4 J.3), which every N-ACTION and
#: N-EVENT-REPORT of the service addresses. pydicom's registry names them (``.name``) but has no constants; the
#: numbers are checked against that registry in tests/sct_node/test_storage_commitment.py.
STORAGE_COMMITMENT_PUSH_MODEL = UID("1.2.840.10008.1.20.1")
STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE = UID("1.2.840.10008.1.20.1.1")

#: Our Implementation Class UID (PS3.7 D.3.3.2): a fixed UUID-derived UID
#: computed once from the project name, never a made-up org root.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/sct-node/sct-node")


def _uuid_uid(name: str) -> UID:
    return UID(f"2.25.{uuid.uuid5(_NAMESPACE, name).int}")


IMPLEMENTATION_CLASS_UID = _uuid_uid("implementation class")


def derive_uid(*parts: str | int) -> UID:
    """A UID that depends only on ``parts``.

    Parameters
    ----------
    *parts : str or int
        What the new object is derived from (e.g. source Series Instance UID,
        model identity, role, index). The same parts always give the same UID;
        different parts give different UIDs with overwhelming probability.

    Returns
    -------
    pydicom.uid.UID
        A ``2.25.<decimal>`` UID of at most 64 characters.
    """
    # The separator cannot occur in a UID or an int, so ("a|b",) and ("a", "b") stay distinct
    # for the inputs this is used with.
    return _uuid_uid("|".join(str(p) for p in parts))


#: PS3.5 9.1: digits and dots, components separated by single dots. Components with a leading zero
#: ("1.2.05") break the rule but occur in the wild (older modalities); they are accepted, since they are
#: still only digits and dots and cannot become anything but a plain file name.
_UID_SHAPE = re.compile(r"[0-9]+(\.[0-9]+)*")
MAX_UID_LENGTH = 64


def uid_problem(value: object, what: str = "UID") -> str | None:
    """Why ``value`` is not a UID that may be used (as a file name, a database key), or None.

    The check is PS3.5 9.1 less the leading-zero rule: at most 64 characters, only digits and dots, no
    empty component (so never ``.``, ``..``, a leading or trailing dot), nothing else — no slash,
    backslash, space, NUL or other character. Trailing NUL padding is stripped by pydicom before this.
    The message is short enough for a DIMSE Error Comment (64 characters) and never repeats the value,
    which came from the network.
    """
    text = "" if value is None else str(value)
    if not text:
        return f"{what} is empty"
    if len(text) > MAX_UID_LENGTH:
        return f"{what} is longer than 64 characters"
    if not _UID_SHAPE.fullmatch(text):
        return f"{what} is not digits and dots (PS3.5 9.1)"
    return None
