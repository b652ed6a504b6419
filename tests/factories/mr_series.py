"""Synthetic single-frame MR series for reader tests, in any transfer syntax.

Series are written by the project's own phantom series writer (Explicit VR
Little Endian) and then re-encoded with pydicom, so every transfer syntax
holds the same pixels and the reader can be checked against the volume.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from models.volume import Volume
from sct_node.tools.phantom_writer import MR_SEQUENCES, phantom_identity, write_image_series

TRANSFER_SYNTAXES = {
    "implicit_le": ImplicitVRLittleEndian,
    "explicit_le": ExplicitVRLittleEndian,
    "explicit_be": ExplicitVRBigEndian,
    "deflate": DeflatedExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg_ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
}


def make_volume(shape_zyx=(6, 40, 48), spacing_mm=(0.9, 1.1, 3.0), origin_mm=(-10.0, -12.0, 30.0),
                direction=None, seed: int = 0) -> Volume:
    """A volume of distinct, non-negative integer values (so any reordering is detectable)."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 4000, size=shape_zyx).astype(np.float32)
    array[:, 0, 0] = np.arange(shape_zyx[0]) * 10  # slice signature
    return Volume(array, spacing_mm, origin_mm, np.eye(3) if direction is None else direction)


def write_mr_series(volume: Volume, folder: Path, *, transfer_syntax: str = "explicit_le", case: str = "t",
                    mutate: Callable[[int, pydicom.Dataset], None] | None = None) -> list[Path]:
    """Write ``volume`` as an MR series in ``folder`` and re-encode it.

    Parameters
    ----------
    transfer_syntax : str
        A key of :data:`TRANSFER_SYNTAXES`.
    case : str
        Case name: different cases give different study/series UIDs.
    mutate : callable or None
        ``mutate(k, dataset)`` edits slice ``k`` before it is saved again.

    Returns
    -------
    list of pathlib.Path
        The files, in slice order.
    """
    identity = phantom_identity("head", 0, case)
    write_image_series(volume, folder, identity, "MR", MR_SEQUENCES["t1"])
    files = sorted(folder.glob("MR.*.dcm"), key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))
    syntax = TRANSFER_SYNTAXES[transfer_syntax]
    for k, path in enumerate(files):
        dataset = pydicom.dcmread(path)
        if mutate is not None:
            mutate(k, dataset)
        if syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
            dataset.compress(syntax)
            dataset.save_as(path, enforce_file_format=True)
        elif syntax == ExplicitVRBigEndian:
            pixels = np.frombuffer(dataset.PixelData, dtype="<u2")
            dataset.PixelData = pixels.astype(">u2").tobytes()
            dataset.file_meta.TransferSyntaxUID = syntax
            dataset.preamble = b"\0" * 128
            dcmwrite(path, dataset, implicit_vr=False, little_endian=False, force_encoding=True)
        elif syntax != ExplicitVRLittleEndian or mutate is not None:
            dataset.file_meta.TransferSyntaxUID = syntax
            dataset.save_as(path, enforce_file_format=True)
    return files
