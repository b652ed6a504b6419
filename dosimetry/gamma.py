"""The gamma index: a combined dose-difference and distance-to-agreement comparison.

For every reference point ``r`` at or above the lower dose cutoff, gamma is the
smallest generalised distance to the evaluated distribution (Low et al. 1998)::

    gamma(r) = min over x of sqrt(|x - r|**2 / dta**2 + (D_e(x) - D_r(r))**2 / dd**2)

with ``dta = distance_mm_threshold`` and ``dd`` the dose criterion in Gy:
``dose_percent_threshold`` percent of the global normalisation (global gamma)
or of ``D_r(r)`` itself (local gamma). A point passes when ``gamma <= 1``.

How ``min over x`` is searched (Wendling et al. 2007)
----------------------------------------------------
The evaluated dose ``D_e`` is interpolated multilinearly (trilinearly in 3D)
from its grid, and ``x`` runs over a fine lattice centred on ``r`` with step
``dta / interp_fraction`` (0.2 mm for 2 mm and the default 10), so the
evaluated grid's own spacing does not bias the result. Lattice offsets are
visited in shells of increasing distance; a point whose best gamma is no
larger than the distance term of every offset still to come is settled and
leaves the search, the early stop pymedphys also uses. The search ends at
``max_gamma * dta``, where gamma is capped. Every point also has one extra
candidate, the nearest point of the evaluated grid (the point itself when it
lies inside): it bounds the search when there is no cap, and lets reference
points outside the evaluated grid be compared with the nearest evaluated dose
rather than dropped.

The lattice is rotated by a fixed angle so that field edges along the grid
axes are sampled densely; an axis-aligned lattice overestimates gamma in steep
penumbrae by up to half a step's dose change (0.87 where the continuous
minimum was 0.25, on a 2 %/2 mm test). :mod:`dosimetry.gamma_search`
documents the search and :mod:`dosimetry.gamma_sampling` the vectorised
interpolation (torch, CPU); both bound their memory by chunking points and
batching samples.

Like every fine-grid search, this one can only overestimate the continuous
minimum. On linear fields whose dose changes by 1.5 dose criteria per lattice
step (a steep penumbra at 2 %/2 mm) the overestimate averages 0.02 and reaches
about 0.2 for the least favourable shift; in smooth regions it is far
smaller, and near gamma 0 it is at most one step (``1 / interp_fraction``).
pymedphys' spherical shells err the same way, and more near gamma = 1 (below).

Differences from :func:`pymedphys.gamma`
---------------------------------------
* ``lower_percent_dose_cutoff`` is a percentage of the reference maximum, also
  when ``global_normalisation_gy`` is given (pymedphys takes it of the
  normalisation).
* A point passes at ``gamma <= 1`` (Low et al.); pymedphys counts
  ``gamma < 1``. Only points at exactly 1 differ.
* A reference point with no evaluated dose within ``max_gamma * dta`` gets
  ``max_gamma`` (it fails), not NaN; NaN marks only points below the cutoff.
* pymedphys searches spheres whose radii are multiples of the step, so the
  distance term is quantised: where the iso-dose surface lies between two
  radii in a steep gradient it reports the outer radius, e.g. 1.0004 where
  the continuous minimum is 0.97. Near gamma = 1 this lowers its pass rates:
  by 2-9 percentage points against dense-sampling ground truth on a plan-like
  field shifted by 3.9 mm (2 %/2 mm global, 3 %/3 mm local), where this
  module is within 0.25-0.75 points of it. On smaller shifts, scaling, noise
  and heterogeneities the two agree within 0.3 points.

References
----------
D. A. Low, W. B. Harms, S. Mutic and J. A. Purdy, "A technique for the
quantitative evaluation of dose distributions", Med. Phys. 25(5), 656-661
(1998), doi:10.1118/1.598248.

M. Wendling, L. J. Zijp, L. N. McDermott, E. J. Smit, J.-J. Sonke,
B. J. Mijnheer and M. van Herk, "A fast algorithm for gamma evaluation in 3D",
Med. Phys. 34(5), 1647-1654 (2007), doi:10.1118/1.2721657.

M. Hussein, C. H. Clark and A. Nisbet, "Challenges in calculation of the gamma
index in radiotherapy - towards good practice", Phys. Med. 36, 1-11 (2017),
doi:10.1016/j.ejmp.2017.03.001.

S. Biggs et al., PyMedPhys, ``pymedphys.gamma`` (Apache-2.0),
https://docs.pymedphys.com/ : the reference implementation this module is
benchmarked against (``benchmarks/gamma_vs_pymedphys.py``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dosimetry.errors import GammaInputError
from dosimetry.gamma_search import search_gamma

if TYPE_CHECKING:
    from models.volume import Volume

__all__ = ["GammaOptions", "GammaResult", "gamma_index", "gamma_volumes"]

@dataclass(frozen=True)
class GammaOptions:
    """The options of one gamma comparison, resolved and checked.

    Attributes
    ----------
    dose_percent_threshold : float
        Dose-difference criterion, percent (of ``global_normalisation_gy`` for
        global gamma, of the local reference dose for local gamma).
    distance_mm_threshold : float
        Distance-to-agreement criterion, mm.
    lower_percent_dose_cutoff : float
        Reference points below this percentage of the reference maximum are not
        evaluated.
    interp_fraction : int
        The search lattice step is ``distance_mm_threshold / interp_fraction``.
    max_gamma : float
        Gamma is searched up to, and capped at, this value; ``math.inf`` when
        no cap was asked for.
    local_gamma : bool
        Local (True) or global (False) dose-difference normalisation.
    global_normalisation_gy : float
        Dose the global criterion is a percentage of, Gy.
    lower_dose_cutoff_gy : float
        The cutoff as a dose, Gy.
    search_step_mm : float
        Step of the search lattice, mm.
    """

    dose_percent_threshold: float
    distance_mm_threshold: float
    lower_percent_dose_cutoff: float
    interp_fraction: int
    max_gamma: float
    local_gamma: bool
    global_normalisation_gy: float
    lower_dose_cutoff_gy: float
    search_step_mm: float


@dataclass(frozen=True)
class GammaResult:
    """The outcome of a gamma comparison.

    Attributes
    ----------
    gamma : numpy.ndarray
        Gamma at every reference grid point (float64, the reference's shape);
        NaN where the reference dose is below the cutoff.
    pass_rate_percent : float
        Percentage of evaluated points with ``gamma <= 1``.
    evaluated_points : int
        Number of reference points at or above the cutoff.
    options : GammaOptions
        The resolved options the comparison ran with.
    """

    gamma: np.ndarray
    pass_rate_percent: float
    evaluated_points: int
    options: GammaOptions


@dataclass(frozen=True)
class _Problem:
    """Checked inputs as float64 arrays, in the order the search uses them."""

    axes_reference: tuple[np.ndarray, ...]
    dose_reference: np.ndarray
    axes_evaluation: tuple[np.ndarray, ...]
    dose_evaluation: np.ndarray


def gamma_index(
    axes_reference_mm: Sequence[np.ndarray],
    dose_reference_gy: np.ndarray,
    axes_evaluation_mm: Sequence[np.ndarray],
    dose_evaluation_gy: np.ndarray,
    dose_percent_threshold: float,
    distance_mm_threshold: float,
    *,
    lower_percent_dose_cutoff: float = 10.0,
    interp_fraction: int = 10,
    max_gamma: float | None = None,
    local_gamma: bool = False,
    global_normalisation_gy: float | None = None,
    chunk_points: int = 1 << 18,
) -> GammaResult:
    """Compare an evaluated dose distribution with a reference one by gamma index.

    The arguments follow :func:`pymedphys.gamma`, with units in the names.
    Works in 1, 2 and 3 dimensions; the two grids may differ (spacing, extent,
    non-uniform axes): the evaluated dose is interpolated (multi)linearly
    wherever the search needs it.

    Parameters
    ----------
    axes_reference_mm : sequence of 1-D array_like
        Coordinates of the reference grid along each array axis, mm, strictly
        increasing, e.g. ``(z_mm, y_mm, x_mm)`` for a ``(z, y, x)`` array.
    dose_reference_gy : array_like
        Reference dose, Gy, shape ``tuple(len(a) for a in axes_reference_mm)``.
    axes_evaluation_mm : sequence of 1-D array_like
        Coordinates of the evaluated grid, mm, in the same frame and axis order;
        at least two points per axis.
    dose_evaluation_gy : array_like
        Evaluated dose, Gy, on that grid.
    dose_percent_threshold : float
        Dose-difference criterion, percent (e.g. 2 for 2 %/2 mm).
    distance_mm_threshold : float
        Distance-to-agreement criterion, mm.
    lower_percent_dose_cutoff : float, optional
        Only reference points with dose at or above this percentage of the
        reference maximum are evaluated (default 10, as recommended by AAPM
        TG-218).
    interp_fraction : int, optional
        The search lattice step is ``distance_mm_threshold / interp_fraction``
        (default 10, as recommended by Wendling et al.).
    max_gamma : float, optional
        Search no further than ``max_gamma * distance_mm_threshold`` and cap
        gamma at this value. Default: no cap; each point's search is then
        bounded by its first candidate (see the module notes). A cap of 2 or 3
        makes badly mismatched distributions much faster to compare.
    local_gamma : bool, optional
        Normalise the dose difference to the local reference dose instead of
        ``global_normalisation_gy``.
    global_normalisation_gy : float, optional
        Dose the global criterion is a percentage of, Gy. Default: the
        reference maximum.
    chunk_points : int, optional
        Reference points searched together; bounds the per-point state held at
        once. Results do not depend on it.

    Returns
    -------
    GammaResult
        Gamma per reference point (NaN below the cutoff), the pass rate, the
        number of evaluated points and the resolved options.

    Raises
    ------
    GammaInputError
        If shapes and axes disagree, an axis is not strictly increasing, a
        threshold is not positive, a dose is not finite, the reference has no
        positive dose, local gamma meets a reference dose of zero, or the grids
        do not overlap.

    References
    ----------
    Low et al., Med. Phys. 25, 656 (1998); Wendling et al., Med. Phys. 34,
    1647 (2007); M. Miften et al., "Tolerance limits and methodologies for
    IMRT measurement-based verification QA: Recommendations of AAPM Task Group
    No. 218", Med. Phys. 45(4), e53-e83 (2018), doi:10.1002/mp.12810.
    """
    problem, options = _resolve_inputs(
        axes_reference_mm,
        dose_reference_gy,
        axes_evaluation_mm,
        dose_evaluation_gy,
        dose_percent_threshold,
        distance_mm_threshold,
        lower_percent_dose_cutoff,
        interp_fraction,
        max_gamma,
        local_gamma,
        global_normalisation_gy,
        chunk_points,
    )
    evaluate = problem.dose_reference >= options.lower_dose_cutoff_gy
    flat_points = np.flatnonzero(evaluate)
    dose_fraction = options.dose_percent_threshold / 100.0
    if options.local_gamma:
        criterion_gy = dose_fraction * problem.dose_reference.reshape(-1)[flat_points]
    else:
        criterion_gy = np.full(flat_points.size, dose_fraction * options.global_normalisation_gy)
    gamma = np.full(problem.dose_reference.shape, np.nan)
    gamma[evaluate] = search_gamma(
        problem.axes_reference,
        problem.dose_reference,
        problem.axes_evaluation,
        problem.dose_evaluation,
        flat_points,
        criterion_gy,
        options.distance_mm_threshold,
        options.interp_fraction,
        options.max_gamma,
        chunk_points,
    )
    evaluated_points = int(np.count_nonzero(evaluate))
    pass_rate_percent = 100.0 * np.count_nonzero(gamma[evaluate] <= 1.0) / evaluated_points
    return GammaResult(
        gamma=gamma,
        pass_rate_percent=float(pass_rate_percent),
        evaluated_points=evaluated_points,
        options=options,
    )


def gamma_volumes(
    reference: Volume,
    evaluated: Volume,
    dose_percent_threshold: float,
    distance_mm_threshold: float,
    **options: object,
) -> GammaResult:
    """Gamma index of two dose :class:`~models.volume.Volume` s in one frame.

    The volumes may differ in spacing, extent and origin but must share their
    direction cosines; coordinates are taken along those directions. Keyword
    options are those of :func:`gamma_index`.

    Parameters
    ----------
    reference, evaluated : models.volume.Volume
        Dose grids, Gy, arrays in ``(z, y, x)`` order.
    dose_percent_threshold : float
        Dose-difference criterion, percent.
    distance_mm_threshold : float
        Distance-to-agreement criterion, mm.
    **options
        Passed to :func:`gamma_index`.

    Returns
    -------
    GammaResult
        As :func:`gamma_index`, ``gamma`` in ``(z, y, x)`` order.

    Raises
    ------
    GammaInputError
        If the directions differ, or as :func:`gamma_index`.

    References
    ----------
    DICOM PS3.3 C.7.6.2.1.1 (Image Position and Orientation (Patient)); see
    :func:`gamma_index` for the method.
    """
    if not np.allclose(reference.direction, evaluated.direction, atol=1e-6):
        raise GammaInputError(
            "reference and evaluated volumes must share their direction cosines; found "
            f"{reference.direction.tolist()} and {evaluated.direction.tolist()}"
        )
    axes_reference, axes_evaluated = _volume_axes_mm(reference), _volume_axes_mm(evaluated)
    _require_overlap(axes_reference, axes_evaluated)
    return gamma_index(
        axes_reference,
        reference.array,
        axes_evaluated,
        evaluated.array,
        dose_percent_threshold,
        distance_mm_threshold,
        **options,  # type: ignore[arg-type]
    )


def _require_overlap(axes_reference: tuple[np.ndarray, ...], axes_evaluated: tuple[np.ndarray, ...]) -> None:
    """Refuse two grids whose extents (voxel centres, z y x) do not overlap along some axis."""
    for name, reference_axis, evaluated_axis in zip("zyx", axes_reference, axes_evaluated):
        low = max(reference_axis.min(), evaluated_axis.min())
        high = min(reference_axis.max(), evaluated_axis.max())
        if low > high:
            raise GammaInputError(
                f"the evaluated dose grid ({evaluated_axis.min():.1f}..{evaluated_axis.max():.1f} mm along {name}) "
                f"does not overlap the reference grid ({reference_axis.min():.1f}..{reference_axis.max():.1f} mm): "
                "they cannot be compared (different patient position or frame of reference?)"
            )


def _volume_axes_mm(volume: Volume) -> tuple[np.ndarray, ...]:
    """Coordinates (z, y, x) of a volume's voxel centres along its own directions, mm."""
    origin = np.asarray(volume.origin_mm, dtype=np.float64)
    axes = []
    for index_axis, count in zip((2, 1, 0), volume.shape):  # array axis 0 is index axis z (2)
        direction = volume.direction[:, index_axis]
        start = float(origin @ direction)
        axes.append(start + volume.spacing_mm[index_axis] * np.arange(count, dtype=np.float64))
    return tuple(axes)


# --------------------------------------------------------------------------- boundary


def _resolve_inputs(
    axes_reference_mm: object,
    dose_reference_gy: object,
    axes_evaluation_mm: object,
    dose_evaluation_gy: object,
    dose_percent_threshold: object,
    distance_mm_threshold: object,
    lower_percent_dose_cutoff: object,
    interp_fraction: object,
    max_gamma: object,
    local_gamma: object,
    global_normalisation_gy: object,
    chunk_points: object,
) -> tuple[_Problem, GammaOptions]:
    """Check every input once and resolve the options; the only place that raises."""
    dose_percent = _positive_number("dose_percent_threshold", dose_percent_threshold)
    distance_mm = _positive_number("distance_mm_threshold", distance_mm_threshold)
    cutoff_percent = _finite_number("lower_percent_dose_cutoff", lower_percent_dose_cutoff)
    if not 0.0 <= cutoff_percent <= 100.0:
        raise GammaInputError(
            f"lower_percent_dose_cutoff must lie in [0, 100] (percent of the reference maximum); found {cutoff_percent}"
        )
    fraction = _positive_integer("interp_fraction", interp_fraction)
    _positive_integer("chunk_points", chunk_points)  # a tuning knob, not an option of the comparison
    cap = math.inf if max_gamma is None else _positive_number("max_gamma", max_gamma, allow_inf=True)
    if not isinstance(local_gamma, (bool, np.bool_)):
        raise GammaInputError(f"local_gamma must be True or False; found {local_gamma!r}")

    axes_reference = _axes("axes_reference_mm", axes_reference_mm, minimum_points=1)
    axes_evaluation = _axes("axes_evaluation_mm", axes_evaluation_mm, minimum_points=2)
    dose_reference = _dose("dose_reference_gy", dose_reference_gy, axes_reference, "axes_reference_mm")
    dose_evaluation = _dose("dose_evaluation_gy", dose_evaluation_gy, axes_evaluation, "axes_evaluation_mm")
    if len(axes_reference) != len(axes_evaluation):
        raise GammaInputError(
            f"reference and evaluated grids must have the same number of dimensions; "
            f"found {len(axes_reference)} and {len(axes_evaluation)}"
        )

    step_mm = distance_mm / fraction
    for axis, (ref, ev) in enumerate(zip(axes_reference, axes_evaluation)):
        if ref[-1] < ev[0] or ev[-1] < ref[0]:
            raise GammaInputError(
                f"reference and evaluated grids do not overlap along axis {axis}: reference spans "
                f"[{ref[0]:g}, {ref[-1]:g}] mm, evaluated [{ev[0]:g}, {ev[-1]:g}] mm"
            )
        if ev[-1] - ev[0] < step_mm:
            raise GammaInputError(
                f"evaluated grid spans only {ev[-1] - ev[0]:g} mm along axis {axis}, less than the "
                f"search step {step_mm:g} mm (distance_mm_threshold / interp_fraction)"
            )

    reference_max_gy = float(dose_reference.max())
    if reference_max_gy <= 0.0:
        raise GammaInputError(
            f"dose_reference_gy has no positive dose (maximum {reference_max_gy:g} Gy), "
            "so no reference point lies above the lower dose cutoff"
        )
    if global_normalisation_gy is None:
        normalisation_gy = reference_max_gy
    else:
        normalisation_gy = _positive_number("global_normalisation_gy", global_normalisation_gy)
    cutoff_gy = cutoff_percent / 100.0 * reference_max_gy
    if local_gamma and cutoff_gy <= 0.0 and float(dose_reference.min()) <= 0.0:
        raise GammaInputError(
            "local gamma divides by the reference dose, which is zero or negative at some points "
            "above the cutoff; set lower_percent_dose_cutoff above 0"
        )

    options = GammaOptions(
        dose_percent_threshold=dose_percent,
        distance_mm_threshold=distance_mm,
        lower_percent_dose_cutoff=cutoff_percent,
        interp_fraction=fraction,
        max_gamma=cap,
        local_gamma=bool(local_gamma),
        global_normalisation_gy=normalisation_gy,
        lower_dose_cutoff_gy=cutoff_gy,
        search_step_mm=step_mm,
    )
    problem = _Problem(axes_reference, dose_reference, axes_evaluation, dose_evaluation)
    return problem, options


def _finite_number(name: str, value: object) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise GammaInputError(f"{name} must be a number; found {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise GammaInputError(f"{name} must be finite; found {number}")
    return number


def _positive_number(name: str, value: object, allow_inf: bool = False) -> float:
    if allow_inf and isinstance(value, numbers.Real) and float(value) == math.inf:
        return math.inf
    number = _finite_number(name, value)
    if number <= 0.0:
        raise GammaInputError(f"{name} must be positive; found {number:g}")
    return number


def _positive_integer(name: str, value: object) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise GammaInputError(f"{name} must be a positive integer; found {value!r}")
    return int(value)


def _axes(name: str, axes: object, minimum_points: int) -> tuple[np.ndarray, ...]:
    if isinstance(axes, np.ndarray) or not isinstance(axes, (tuple, list)):
        raise GammaInputError(
            f"{name} must be a tuple of 1-D coordinate arrays, one per dose axis, e.g. (z_mm, y_mm, x_mm) "
            f"or (x_mm,) in 1-D; found {type(axes).__name__}"
        )
    if not 1 <= len(axes) <= 3:
        raise GammaInputError(f"{name} must hold 1, 2 or 3 axes; found {len(axes)}")
    checked = []
    for index, axis in enumerate(axes):
        try:
            values = np.asarray(axis, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise GammaInputError(f"{name}[{index}] is not an array of numbers: {error}") from None
        if values.ndim != 1:
            raise GammaInputError(f"{name}[{index}] must be 1-D; found shape {values.shape}")
        if values.size < minimum_points:
            raise GammaInputError(f"{name}[{index}] needs at least {minimum_points} coordinates; found {values.size}")
        if not np.all(np.isfinite(values)):
            raise GammaInputError(f"{name}[{index}] holds non-finite coordinates")
        steps = np.diff(values)
        if np.any(steps <= 0):
            where = int(np.flatnonzero(steps <= 0)[0])
            raise GammaInputError(
                f"{name}[{index}] must be strictly increasing; found {values[where]:g} then "
                f"{values[where + 1]:g} mm at positions {where} and {where + 1}"
            )
        checked.append(values)
    return tuple(checked)


def _dose(name: str, dose: object, axes: tuple[np.ndarray, ...], axes_name: str) -> np.ndarray:
    try:
        values = np.asarray(dose, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise GammaInputError(f"{name} is not an array of numbers: {error}") from None
    expected = tuple(axis.size for axis in axes)
    if values.shape != expected:
        raise GammaInputError(
            f"{name} has shape {values.shape} but {axes_name} describe a grid of shape {expected}"
        )
    finite = np.isfinite(values)
    if not finite.all():
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise GammaInputError(
            f"{name} holds {int(np.count_nonzero(~finite))} non-finite values (first at index {first})"
        )
    return values
