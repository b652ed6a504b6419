"""Write a generated phantom as DICOM: MR series (T1w, T2w), CT series and an RT Structure Set.

The objects look like a real acquisition (MR Image Storage with spin-echo
acquisition attributes, CT Image Storage in HU) and share one study and one
Frame of Reference, exactly as an MR and a planning CT registered for
MRI-only commissioning would. They are nevertheless marked Synthetic Data =
YES: they are generated, and must never be mistaken for patient images.
Patient identity is fictitious (``PHANTOM^HEAD^0001``); every UID derives from
site and seed, so the same phantom always gives the same files.

References
----------
DICOM PS3.3 A.4 (MR Image IOD), C.8.3.1 (MR Image Module), A.3 (CT Image
IOD), A.19 (RT Structure Set IOD).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom

from models.base import ProgressCallback
from models.fileio import fsync_directory
from models.phantoms.imaging import T1_WEIGHTED, T2_WEIGHTED
from models.volume import Volume
from sct_node.dicom.image_writer import (
    dicom_date_time,
    new_dataset,
    set_image_plane,
    set_pixels_uint16,
    write_dataset_atomic,
)
from sct_node.dicom.rtstruct import RoiSpec, write_rtstruct
from sct_node.dicom.sct_writer import MANUFACTURER
from sct_node.dicom.uids import CT_IMAGE_STORAGE, MR_IMAGE_STORAGE, derive_uid

if TYPE_CHECKING:
    from models.phantoms import Phantom

__all__ = ["MR_SEQUENCES", "PhantomDicom", "phantom_identity", "write_image_series", "write_phantom_dicom"]


#: A fixed acquisition moment keeps phantom files byte-for-byte reproducible.
PHANTOM_DATE = _dt.datetime(2026, 1, 5, 9, 30, 0)


@dataclass(frozen=True)
class MrSequence:
    """Spin-echo acquisition parameters written with an MR series (ms)."""

    weighting: str
    repetition_time_ms: float
    echo_time_ms: float
    series_number: int


#: The acquisition parameters are those the phantom's signal model used, so the DICOM header tells the truth.
MR_SEQUENCES = {
    "t1": MrSequence("T1", T1_WEIGHTED.tr_ms, T1_WEIGHTED.te_ms, 2),
    "t2": MrSequence("T2", T2_WEIGHTED.tr_ms, T2_WEIGHTED.te_ms, 3),
}


@dataclass(frozen=True)
class PhantomDicom:
    """Folders written for one phantom case."""

    mr_t1_dir: Path
    mr_t2_dir: Path
    ct_dir: Path
    rtstruct_path: Path
    study_instance_uid: str
    frame_of_reference_uid: str


def write_phantom_dicom(phantom: Phantom, case_id: str, output_dir: Path,
                        progress: ProgressCallback | None = None) -> PhantomDicom:
    """Write MR T1w/T2w, CT and RT Structure Set of a phantom under ``output_dir``.

    Parameters
    ----------
    phantom : Phantom
        The generated phantom.
    case_id : str
        Case name (e.g. ``head-0001``); used in identifiers.
    output_dir : pathlib.Path
        Gets ``MR_T1/``, ``MR_T2/``, ``CT/`` and ``RTSTRUCT/``.
    progress : callable or None
        ``progress(done, total)`` over all slices written.

    Returns
    -------
    PhantomDicom
    """
    output_dir = Path(output_dir)
    root = f"phantom|{phantom.site}|{phantom.seed}|{case_id}"
    identity = phantom_identity(phantom.site, phantom.seed, case_id)
    nz = phantom.ct_hu.shape[0]
    total = 3 * nz
    counter = [0]

    def tick() -> None:
        counter[0] += 1
        if progress is not None:
            progress(counter[0], total)

    mr_dirs = {}
    for key, sequence in MR_SEQUENCES.items():
        volume = phantom.mr_t1 if key == "t1" else phantom.mr_t2
        mr_dirs[key] = write_image_series(volume, output_dir / f"MR_{key.upper()}", identity, "MR", sequence, tick)
    ct_dir = write_image_series(phantom.ct_hu, output_dir / "CT", identity, "CT", None, tick)
    ct_files = sorted(ct_dir.glob("*.dcm"))
    rois = [RoiSpec(s.name, s.mask, s.kind, s.color_rgb) for s in phantom.structures]
    rtstruct_path = write_rtstruct(
        reference_files=ct_files,
        reference_volume=phantom.ct_hu,
        rois=rois,
        path=output_dir / "RTSTRUCT" / "RS.phantom.dcm",
        sop_instance_uid=derive_uid(root, "rtstruct"),
        series_instance_uid=derive_uid(root, "rtstruct-series"),
        label=f"{phantom.site.upper()} PHANTOM",
        series_description=f"Phantom structures ({phantom.site})",
        now=PHANTOM_DATE,
    )
    return PhantomDicom(mr_dirs["t1"], mr_dirs["t2"], ct_dir, rtstruct_path,
                        identity.StudyInstanceUID, identity.FrameOfReferenceUID)


def phantom_identity(site: str, seed: int, case_id: str) -> pydicom.Dataset:
    """Patient, study and frame-of-reference attributes shared by every object of a phantom case.

    The identity is fictitious and deterministic: the same arguments give the same UIDs.
    """
    root = f"phantom|{site}|{seed}|{case_id}"
    identity = pydicom.Dataset()
    number = f"{seed:04d}"
    identity.PatientName = f"PHANTOM^{site.upper()}^{number}"
    identity.PatientID = f"SCT-PHANTOM-{case_id}"[:64]
    identity.PatientBirthDate = None
    identity.PatientSex = "O"
    identity.PatientIdentityRemoved = "YES"  # nothing to remove: there never was a patient
    identity.DeidentificationMethod = "Generated phantom; no patient data"
    identity.StudyInstanceUID = derive_uid(root, "study")
    identity.StudyDate, identity.StudyTime = dicom_date_time(PHANTOM_DATE)
    identity.ReferringPhysicianName = None
    identity.StudyID = number
    identity.AccessionNumber = None
    identity.StudyDescription = f"sct-node {site} phantom"
    identity.FrameOfReferenceUID = derive_uid(root, "frame-of-reference")
    identity.PositionReferenceIndicator = None
    identity.BodyPartExamined = "HEAD" if site == "head" else "PELVIS"
    identity.PatientPosition = "HFS"
    return identity


def write_image_series(volume: Volume, folder: Path, identity: pydicom.Dataset, modality: str,
                       sequence: MrSequence | None = None, tick: Callable[[], None] | None = None) -> Path:
    """Write a phantom volume as an MR or CT series that looks acquired.

    Parameters
    ----------
    volume : Volume
        MR signal (stored as rounded uint16) or CT numbers in HU.
    folder : pathlib.Path
        Output folder; files are ``<modality>.<SOP Instance UID>.dcm``.
    identity : pydicom.Dataset
        Patient, study and frame-of-reference attributes (see :func:`phantom_identity`).
    modality : str
        ``MR`` or ``CT``.
    sequence : MrSequence or None
        Acquisition parameters (MR only; default T1w spin echo).
    tick : callable or None
        Called after each slice.

    Returns
    -------
    pathlib.Path
        ``folder``.
    """
    if modality == "MR" and sequence is None:
        sequence = MR_SEQUENCES["t1"]
    role = f"{modality}-{sequence.weighting if sequence else 'CT'}"
    series_uid = derive_uid(identity.StudyInstanceUID, role, "series")
    date, time = dicom_date_time(PHANTOM_DATE)
    if modality == "CT":
        stored = (np.clip(np.rint(volume.array), -1024, 3071) + 1024).astype(np.uint16)
        bits_stored = 12
    else:
        stored = np.clip(np.rint(volume.array), 0, 65535).astype(np.uint16)
        bits_stored = 16
    folder.mkdir(parents=True, exist_ok=True)
    low, high = np.percentile(stored, [1, 99.5]) if modality == "MR" else (0, 0)
    for k in range(volume.shape[0]):
        sop_uid = derive_uid(series_uid, "instance", k)
        sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
        dataset = new_dataset(sop_class, sop_uid)
        dataset.SyntheticData = "YES"
        dataset.InstanceCreationDate, dataset.InstanceCreationTime = date, time
        dataset.update(identity)
        dataset.Modality = modality
        dataset.SeriesInstanceUID = series_uid
        dataset.SeriesDate, dataset.SeriesTime = date, time
        dataset.Manufacturer = MANUFACTURER
        dataset.ManufacturerModelName = "sct-node phantom generator"
        dataset.InstanceNumber = k + 1
        dataset.ContentDate, dataset.ContentTime = date, time
        dataset.AcquisitionDate, dataset.AcquisitionTime = date, time
        set_image_plane(dataset, volume, k)
        set_pixels_uint16(dataset, stored[k], bits_stored)
        if modality == "CT":
            dataset.SeriesNumber = 1
            dataset.SeriesDescription = "Phantom CT"
            dataset.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            dataset.RescaleIntercept, dataset.RescaleSlope, dataset.RescaleType = "-1024", "1", "HU"
            dataset.KVP = "120"
            dataset.AcquisitionNumber = 1
            dataset.WindowCenter, dataset.WindowWidth = ["40", "400"], ["400", "1800"]
        else:
            assert sequence is not None  # MR: defaulted to T1w above
            dataset.SeriesNumber = sequence.series_number
            dataset.SeriesDescription = f"Phantom {sequence.weighting}w SE"
            dataset.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
            dataset.ScanningSequence = "SE"
            dataset.SequenceVariant = "NONE"
            dataset.ScanOptions = None
            dataset.MRAcquisitionType = "2D"
            dataset.RepetitionTime = f"{sequence.repetition_time_ms:g}"
            dataset.EchoTime = f"{sequence.echo_time_ms:g}"
            dataset.EchoTrainLength = 1
            dataset.EchoNumbers = 1
            dataset.MagneticFieldStrength = "1.5"
            dataset.ImagingFrequency = "63.87"
            dataset.ImagedNucleus = "1H"
            dataset.SpacingBetweenSlices = dataset.SliceThickness
            dataset.AcquisitionNumber = 1
            dataset.ImagesInAcquisition = volume.shape[0]  # as scanners announce it (the expected-count rule)
            dataset.WindowCenter = f"{(low + high) / 2:.0f}"
            dataset.WindowWidth = f"{max(high - low, 1):.0f}"
        write_dataset_atomic(dataset, folder / f"{modality}.{sop_uid}.dcm")
        if tick is not None:
            tick()
    fsync_directory(folder)
    return folder
