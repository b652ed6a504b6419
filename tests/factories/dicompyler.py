"""DVH metrics from dicompyler-core, the independent open DVH calculator, on an RT Structure Set and an RT Dose.

dicompyler-core 0.5.6 (the latest release) still imports ``pydicom.dicomio.read_file``, which pydicom 3
removed; :func:`_import_dvhcalc` supplies it as ``pydicom.dcmread`` (the function it was an alias of) before
the import. Its in-plane dose interpolation is shifted against its contour mask (a known, unfixed bug, see
:func:`_interpolated_dose_at_its_lut`), which that function mends; nothing else of dicompyler-core is patched.

How dicompyler-core computes a DVH, and what that means for comparisons:

* it rasterises each contour on the dose plane at ``interpolation_resolution`` (here the dose pixel spacing
  divided by ``SUPERSAMPLING``), with the dose bilinearly interpolated to that resolution and linearly
  between dose planes at the contour's z;
* it bins the dose in 1 cGy bins, and its own ``D_x`` statistic returns the upper edge of the last bin whose
  cumulative volume exceeds x: up to 1 cGy above the interpolated value, which at 2 Gy per fraction is
  0.5 % of prescription by itself. :func:`dicompyler_metrics` therefore reads ``D_x`` off the cumulative
  histogram by linear interpolation within the bin (the same polyline our DVH uses), and keeps dicompyler's
  own statistic beside it for the record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: In-plane super-sampling of the dose grid (dicompyler-core requires a power-of-two divisor of the spacing).
SUPERSAMPLING = 4


def _import_dvhcalc():
    import pydicom
    import pydicom.dicomio

    if not hasattr(pydicom.dicomio, "read_file"):
        pydicom.dicomio.read_file = pydicom.dcmread
    from dicompylercore import dicomparser, dvhcalc

    if not getattr(dvhcalc.get_interpolated_dose, "_sct_node_fixed", False):
        dvhcalc.get_interpolated_dose = _interpolated_dose_at_its_lut(dvhcalc)
    return dicomparser, dvhcalc


def _interpolated_dose_at_its_lut(dvhcalc):
    """dicompyler-core's in-plane dose interpolation, at the positions its own lookup table names.

    In 0.5.6, ``get_interpolated_dose`` drops the last row and column of the dose plane
    (``d[r0:r1, c0:c1]`` with inclusive extents) and resamples the rest with scikit-image's
    pixel-area alignment, while ``get_resampled_lut`` spreads the samples from the first to the last
    dose pixel centre: the dose it bins is shifted by 0.375 to 0.625 dose pixels (1.5 to 2.5 mm on a 4 mm
    grid) against the contour mask. Its author of DVH Analytics reported the shift against Eclipse's DVHs
    (dicompyler-core pull request 192, unmerged). This replacement interpolates the plane bilinearly at
    exactly the positions of the lookup table that ``_calculate_dvh`` rasterises the contours on; the
    rasterisation, the z interpolation, the binning and the volumes remain dicompyler-core's.
    """
    from scipy import ndimage

    def interpolated(dose, z, resolution, extents):
        plane = dose.GetDoseGrid(z)
        if not plane.size or not resolution:
            return _original(dose, z, resolution, extents)
        data = dose.GetDoseData()
        if data["x_lut_index"] != 0:
            raise NotImplementedError("decubitus dose grids are not needed by these tests")
        columns, rows = dvhcalc.get_resampled_lut(extents, dvhcalc.dosegrid_extents_positions(extents, data),
                                                  new_pixel_spacing=resolution,
                                                  min_pixel_spacing=dose.GetImageData()["pixelspacing"])
        column_lut, row_lut = (np.asarray(v, dtype=np.float64) for v in data["lut"])
        column_index = (columns - column_lut[0]) / (column_lut[1] - column_lut[0])
        row_index = (rows - row_lut[0]) / (row_lut[1] - row_lut[0])
        grid_rows, grid_columns = np.meshgrid(row_index, column_index, indexing="ij")
        return ndimage.map_coordinates(plane.astype(np.float64), [grid_rows, grid_columns], order=1, mode="nearest")

    _original = dvhcalc.get_interpolated_dose
    interpolated._sct_node_fixed = True
    return interpolated


@dataclass(frozen=True)
class DicompylerMetrics:
    """One structure's metrics as dicompyler-core computes them (Gy, cc)."""

    name: str
    volume_cc: float
    d98_gy: float
    d95_gy: float
    d50_gy: float
    d2_gy: float
    dmean_gy: float
    #: dicompyler-core's own D2 statistic (upper bin edge), for the record.
    d2_statistic_gy: float
    #: The cumulative DVH: bin edges (Gy) and the share of the volume receiving at least each.
    edges_gy: np.ndarray
    at_least: np.ndarray

    def volume_percent_at(self, dose_gy: float) -> float:
        """V(dose) in % of the volume, linear within the 1 cGy bins."""
        return 100.0 * float(np.interp(dose_gy, self.edges_gy, self.at_least))


def dicompyler_metrics(structure_set: Path, rt_dose: Path, names: list[str] | None = None) -> dict[str, DicompylerMetrics]:
    """D98, D95, D50, D2 and Dmean of each ROI (or of ``names``), super-sampled in plane."""
    dicomparser, dvhcalc = _import_dvhcalc()
    structures = dicomparser.DicomParser(str(structure_set)).GetStructures()
    spacing = [float(v) for v in dicomparser.DicomParser(str(rt_dose)).ds.PixelSpacing]
    resolution = tuple(v / SUPERSAMPLING for v in spacing)
    result = {}
    for number, structure in structures.items():
        if names is not None and structure["name"] not in names:
            continue
        dvh = dvhcalc.get_dvh(str(structure_set), str(rt_dose), number, interpolation_resolution=resolution)
        if dvh.volume <= 0:
            continue
        result[structure["name"]] = _metrics(structure["name"], dvh)
    return result


def _metrics(name: str, dvh) -> DicompylerMetrics:
    differential = dvh.differential
    counts = np.asarray(differential.counts, dtype=np.float64)  # cc per 1 cGy bin
    edges = np.asarray(differential.bins, dtype=np.float64)  # Gy, len(counts) + 1
    total = counts.sum()
    # Cumulative volume at each bin's lower edge, falling to 0 at the last upper edge.
    at_least = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]]) / total

    def dose_at(percent: float) -> float:
        return float(np.interp(percent / 100.0, at_least[::-1], edges[::-1]))

    centres = (edges[:-1] + edges[1:]) / 2
    return DicompylerMetrics(name, float(dvh.volume), dose_at(98.0), dose_at(95.0), dose_at(50.0), dose_at(2.0),
                             float((counts * centres).sum() / total), float(dvh.statistic("D2").value), edges,
                             at_least)


#: The agreement the QA's DVHs must reach with a super-sampled reference (issue: 0.5 % of prescription for a
#: dose metric, 0.5 % of the volume for a volume metric).
TOLERANCE_PERCENT = 0.5


def metric_agrees(ours_gy: float, reference_gy: float, reference_volume_percent_at, volume_percent: float | None,
                  prescription_gy: float) -> tuple[bool, float, float | None]:
    """(agrees, dose difference in % of prescription, volume difference in % points) of one DVH metric.

    A ``D_x%`` agrees when the doses differ by at most ``TOLERANCE_PERCENT`` of prescription, or when the
    reference DVH gives x % +- ``TOLERANCE_PERCENT`` of the volume at our dose: where a structure straddles a
    field edge its cumulative DVH is flat at x (few voxels between the doses outside and inside the field), so
    a sub-voxel difference in the volume inside the field moves ``D_x%`` far along the dose axis while the two
    DVH curves lie on top of each other. ``Dmean`` (``volume_percent`` None) is judged on dose alone.
    """
    dose_difference = 100.0 * (ours_gy - reference_gy) / prescription_gy
    if volume_percent is None:
        return abs(dose_difference) <= TOLERANCE_PERCENT, dose_difference, None
    volume_difference = reference_volume_percent_at(ours_gy) - volume_percent
    return (abs(dose_difference) <= TOLERANCE_PERCENT or abs(volume_difference) <= TOLERANCE_PERCENT,
            dose_difference, volume_difference)
