"""UIDs: SOP classes the node handles and deterministic derivation of new UIDs.

New UIDs are derived from their inputs with a name-based UUID (RFC 4122
version 5) written under the UUID-derived ``2.25`` root of PS3.5 B.2,
so re-processing the same source series with the same model gives the same
UIDs and a repeated delivery replaces, rather than duplicates, the output.

References
----------
DICOM PS3.5 9 and B.2 (UID encoding, UUID-derived UIDs); PS3.4 B.5 (Standard
SOP Classes).
"""

from __future__ import annotations

import uuid

from pydicom.uid import UID

__all__ = [
    "CT_IMAGE_STORAGE",
    "ENHANCED_MR_IMAGE_STORAGE",
    "IMPLEMENTATION_CLASS_UID",
    "LEGACY_ENHANCED_MR_IMAGE_STORAGE",
    "MR_IMAGE_STORAGE",
    "MR_SOP_CLASSES",
    "RT_DOSE_STORAGE",
    "RT_PLAN_STORAGE",
    "RT_STRUCTURE_SET_STORAGE",
    "derive_uid",
]

MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
ENHANCED_MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4.1")
LEGACY_ENHANCED_MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4.4")
MR_SOP_CLASSES: tuple[str, ...] = (MR_IMAGE_STORAGE, ENHANCED_MR_IMAGE_STORAGE, LEGACY_ENHANCED_MR_IMAGE_STORAGE)
CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
RT_STRUCTURE_SET_STORAGE = UID("1.2.840.10008.5.1.4.1.1.481.3")
RT_PLAN_STORAGE = UID("1.2.840.10008.5.1.4.1.1.481.5")
RT_DOSE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.481.2")

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
