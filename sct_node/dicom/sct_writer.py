"""Write a synthetic CT as a CT Image Storage series that planning systems import.

The sCT lives in the MR's world: same study, same Frame of Reference, the
same grid slice for slice; only the series is new. It says plainly what it
is: Synthetic Data = YES, ImageType DERIVED\\SECONDARY\\AXIAL, the generator
in the Contributing Equipment Sequence with purpose (109100, DCM,
"Synthesizing Equipment"), the model in Derivation Description, each slice
referencing its MR slice in the Source Image Sequence, and a Series
Description a person cannot misread. CT numbers are stored as 12-bit
unsigned values with Rescale Intercept -1024 and Slope 1, which represent
exactly HU -1024 .. 3071.

All UIDs derive from the source series and the model identity, so writing
the same series with the same model again yields identical UIDs.

References
----------
DICOM PS3.3 A.3 (CT Image IOD), C.8.2.1 (CT Image Module), C.7.6.1.1.2
(Derivation Description), C.7.6.1.1.4 (Source Image Sequence), C.7.5.1.1.1
(Contributing Equipment Sequence), C.12.1.1.10 (Synthetic Data); PS3.16
CID 7005 (Contributing Equipment Purposes of Reference), CID 7202 (Source
Image Purposes of Reference).
"""

from __future__ import annotations

import datetime as _dt
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.sequence import Sequence

from models.base import HU_MAX, HU_MIN, ModelCard, ProgressCallback
from models.fileio import fsync_directory
from models.volume import Volume
from sct_node import __version__
from sct_node.dicom.image_writer import (
    PATIENT_KEYWORDS,
    STUDY_KEYWORDS,
    copy_attributes,
    dicom_date_time,
    new_dataset,
    set_image_plane,
    set_pixels_uint16,
    write_dataset_atomic,
)
from sct_node.dicom.reader import ImageSeries
from sct_node.dicom.uids import CT_IMAGE_STORAGE, derive_uid
from sct_node.errors import OutputError

__all__ = ["MANUFACTURER", "WrittenSeries", "code_item", "write_sct_series"]

MANUFACTURER = "sct-node project"
#: Stored value 0 is HU -1024; 12 bits reach HU 3071.
RESCALE_INTERCEPT_HU = HU_MIN
BITS_STORED = 12
#: A derived series number that sorts next to its source in a viewer.
SERIES_NUMBER_OFFSET = 1000



@dataclass(frozen=True)
class WrittenSeries:
    """A series on disk.

    Attributes
    ----------
    series_instance_uid : str
    sop_instance_uids : tuple of str
        In slice order.
    files : tuple of pathlib.Path
        In slice order.
    """

    series_instance_uid: str
    sop_instance_uids: tuple[str, ...]
    files: tuple[Path, ...]


def code_item(value: str, scheme: str, meaning: str) -> pydicom.Dataset:
    """A Code Sequence item (PS3.3 8.8)."""
    item = pydicom.Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def write_sct_series(
    sct_hu: Volume,
    source: ImageSeries,
    model: ModelCard,
    output_dir: Path,
    *,
    progress: ProgressCallback | None = None,
    now: _dt.datetime | None = None,
    input_warning: str | None = None,
    description_prefix: str = "",
) -> WrittenSeries:
    """Write a synthetic CT on the source MR's grid as a CT series.

    The files appear in ``output_dir`` only when every slice has been written
    (they are written to a temporary folder first), so a failure leaves no
    partial series behind. File names are ``CT.<SOP Instance UID>.dcm``; a
    rewrite of the same series replaces the same files.

    Parameters
    ----------
    sct_hu : Volume
        CT numbers in HU on ``source.volume``'s grid; rounded to integers and
        clipped to [-1024, 3071].
    source : ImageSeries
        The MR series it was made from.
    model : ModelCard
        The model that made it.
    output_dir : pathlib.Path
        Folder for the files (created if needed).
    progress : callable or None
        ``progress(done, total)`` per slice.
    now : datetime or None
        Content/creation time (default: the current local time).
    input_warning : str or None
        Why the input lay outside the model's training envelope (``models.envelope``): written as Image
        Comments and appended to the Derivation Description of every slice, so the planning system shows it.
    description_prefix : str
        Put at the start of the Series Description (LO, cut to 64 characters): the QA verdict's mark
        (``QA FAIL ``, ``QA WARN ``; :func:`sct_node.report.bundle.verdict_prefix`). The node writes the sCT
        once, after its QA, so the files it delivers carry the verdict without being rewritten.

    Returns
    -------
    WrittenSeries

    Raises
    ------
    OutputError
        If the grids differ, values are not finite, or writing fails.
    """
    if not sct_hu.same_grid(source.volume):
        raise OutputError(
            f"sCT grid (shape {sct_hu.shape}, spacing {sct_hu.spacing_mm}) does not match the MR grid "
            f"(shape {source.volume.shape}, spacing {source.volume.spacing_mm}); the sCT must be slice for slice"
        )
    if source.frame_of_reference_uid is None:
        raise OutputError("the MR series has no Frame of Reference UID; the sCT could not be registered to it")
    if not np.all(np.isfinite(sct_hu.array)):
        raise OutputError("sCT contains NaN or infinite values")
    hu = np.clip(np.rint(sct_hu.array), HU_MIN, HU_MAX).astype(np.int32)
    stored = (hu - RESCALE_INTERCEPT_HU).astype(np.uint16)

    header = source.header
    series_uid = derive_uid(source.series_instance_uid, model.identity, "sct-series")
    date, time = dicom_date_time(now or _dt.datetime.now())
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".sct-node-partial-", dir=output_dir))
    except OSError as error:
        raise OutputError(f"cannot create output folder {output_dir}: {error.strerror or error}") from error
    try:
        uids, names = [], []
        for k in range(sct_hu.shape[0]):
            sop_uid = derive_uid(series_uid, "instance", k)
            dataset = _slice_dataset(header, source, sct_hu, k, stored[k], model, series_uid, sop_uid, date, time)
            if description_prefix:
                dataset.SeriesDescription = (description_prefix + dataset.SeriesDescription)[:64]
            if input_warning:
                dataset.ImageComments = input_warning[:10240]  # LT
                dataset.DerivationDescription = f"{dataset.DerivationDescription}. {input_warning}"[:1024]
            name = f"CT.{sop_uid}.dcm"
            write_dataset_atomic(dataset, staging / name)
            uids.append(str(sop_uid))
            names.append(name)
            if progress is not None:
                progress(k + 1, sct_hu.shape[0])
        fsync_directory(staging)
        for name in names:
            (staging / name).replace(output_dir / name)
        fsync_directory(output_dir)
    except OSError as error:
        raise OutputError(f"cannot write the sCT series to {output_dir}: {error.strerror or error}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return WrittenSeries(str(series_uid), tuple(uids), tuple(output_dir / n for n in names))


def _slice_dataset(header: pydicom.Dataset, source: ImageSeries, volume: Volume, k: int, pixels: np.ndarray,
                   model: ModelCard, series_uid: str, sop_uid: str, date: str, time: str) -> pydicom.FileDataset:
    dataset = new_dataset(CT_IMAGE_STORAGE, sop_uid, character_set=header.get("SpecificCharacterSet", "ISO_IR 100"))
    dataset.InstanceCreationDate, dataset.InstanceCreationTime = date, time
    dataset.SyntheticData = "YES"
    # Patient and General Study: the sCT belongs to the MR's patient and study.
    copy_attributes(header, dataset, PATIENT_KEYWORDS,
                    required_type2=("PatientName", "PatientID", "PatientBirthDate", "PatientSex"))
    copy_attributes(header, dataset, STUDY_KEYWORDS,
                    required_type2=("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"))
    # General Series
    dataset.Modality = "CT"
    dataset.SeriesInstanceUID = series_uid
    source_number = header.get("SeriesNumber", None)
    dataset.SeriesNumber = (int(source_number) if source_number not in (None, "") else 0) + SERIES_NUMBER_OFFSET
    dataset.SeriesDate, dataset.SeriesTime = date, time
    dataset.SeriesDescription = _series_description(header, model)
    dataset.PatientPosition = header.get("PatientPosition", None) or None  # Type 2C for CT: required, may be empty
    if "BodyPartExamined" in header:
        dataset.BodyPartExamined = header.BodyPartExamined
    if "Laterality" in header:
        dataset.Laterality = header.Laterality
    elif "BodyPartExamined" not in header:
        # Type 2C, required for paired body parts: with the body part unknown, say "unknown" (empty).
        dataset.Laterality = None
    # Frame of Reference: the MR's, so the sCT overlays the MR exactly.
    dataset.FrameOfReferenceUID = source.frame_of_reference_uid
    dataset.PositionReferenceIndicator = header.get("PositionReferenceIndicator", None) or None
    # General Equipment: the node made this image.
    dataset.Manufacturer = MANUFACTURER
    dataset.ManufacturerModelName = "sct-node"
    dataset.SoftwareVersions = [__version__, f"{model.name} {model.version}"]
    dataset.ContributingEquipmentSequence = Sequence([_contributing_equipment(model, date, time)])
    # General Image
    dataset.InstanceNumber = k + 1
    dataset.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    dataset.ContentDate, dataset.ContentTime = date, time
    dataset.DerivationDescription = (f"Synthetic CT generated from MR by model {model.name} {model.version} "
                                     f"({model.content_hash}) with sct-node {__version__}")[:1024]
    reference = source.slices[k]
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = reference.sop_class_uid
    item.ReferencedSOPInstanceUID = reference.sop_instance_uid
    if reference.frame_number is not None:
        item.ReferencedFrameNumber = reference.frame_number
    item.PurposeOfReferenceCodeSequence = Sequence(
        [code_item("121322", "DCM", "Source image for image processing operation")])
    dataset.SourceImageSequence = Sequence([item])
    # Image Plane and Image Pixel
    set_image_plane(dataset, volume, k)
    set_pixels_uint16(dataset, pixels, BITS_STORED)
    # CT Image
    dataset.RescaleIntercept = str(RESCALE_INTERCEPT_HU)
    dataset.RescaleSlope = "1"
    dataset.RescaleType = "HU"
    dataset.KVP = None  # Type 2: no X-ray acquisition took place
    dataset.AcquisitionNumber = None
    # VOI LUT: soft tissue and bone windows.
    dataset.WindowCenter = ["40", "400"]
    dataset.WindowWidth = ["400", "1800"]
    dataset.WindowCenterWidthExplanation = ["SOFT TISSUE", "BONE"]
    return dataset


def _series_description(header: pydicom.Dataset, model: ModelCard) -> str:
    """``SYNTHETIC CT (<model>) from <MR series description>``, at most 64 characters (LO)."""
    text = f"SYNTHETIC CT ({model.name})"
    source = str(header.get("SeriesDescription", "") or "").strip()
    if source:
        text += f" from {source}"
    return text[:64]


def _contributing_equipment(model: ModelCard, date: str, time: str) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.PurposeOfReferenceCodeSequence = Sequence([code_item("109100", "DCM", "Synthesizing Equipment")])
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = f"sct-node model {model.name}"[:64]
    item.SoftwareVersions = [__version__, model.version]
    item.ContributionDateTime = date + time.split(".")[0]
    item.ContributionDescription = f"{model.description} Model identity {model.identity}."[:1024]
    return item
