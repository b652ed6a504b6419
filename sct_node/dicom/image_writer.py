"""Building blocks shared by every image series the node writes (phantom MR/CT, synthetic CT).

Each ``set_*`` function fills one module of the DICOM information model, so
the series writers read as a list of the modules their IOD requires. Files
are written in Explicit VR Little Endian with our own Implementation Class
UID, and atomically (temporary file, fsync, rename), so a reader never sees a
half-written instance.

References
----------
DICOM PS3.3 A.4 (CT Image IOD), A.8 (MR Image IOD), C.7.1.1 Patient,
C.7.2.1 General Study, C.7.3.1 General Series, C.7.4.1 Frame of Reference,
C.7.5.1 General Equipment, C.7.6.1 General Image, C.7.6.2 Image Plane,
C.7.6.3 Image Pixel, C.12.1 SOP Common; PS3.10 7.1 (File Meta Information).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from models.fileio import write_atomic
from models.volume import Volume
from sct_node import __version__
from sct_node.dicom.uids import IMPLEMENTATION_CLASS_UID
from sct_node.errors import OutputError

__all__ = [
    "PATIENT_KEYWORDS",
    "STUDY_KEYWORDS",
    "copy_attributes",
    "decimal_string",
    "dicom_date_time",
    "new_dataset",
    "set_image_plane",
    "set_pixels_uint16",
    "write_dataset_atomic",
]

#: Patient module (and common optional patient attributes) copied to derived objects.
PATIENT_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "OtherPatientIDsSequence",
    "PatientAge", "PatientSize", "PatientWeight", "PatientIdentityRemoved", "DeidentificationMethod",
    "DeidentificationMethodCodeSequence", "PatientComments",
)
#: General Study module attributes copied to derived objects (same study).
STUDY_KEYWORDS = (
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "StudyDescription", "IssuerOfAccessionNumberSequence",
)

#: Implementation Version Name (PS3.7 D.3.3.2.2): 16 characters at most.
IMPLEMENTATION_VERSION_NAME = f"SCTNODE_{__version__}"[:16]


def new_dataset(sop_class_uid: str, sop_instance_uid: str, character_set: str | None = "ISO_IR 100") -> pydicom.FileDataset:
    """An empty Part 10 data set with file meta information and SOP Common identity.

    Parameters
    ----------
    sop_class_uid, sop_instance_uid : str
        Identity of the new instance.
    character_set : str or None
        Specific Character Set; copy the source's when patient data is copied.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    # pydicom takes None for a data set not read from a file; its annotation of filename_or_obj omits None.
    dataset = pydicom.FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)  # type: ignore[arg-type]
    if character_set:
        dataset.SpecificCharacterSet = character_set
    dataset.SOPClassUID = sop_class_uid
    dataset.SOPInstanceUID = sop_instance_uid
    return dataset


def copy_attributes(source: pydicom.Dataset, target: pydicom.Dataset, keywords: tuple[str, ...],
                    required_type2: tuple[str, ...] = ()) -> None:
    """Copy attributes present in ``source``; create empty Type 2 ones that are absent.

    Parameters
    ----------
    source, target : pydicom.Dataset
        Where from, where to.
    keywords : tuple of str
        Attributes to copy when present.
    required_type2 : tuple of str
        Attributes that must exist in ``target`` (zero length when unknown).
    """
    for keyword in keywords:
        if keyword in source:
            target[keyword] = source[keyword]
    for keyword in required_type2:
        if keyword not in target:
            setattr(target, keyword, None)


def dicom_date_time(moment: _dt.datetime) -> tuple[str, str]:
    """DICOM DA and TM strings of a moment."""
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S.%f")[:13]


def set_image_plane(dataset: pydicom.Dataset, volume: Volume, k: int) -> None:
    """Fill the Image Plane module for slice ``k`` of ``volume``.

    Pixel Spacing is (row spacing, column spacing), i.e. (y, x) — the order
    DICOM uses and rt-utils once got wrong.
    """
    row_direction, column_direction = volume.direction[:, 0], volume.direction[:, 1]
    dataset.ImageOrientationPatient = [decimal_string(v) for v in np.r_[row_direction, column_direction]]
    position = volume.slice_position_mm(k)
    dataset.ImagePositionPatient = [decimal_string(v) for v in position]
    dataset.PixelSpacing = [decimal_string(volume.spacing_mm[1]), decimal_string(volume.spacing_mm[0])]
    dataset.SliceThickness = decimal_string(volume.spacing_mm[2])
    # Slice Location is the position along the normal (PS3.3 C.7.6.2.1.2); informative only.
    dataset.SliceLocation = decimal_string(float(np.asarray(position) @ volume.slice_normal))


def set_pixels_uint16(dataset: pydicom.Dataset, pixels: np.ndarray, bits_stored: int) -> None:
    """Fill the Image Pixel module with unsigned 16-bit greyscale pixels.

    Raises
    ------
    OutputError
        If a value does not fit in ``bits_stored`` bits.
    """
    if pixels.min() < 0 or pixels.max() >= 2 ** bits_stored:
        raise OutputError(f"pixel values {pixels.min()}..{pixels.max()} do not fit {bits_stored} bits")
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows, dataset.Columns = (int(n) for n in pixels.shape)
    dataset.BitsAllocated = 16
    dataset.BitsStored = bits_stored
    dataset.HighBit = bits_stored - 1
    dataset.PixelRepresentation = 0
    dataset.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()


def write_dataset_atomic(dataset: pydicom.Dataset, path: Path) -> Path:
    """Write a data set (with its file meta information) as a Part 10 file so that ``path`` is either absent or
    complete.

    Raises
    ------
    OutputError
        If the file cannot be written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda stream: dataset.save_as(stream, enforce_file_format=True))
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from error
    return path


def decimal_string(value: float) -> str:
    """A DICOM Decimal String (DS) of at most 16 characters that keeps sub-micrometre precision: the one way the
    writers format DS values."""
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    if len(text) > 16:
        text = f"{float(value):.10g}"
    return text


def derived_object(sop_class_uid: str, sop_instance_uid: str, source: pydicom.Dataset, *, modality: str,
                   series_instance_uid: str, series_number_offset: int, series_description: str, date: str,
                   time: str, frame_of_reference: bool = True) -> pydicom.FileDataset:
    """A new object in the patient, study (and frame of reference) of ``source``, an sCT instance.

    Fills SOP Common (creation date/time; Synthetic Data YES when the source has it — the attribute is in
    SOP Common, PS3.3 C.12.1, so every IOD may carry it), Patient and General Study (copied), the series
    attributes (Series Number = the source's plus ``series_number_offset``), optionally Frame of Reference,
    and General Equipment. The caller adds the IOD's own modules.
    """
    from sct_node import __version__

    dataset = new_dataset(sop_class_uid, sop_instance_uid,
                          character_set=source.get("SpecificCharacterSet", "ISO_IR 100"))
    dataset.InstanceCreationDate, dataset.InstanceCreationTime = date, time
    if source.get("SyntheticData", None) == "YES":
        dataset.SyntheticData = "YES"  # derived from a synthetic image
    copy_attributes(source, dataset, PATIENT_KEYWORDS,
                    required_type2=("PatientName", "PatientID", "PatientBirthDate", "PatientSex"))
    copy_attributes(source, dataset, STUDY_KEYWORDS,
                    required_type2=("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"))
    dataset.Modality = modality
    dataset.SeriesInstanceUID = series_instance_uid
    dataset.SeriesNumber = int(source.get("SeriesNumber", 0) or 0) + series_number_offset
    dataset.SeriesDate, dataset.SeriesTime = date, time
    dataset.SeriesDescription = series_description[:64]
    dataset.OperatorsName = None
    if frame_of_reference:
        dataset.FrameOfReferenceUID = source.FrameOfReferenceUID
        dataset.PositionReferenceIndicator = source.get("PositionReferenceIndicator", None) or None
    dataset.Manufacturer = "sct-node project"
    dataset.ManufacturerModelName = "sct-node"
    dataset.SoftwareVersions = __version__
    return dataset
