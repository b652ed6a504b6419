"""The RT Structure Set drawn on the synthetic CT: body, bone, internal air and QA flags.

A planner who imports the sCT gets, with it, the structures the QA itself
used, so the TPS's own DVHs and density overrides start from the same
regions:

========================  ===========  ==================================================
ROI Name                  Type         Rule
========================  ===========  ==================================================
``BODY``                  EXTERNAL     the MR body outline, holes filled slice by slice
``BONE``                  ORGAN        HU >= 200 inside BODY (the QA's ``BONE_FROM_HU``),
                                       3D components under ``min_component_mm3`` removed
``INTERNAL_AIR``          CAVITY       HU <= -400 inside BODY, not connected in its slice
                                       to the air at the image border; small components
                                       removed as for BONE
``QA_HIGH_UNCERT``        CONTROL      BODY voxels whose ensemble standard deviation is
                                       above the level (only with an uncertainty map),
                                       simplified (below)
the QA's targets and      as given     the structures the QA evaluated (``--structures`` or
organs at risk                         the routed structure set), rasterised on the sCT
                                       grid and contoured again on it
========================  ===========  ==================================================

The targets and organs at risk are those behind the DVH checks, so the planner
sees on the sCT exactly the regions the verdict speaks about. They keep their
names and RT ROI Interpreted Types; a structure named like one of ours (BODY,
BONE, ...) or of type EXTERNAL is left out in favour of ours.

QA_HIGH_UNCERT is simplified so that a planning system imports it quickly (an
ensemble's raw flag had 9,720 contours on 40 slices): per slice a 3 x 3
opening and closing smooth it, holes are filled, pieces under
``MIN_FLAG_AREA_MM2`` (1 cm2) are dropped and at most
``MAX_FLAG_CONTOURS_PER_SLICE`` (8) of the largest are kept. The QA's
uncertainty check counts the raw voxels; the ROI shows where they gather.

RT ROI Interpreted Types are defined terms of PS3.3 C.8.8.8.1: EXTERNAL is
the external patient contour; bone is an anatomical structure, ORGAN (there
is no BONE term); internal air (rectal gas, sinuses, airways) is a "patient
anatomical cavity", CAVITY; the uncertainty flag is a helper structure for
dose evaluation that is no anatomy, CONTROL.

Empty structures are left out: planning systems warn about or refuse ROIs
without contours (and a missing ROI says the same as an empty one). BODY is
never empty (an empty body is refused).

Small-component cleanup: isolated voxels above 200 HU (noise, partial
volume at the skin, model hallucinations) would each become a tiny contour
that clutters the TPS and no dose calculation cares about; components
smaller than ``min_component_mm3`` (default 100 mm3 = 0.1 cm3, about a
4.6 mm cube) are removed from BONE and INTERNAL_AIR, with full (26-)
connectivity so thin cortex stays in one piece. The QA's bone fraction is
computed on the raw threshold; the ROI differs from it by those specks only.

Names are at most 16 characters, which every planning system accepts (hence
``QA_HIGH_UNCERT`` rather than ``QA_HIGH_UNCERTAINTY``).

References
----------
DICOM PS3.3 C.8.8.5 (Structure Set), C.8.8.8 (RT ROI Observations),
C.8.8.8.1 (RT ROI Interpreted Type defined terms).
"""

from __future__ import annotations

import datetime as _dt
import itertools
from collections.abc import Iterable
from collections.abc import Sequence as SequenceOf
from pathlib import Path

import numpy as np
from scipy import ndimage

from dosimetry.qa import BONE_FROM_HU
from models.volume import Volume
from sct_node.dicom.rtstruct import INTERPRETED_TYPES, RoiSpec, write_rtstruct
from sct_node.errors import OutputError
from sct_node.report.data import StructureOutline

__all__ = [
    "AIR_UP_TO_HU",
    "BONE_FROM_HU",
    "MIN_COMPONENT_MM3",
    "ROI_COLORS",
    "ROI_NAMES",
    "qa_structure_rois",
    "sct_rois",
    "write_sct_structures",
]

# BONE_FROM_HU is the QA's own threshold (imported above): one rule for the QA's bone class and the BONE ROI.

#: Air: -400 HU is halfway between air and fat, so partial-volume gas voxels count; lung-like
#: thresholds (-700 .. -900 HU) would miss them.
AIR_UP_TO_HU = -400.0
#: Smallest 3D component kept in BONE and INTERNAL_AIR (mm3).
MIN_COMPONENT_MM3 = 100.0
#: QA_HIGH_UNCERT simplification: smallest piece kept per slice (mm2) and most pieces per slice.
MIN_FLAG_AREA_MM2 = 100.0
MAX_FLAG_CONTOURS_PER_SLICE = 8

ROI_NAMES = {"body": "BODY", "bone": "BONE", "air": "INTERNAL_AIR", "uncertainty": "QA_HIGH_UNCERT"}
#: Distinct display colours: green body, bone white-yellow, air cyan, uncertainty magenta.
ROI_COLORS = {"body": (0, 255, 0), "bone": (230, 230, 170), "air": (0, 200, 255), "uncertainty": (255, 0, 200)}


def sct_rois(sct: Volume, body_mask: np.ndarray, uncertainty_hu: Volume | None = None,
             uncertainty_level_hu: float = 100.0, *, min_component_mm3: float = MIN_COMPONENT_MM3) -> list[RoiSpec]:
    """The structures to draw on a synthetic CT (see the module docstring for the rules).

    Parameters
    ----------
    sct : Volume
        Synthetic CT in HU.
    body_mask : numpy.ndarray
        Boolean (or numeric, > 0) (z, y, x) MR body outline on the sCT grid.
    uncertainty_hu : Volume or None
        Voxel-wise ensemble standard deviation (HU) on the sCT grid.
    uncertainty_level_hu : float
        Standard deviation above which a body voxel is flagged.
    min_component_mm3 : float
        Smallest connected component kept in BONE and INTERNAL_AIR (mm3); 0 keeps all.

    Returns
    -------
    list of RoiSpec
        BODY, then BONE, INTERNAL_AIR and QA_HIGH_UNCERT when they are not empty.

    Raises
    ------
    OutputError
        If a mask or the uncertainty map is not on the sCT grid, values are not finite, or the
        body is empty.
    """
    body = np.asarray(body_mask)
    if body.shape != sct.shape:
        raise OutputError(f"body mask shape {body.shape} differs from the sCT grid {sct.shape} (z, y, x)")
    body = body > 0 if body.dtype != bool else body
    if not body.any():
        raise OutputError("the body mask is empty: there is no BODY to draw")
    if not np.isfinite(uncertainty_level_hu) or uncertainty_level_hu < 0:
        raise OutputError(f"uncertainty_level_hu must be a non-negative number; found {uncertainty_level_hu}")
    hu = np.asarray(sct.array, dtype=np.float64)
    if not np.all(np.isfinite(hu)):
        raise OutputError("sCT holds NaN or infinite values")
    body = _fill_holes_per_slice(body)
    voxel_mm3 = float(np.prod(sct.spacing_mm))
    min_voxels = int(np.ceil(min_component_mm3 / voxel_mm3)) if min_component_mm3 > 0 else 0

    rois = [RoiSpec(ROI_NAMES["body"], body, "EXTERNAL", ROI_COLORS["body"], "AUTOMATIC",
                    "MR body outline, holes filled per slice (sct-node QA)")]
    bone = _drop_small_components(body & (hu >= BONE_FROM_HU), min_voxels)
    rois.append(RoiSpec(ROI_NAMES["bone"], bone, "BONE", ROI_COLORS["bone"], "AUTOMATIC",
                        f"HU >= {BONE_FROM_HU:g} inside BODY (sct-node QA)"))
    air = hu <= AIR_UP_TO_HU
    internal_air = _drop_small_components(body & air & ~_border_connected_per_slice(air), min_voxels)
    rois.append(RoiSpec(ROI_NAMES["air"], internal_air, "CAVITY", ROI_COLORS["air"], "AUTOMATIC",
                        f"HU <= {AIR_UP_TO_HU:g} inside BODY, not outside air (sct-node QA)"))
    if uncertainty_hu is not None:
        if not uncertainty_hu.same_grid(sct):
            raise OutputError(f"uncertainty map grid (shape {uncertainty_hu.shape}, spacing {uncertainty_hu.spacing_mm}) "
                              f"differs from the sCT grid (shape {sct.shape}, spacing {sct.spacing_mm})")
        std = np.asarray(uncertainty_hu.array, dtype=np.float64)
        if not np.all(np.isfinite(std[body])):
            raise OutputError("uncertainty map holds NaN or infinite values inside the body")
        flag = _simplify_flag(body & (std > uncertainty_level_hu), body, sct.spacing_mm)
        rois.append(RoiSpec(ROI_NAMES["uncertainty"], flag, "CONTROL", ROI_COLORS["uncertainty"], "AUTOMATIC",
                            f"ensemble std > {uncertainty_level_hu:g} HU in BODY, smoothed (sct-node QA)"))
    # Planning systems dislike ROIs without contours: leave empty ones out.
    return [roi for roi in rois if roi.mask.any()]


def write_sct_structures(*, rois: SequenceOf[RoiSpec], sct: Volume, sct_files: SequenceOf[Path], path: Path,
                         sop_instance_uid: str, series_instance_uid: str,
                         series_description: str = "sct-node QA structures",
                         now: _dt.datetime | None = None) -> Path:
    """Write the structures as an RT Structure Set on the written sCT series.

    Parameters
    ----------
    rois : sequence of RoiSpec
        From :func:`sct_rois`.
    sct : Volume
        The sCT grid the masks are on.
    sct_files : sequence of pathlib.Path
        The written sCT series' files (every contour references its slice's image).
    path : pathlib.Path
        Output file.
    sop_instance_uid, series_instance_uid : str
        Identity of the structure set.
    series_description : str
        Series Description.
    now : datetime or None
        Structure set date/time.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    OutputError
        See :func:`sct_node.dicom.rtstruct.write_rtstruct`.
    """
    return write_rtstruct(reference_files=list(sct_files), reference_volume=sct, rois=rois, path=path,
                          sop_instance_uid=sop_instance_uid, series_instance_uid=series_instance_uid,
                          label="SCT QA", series_description=series_description, now=now)


def qa_structure_rois(structures: Iterable[StructureOutline]) -> list[RoiSpec]:
    """The QA's targets and organs at risk (:class:`sct_node.report.data.StructureOutline`) as ROIs.

    Structures named like one of ours or of type EXTERNAL are left out (ours describe the sCT itself).
    """
    ours = set(ROI_NAMES.values())
    rois = []
    organ_colours = itertools.cycle(_ORGAN_COLOURS)
    for structure in structures:
        if structure.role not in ("target", "organ") or structure.name.upper() in ours or not structure.mask.any():
            continue
        kind = structure.interpreted_type.upper() or ("PTV" if structure.role == "target" else "ORGAN")
        colour = (255, 0, 0) if structure.role == "target" else next(organ_colours)
        rois.append(RoiSpec(structure.name, structure.mask, kind if kind in INTERPRETED_TYPES else "",
                            colour, "SEMIAUTOMATIC", "the QA's structure, re-contoured on the sCT grid"))
    return rois


#: Organ colours: distinct from ours (green, white-yellow, cyan, magenta) and from the targets' red.
_ORGAN_COLOURS = [(255, 160, 0), (0, 120, 255), (160, 90, 255), (255, 255, 0), (140, 80, 20), (0, 170, 120)]


def _simplify_flag(flag: np.ndarray, body: np.ndarray, spacing_mm: SequenceOf[float]) -> np.ndarray:
    """QA_HIGH_UNCERT as a planning system can import it (module docstring): smoothed, no holes, no specks,
    at most ``MAX_FLAG_CONTOURS_PER_SLICE`` pieces per slice, inside BODY."""
    pixel_mm2 = float(spacing_mm[0]) * float(spacing_mm[1])
    min_pixels = int(np.ceil(MIN_FLAG_AREA_MM2 / pixel_mm2))
    result = np.zeros_like(flag)
    for k, plane in enumerate(flag):
        if not plane.any():
            continue
        plane = ndimage.binary_closing(ndimage.binary_opening(plane), iterations=1)
        plane = ndimage.binary_fill_holes(plane) & body[k]
        labels, count = ndimage.label(plane)
        if not count:
            continue
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        keep = [label + 1 for label in np.argsort(sizes)[::-1][:MAX_FLAG_CONTOURS_PER_SLICE]
                if sizes[label] >= min_pixels]
        result[k] = np.isin(labels, keep)
    return result


def _fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.binary_fill_holes(plane) for plane in mask])


def _border_connected_per_slice(air: np.ndarray) -> np.ndarray:
    """Air connected, within its slice, to the image border: the air around the patient.

    Per slice (as the body's holes are filled per slice): a gas pocket that runs out of the grid
    through the top or bottom slice is still internal.
    """
    result = np.zeros_like(air)
    for k, plane in enumerate(air):
        labels, _ = ndimage.label(plane)
        border = np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        border = border[border > 0]
        result[k] = np.isin(labels, border)
    return result


def _drop_small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    if min_voxels <= 1 or not mask.any():
        return mask
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]
