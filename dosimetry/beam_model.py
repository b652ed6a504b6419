"""Beam data of the photon dose engine, commissioned from measured and published 6 MV data.

A :class:`BeamModel` is the whole description of a photon beam that
:mod:`dosimetry.engine` needs:

* a percent-depth-dose (PDD) curve of the reference field (10 x 10 cm at the
  isocentre plane) at the reference SSD, from which the engine derives the
  attenuation function ``T(d) = PDD(d) / PDD(d_max) * ((SSD + d) / (SSD +
  d_max))**2`` (a tissue-maximum ratio of the reference field);
* a lateral kernel in the isocentre plane: a narrow *primary* Gaussian with
  its own width along X (the MLC's leaf-travel direction) and Y (the
  diaphragms'), whose widths give the penumbra, and a wide *scatter* Gaussian
  (phantom scatter) whose weight and width grow with radiological depth; the
  kernel of a field divided by that of the reference field gives the field-size
  dependence of the dose in the phantom (``S_p`` and its change with depth);
* a head-scatter factor ``S_c`` of each aperture's equivalent square
  (``2XY / (X + Y)`` of its open extent at the isocentre plane), ``(1 - A exp(-s
  / l)) / (1 - A exp(-100 mm / l))``: 1 for the reference field;
* an absolute calibration: ``dose_per_mu_gy`` at ``d_max`` for the reference
  field at the reference SSD.

The default: :data:`ELEKTA_AGILITY_6MV`
---------------------------------------
Loaded from ``dosimetry/beam_data/elekta_agility_6mv.json``, which keeps every
figure with its provenance:

* the 10 x 10 cm PDD (SSD 90 cm) that becomes ``T(d)``, and the 5 x 5 cm PDD,
  the 80-20 % penumbrae and 50 % widths of both fields at 15, 50, 100 and
  200 mm depth (crossplane and inplane), all measured on one Elekta Agility
  in a water tank (pymedphys repository history, data of Cancer Care
  Associates);
* the calibration of the same machine: 1 cGy/MU at d_max for 10 x 10 cm at
  SSD 100 cm (``dose_per_mu_gy`` here is that dose at the reference SSD of
  90 cm, ``0.01 ((1000 + d_max) / (900 + d_max))**2`` Gy);
* output factors at 10 cm depth from 2 x 2 to 40 x 40 cm: the measured 5 x 5,
  the Radiological Physics Center's Elekta 6 MV small-field dataset (Followill
  et al. 2012: 2, 3, 4, 6 cm) and, where no measured value was found (15, 30,
  40 cm), values derived from Elekta Monaco (sct-node issue 15): a planning
  system's, not a measurement, and said so in the file;
* the kernel and head-scatter parameters fitted to all of them by
  ``scripts/commission_beam_model.py``; ``tests/dosimetry/test_commissioning.py``
  checks the engine against the same figures (output factors within 2 %, the
  5 x 5 PDD within 2 % beyond the build-up, penumbrae and widths within 1 mm).

What the fit cannot separate: ``S_c`` and ``S_p`` are only known through their
product at 10 cm depth below 5 x 5 cm, so the depth dependence of very small
fields is the kernel's extrapolation. No measured PDD of a field larger than
10 x 10 cm was available: large-field depth doses are the model's prediction.

The model is meant for *relative* comparison of one plan on two images; a
clinic replaces the file with its own commissioning data and re-runs the
fit.

References
----------
D. S. Followill et al., J. Appl. Clin. Med. Phys. 13(5):282-289 (2012),
doi:10.1120/jacmp.v13i5.3962 (small-field output factors).

T. C. Zhu et al., "Report of AAPM Therapy Physics Committee Task Group 74:
in-air output ratio, S_c, for megavoltage photon beams", Med. Phys. 36(11),
5261 (2009) (head scatter, equivalent square of the collimator setting).

F. M. Khan and J. P. Gibbons, "The Physics of Radiation Therapy", 5th ed.,
chapters 9-10 (PDD, TMR and their conversion with the inverse-square law).

A. Ahnesjö and M. M. Aspradakis, "Dose calculations for external photon
beams in radiotherapy", Phys. Med. Biol. 44(11), R99-R155 (1999),
doi:10.1088/0031-9155/44/11/201 (primary/scatter separation, pencil kernels).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dosimetry.errors import DosimetryError

__all__ = ["ELEKTA_AGILITY_6MV", "BeamModel", "BeamModelError", "load_beam_model"]


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
        Label for reports, e.g. ``"Elekta Agility 6 MV (commissioned)"``.
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
    primary_sigma_x_mm, primary_sigma_x_mm_per_mm : float
        Width of the primary Gaussian along X (MLC leaf travel) at zero depth and its growth per mm of
        radiological depth (isocentre plane).
    primary_sigma_y_mm, primary_sigma_y_mm_per_mm : float
        The same along Y (the diaphragms or Y jaws).
    scatter_sigma_mm, scatter_sigma_mm_per_mm : float
        The same for the scatter Gaussian (both directions).
    scatter_weight_max : float
        Limit of the scatter weight at depth, in [0, 1).
    scatter_buildup_mm : float
        Depth over which the scatter weight builds up (``1 - exp(-d / this)``).
    head_scatter_amplitude, head_scatter_length_mm : float
        ``A`` and ``l`` of the head-scatter factor (module docstring); ``A = 0`` switches it off.
    energy_mv : float
        Nominal energy the data belong to.

    Raises
    ------
    BeamModelError
        If the table is malformed or a parameter is out of range.
    """

    name: str
    depths_mm: tuple[float, ...]
    percent_depth_dose: tuple[float, ...]
    reference_ssd_mm: float = 1000.0
    reference_field_mm: float = 100.0
    dose_per_mu_gy: float = 0.01
    primary_sigma_x_mm: float = 2.5
    primary_sigma_x_mm_per_mm: float = 0.01
    primary_sigma_y_mm: float = 2.5
    primary_sigma_y_mm_per_mm: float = 0.01
    scatter_sigma_mm: float = 50.0
    scatter_sigma_mm_per_mm: float = 0.0
    scatter_weight_max: float = 0.2
    scatter_buildup_mm: float = 80.0
    head_scatter_amplitude: float = 0.0
    head_scatter_length_mm: float = 30.0
    energy_mv: float = 6.0

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
        for attribute in ("reference_ssd_mm", "reference_field_mm", "dose_per_mu_gy", "primary_sigma_x_mm",
                          "primary_sigma_y_mm", "scatter_sigma_mm", "scatter_buildup_mm", "head_scatter_length_mm",
                          "energy_mv"):
            object.__setattr__(self, attribute, _positive(getattr(self, attribute), attribute))
        for attribute in ("primary_sigma_x_mm_per_mm", "primary_sigma_y_mm_per_mm", "scatter_sigma_mm_per_mm",
                          "scatter_weight_max", "head_scatter_amplitude"):
            object.__setattr__(self, attribute, _positive(getattr(self, attribute), attribute, allow_zero=True))
        if self.scatter_weight_max >= 1:
            raise BeamModelError(f"scatter_weight_max must be below 1; found {self.scatter_weight_max}")
        if self.head_scatter_amplitude >= 1:
            raise BeamModelError(f"head_scatter_amplitude must be below 1; found {self.head_scatter_amplitude}")

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

    def kernel(self, depth_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Lateral kernel parameters at radiological depths (isocentre plane).

        Parameters
        ----------
        depth_mm : numpy.ndarray
            Radiological depths, mm.

        Returns
        -------
        primary_sigma_x_mm, primary_sigma_y_mm, scatter_sigma_mm, scatter_weight : numpy.ndarray
            The kernel is ``(1 - w) G(sigma_x, sigma_y) + w G(scatter_sigma)`` with ``G`` a normalised
            2-D Gaussian.
        """
        depth = np.maximum(np.asarray(depth_mm, dtype=np.float64), 0.0)
        sigma_x = self.primary_sigma_x_mm + self.primary_sigma_x_mm_per_mm * depth
        sigma_y = self.primary_sigma_y_mm + self.primary_sigma_y_mm_per_mm * depth
        scatter = self.scatter_sigma_mm + self.scatter_sigma_mm_per_mm * depth
        weight = self.scatter_weight_max * (1.0 - np.exp(-depth / self.scatter_buildup_mm))
        return sigma_x, sigma_y, scatter, weight

    def head_scatter(self, side_mm: float) -> float:
        """``S_c`` of an aperture whose equivalent square has side ``side_mm`` at the isocentre plane (1 at the
        reference field)."""
        amplitude, length = self.head_scatter_amplitude, self.head_scatter_length_mm

        def raw(side: float) -> float:
            return 1.0 - amplitude * math.exp(-max(side, 0.0) / length)

        return raw(side_mm) / raw(self.reference_field_mm)


def load_beam_model(name: str) -> BeamModel:
    """The commissioned beam model ``dosimetry/beam_data/<name>.json`` (module docstring).

    Raises
    ------
    BeamModelError
        If there is no such file or it lacks a field.
    """
    path = Path(__file__).with_name("beam_data") / f"{name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        depths, pdd = zip(*data["pdd_ssd_900"]["10x10"])
        fitted = data["fitted"]
        ssd = float(data["reference_ssd_mm"])
        dmax = float(depths[int(np.argmax(pdd))])
        calibration = float(data["calibration"]["dose_per_mu_gy_at_dmax_ssd_1000"])
        return BeamModel(name=str(data["name"]), depths_mm=tuple(float(d) for d in depths),
                         percent_depth_dose=tuple(float(v) for v in pdd), reference_ssd_mm=ssd,
                         reference_field_mm=float(data["reference_field_mm"]),
                         dose_per_mu_gy=calibration * ((1000.0 + dmax) / (ssd + dmax)) ** 2,
                         energy_mv=float(data["energy_mv"]), **{k: float(v) for k, v in fitted.items()})
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BeamModelError(f"beam data {path}: cannot be read ({type(error).__name__}: {error})") from None


#: The default beam: one Elekta Agility's 6 MV, commissioned (module docstring).
ELEKTA_AGILITY_6MV = load_beam_model("elekta_agility_6mv")
