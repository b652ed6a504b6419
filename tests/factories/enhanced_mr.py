"""Synthetic multi-frame Enhanced MR Image Storage objects for reader tests.

Written from the DICOM standard, not from the project's reader, so that the
reader is tested against the standard rather than against itself. One object
holds a whole :class:`~models.volume.Volume` (one frame per slice and echo);
frames are shuffled by default so that a reader must sort them by geometry.

Attribute layout
----------------
Shared Functional Groups (one item):
    Pixel Value Transformation (``rescale``, or slope 1 / intercept 0 when
    ``rescale`` is None, because Table A.36-2 requires it for MONOCHROME2),
    Frame Anatomy, MR Image Frame Type, MR Timing and Related Parameters,
    MR FOV/Geometry, MR Modifier, MR Imaging Modifier, MR Receive Coil,
    MR Transmit Coil, MR Diffusion, MR Averages; Plane Orientation and Pixel
    Measures when ``per_frame_geometry`` is False.
Per-frame Functional Groups (one item per frame):
    Frame Content (Stack ID, In-Stack Position Number, Dimension Index
    Values), Plane Position, MR Echo (Effective Echo Time); Plane Orientation
    and Pixel Measures when ``per_frame_geometry`` is True.
Dimensions (Dimension Index Values, in this order):
    Stack ID (always "1"), In-Stack Position Number (``k + 1`` for volume
    slice ``k``), and Effective Echo Time (``e + 1`` for ``echo_times_ms[e]``)
    when more than one echo is written. No Temporal Position Index: the
    object holds no temporal series.

``dciodvfy`` (dicom3tools) reports no errors and no warnings (other than the
DICOMDIR notes it prints for any file) on the objects written here; see
``test_enhanced_mr_factory.py``.

References
----------
DICOM PS3.3 A.36.2 (Enhanced MR Image IOD), C.7.6.16 (Multi-frame Functional
Groups), C.7.6.17 (Multi-frame Dimension), C.8.13 (Enhanced MR modules and
functional group macros), C.8.16.1 (Image Type for enhanced images).
DICOM PS3.5 A.4.2 (RLE Lossless).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from models.volume import Volume

__all__ = ["ECHO_GAIN_PER_INDEX", "FRAME_ORDERS", "make_enhanced_mr", "write_enhanced_mr"]

#: Accepted values of ``frame_order``.
FRAME_ORDERS = ("ascending", "descending", "shuffled")
#: Echo ``e`` holds ``volume * (1 + ECHO_GAIN_PER_INDEX * e)`` so that echoes differ.
ECHO_GAIN_PER_INDEX = 0.1

_SUPPORTED_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, RLELossless)
_SHUFFLE_SEED = 20240917
# Fixed dates and times: the same call must give the same bytes.
_DATE, _TIME = "20240102", "093000"
_DATETIME = _DATE + _TIME
_REPETITION_TIME_MS = 500.0

# Common CT/MR and MR Image Description macros (C.8.16.2, C.8.13.3); value 3
# of Image Type is the image flavor (C.8.16.1.3), value 4 the derived pixel
# contrast, NONE for ORIGINAL images.
_IMAGE_TYPE = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
_IMAGE_DESCRIPTION = dict(
    PixelPresentation="MONOCHROME", VolumetricProperties="VOLUME", VolumeBasedCalculationTechnique="NONE",
    ComplexImageComponent="MAGNITUDE", AcquisitionContrast="T1",
)
_PATIENT_STUDY_SERIES = dict(
    SpecificCharacterSet="ISO_IR 100", InstanceCreationDate=_DATE, InstanceCreationTime=_TIME,
    PatientName="PHANTOM^ENHANCED", PatientID="SCT-TEST-0001", PatientBirthDate="", PatientSex="O",
    StudyDate=_DATE, StudyTime=_TIME, ReferringPhysicianName="", StudyID="1", AccessionNumber="",
    StudyDescription="Synthetic Enhanced MR test object",
    Modality="MR", SeriesNumber=1, SeriesDate=_DATE, SeriesTime=_TIME,
    SeriesDescription="Synthetic multi-frame MR", PatientPosition="HFS", PositionReferenceIndicator="",
    Manufacturer="SCT-NODE TEST FACTORY", ManufacturerModelName="enhanced_mr.py", DeviceSerialNumber="0001",
    SoftwareVersions="1",
)
# Enhanced MR Image module with the MR Image and Spectroscopy Instance macro (C.8.13.1, C.8.13.2).
_ENHANCED_MR_IMAGE = dict(
    ImageType=_IMAGE_TYPE, **_IMAGE_DESCRIPTION, AcquisitionNumber=1, AcquisitionDateTime=_DATETIME,
    ContentQualification="RESEARCH", ResonantNucleus="1H", KSpaceFiltering="NONE", MagneticFieldStrength=1.5,
    ApplicableSafetyStandardAgency="IEC", PresentationLUTShape="IDENTITY", BurnedInAnnotation="NO",
    LossyImageCompression="00", ImageComments="Synthetic data for software tests",
    InstanceNumber=1, ContentDate=_DATE, ContentTime=_TIME,
)
# MR Pulse Sequence module (C.8.13.4), required when Image Type value 1 is ORIGINAL.
_MR_PULSE_SEQUENCE = dict(
    PulseSequenceName="SE", MRAcquisitionType="3D", EchoPulseSequence="SPIN", MultiPlanarExcitation="NO",
    PhaseContrast="NO", TimeOfFlightContrast="NO", SteadyStatePulseSequence="NONE", EchoPlanarPulseSequence="NO",
    SaturationRecovery="NO", SpectrallySelectedSuppression="NONE", OversamplingPhase="NONE",
    GeometryOfKSpaceTraversal="RECTILINEAR", RectilinearPhaseEncodeReordering="LINEAR",
    SegmentedKSpaceTraversal="SINGLE", CoverageOfKSpace="FULL", NumberOfKSpaceTrajectories=1,
)


def _item(**attributes: object) -> Dataset:
    """A dataset (sequence item) built from DICOM keywords."""
    ds = Dataset()
    ds.update(attributes)
    return ds


def _seq(*items: Dataset) -> DicomSequence:
    return DicomSequence(list(items))


def _ds_str(value: float) -> str:
    """A Decimal String (at most 16 characters) for ``value``."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.8e}"


def _check_arguments(
    volume: Volume,
    echo_times_ms: Sequence[float],
    rescale: tuple[float, float] | None,
    frame_order: str,
    transfer_syntax: str,
) -> None:
    """Validate the arguments of :func:`make_enhanced_mr` at the boundary."""
    if not isinstance(volume, Volume):
        raise TypeError(f"volume must be a models.volume.Volume; found {type(volume).__name__}")
    if not np.issubdtype(volume.array.dtype, np.number) or np.iscomplexobj(volume.array):
        raise ValueError(f"volume.array must hold real numbers; found dtype {volume.array.dtype}")
    times = [float(t) for t in echo_times_ms]
    if not times or not all(np.isfinite(t) and t > 0 for t in times) or len(set(times)) != len(times):
        raise ValueError(f"echo_times_ms must be distinct positive numbers; found {list(echo_times_ms)}")
    if rescale is not None and (
        len(rescale) != 2 or not all(np.isfinite(float(v)) for v in rescale) or float(rescale[0]) == 0
    ):
        raise ValueError(f"rescale must be (slope, intercept) with a finite non-zero slope; found {rescale}")
    if frame_order not in FRAME_ORDERS:
        raise ValueError(f"frame_order must be one of {FRAME_ORDERS}; found {frame_order!r}")
    if transfer_syntax not in _SUPPORTED_TRANSFER_SYNTAXES:
        raise ValueError(
            f"transfer_syntax must be Explicit VR Little Endian or RLE Lossless; found {transfer_syntax!r}"
        )


def _stored_frames(volume: Volume, echo_count: int, slope: float, intercept: float) -> np.ndarray:
    """Stored uint16 values ``(echo, z, y, x)``: ``(value - intercept) / slope``, rounded and clipped."""
    values = volume.array.astype(np.float64)
    echoes = np.stack([values * (1.0 + ECHO_GAIN_PER_INDEX * e) for e in range(echo_count)])
    return np.clip(np.rint((echoes - intercept) / slope), 0, 65535).astype(np.uint16)


def _frame_order(slice_count: int, echo_count: int, frame_order: str) -> list[tuple[int, int]]:
    """``(echo index, slice index)`` of each frame, in the order written to the object."""
    slices = range(slice_count) if frame_order != "descending" else range(slice_count - 1, -1, -1)
    frames = [(e, k) for e in range(echo_count) for k in slices]
    if frame_order == "shuffled":
        frames = [frames[i] for i in np.random.default_rng(_SHUFFLE_SEED).permutation(len(frames))]
    return frames


def _geometry(volume: Volume) -> dict[str, DicomSequence]:
    """Plane Orientation and Pixel Measures functional groups (C.7.6.16.2.4, C.7.6.16.2.1)."""
    row_direction, column_direction = volume.direction[:, 0], volume.direction[:, 1]
    spacing_x_mm, spacing_y_mm, spacing_z_mm = volume.spacing_mm
    return dict(
        PlaneOrientationSequence=_seq(
            _item(ImageOrientationPatient=[_ds_str(v) for v in (*row_direction, *column_direction)])
        ),
        PixelMeasuresSequence=_seq(
            _item(
                # Spacing between rows (along y) first, then between columns (along x).
                PixelSpacing=[_ds_str(spacing_y_mm), _ds_str(spacing_x_mm)],
                SliceThickness=_ds_str(spacing_z_mm),
                SpacingBetweenSlices=_ds_str(spacing_z_mm),
            )
        ),
    )


def _shared_groups(volume: Volume, echo_count: int, slope: float, intercept: float) -> Dataset:
    """Functional groups identical for every frame (Table A.36-2, C.8.13.5)."""
    nz, ny, nx = volume.shape
    operating_modes = [
        _item(OperatingModeType=kind, OperatingMode="IEC_NORMAL") for kind in ("STATIC FIELD", "RF", "GRADIENT")
    ]
    return _item(
        PixelValueTransformationSequence=_seq(
            _item(RescaleIntercept=_ds_str(intercept), RescaleSlope=_ds_str(slope), RescaleType="US")
        ),
        FrameAnatomySequence=_seq(
            _item(
                AnatomicRegionSequence=_seq(
                    _item(CodeValue="12921003", CodingSchemeDesignator="SCT", CodeMeaning="Pelvis")
                ),
                FrameLaterality="U",
            )
        ),
        MRImageFrameTypeSequence=_seq(_item(FrameType=_IMAGE_TYPE, **_IMAGE_DESCRIPTION)),
        MRTimingAndRelatedParametersSequence=_seq(
            _item(
                RepetitionTime=_REPETITION_TIME_MS, FlipAngle=90.0, EchoTrainLength=echo_count,
                RFEchoTrainLength=echo_count, GradientEchoTrainLength=0,
                SpecificAbsorptionRateSequence=_seq(
                    _item(SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY", SpecificAbsorptionRateValue=0.5)
                ),
                GradientOutputType="DB_DT", GradientOutput=10.0, OperatingModeSequence=_seq(*operating_modes),
            )
        ),
        MRFOVGeometrySequence=_seq(
            _item(
                InPlanePhaseEncodingDirection="COLUMN", MRAcquisitionFrequencyEncodingSteps=nx,
                MRAcquisitionPhaseEncodingStepsInPlane=ny, MRAcquisitionPhaseEncodingStepsOutOfPlane=nz,
                PercentSampling=100.0, PercentPhaseFieldOfView=100.0,
            )
        ),
        MRModifierSequence=_seq(
            _item(
                InversionRecovery="NO", FlowCompensation="NONE", Spoiling="NONE", T2Preparation="NO",
                SpectrallySelectedExcitation="NONE", SpatialPresaturation="NONE", PartialFourier="NO",
                ParallelAcquisition="NO",
            )
        ),
        MRImagingModifierSequence=_seq(
            _item(
                MagnetizationTransfer="NONE", BloodSignalNulling="NO", Tagging="NONE",
                TransmitterFrequency=63.87, PixelBandwidth=200.0,
            )
        ),
        MRReceiveCoilSequence=_seq(
            _item(
                ReceiveCoilName="BODY", ReceiveCoilManufacturerName="SYNTHETIC", ReceiveCoilType="BODY",
                QuadratureReceiveCoil="YES",
            )
        ),
        MRTransmitCoilSequence=_seq(
            _item(TransmitCoilName="BODY", TransmitCoilManufacturerName="SYNTHETIC", TransmitCoilType="BODY")
        ),
        MRDiffusionSequence=_seq(_item(DiffusionBValue=0.0, DiffusionDirectionality="NONE")),
        MRAveragesSequence=_seq(_item(NumberOfAverages=1.0)),
    )


def _per_frame_group(
    volume: Volume, echo_index: int, slice_index: int, echo_time_ms: float, multi_echo: bool, per_frame_geometry: bool
) -> Dataset:
    """Per-frame functional groups of one frame (C.7.6.16.2.2, C.7.6.16.2.3, C.8.13.5.4)."""
    dimension_index = [1, slice_index + 1] + ([echo_index + 1] if multi_echo else [])
    position_mm = volume.index_to_patient(np.array([0.0, 0.0, float(slice_index)]))
    group = _item(
        FrameContentSequence=_seq(
            _item(
                FrameAcquisitionNumber=1, FrameReferenceDateTime=_DATETIME, FrameAcquisitionDateTime=_DATETIME,
                FrameAcquisitionDuration=_REPETITION_TIME_MS, DimensionIndexValues=dimension_index,
                StackID="1", InStackPositionNumber=slice_index + 1,
            )
        ),
        PlanePositionSequence=_seq(_item(ImagePositionPatient=[_ds_str(v) for v in position_mm])),
        MREchoSequence=_seq(_item(EffectiveEchoTime=echo_time_ms)),
    )
    if per_frame_geometry:
        group.update(_geometry(volume))
    return group


def _dimension_module(organization_uid: str, multi_echo: bool) -> dict[str, DicomSequence]:
    """Multi-frame Dimension module (C.7.6.17)."""
    pointers = [
        ("StackID", "FrameContentSequence", "Stack"),
        ("InStackPositionNumber", "FrameContentSequence", "Slice"),
    ]
    if multi_echo:
        pointers.append(("EffectiveEchoTime", "MREchoSequence", "Echo time"))
    indices = [
        _item(
            DimensionOrganizationUID=organization_uid, DimensionIndexPointer=Tag(index),
            FunctionalGroupPointer=Tag(group), DimensionDescriptionLabel=label,
        )
        for index, group, label in pointers
    ]
    return dict(
        DimensionOrganizationSequence=_seq(_item(DimensionOrganizationUID=organization_uid)),
        DimensionIndexSequence=_seq(*indices),
    )


def _call_digest(volume: Volume, *options: object) -> str:
    """Hex digest of the volume and the options: the fixed entropy of the default UIDs."""
    digest = hashlib.sha256(np.ascontiguousarray(volume.array).tobytes())
    digest.update(repr((volume.array.dtype.str, volume.shape, volume.spacing_mm, volume.origin_mm)).encode())
    digest.update(np.round(volume.direction, 12).tobytes())
    digest.update(repr(options).encode())
    return digest.hexdigest()


def make_enhanced_mr(
    volume: Volume,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    echo_times_ms: Sequence[float] = (15.0,),
    rescale: tuple[float, float] | None = None,
    per_frame_geometry: bool = True,
    frame_order: str = "shuffled",
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> pydicom.FileDataset:
    """Build one Enhanced MR Image Storage object holding ``volume``.

    Parameters
    ----------
    volume : Volume
        Image and geometry; slice ``k`` is the frame whose Image Position
        (Patient) is ``volume.index_to_patient([0, 0, k])``, with Rows = y and
        Columns = x.
    study_uid, series_uid, frame_of_reference_uid : str, optional
        UIDs to use; by default derived from the volume and the options with
        ``generate_uid(entropy_srcs=...)``, so the same call gives the same UIDs.
    echo_times_ms : sequence of float
        Distinct effective echo times (ms). With more than one, echo ``e`` is
        a full volume of frames holding ``volume * (1 + 0.1 * e)``.
    rescale : tuple of float, optional
        ``(slope, intercept)``: stored values are ``(value - intercept) /
        slope``. Without it the shared Pixel Value Transformation is the
        identity. Stored values are always rounded and clipped to 0..65535.
    per_frame_geometry : bool
        Put Plane Orientation and Pixel Measures in every per-frame item
        (True) or once in the shared item (False). Plane Position is always
        per frame.
    frame_order : {"ascending", "descending", "shuffled"}
        Order of the frames in the object; "shuffled" uses a fixed seed.
    transfer_syntax : str
        Explicit VR Little Endian or RLE Lossless.

    Returns
    -------
    pydicom.FileDataset
        The object with its file meta information.

    Raises
    ------
    TypeError
        If ``volume`` is not a :class:`Volume`.
    ValueError
        If the echo times, the rescale, the frame order or the transfer
        syntax are not valid.

    References
    ----------
    DICOM PS3.3 A.36.2 (Enhanced MR Image IOD), C.7.6.16, C.7.6.17, C.8.13.
    """
    _check_arguments(volume, echo_times_ms, rescale, frame_order, transfer_syntax)
    echo_times_ms = [float(t) for t in echo_times_ms]
    multi_echo = len(echo_times_ms) > 1
    slope, intercept = (1.0, 0.0) if rescale is None else (float(rescale[0]), float(rescale[1]))
    digest = _call_digest(volume, echo_times_ms, rescale, per_frame_geometry, frame_order, transfer_syntax)

    def uid(label: str) -> str:
        return generate_uid(entropy_srcs=["sct-node tests", "enhanced-mr", label, digest])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    meta.MediaStorageSOPInstanceUID = uid("instance")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "SCT_NODE_TEST"
    ds = pydicom.FileDataset("enhanced_mr.dcm", Dataset(), file_meta=meta, preamble=b"\0" * 128)

    # SOP Common, Patient, General Study, General and MR Series, Frame of
    # Reference, General and Enhanced General Equipment.
    ds.update(_PATIENT_STUDY_SERIES)
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or uid("study")
    ds.SeriesInstanceUID = series_uid or uid("series")
    ds.FrameOfReferenceUID = frame_of_reference_uid or uid("frame-of-reference")

    # Enhanced MR Image, MR Pulse Sequence, Acquisition Context.
    nz, ny, nx = volume.shape
    ds.update(_ENHANCED_MR_IMAGE)
    ds.AcquisitionDuration = _REPETITION_TIME_MS * ny * nz / 1000.0
    ds.update(_MR_PULSE_SEQUENCE)
    ds.MultipleSpinEcho = "YES" if multi_echo else "NO"
    ds.AcquisitionContextSequence = _seq()

    # Multi-frame Functional Groups and Multi-frame Dimension.
    frames = _frame_order(nz, len(echo_times_ms), frame_order)
    ds.NumberOfFrames = len(frames)
    shared = _shared_groups(volume, len(echo_times_ms), slope, intercept)
    if not per_frame_geometry:
        shared.update(_geometry(volume))
    ds.SharedFunctionalGroupsSequence = _seq(shared)
    ds.PerFrameFunctionalGroupsSequence = _seq(
        *(_per_frame_group(volume, e, k, echo_times_ms[e], multi_echo, per_frame_geometry) for e, k in frames)
    )
    ds.update(_dimension_module(uid("dimension-organization"), multi_echo))

    # Image Pixel.
    stored = _stored_frames(volume, len(echo_times_ms), slope, intercept)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = ny, nx
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(np.stack([stored[e, k] for e, k in frames]), dtype="<u2").tobytes()
    if transfer_syntax == RLELossless:
        # pydicom's own encoder gives the same bytes wherever the tests run (and is
        # independent of the pylibjpeg-rle decoder a reader may use); compress()
        # invents a new SOP Instance UID by default: keep the deterministic one.
        ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    return ds


def write_enhanced_mr(volume: Volume, path: Path, **kwargs: object) -> Path:
    """Write ``make_enhanced_mr(volume, **kwargs)`` to ``path`` as a DICOM file (PS3.10).

    Parameters
    ----------
    volume : Volume
        Image and geometry to write.
    path : pathlib.Path
        Destination file; its folder is created if needed.
    **kwargs
        Keyword arguments of :func:`make_enhanced_mr`.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_enhanced_mr(volume, **kwargs).save_as(path, enforce_file_format=True)  # type: ignore[arg-type]
    return path
