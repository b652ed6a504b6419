"""Encoding sanity check of a received data set: does every declared length fit in the bytes that are there?

A C-STORE request carries the data set as one encoded byte string. pydicom reads
it leniently: an element whose 4-byte length field says, for instance, 0xFFFFFFF0
while only three bytes follow is read as a three-byte value without complaint.
A malformed instance would then be stored and acknowledged as a success. The
node must refuse such an instance instead, so before anything else it calls
:func:`encoding_problem`, which walks the element *headers* of the encoded data
set and reports the first length that does not fit in its container (the data
set, an item or a sequence), a truncated header, an unknown undefined length, a
missing delimiter, or nesting too deep to be plausible.

The walk is iterative (an explicit stack bounded by :data:`MAX_SEQUENCE_DEPTH`),
never copies element values (it reads headers with :func:`struct.unpack_from`
on a :class:`memoryview` and skips values by offset, so a 100 MB Pixel Data
element costs as much as a 2-byte one), and never raises: any unexpected
failure becomes a message. Messages are short (at most
:data:`MAX_MESSAGE_LENGTH` characters, for the DIMSE Error Comment) and carry
no value from the data set other than tags and numbers.

Transfer syntaxes: Implicit VR Little Endian, Explicit VR Big Endian, Deflated
Explicit VR Little Endian (inflated first, with a bound), and Explicit VR Little
Endian for every other UID, which covers the encapsulated (compressed) ones.

References
----------
DICOM PS3.5 7.1 Data Elements (7.1.2 Explicit VR, 7.1.3 Implicit VR);
7.5 Nesting of Data Sets (7.5.1 Item Encoding Rules, 7.5.2 Delimitation of the
Sequence of Items); A.4 Transfer Syntaxes for Encapsulation of Encoded Pixel
Data (A.4.1 Pixel Data Fragments); A.5 Deflated Explicit VR Little Endian;
CP-246 (UN with undefined length holds Implicit VR Little Endian items).
"""

from __future__ import annotations

import struct
import zlib
from functools import lru_cache

from pydicom.datadict import dictionary_VR

__all__ = ["MAX_MESSAGE_LENGTH", "MAX_SEQUENCE_DEPTH", "encoding_problem"]

MAX_MESSAGE_LENGTH = 64
"""Longest message returned (it goes into a DIMSE Error Comment, VR LO)."""

MAX_SEQUENCE_DEPTH = 32
"""Deepest nesting of sequences accepted; deeper is refused."""

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"

_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xE000
_ITEM_DELIMITER = 0xE00D
_SEQUENCE_DELIMITER = 0xE0DD
_DELIMITER_GROUP = 0xFFFE
_PIXEL_DATA = 0x7FE00010

# VRs with 2 reserved bytes and a 4-byte length in explicit VR (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
)

# Kinds of container on the walk's stack.
_DATASET = 0  # elements (the whole data set, or the content of an item)
_SEQUENCE = 1  # items of a sequence
_FRAGMENTS = 2  # items of encapsulated Pixel Data

_TAG = {True: struct.Struct("<HH"), False: struct.Struct(">HH")}
_U16 = {True: struct.Struct("<H"), False: struct.Struct(">H")}
_U32 = {True: struct.Struct("<I"), False: struct.Struct(">I")}
_HEADER = {True: struct.Struct("<HHI"), False: struct.Struct(">HHI")}


class _Problem(Exception):
    """Internal: carries a message out of the deflate step."""


def encoding_problem(
    data: bytes | bytearray | memoryview, transfer_syntax_uid: str, max_inflated_bytes: int
) -> str | None:
    """Say what is wrong with the encoding of a data set, or None if every declared length fits.

    Parameters
    ----------
    data : bytes, bytearray or memoryview
        The encoded data set as received in a C-STORE: no preamble, no File
        Meta Information group.
    transfer_syntax_uid : str
        Transfer syntax of the presentation context the data set came on.
    max_inflated_bytes : int
        For Deflated Explicit VR Little Endian, the largest inflated size
        accepted; a data set that would inflate beyond it is refused without
        inflating the rest.

    Returns
    -------
    str or None
        None when the element headers are consistent; otherwise a short
        English message (at most :data:`MAX_MESSAGE_LENGTH` characters) that
        names at most a tag and numbers, e.g.
        ``"element (0011,1010) declares 4294967280 bytes, 3 remain"``.

    Notes
    -----
    Never raises. Cost is proportional to the number of element headers,
    independent of the size of the values.
    """
    try:
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        uid = str(transfer_syntax_uid).strip().rstrip("\x00").strip()
        if uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            try:
                view = memoryview(_inflate(view, max_inflated_bytes))
            except _Problem as problem:
                return _clip(str(problem))
        implicit = uid == IMPLICIT_VR_LITTLE_ENDIAN
        little = uid != EXPLICIT_VR_BIG_ENDIAN
        return _clip_or_none(_walk(view, implicit, little))
    except Exception as exc:  # noqa: BLE001 - the check must never raise, whatever the input
        return _clip(f"data set cannot be checked ({type(exc).__name__})")


def _inflate(view: memoryview, max_inflated_bytes: int) -> bytes:
    """Inflate a raw deflate stream, refusing output beyond ``max_inflated_bytes``.

    Parameters
    ----------
    view : memoryview
        The deflated data set.
    max_inflated_bytes : int
        Bound on the inflated size.

    Returns
    -------
    bytes
        The inflated data set.

    Raises
    ------
    _Problem
        When the stream is corrupt, ends early, or inflates beyond the bound.
    """
    limit = max(0, int(max_inflated_bytes))
    inflater = zlib.decompressobj(-15)
    try:
        # Asking for one byte more than allowed tells "exactly at the limit" from "beyond it";
        # never call flush(), which has no bound.
        inflated = inflater.decompress(view, limit + 1)
    except zlib.error:
        raise _Problem("deflate stream of the data set is corrupt") from None
    if len(inflated) > limit:
        raise _Problem(f"deflated data set inflates beyond {_size(limit)}")
    if not inflater.eof:
        raise _Problem("deflate stream of the data set ends early")
    # Anything after the end of the stream (e.g. the NULL byte padding to even length) is ignored.
    return inflated


def _size(n: int) -> str:
    """Write a byte count as whole MB (MiB) when it is one, else as bytes."""
    mib = 1024 * 1024
    if n >= mib and n % mib == 0:
        return f"{n // mib} MB"
    return f"{n} bytes"


def _tag(group: int, element: int) -> str:
    """Write a tag as ``(GGGG,EEEE)``."""
    return f"({group:04X},{element:04X})"


def _tag_int(tag: int) -> str:
    """Write a 32-bit tag as ``(GGGG,EEEE)``."""
    return _tag(tag >> 16, tag & 0xFFFF)


@lru_cache(maxsize=4096)
def _is_dictionary_sequence(tag: int) -> bool:
    """Whether pydicom's dictionary gives the tag VR SQ (private and unknown tags: no)."""
    try:
        return dictionary_VR(tag) == "SQ"
    except Exception:  # noqa: BLE001 - KeyError for unknown tags; anything else means "not known as SQ"
        return False


def _walk(buf: memoryview, implicit: bool, little: bool) -> str | None:
    """Walk the element headers of an encoded data set.

    Parameters
    ----------
    buf : memoryview
        The (inflated) encoded data set, one byte per item.
    implicit : bool
        Implicit VR (otherwise explicit VR).
    little : bool
        Little endian (otherwise big endian).

    Returns
    -------
    str or None
        The first problem found, or None.
    """
    size = len(buf)
    # A frame: (kind, end, undefined, implicit, little, owner tag).
    # For a container of undefined length, ``end`` is the end of the enclosing container:
    # reaching it before the delimiter is a problem.
    stack: list[tuple[int, int, bool, bool, bool, int]] = [(_DATASET, size, False, implicit, little, 0)]
    depth = 0  # sequences open on the stack
    pos = 0
    while True:
        kind, end, undefined, imp, le, owner = stack[-1]
        if pos >= end:
            if undefined:
                if kind == _DATASET:
                    return f"item in {_tag_int(owner)} lacks its item delimiter"
                if kind == _FRAGMENTS:
                    return f"pixel data {_tag_int(owner)} lacks its sequence delimiter"
                return f"sequence {_tag_int(owner)} lacks its sequence delimiter"
            stack.pop()
            if kind == _SEQUENCE:
                depth -= 1
            if not stack:
                return None
            continue
        remain = end - pos

        if kind == _DATASET:
            if remain < 8:
                return f"truncated element header at offset {pos}"
            group, element = _TAG[le].unpack_from(buf, pos)
            if group == _DELIMITER_GROUP:
                if element == _ITEM_DELIMITER and undefined:
                    stack.pop()
                    pos += 8
                    continue
                return f"unexpected {_tag(group, element)} at offset {pos}"
            tag = (group << 16) | element
            if imp:
                vr = b""
                length = _U32[le].unpack_from(buf, pos + 4)[0]
                header = 8
            else:
                vr = bytes(buf[pos + 4 : pos + 6])
                if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
                    return f"element {_tag(group, element)} has an invalid VR"
                if vr in _LONG_VRS:
                    if remain < 12:
                        return f"truncated element header at offset {pos}"
                    length = _U32[le].unpack_from(buf, pos + 8)[0]
                    header = 12
                else:
                    length = _U16[le].unpack_from(buf, pos + 6)[0]
                    header = 8

            if length == _UNDEFINED:
                child: tuple[int, int, bool, bool, bool, int]
                if imp and tag == _PIXEL_DATA:
                    child = (_FRAGMENTS, end, True, imp, le, tag)
                elif imp:
                    child = (_SEQUENCE, end, True, imp, le, tag)
                elif vr == b"SQ":
                    child = (_SEQUENCE, end, True, False, le, tag)
                elif vr == b"UN":
                    # CP-246: the value is a sequence of items in Implicit VR Little Endian.
                    child = (_SEQUENCE, end, True, True, True, tag)
                elif tag == _PIXEL_DATA and vr in (b"OB", b"OW"):
                    child = (_FRAGMENTS, end, True, False, le, tag)
                else:
                    return f"element {_tag(group, element)} has undefined length"
                if child[0] == _SEQUENCE:
                    if depth >= MAX_SEQUENCE_DEPTH:
                        return f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels"
                    depth += 1
                stack.append(child)
                pos += header
                continue

            available = remain - header
            if length > available:
                return f"element {_tag(group, element)} declares {length} bytes, {available} remain"
            if vr == b"SQ" or (imp and _is_dictionary_sequence(tag)):
                if depth >= MAX_SEQUENCE_DEPTH:
                    return f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels"
                depth += 1
                stack.append((_SEQUENCE, pos + header + length, False, imp, le, tag))
                pos += header
                continue
            pos += header + length
            continue

        # A sequence, or encapsulated Pixel Data: items (or fragments) and delimiters only.
        if remain < 8:
            return f"truncated item header at offset {pos}"
        group, element, length = _HEADER[le].unpack_from(buf, pos)
        if group == _DELIMITER_GROUP and element == _SEQUENCE_DELIMITER:
            if not undefined:
                return f"sequence delimiter in {_tag_int(owner)} of defined length"
            stack.pop()
            if kind == _SEQUENCE:
                depth -= 1
            pos += 8
            continue
        if group != _DELIMITER_GROUP or element != _ITEM:
            what = "a fragment" if kind == _FRAGMENTS else "an item"
            return f"{_tag(group, element)} where {what} of {_tag_int(owner)} belongs"
        available = remain - 8
        if kind == _FRAGMENTS:
            if length == _UNDEFINED:
                return f"fragment in {_tag_int(owner)} has undefined length"
            if length > available:
                return f"fragment in {_tag_int(owner)} declares {length} bytes, {available} remain"
            pos += 8 + length
            continue
        if length == _UNDEFINED:
            stack.append((_DATASET, end, True, imp, le, owner))
        else:
            if length > available:
                return f"item in {_tag_int(owner)} declares {length} bytes, {available} remain"
            stack.append((_DATASET, pos + 8 + length, False, imp, le, owner))
        pos += 8


def _clip(message: str) -> str:
    """Shorten a message to :data:`MAX_MESSAGE_LENGTH` characters."""
    if len(message) <= MAX_MESSAGE_LENGTH:
        return message
    return message[: MAX_MESSAGE_LENGTH - 3] + "..."


def _clip_or_none(message: str | None) -> str | None:
    """:func:`_clip` that lets None through."""
    return None if message is None else _clip(message)
