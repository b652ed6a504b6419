"""Write and read phantoms in the SynthRAD challenge case layout.

A case is a folder holding three co-registered images of the same name in
both challenges: ``mr`` (the input), ``ct`` (the target, HU) and ``mask``
(the body outline, 0/1). SynthRAD2023 stores them as ``.nii.gz``, SynthRAD2025
as ``.mha``; :func:`write_synthrad_case` writes ``.mha`` and
:func:`read_synthrad_case` reads either.

Files are written to a temporary name in the case folder, flushed to disk and
renamed into place, so a reader never sees a half-written image.

References
----------
.. [1] Thummerer A. et al., "SynthRAD2023 Grand Challenge dataset: generating
   synthetic CT for radiotherapy", Med. Phys. 50:4664-4674, 2023.
.. [2] Thummerer A. et al., "SynthRAD2025 Grand Challenge dataset: generating
   synthetic CTs for radiotherapy from head to abdomen", Med. Phys., 2025.
.. [3] ITK MetaImage format (``.mha``, header and data in one file),
   https://itk.org/Wiki/ITK/MetaIO/Documentation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.errors import GeometryError, PhantomError
from models.fileio import write_atomic, write_volume_atomic
from models.phantoms.generator import Phantom
from models.volume import Volume

__all__ = ["PHANTOM_FIELD_STRENGTH_T", "SYNTHRAD_EXTENSIONS", "SynthradCase", "SynthradImages", "phantom_acquisition",
           "read_synthrad_case", "write_central_slab", "write_synthrad_case"]

#: Field strength the phantom MR stands for (its DICOM header says the same).
PHANTOM_FIELD_STRENGTH_T = 1.5

#: File name endings accepted by :func:`read_synthrad_case`, in SynthRAD2025 then 2023 order.
SYNTHRAD_EXTENSIONS = (".mha", ".nii.gz")


@dataclass(frozen=True)
class SynthradCase:
    """Paths of a written case.

    Attributes
    ----------
    case_dir : pathlib.Path
    mr_path, ct_path, mask_path : pathlib.Path
        ``mr.mha`` (``float32``), ``ct.mha`` (``int16`` HU), ``mask.mha``
        (``uint8`` body mask).
    mr_weighting : str
        ``"t1"`` or ``"t2"``: which phantom MR was written as ``mr``.
    """

    case_dir: Path
    mr_path: Path
    ct_path: Path
    mask_path: Path
    mr_weighting: str


@dataclass(frozen=True, eq=False)
class SynthradImages:
    """The three images of a case, on one grid.

    Attributes
    ----------
    case_dir : pathlib.Path
    mr, ct, mask : Volume
    """

    case_dir: Path
    mr: Volume
    ct: Volume
    mask: Volume




def _write_image(volume: Volume, path: Path, compress: bool) -> None:
    try:
        write_volume_atomic(volume, path, compress)
    except (OSError, RuntimeError) as exc:
        raise PhantomError(f"cannot write {path}: {exc}") from exc


def phantom_acquisition(site: str, weighting: str) -> dict:
    """The acquisition a phantom MR simulates, as an ``acquisition.json`` sidecar (:mod:`models.envelope`).

    The values are those of the spin-echo signal model (:data:`~models.phantoms.imaging.T1_WEIGHTED`,
    :data:`~models.phantoms.imaging.T2_WEIGHTED`) and of the DICOM header ``sct-node phantom`` writes, so a
    model trained on the SynthRAD-layout files records the same envelope as the DICOM series would give.
    """
    from models.phantoms.imaging import T1_WEIGHTED, T2_WEIGHTED

    key = str(weighting).lower()
    if key not in ("t1", "t2"):
        raise PhantomError(f"weighting must be 't1' or 't2'; found {weighting!r}")
    sequence = T1_WEIGHTED if key == "t1" else T2_WEIGHTED
    return {"weighting": key.upper(), "scanning_sequence": ["SE"], "sequence_variant": ["NONE"],
            "repetition_time_ms": sequence.tr_ms, "echo_time_ms": sequence.te_ms,
            "field_strength_t": PHANTOM_FIELD_STRENGTH_T, "fat_suppressed": False, "dixon": False,
            "contrast_agent": False, "body_part": "HEAD" if str(site).lower() == "head" else "PELVIS",
            "note": "simulated spin echo (sct-node phantom generator)"}


def write_synthrad_case(phantom: Phantom, case_dir: Path, mr: str = "t1", compress: bool = True) -> SynthradCase:
    """Write a phantom as ``<case_dir>/{mr,ct,mask}.mha`` (SynthRAD2025 layout), ``labels.mha`` and ``acquisition.json``.

    ``acquisition.json`` describes the simulated sequence (:func:`phantom_acquisition`): what a model trained
    on the case records in its training envelope (:mod:`models.envelope`).

    Parameters
    ----------
    phantom : Phantom
        The phantom to write; geometry comes from its volumes.
    case_dir : pathlib.Path
        Case folder; created if missing. Existing files of the same names are
        replaced.
    mr : str
        ``"t1"`` or ``"t2"``: the MR weighting written as ``mr.mha``.
    compress : bool
        Whether to zlib-compress the image data.

    Returns
    -------
    SynthradCase
        The written paths.

    Raises
    ------
    PhantomError
        If ``phantom`` is not a :class:`Phantom`, ``mr`` is not a known
        weighting, or a file cannot be written.

    References
    ----------
    SynthRAD2025 dataset description (module reference [2]).
    """
    if not isinstance(phantom, Phantom):
        raise PhantomError(f"phantom must be a Phantom; found {type(phantom).__name__}")
    mr_volume = phantom.mr(mr)
    case_dir = Path(case_dir)
    try:
        case_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PhantomError(f"cannot create case_dir {case_dir}: {exc}") from exc
    paths = {name: case_dir / f"{name}.mha" for name in ("mr", "ct", "mask")}
    _write_image(mr_volume.with_array(mr_volume.array.astype(np.float32)), paths["mr"], compress)
    _write_image(phantom.ct_hu.with_array(phantom.ct_hu.array.astype(np.int16)), paths["ct"], compress)
    _write_image(phantom.labels.with_array(phantom.body_mask.astype(np.uint8)), paths["mask"], compress)
    # The tissue label map: what MR appearance randomisation renders (models.learned.randomisation).
    _write_image(phantom.labels, case_dir / "labels.mha", compress)
    _write_json(phantom_acquisition(phantom.site, mr), case_dir / "acquisition.json")
    return SynthradCase(case_dir, paths["mr"], paths["ct"], paths["mask"], str(mr).lower())


def _write_json(data: dict, path: Path) -> None:
    import json

    try:
        write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    except OSError as exc:
        raise PhantomError(f"cannot write {path}: {exc}") from exc


def _find(case_dir: Path, name: str) -> Path:
    found = [case_dir / f"{name}{ext}" for ext in SYNTHRAD_EXTENSIONS if (case_dir / f"{name}{ext}").is_file()]
    if not found:
        expected = " or ".join(f"{name}{ext}" for ext in SYNTHRAD_EXTENSIONS)
        raise PhantomError(f"case {case_dir} is missing {expected}")
    if len(found) > 1:
        raise PhantomError(f"case {case_dir} holds both {found[0].name} and {found[1].name}; keep one")
    return found[0]


def read_synthrad_case(case_dir: Path) -> SynthradImages:
    """Read ``<case_dir>/{mr,ct,mask}`` as ``.mha`` (SynthRAD2025) or ``.nii.gz`` (SynthRAD2023).

    Parameters
    ----------
    case_dir : pathlib.Path
        Case folder.

    Returns
    -------
    SynthradImages
        The three images with their geometry (LPS; ITK converts NIfTI's RAS).

    Raises
    ------
    PhantomError
        If the folder does not exist, an image is missing, present in both
        formats, or unreadable.
    GeometryError
        If the three images do not share one grid.

    References
    ----------
    SynthRAD2023 and SynthRAD2025 dataset descriptions (module references [1], [2]).
    """
    import SimpleITK as sitk

    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise PhantomError(f"case_dir {case_dir} is not a folder")
    volumes: dict[str, Volume] = {}
    for name in ("mr", "ct", "mask"):
        path = _find(case_dir, name)
        try:
            volumes[name] = Volume.from_sitk(sitk.ReadImage(str(path)))
        except RuntimeError as exc:
            raise PhantomError(f"cannot read {path}: {exc}") from exc
    for name in ("ct", "mask"):
        if not volumes["mr"].same_grid(volumes[name]):
            raise GeometryError(
                f"case {case_dir}: {name} grid (shape {volumes[name].shape}, spacing {volumes[name].spacing_mm}, "
                f"origin {volumes[name].origin_mm}) differs from mr (shape {volumes['mr'].shape}, "
                f"spacing {volumes['mr'].spacing_mm}, origin {volumes['mr'].origin_mm})"
            )
    return SynthradImages(case_dir, volumes["mr"], volumes["ct"], volumes["mask"])


def write_central_slab(case_dir: Path, out_dir: Path, slices: int) -> Path:
    """Copy the central ``slices`` axial slices of a case (mr, ct, mask) into ``out_dir`` as ``.mha``.

    The slab keeps its patient position (origin of its first slice), so it is the same anatomy on
    the same grid, only thinner: what the benchmarks use to run many-step samplers on a subset
    of a volume.

    Raises
    ------
    PhantomError
        ``slices`` is not a positive integer, the case has fewer slices, or a file cannot be read or written.
    """
    import SimpleITK as sitk

    if isinstance(slices, bool) or not isinstance(slices, int) or slices < 1:
        raise PhantomError(f"slices must be a positive integer; found {slices!r}")
    case_dir, out_dir = Path(case_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("mr", "ct", "mask"):
        path = _find(case_dir, name)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise PhantomError(f"cannot read {path}: {exc}") from exc
        depth = image.GetSize()[2]
        if depth < slices:
            raise PhantomError(f"case {case_dir} has {depth} slices; a slab of {slices} was asked for")
        start = (depth - slices) // 2
        try:
            sitk.WriteImage(image[:, :, start:start + slices], str(out_dir / f"{name}.mha"), True)
        except RuntimeError as exc:
            raise PhantomError(f"cannot write {out_dir / (name + '.mha')}: {exc}") from exc
    sidecar = case_dir / "acquisition.json"
    if sidecar.is_file():  # the acquisition is the same; the slab keeps its description
        import json

        _write_json(json.loads(sidecar.read_text(encoding="utf-8")), out_dir / "acquisition.json")
    return out_dir
