"""The encoding sanity check of received data sets: valid encodings pass, every kind of overrun is refused."""

from __future__ import annotations

import random
import struct
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from sct_node.dicom import sanity
from sct_node.dicom.sanity import MAX_MESSAGE_LENGTH, MAX_SEQUENCE_DEPTH, encoding_problem
from tests.factories.mr_series import TRANSFER_SYNTAXES, make_volume, write_mr_series

MB = 1024 * 1024
LIMIT = 64 * MB  # max_inflated_bytes for the tests that are not about it

# The uncompressed transfer syntaxes, and one encapsulated one (walked as explicit VR little endian).
SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian,
            JPEG2000Lossless]


# ----------------------------------------------------------------------------------------------------------------
# Encoding helpers


def flags(syntax: str) -> tuple[bool, bool]:
    """(implicit VR, little endian) of the (inflated) encoding of ``syntax``."""
    return syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian


def deflate(raw: bytes) -> bytes:
    """Raw deflate (no zlib header), as Deflated Explicit VR Little Endian requires."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return compressor.compress(raw) + compressor.flush()


def encode_raw(ds: Dataset, implicit: bool, little: bool) -> bytes:
    """Encode a data set with pydicom (sequences and items of undefined length)."""
    fp = DicomBytesIO()
    fp.is_little_endian = little
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def wire(raw: bytes, syntax: str) -> bytes:
    """What goes over the network for the (explicit VR LE) ``raw`` bytes in ``syntax``: deflated for Deflated."""
    return deflate(raw) if syntax == DeflatedExplicitVRLittleEndian else raw


def encode(ds: Dataset, syntax: str) -> bytes:
    """The data set as it arrives in a C-STORE on a presentation context of ``syntax``."""
    return wire(encode_raw(ds, *flags(syntax)), syntax)


def tag_bytes(tag: int, little: bool) -> bytes:
    return struct.pack("<HH" if little else ">HH", tag >> 16, tag & 0xFFFF)


def u32(value: int, little: bool) -> bytes:
    return struct.pack("<I" if little else ">I", value)


def element(tag: int, vr: bytes, value: bytes, implicit: bool, little: bool, length: int | None = None) -> bytes:
    """One element by hand; ``length`` overrides the length field (default: the value's length)."""
    length = len(value) if length is None else length
    if implicit:
        return tag_bytes(tag, little) + u32(length, little) + value
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OD", b"OF", b"OL", b"OV", b"SV", b"UV"):
        return tag_bytes(tag, little) + vr + b"\0\0" + u32(length, little) + value
    return tag_bytes(tag, little) + vr + struct.pack("<H" if little else ">H", length) + value


def item(content: bytes, little: bool, undefined: bool = False) -> bytes:
    """An item (FFFE,E000) of defined or undefined length (then closed by an item delimiter)."""
    if undefined:
        return tag_bytes(0xFFFEE000, little) + u32(0xFFFFFFFF, little) + content + delimiter(0xFFFEE00D, little)
    return tag_bytes(0xFFFEE000, little) + u32(len(content), little) + content


def delimiter(tag: int, little: bool) -> bytes:
    return tag_bytes(tag, little) + u32(0, little)


def sequence(tag: int, items: list[bytes], implicit: bool, little: bool, undefined: bool = False) -> bytes:
    """A sequence element of defined or undefined length holding the given encoded items."""
    body = b"".join(items)
    if undefined:
        return element(tag, b"SQ", body + delimiter(0xFFFEE0DD, little), implicit, little, length=0xFFFFFFFF)
    return element(tag, b"SQ", body, implicit, little)


def short_string(tag: int, text: str, implicit: bool, little: bool) -> bytes:
    """An LO element (padded to even length)."""
    value = text.encode("ascii")
    if len(value) % 2:
        value += b" "
    return element(tag, b"LO", value, implicit, little)


def simple_dataset() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    ds.Modality = "MR"
    ds.PatientName = "Phantom^Head"
    ds.PatientID = "PH0001"
    return ds


def nested_dataset() -> Dataset:
    """A data set with sequences nested three deep, empty sequences and items, a private element, pixel data."""
    ds = simple_dataset()
    ds.add_new(0x00111010, "LO", "private value")
    instance = Dataset()
    instance.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    instance.ReferencedSOPInstanceUID = "1.2.3.9"
    code = Dataset()
    code.CodeValue = "121311"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Localizer"
    instance.PurposeOfReferenceCodeSequence = Sequence([code])
    series = Dataset()
    series.SeriesInstanceUID = "1.2.3.8"
    series.ReferencedInstanceSequence = Sequence([instance, Dataset()])
    ds.ReferencedSeriesSequence = Sequence([series])
    ds.ReferencedStudySequence = Sequence([])
    ds.Rows = 4
    ds.Columns = 4
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.arange(16, dtype=np.uint16).tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def undefined_lengths(ds: Dataset) -> Dataset:
    """Mark every sequence and item of ``ds`` (recursively) to be written with undefined length."""
    for elem in ds:
        if elem.VR == "SQ":
            elem.is_undefined_length = True
            for child in elem.value:
                child.is_undefined_length_sequence_item = True
                undefined_lengths(child)
    return ds


def read_back(raw: bytes, implicit: bool, little: bool) -> Dataset:
    """pydicom's reading of a raw encoding, to check that hand-made fixtures are themselves valid."""
    ds = read_dataset(DicomBytesIO(raw), implicit, little)
    for elem in ds.iterall():  # force every value to be read
        _ = elem.value
    return ds


# Four bytes of "declares 0xFFFFFFF0, three follow" — the motivating defect.
HUGE = 0xFFFFFFF0


def huge_element(implicit: bool, little: bool) -> bytes:
    return element(0x00111010, b"OB", b"abc", implicit, little, length=HUGE)


# ----------------------------------------------------------------------------------------------------------------
# Valid encodings pass


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("undefined", [False, True])
def test_valid_nested_dataset_passes(syntax, undefined):
    ds = undefined_lengths(nested_dataset()) if undefined else nested_dataset()
    data = encode(ds, syntax)
    raw = zlib.decompress(data, -15) if syntax == DeflatedExplicitVRLittleEndian else data
    assert (delimiter(0xFFFEE0DD, flags(syntax)[1]) in raw) == undefined
    assert encoding_problem(data, syntax, LIMIT) is None


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_accepts_bytes_bytearray_and_memoryview(syntax, kind):
    data = encode(nested_dataset(), syntax)
    assert encoding_problem(kind(data), syntax, LIMIT) is None
    assert encoding_problem(kind(data[:-1]), syntax, LIMIT) is not None


def test_empty_dataset_passes():
    assert encoding_problem(b"", ExplicitVRLittleEndian, LIMIT) is None


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
                                    DeflatedExplicitVRLittleEndian])
@pytest.mark.parametrize("undefined_items", [False, True])
def test_hand_made_defined_length_sequences_pass(syntax, undefined_items):
    """Defined-length sequences (nested two deep) with defined or undefined items, checked against pydicom."""
    implicit, little = flags(syntax)
    inner_items = [item(short_string(0x00080100, "121311", implicit, little), little, undefined_items),
                   item(b"", little, undefined_items)]
    inner = sequence(0x0040A043, inner_items, implicit, little)  # Concept Name Code Sequence
    outer_item = item(short_string(0x0020000E, "1.2.3.8", implicit, little) + inner, little, undefined_items)
    outer = sequence(0x00081115, [outer_item], implicit, little)  # Referenced Series Sequence
    raw = encode_raw(simple_dataset(), implicit, little) + outer + element(0x00111010, b"OB", b"\1\2", implicit,
                                                                           little)
    ds = read_back(raw, implicit, little)
    assert ds.ReferencedSeriesSequence[0].ConceptNameCodeSequence[0].CodeValue == "121311"
    assert len(ds.ReferencedSeriesSequence[0].ConceptNameCodeSequence) == 2
    assert encoding_problem(wire(raw, syntax), syntax, LIMIT) is None


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless,
                                    DeflatedExplicitVRLittleEndian])
def test_encapsulated_pixel_data_passes(syntax):
    ds = nested_dataset()
    del ds.PixelData
    frames = [bytes(range(256)) * 3, b"\x55" * 101]
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.NumberOfFrames = 2
    raw = encode_raw(ds, False, True)
    assert raw[-8:] == b"\xfe\xff\xdd\xe0\0\0\0\0"  # ends with the sequence delimiter: really encapsulated
    assert encoding_problem(wire(raw, syntax), syntax, LIMIT) is None


def test_un_of_undefined_length_holds_implicit_items():
    """CP-246: a UN of undefined length holds Implicit VR Little Endian items, even in a big endian data set."""
    for little in (True, False):
        content = item(short_string(0x00080100, "121311", True, True), True, undefined=True)
        un = element(0x00091010, b"UN", content + delimiter(0xFFFEE0DD, True), False, little, length=0xFFFFFFFF)
        raw = encode_raw(simple_dataset(), False, little) + un
        syntax = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        assert encoding_problem(raw, syntax, LIMIT) is None
        assert encoding_problem(raw[:-8], syntax, LIMIT) == "sequence (0009,1010) lacks its sequence delimiter"


def test_trailing_padding_element_passes():
    raw = encode_raw(simple_dataset(), False, True)
    padding = element(0xFFFCFFFC, b"OB", b"\0" * 10, False, True)  # Data Set Trailing Padding
    assert encoding_problem(raw + padding, ExplicitVRLittleEndian, LIMIT) is None


def test_private_defined_length_value_is_not_walked_in_implicit_vr():
    """In implicit VR only elements that pydicom's dictionary calls SQ are walked as sequences."""
    inner = item(huge_element(True, True), True)
    raw = encode_raw(simple_dataset(), True, True)
    private = element(0x00111010, b"", inner, True, True)
    assert encoding_problem(raw + private, ImplicitVRLittleEndian, LIMIT) is None
    public = element(0x00081115, b"", inner, True, True)  # Referenced Series Sequence: walked
    assert encoding_problem(raw + public, ImplicitVRLittleEndian, LIMIT) == (
        "element (0011,1010) declares 4294967280 bytes, 3 remain")


@pytest.mark.parametrize("syntax", list(TRANSFER_SYNTAXES.values()))
def test_project_mr_series_pass(tmp_path: Path, syntax):
    """Instances written by the project's series writer and re-encoded by pydicom, in every transfer syntax."""
    key = next(k for k, v in TRANSFER_SYNTAXES.items() if v == syntax)
    files = write_mr_series(make_volume(shape_zyx=(2, 64, 64)), tmp_path, transfer_syntax=key)
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == syntax
        data = path.read_bytes()
        assert data[128:132] == b"DICM" and data[132:136] == b"\2\0\0\0"  # (0002,0000) group length comes first
        group_length = struct.unpack_from("<I", data, 140)[0]
        dataset = data[144 + group_length:]
        assert encoding_problem(dataset, syntax, LIMIT) is None
        assert encoding_problem(dataset[: len(dataset) // 2], syntax, LIMIT) is not None


# ----------------------------------------------------------------------------------------------------------------
# Overruns and other defects are refused


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_huge_declared_length_is_refused_naming_its_tag(syntax):
    implicit, little = flags(syntax)
    raw = encode_raw(simple_dataset(), implicit, little) + huge_element(implicit, little)
    # pydicom itself reads this without complaint (it truncates the value): the motivation for the check.
    assert read_back(raw, implicit, little)[0x00111010].value == b"abc"
    assert encoding_problem(wire(raw, syntax), syntax, LIMIT) == (
        "element (0011,1010) declares 4294967280 bytes, 3 remain")


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("undefined", [False, True])
def test_huge_declared_length_inside_an_item_is_refused(syntax, undefined):
    implicit, little = flags(syntax)
    content = short_string(0x00080100, "121311", implicit, little) + huge_element(implicit, little)
    if undefined:  # no delimiter can follow an element that swallows everything
        opened = tag_bytes(0xFFFEE000, little) + u32(0xFFFFFFFF, little) + content
        seq = element(0x00081115, b"SQ", opened, implicit, little, length=0xFFFFFFFF)
    else:
        seq = sequence(0x00081115, [item(content, little)], implicit, little)
    raw = encode_raw(simple_dataset(), implicit, little) + seq
    assert encoding_problem(wire(raw, syntax), syntax, LIMIT) == (
        "element (0011,1010) declares 4294967280 bytes, 3 remain")


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_element_overrunning_its_item_is_refused_though_the_data_set_has_room(syntax):
    implicit, little = flags(syntax)
    content = element(0x00111010, b"OB", b"abcd", implicit, little, length=20)
    seq = sequence(0x00081115, [item(content, little)], implicit, little)
    raw = seq + encode_raw(simple_dataset(), implicit, little)  # plenty of bytes after the sequence
    assert encoding_problem(wire(raw, syntax), syntax, LIMIT) == "element (0011,1010) declares 20 bytes, 4 remain"


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_item_longer_than_its_sequence_is_refused(syntax):
    implicit, little = flags(syntax)
    content = short_string(0x00080100, "121311", implicit, little)
    good = item(content, little)
    bad = tag_bytes(0xFFFEE000, little) + u32(len(content) + 6, little) + content  # declares 6 bytes too many
    seq = element(0x00081115, b"SQ", bad, implicit, little)
    raw = seq + encode_raw(simple_dataset(), implicit, little)
    assert encoding_problem(wire(raw, syntax), syntax, LIMIT) == (
        f"item in (0008,1115) declares {len(content) + 6} bytes, {len(content)} remain")
    assert encoding_problem(wire(element(0x00081115, b"SQ", good, implicit, little) + raw[len(seq):], syntax),
                            syntax, LIMIT) is None


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_missing_sequence_delimiter_is_refused(syntax):
    implicit, little = flags(syntax)
    ds = simple_dataset()
    ds.RequestAttributesSequence = Sequence([Dataset()])  # (0040,0275): the last element
    ds.RequestAttributesSequence[0].ScheduledProcedureStepID = "SPS1"
    raw = encode_raw(undefined_lengths(ds), implicit, little)
    assert raw[-8:] == delimiter(0xFFFEE0DD, little)
    assert encoding_problem(wire(raw, syntax), syntax, LIMIT) is None
    assert encoding_problem(wire(raw[:-8], syntax), syntax, LIMIT) == (
        "sequence (0040,0275) lacks its sequence delimiter")
    assert encoding_problem(wire(raw[:-16], syntax), syntax, LIMIT) == "item in (0040,0275) lacks its item delimiter"


def test_missing_fragment_sequence_delimiter_is_refused():
    ds = simple_dataset()
    ds.PixelData = encapsulate([b"\1\2\3\4"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    raw = encode_raw(ds, False, True)
    assert encoding_problem(raw, RLELossless, LIMIT) is None
    assert encoding_problem(raw[:-8], RLELossless, LIMIT) == "pixel data (7FE0,0010) lacks its sequence delimiter"
    assert encoding_problem(raw[:-9], RLELossless, LIMIT) == "fragment in (7FE0,0010) declares 4 bytes, 3 remain"


def test_undefined_length_non_sequence_is_refused_in_explicit_vr():
    for tag, vr in ((0x00111010, b"OB"), (0x00100010, b"UT"), (0x7FE00010, b"UT")):
        body = item(b"\1\2", True) + delimiter(0xFFFEE0DD, True)
        raw = encode_raw(simple_dataset(), False, True) + element(tag, vr, body, False, True, length=0xFFFFFFFF)
        expected = f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) has undefined length"
        assert encoding_problem(raw, ExplicitVRLittleEndian, LIMIT) == expected
    ok = encode_raw(simple_dataset(), False, True) + element(0x7FE00010, b"OB", body, False, True,
                                                             length=0xFFFFFFFF)
    assert encoding_problem(ok, ExplicitVRLittleEndian, LIMIT) is None


@pytest.mark.parametrize("vr", [b"pn", b"P\0", b"\0\0", b"1A", b"  "])
def test_bad_vr_is_refused(vr):
    raw = encode_raw(simple_dataset(), False, True)
    bad = tag_bytes(0x00100020, True) + vr + struct.pack("<H", 2) + b"AB"
    assert encoding_problem(raw + bad, ExplicitVRLittleEndian, LIMIT) == "element (0010,0020) has an invalid VR"
    assert encoding_problem(raw + bad, ImplicitVRLittleEndian, LIMIT) is not None  # other reading, still wrong


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("extra", [1, 2, 7])
def test_truncated_element_header_is_refused(syntax, extra):
    implicit, little = flags(syntax)
    raw = encode_raw(simple_dataset(), implicit, little)
    assert encoding_problem(wire(raw + b"\x10\0\x20\0\0\0\0\0"[:extra], syntax), syntax, LIMIT) == (
        f"truncated element header at offset {len(raw)}")


def test_truncated_long_explicit_header_is_refused():
    raw = encode_raw(simple_dataset(), False, True)
    header = element(0x00111010, b"OB", b"", False, True)[:10]  # 8 bytes would do for a short VR, not for OB
    assert encoding_problem(raw + header, ExplicitVRLittleEndian, LIMIT) == (
        f"truncated element header at offset {len(raw)}")


def test_stray_delimiters_and_items_are_refused():
    raw = encode_raw(simple_dataset(), False, True)
    assert encoding_problem(raw + delimiter(0xFFFEE0DD, True), ExplicitVRLittleEndian, LIMIT) == (
        f"unexpected (FFFE,E0DD) at offset {len(raw)}")
    assert encoding_problem(raw + delimiter(0xFFFEE00D, True), ImplicitVRLittleEndian, LIMIT) is not None
    in_sequence = element(0x00081115, b"SQ", short_string(0x00100020, "AB", False, True), False, True)
    assert encoding_problem(in_sequence, ExplicitVRLittleEndian, LIMIT) == (
        "(0010,0020) where an item of (0008,1115) belongs")
    defined_with_delimiter = element(0x00081115, b"SQ", delimiter(0xFFFEE0DD, True), False, True)
    assert encoding_problem(defined_with_delimiter, ExplicitVRLittleEndian, LIMIT) == (
        "sequence delimiter in (0008,1115) of defined length")


def nested(levels: int) -> Dataset:
    """A data set with ``levels`` sequences nested one in the other."""
    ds = simple_dataset()
    current = ds
    for _ in range(levels):
        child = Dataset()
        child.SeriesInstanceUID = "1.2.3"
        current.ReferencedSeriesSequence = Sequence([child])
        current = child
    return ds


def nested_defined(levels: int, implicit: bool, little: bool) -> bytes:
    """``levels`` defined-length sequences with defined-length items, nested by hand."""
    body = short_string(0x00080100, "X", implicit, little)
    for _ in range(levels):
        body = sequence(0x00081115, [item(body, little)], implicit, little)
    return body


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("undefined", [False, True])
def test_nesting_deeper_than_the_limit_is_refused(syntax, undefined):
    implicit, little = flags(syntax)
    message = f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels"
    assert MAX_SEQUENCE_DEPTH == 32
    mark = undefined_lengths if undefined else (lambda ds: ds)
    assert encoding_problem(encode(mark(nested(32)), syntax), syntax, LIMIT) is None
    assert encoding_problem(encode(mark(nested(33)), syntax), syntax, LIMIT) == message
    assert encoding_problem(encode(mark(nested(40)), syntax), syntax, LIMIT) == message
    assert encoding_problem(wire(nested_defined(32, implicit, little), syntax), syntax, LIMIT) is None
    assert encoding_problem(wire(nested_defined(40, implicit, little), syntax), syntax, LIMIT) == message


def test_very_deep_nesting_does_not_recurse():
    """Ten thousand nested undefined-length sequences: refused at the limit, no RecursionError."""
    undefined = u32(0xFFFFFFFF, True)
    opening = tag_bytes(0x00081115, True) + b"SQ\0\0" + undefined + tag_bytes(0xFFFEE000, True) + undefined
    assert encoding_problem(opening * 10_000, ExplicitVRLittleEndian, LIMIT) == (
        f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels")
    implicit_opening = tag_bytes(0x00111010, True) + undefined + tag_bytes(0xFFFEE000, True) + undefined
    assert encoding_problem(implicit_opening * 10_000, ImplicitVRLittleEndian, LIMIT) == (
        f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels")


# ----------------------------------------------------------------------------------------------------------------
# Deflate


def test_deflate_bomb_is_refused_without_inflating_it():
    bomb = deflate(bytes(50 * MB))
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        message = encoding_problem(bomb, DeflatedExplicitVRLittleEndian, 1 * MB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert message == "deflated data set inflates beyond 1 MB"
    assert peak < 4 * MB  # the 50 MB were never materialised
    # Under a larger bound the 50 MB inflate, and zeros read as (0000,0000) with VR "\0\0".
    assert encoding_problem(bomb, DeflatedExplicitVRLittleEndian, 1024 * MB) == (
        "element (0000,0000) has an invalid VR")
    assert encoding_problem(bomb, DeflatedExplicitVRLittleEndian, 1000) == (
        "deflated data set inflates beyond 1000 bytes")


def test_inflated_size_exactly_at_the_limit_passes():
    raw = encode_raw(nested_dataset(), False, True)
    data = deflate(raw)
    assert encoding_problem(data, DeflatedExplicitVRLittleEndian, len(raw)) is None
    assert encoding_problem(data, DeflatedExplicitVRLittleEndian, len(raw) - 1) == (
        f"deflated data set inflates beyond {len(raw) - 1} bytes")


def test_corrupt_or_truncated_deflate_is_refused():
    raw = encode_raw(nested_dataset(), False, True)
    data = deflate(raw)
    assert encoding_problem(b"\xff" * 64, DeflatedExplicitVRLittleEndian, LIMIT) == (
        "deflate stream of the data set is corrupt")
    assert encoding_problem(data[: len(data) // 2], DeflatedExplicitVRLittleEndian, LIMIT) == (
        "deflate stream of the data set ends early")
    assert encoding_problem(data + b"\0", DeflatedExplicitVRLittleEndian, LIMIT) is None  # padding to even length
    assert encoding_problem(raw, DeflatedExplicitVRLittleEndian, LIMIT) is not None  # not deflated at all


# ----------------------------------------------------------------------------------------------------------------
# Robustness: random truncations and mutations


def top_level_boundaries(ds: Dataset, implicit: bool, little: bool) -> set[int]:
    """Offsets at which a top-level element ends (and 0): the only places a truncation leaves a valid data set."""
    offsets = {0}
    total = 0
    for elem in ds:
        single = Dataset()
        single.add(elem)
        total += len(encode_raw(single, implicit, little))
        offsets.add(total)
    return offsets


def check_message(message: object) -> None:
    assert message is None or isinstance(message, str)
    if message is not None:
        assert 0 < len(message) <= MAX_MESSAGE_LENGTH
        assert message.isascii()


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_random_truncations_are_refused_exactly_off_element_boundaries(syntax):
    ds = nested_dataset()
    data = encode(ds, syntax)
    rng = random.Random(20240611)
    if syntax == DeflatedExplicitVRLittleEndian:
        for _ in range(2000):
            message = encoding_problem(data[: rng.randrange(len(data))], syntax, LIMIT)
            assert message is not None
            check_message(message)
        return
    boundaries = top_level_boundaries(ds, *flags(syntax))
    assert max(boundaries) == len(data)
    refused = 0
    for _ in range(2000):
        cut = rng.randrange(len(data))
        message = encoding_problem(data[:cut], syntax, LIMIT)
        check_message(message)
        assert (message is None) == (cut in boundaries), (cut, message)
        refused += message is not None
    assert refused > 1500


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_random_single_byte_mutations_never_raise(syntax):
    ds = nested_dataset()
    implicit, little = flags(syntax)
    if not implicit and little:  # encapsulated pixel data where it can occur
        del ds.PixelData
        ds.PixelData = encapsulate([b"\1\2\3\4" * 5, b"\5\6"])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    data = bytearray(encode(ds, syntax))
    rng = random.Random(7)
    outcomes = set()
    for _ in range(2000):
        mutated = bytearray(data)
        mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        message = encoding_problem(mutated, syntax, rng.choice([LIMIT, 10, 0]))
        check_message(message)
        outcomes.add(message is None)
    assert outcomes == {True, False}  # some mutations hit values (still valid), some hit headers


@pytest.mark.parametrize("bad_uid", ["", "not a uid", "1.2.840.10008.1.2\0", " 1.2.840.10008.1.2.1.99 "])
def test_odd_transfer_syntax_uids_do_not_raise(bad_uid):
    data = encode(nested_dataset(), ExplicitVRLittleEndian)
    check_message(encoding_problem(data, bad_uid, LIMIT))


def test_unusual_inputs_do_not_raise():
    check_message(encoding_problem(memoryview(np.zeros(8, dtype=np.uint32)), ExplicitVRLittleEndian, LIMIT))
    check_message(encoding_problem(None, ExplicitVRLittleEndian, LIMIT))  # type: ignore[arg-type]
    check_message(encoding_problem(b"\0" * 100, DeflatedExplicitVRLittleEndian, -5))
    raw = encode(simple_dataset(), ImplicitVRLittleEndian)
    assert encoding_problem(raw + b"\0\0", ImplicitVRLittleEndian, LIMIT) == (
        f"truncated element header at offset {len(raw)}")


# ----------------------------------------------------------------------------------------------------------------
# Cost: proportional to the number of headers, not to the size of the values


def traced_lines(data: bytes | memoryview, syntax: str) -> tuple[str | None, int]:
    """Run the check counting the lines executed in the sanity module (a deterministic measure of its cost)."""
    count = 0

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return local

    def calls(frame, event, arg):
        return local if frame.f_code.co_filename == sanity.__file__ else None

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        result = encoding_problem(data, syntax, LIMIT)
    finally:
        sys.settrace(previous)
    return result, count


def mr_like(rows: int, columns: int) -> Dataset:
    ds = nested_dataset()
    ds.StudyInstanceUID = "1.2.3.1"
    ds.SeriesInstanceUID = "1.2.3.2"
    ds.ImagePositionPatient = [-120.0, -120.0, 30.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.47, 0.47]
    ds.SliceThickness = 3.0
    ds.EchoTime = 12.0
    ds.RepetitionTime = 500.0
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelData = (np.arange(rows * columns) % 4096).astype(np.uint16).tobytes()
    return ds


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_real_size_mr_instance_costs_the_same_as_a_tiny_one(syntax):
    big = encode(mr_like(512, 512), syntax)
    tiny = encode(mr_like(2, 2), syntax)
    assert len(big) > 512 * 512 * 2
    big_result, big_lines = traced_lines(big, syntax)
    tiny_result, tiny_lines = traced_lines(tiny, syntax)
    assert big_result is None and tiny_result is None
    assert big_lines == tiny_lines
    elements = sum(1 for _ in mr_like(2, 2).iterall())
    assert big_lines < 60 * elements  # a few dozen lines per header, generous
    # And no copy of the pixel data: far less memory than its 512 KiB.
    tracemalloc.start()
    try:
        assert encoding_problem(big, syntax, LIMIT) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_hundred_megabyte_pixel_data_costs_one_header():
    implicit, little = False, True
    head = encode_raw(simple_dataset(), implicit, little)
    size = 100 * MB
    data = bytearray(head + element(0x7FE00010, b"OW", b"", implicit, little, length=size))
    assert encoding_problem(bytes(data) + b"\0\0", ExplicitVRLittleEndian, LIMIT) == (
        f"element (7FE0,0010) declares {size} bytes, 2 remain")
    data.extend(bytes(size))
    small_header = head + element(0x7FE00010, b"OW", b"\0\0", implicit, little)
    result, lines = traced_lines(memoryview(data), ExplicitVRLittleEndian)
    small_result, small_lines = traced_lines(small_header, ExplicitVRLittleEndian)
    assert result is None and small_result is None
    assert lines == small_lines
