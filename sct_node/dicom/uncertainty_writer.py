"""Write an ensemble's uncertainty map (per-voxel standard deviation, HU) as a DICOM Parametric Map on the sCT.

``sct-node translate --ensemble N`` computes the standard deviation of N diffusion samples at every voxel;
the QA checks it, and a physicist wants to see where it is high. A Parametric Map (PS3.3 A.75) is the
IOD for a real-valued map derived from images: float pixels with a Real World Value Mapping that says what
they are (here the standard deviation, in Hounsfield units), in the sCT's frame of reference, referencing
the sCT instances it was computed for. Viewers that read Parametric Maps (3D Slicer, OHIF, Weasis) show
it as an overlay; the same map is also written as MHA for research tools.

It is deliberately not a CT series: an image of HU standard deviations in a CT series could be taken for
HU by a planning system.

Built with highdicom (its ``ParametricMap``), which writes the multi-frame functional groups, the
dimension index and the derivation references.

References
----------
DICOM PS3.3 A.75 (Parametric Map IOD), C.7.6.16.2.11 (Real World Value Mapping), C.8.32 (Parametric Map
Image Module); UCUM "[hnsf'U]" (Hounsfield unit) as in PS3.16 CID 7181.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom

from models.volume import Volume
from sct_node import __version__
from sct_node.dicom.image_writer import write_dataset_atomic
from sct_node.errors import OutputError

__all__ = ["UNCERTAINTY_SERIES_NUMBER_OFFSET", "read_uncertainty_map", "write_uncertainty_map"]

#: The map's series number is the sCT's plus this (RT Structure Set +100, SR +200, PDF +300).
UNCERTAINTY_SERIES_NUMBER_OFFSET = 400


def write_uncertainty_map(*, uncertainty_hu: Volume, sct_files: Sequence[Path], path: Path, sop_instance_uid: str,
                          series_instance_uid: str, model_identity: str) -> Path:
    """Write the map as a Parametric Map referencing the sCT series it belongs to.

    Raises
    ------
    OutputError
        The map is not on the sCT's grid, holds NaN or negative values, or cannot be written.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    headers = sorted((pydicom.dcmread(f) for f in sct_files), key=lambda d: int(d.InstanceNumber))
    if len(headers) != uncertainty_hu.shape[0]:
        raise OutputError(f"uncertainty map has {uncertainty_hu.shape[0]} slices, the sCT series "
                          f"{len(headers)} instances: not the same grid")
    values = np.asarray(uncertainty_hu.array, dtype=np.float32)
    if not np.all(np.isfinite(values)) or values.min() < 0:
        raise OutputError("uncertainty map holds NaN, infinite or negative values: not a standard deviation")
    if values.shape[1:] != (int(headers[0].Rows), int(headers[0].Columns)):
        raise OutputError(f"uncertainty map slices are {values.shape[1:]}, the sCT's "
                          f"{(int(headers[0].Rows), int(headers[0].Columns))}")
    order = _slice_order(headers, uncertainty_hu)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="SD_HU", lut_explanation="ensemble standard deviation of the synthetic CT, HU",
        unit=hd.sr.CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit"),
        value_range=(float(values.min()), float(max(values.max(), values.min() + 1e-3))), slope=1.0, intercept=0.0,
        quantity_definition=codes.SCT.StandardDeviation)
    series_number = int(headers[0].get("SeriesNumber", 1) or 1) + UNCERTAINTY_SERIES_NUMBER_OFFSET
    try:
        parametric_map = hd.pm.ParametricMap(
            source_images=headers, pixel_array=values[order], series_instance_uid=series_instance_uid,
            series_number=series_number, sop_instance_uid=sop_instance_uid, instance_number=1,
            manufacturer="sct-node project", manufacturer_model_name="sct-node",
            software_versions=__version__, device_serial_number="0",
            contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
            voi_lut_transformations=[hd.content.VOILUTTransformation(window_center=100.0, window_width=200.0)],
            content_label="SCT_SD",
            content_description=f"sCT ensemble SD (HU), {model_identity}"[:64],
            series_description="sCT ensemble uncertainty (SD, HU)")
    except (ValueError, TypeError) as error:
        raise OutputError(f"cannot build the uncertainty Parametric Map: {error}") from None
    parametric_map.SyntheticData = "YES"
    # General Series Laterality is Type 2C (paired body parts, no Frame Laterality): empty, as the sCT's.
    parametric_map.Laterality = None
    return write_dataset_atomic(parametric_map, Path(path))


def _slice_order(headers: Sequence[pydicom.Dataset], grid: Volume) -> np.ndarray:
    """For each header (in instance order), the index of its slice in ``grid``."""
    order = []
    for header in headers:
        k = grid.patient_to_index(np.asarray(header.ImagePositionPatient, dtype=float))[2]
        if abs(k - round(k)) > 0.01:
            raise OutputError(f"sCT instance {header.InstanceNumber} lies between the map's slices")
        order.append(int(round(k)))
    return np.asarray(order)


def read_uncertainty_map(path: Path, grid: Volume) -> Volume:
    """An uncertainty map written by ``translate --ensemble`` (its ``.mha`` or the Parametric Map, or the
    folder holding them) on ``grid``, the sCT's.

    Raises
    ------
    InputError
        Unreadable, not a map of this sCT's grid, or negative values.
    """
    from sct_node.errors import InputError

    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.mha"))
        if not candidates:
            raise InputError(f"{path}: no uncertainty.mha in this folder")
        path = candidates[0]
    try:
        if path.suffix.lower() in (".mha", ".mhd", ".nii", ".gz"):
            import SimpleITK as sitk

            volume = Volume.from_sitk(sitk.ReadImage(str(path)))
        else:
            volume = _read_parametric_map(path, grid)
    except (OSError, RuntimeError, ValueError, AttributeError, pydicom.errors.InvalidDicomError) as error:
        raise InputError(f"{path}: cannot read the uncertainty map ({error})") from None
    if not volume.same_grid(grid, tolerance_mm=0.01):
        raise InputError(f"{path}: the uncertainty map is not on the sCT's grid (shape {volume.shape} vs "
                         f"{grid.shape})")
    if not np.all(np.isfinite(volume.array)) or volume.array.min() < 0:
        raise InputError(f"{path}: the uncertainty map holds NaN or negative values")
    return grid.with_array(volume.array.astype(np.float32))


def _read_parametric_map(path: Path, grid: Volume) -> Volume:
    dataset = pydicom.dcmread(path)
    if str(dataset.SOPClassUID) != pydicom.uid.ParametricMapStorage:
        raise ValueError(f"not a Parametric Map (SOP Class {dataset.SOPClassUID})")
    frames = np.asarray(dataset.pixel_array, dtype=np.float32).reshape(-1, int(dataset.Rows), int(dataset.Columns))
    positions = [np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
                 for item in dataset.PerFrameFunctionalGroupsSequence]
    array = np.zeros(grid.shape, dtype=np.float32)
    for frame, position in zip(frames, positions):
        k = int(round(grid.patient_to_index(position)[2]))
        if not 0 <= k < grid.shape[0]:
            raise ValueError("a frame lies outside the sCT's grid")
        array[k] = frame
    return grid.with_array(array)
