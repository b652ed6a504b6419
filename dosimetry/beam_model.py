"""Beam data of the photon dose engine: a central-axis depth-dose curve, a lateral kernel, a calibration.

A :class:`BeamModel` is the whole description of a photon beam that
:mod:`dosimetry.engine` needs:

* a percent-depth-dose (PDD) curve of the reference field (10 x 10 cm at the
  isocentre plane) at the reference SSD (100 cm), from which the engine
  derives the attenuation function ``T(d) = PDD(d) / PDD(d_max) * ((SSD + d)
  / (SSD + d_max))**2`` (a tissue-maximum ratio of the reference field that
  neglects the change of phantom scatter, ``S_p``, with the field size at
  depth: below about 1 % at the depths of interest);
* a lateral kernel, a sum of two normalised Gaussians in the isocentre plane:
  a narrow *primary* one (penumbra: source size and electron range) and a
  wide *scatter* one (phantom scatter), whose widths and weight grow with
  radiological depth;
* an absolute calibration: ``dose_per_mu_gy`` at ``d_max`` for the reference
  field at the reference SSD.

The default: generic 6 MV (:data:`GENERIC_6MV`)
-----------------------------------------------
PDD of a 10 x 10 cm field at SSD 100 cm, depths in cm::

    depth  0.0   0.2   0.5   1.0   1.5    2.0   2.5   3.0   4.0   5.0   6.0   7.0   8.0
    PDD    15.0  55.0  80.0  95.5  100.0  99.2  97.6  95.5  91.2  86.9  82.7  78.6  74.8

    depth  9.0   10.0  12.0  14.0  15.0  16.0  18.0  20.0  25.0  30.0  35.0  40.0
    PDD    71.1  67.5  60.8  54.7  51.8  49.1  44.0  39.3  30.2  23.1  17.7  13.6

Provenance, honestly stated:

* ``d_max = 1.5 cm``, 67.5 % at 10 cm and 39.3 % at 20 cm are the 6 MV,
  10 x 10 cm, SSD 100 cm values of BJR Supplement 25 as transcribed by a
  third-party implementation of a beam-quality procedure; they were not
  checked here against the printed supplement.
* Between 1.5 and 20 cm the curve is the smooth function
  ``ln PDD = ln 100 - mu (x - l (1 - exp(-x / l))) - c x**2 / 2`` with
  ``x = d - 1.5 cm``, ``l = 0.6 cm``, ``mu = 0.04753 /cm``,
  ``c = 4.86e-4 /cm**2``, fitted through those anchors; it gives 86.9 % at
  5 cm and 51.8 % at 15 cm, inside the ranges usually quoted for 6 MV
  (86-87 %, 51-52 %) but *not* read from BJR 25.
* Beyond 20 cm the curve continues with a constant logarithmic slope of
  0.053 /cm, typical of 6 MV; the build-up values above ``d_max`` are a
  typical shape (BJR 25 does not tabulate the build-up region).

Lateral kernel defaults (isocentre plane, ``d`` radiological depth in mm):
primary sigma ``2.5 + 0.01 d`` mm; with the scatter term this gives a 10 x 10
cm field an 80-20 % penumbra of about 5.3 mm at d_max, 7.6 mm at 10 cm and
10.6 mm at 20 cm (SSD 100 cm), typical of 6 MV; scatter sigma 50 mm with weight
``0.2 (1 - exp(-d / 80 mm))``, which changes the dose at 10 cm depth by
about +7 % for a 20 x 20 cm field and -5 % for a 5 x 5 cm field relative to
10 x 10 cm: the right direction and rough size for 6 MV phantom scatter.

The model is meant for *relative* comparison of one plan on two images. A
clinic that wants absolute agreement replaces the PDD with its commissioning
data and tunes the kernel; both are plain fields of :class:`BeamModel`.

References
----------
British Journal of Radiology Supplement 25, "Central axis depth dose data
for use in radiotherapy" (British Institute of Radiology, 1996).

F. M. Khan and J. P. Gibbons, "The Physics of Radiation Therapy", 5th ed.,
chapters 9-10 (PDD, TMR and their conversion with the inverse-square law).

A. Ahnesjö and M. M. Aspradakis, "Dose calculations for external photon
beams in radiotherapy", Phys. Med. Biol. 44(11), R99-R155 (1999),
doi:10.1088/0031-9155/44/11/201 (primary/scatter separation, pencil kernels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dosimetry.errors import DosimetryError

__all__ = ["GENERIC_6MV", "BeamModel", "BeamModelError"]


class BeamModelError(DosimetryError):
    """Beam data are malformed (depth-dose table, kernel parameters or calibration)."""


def _positive(value: object, name: str, *, allow_zero: bool = False) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        raise BeamModelError(f"{name} must be a number; found {value!r}") from error
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise BeamModelError(f"{name} must be {'non-negative' if allow_zero else 'positive'} and finite; "
                             f"found {value!r}")
    return number


@dataclass(frozen=True)
class BeamModel:
    """Beam data for :func:`dosimetry.engine.compute_dose` (see the module docstring).

    Parameters
    ----------
    name : str
        Label for reports, e.g. ``"generic 6 MV"``.
    depths_mm : tuple of float
        Depths of the PDD nodes, mm, strictly increasing from 0; at least 3.
    percent_depth_dose : tuple of float
        PDD of the reference field at the reference SSD, percent, positive
        (normalised to its maximum, whatever that is).
    reference_ssd_mm : float
        SSD of the PDD and of the calibration, mm.
    reference_field_mm : float
        Side of the square reference field at the isocentre plane, mm.
    dose_per_mu_gy : float
        Dose per MU at d_max for the reference field at the reference SSD, Gy.
    primary_sigma_mm, primary_sigma_mm_per_mm : float
        Width of the primary Gaussian at zero depth and its growth per mm of
        radiological depth (isocentre plane).
    scatter_sigma_mm, scatter_sigma_mm_per_mm : float
        The same for the scatter Gaussian.
    scatter_weight_max : float
        Limit of the scatter weight at depth, in [0, 1).
    scatter_buildup_mm : float
        Depth over which the scatter weight builds up (``1 - exp(-d / this)``).

    Raises
    ------
    BeamModelError
        If the table is malformed or a parameter is out of range.

    References
    ----------
    BJR Supplement 25 (1996); Ahnesjö and Aspradakis, Phys. Med. Biol. 44, R99 (1999).
    """

    name: str
    depths_mm: tuple[float, ...]
    percent_depth_dose: tuple[float, ...]
    reference_ssd_mm: float = 1000.0
    reference_field_mm: float = 100.0
    dose_per_mu_gy: float = 0.01
    primary_sigma_mm: float = 2.5
    primary_sigma_mm_per_mm: float = 0.01
    scatter_sigma_mm: float = 50.0
    scatter_sigma_mm_per_mm: float = 0.0
    scatter_weight_max: float = 0.2
    scatter_buildup_mm: float = 80.0

    def __post_init__(self) -> None:
        depths = np.asarray(self.depths_mm, dtype=np.float64)
        pdd = np.asarray(self.percent_depth_dose, dtype=np.float64)
        if depths.ndim != 1 or pdd.shape != depths.shape:
            raise BeamModelError(
                f"depths_mm and percent_depth_dose must be 1-D of equal length; found {depths.shape} and {pdd.shape}"
            )
        if depths.size < 3:
            raise BeamModelError(f"the depth-dose table needs at least 3 nodes; found {depths.size}")
        if not (np.all(np.isfinite(depths)) and np.all(np.isfinite(pdd))):
            raise BeamModelError("the depth-dose table contains NaN or infinite values")
        if depths[0] != 0 or np.any(np.diff(depths) <= 0):
            raise BeamModelError(f"depths_mm must start at 0 and increase strictly; found {depths.tolist()}")
        if np.any(pdd <= 0):
            raise BeamModelError(f"percent_depth_dose must be positive; found {pdd.tolist()}")
        if int(np.argmax(pdd)) == depths.size - 1:
            raise BeamModelError("the depth-dose table must extend beyond its maximum (d_max)")
        object.__setattr__(self, "depths_mm", tuple(float(v) for v in depths))
        object.__setattr__(self, "percent_depth_dose", tuple(float(v) for v in pdd))
        for attribute in ("reference_ssd_mm", "reference_field_mm", "dose_per_mu_gy", "primary_sigma_mm",
                          "scatter_sigma_mm", "scatter_buildup_mm"):
            object.__setattr__(self, attribute, _positive(getattr(self, attribute), attribute))
        for attribute in ("primary_sigma_mm_per_mm", "scatter_sigma_mm_per_mm", "scatter_weight_max"):
            object.__setattr__(self, attribute, _positive(getattr(self, attribute), attribute, allow_zero=True))
        if self.scatter_weight_max >= 1:
            raise BeamModelError(f"scatter_weight_max must be below 1; found {self.scatter_weight_max}")

    @property
    def dmax_mm(self) -> float:
        """Depth of the PDD maximum, mm."""
        return self.depths_mm[int(np.argmax(self.percent_depth_dose))]

    def attenuation(self, depth_mm: np.ndarray) -> np.ndarray:
        """``T(d)``: dose at radiological depth ``d`` relative to d_max, inverse square removed.

        Linear between table nodes; beyond the last node, exponential with the
        slope of the last interval; negative depths are taken as 0.

        Parameters
        ----------
        depth_mm : numpy.ndarray
            Radiological (water-equivalent) depths, mm.

        Returns
        -------
        numpy.ndarray
            ``T(d)`` (1 at d_max), float64.
        """
        depths = np.asarray(self.depths_mm)
        pdd = np.asarray(self.percent_depth_dose)
        dmax = self.dmax_mm
        ssd = self.reference_ssd_mm
        table = pdd / pdd.max() * ((ssd + depths) / (ssd + dmax)) ** 2
        depth = np.maximum(np.asarray(depth_mm, dtype=np.float64), 0.0)
        values = np.interp(depth, depths, table)
        slope = math.log(table[-1] / table[-2]) / (depths[-1] - depths[-2])
        beyond = depth > depths[-1]
        values[beyond] = table[-1] * np.exp(slope * (depth[beyond] - depths[-1]))
        return values

    def kernel(self, depth_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Lateral kernel parameters at radiological depths (isocentre plane).

        Parameters
        ----------
        depth_mm : numpy.ndarray
            Radiological depths, mm.

        Returns
        -------
        primary_sigma_mm, scatter_sigma_mm, scatter_weight : numpy.ndarray
            The kernel is ``(1 - w) G(primary_sigma) + w G(scatter_sigma)``
            with ``G`` a normalised 2-D Gaussian.
        """
        depth = np.maximum(np.asarray(depth_mm, dtype=np.float64), 0.0)
        primary = self.primary_sigma_mm + self.primary_sigma_mm_per_mm * depth
        scatter = self.scatter_sigma_mm + self.scatter_sigma_mm_per_mm * depth
        weight = self.scatter_weight_max * (1.0 - np.exp(-depth / self.scatter_buildup_mm))
        return primary, scatter, weight


_GENERIC_6MV_DEPTHS_CM = (0.0, 0.2, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0,
                          14.0, 15.0, 16.0, 18.0, 20.0, 25.0, 30.0, 35.0, 40.0)
_GENERIC_6MV_PDD = (15.0, 55.0, 80.0, 95.5, 100.0, 99.2, 97.6, 95.5, 91.2, 86.9, 82.7, 78.6, 74.8, 71.1, 67.5,
                    60.8, 54.7, 51.8, 49.1, 44.0, 39.3, 30.2, 23.1, 17.7, 13.6)

#: Generic 6 MV beam, 1 cGy/MU at d_max for 10 x 10 cm at SSD 100 cm (module docstring).
GENERIC_6MV = BeamModel(
    name="generic 6 MV (BJR 25 anchors)",
    depths_mm=tuple(10.0 * d for d in _GENERIC_6MV_DEPTHS_CM),
    percent_depth_dose=_GENERIC_6MV_PDD,
)
