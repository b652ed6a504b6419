"""Gamma index of sct-node (``dosimetry.gamma``) against pymedphys, on one dose grid, in one run.

Run with the project and its test extras installed (``pip install -e '.[test]'``)::

    python benchmarks/gamma_vs_pymedphys.py [--size 100] [--repeat 1] [--threads N]

Method
------
The reference is a seeded, plan-like 3D dose on a ``size``^3 grid of 2.5 mm
voxels: seven coplanar 6 MV-like beams (rectangular apertures with 3 mm
Gaussian penumbrae, exponential attenuation with depth) summed inside an
elliptical body, with zero dose outside it; 2 Gy maximum. The evaluated dose
is the same plan with its coordinates shifted by (0.6, -0.8, 0.5) mm
(z, y, x), scaled by 1.01, plus Gaussian noise of standard deviation
1 % of sqrt(dose * maximum) (the shape of Monte Carlo noise) clipped at 0.

Both implementations compare them at 2 %/2 mm global, with a 10 % lower dose
cutoff and interp_fraction 10, no max_gamma:

(a) ``dosimetry.gamma.gamma_index`` (torch on the CPU, its default threads
    unless ``--threads`` says otherwise; pymedphys runs on one core);
(b) ``pymedphys.gamma`` with ``interp_algo="scipy"`` when numba is missing
    (its default "pymedphys" interpolation needs numba), else its default.

Each is timed by wall clock around the call alone (inputs ready, imports and
a small warm-up call done); with ``--repeat K`` the best of K runs counts. The
script prints both pass rates (each by its own criterion: gamma <= 1 for
sct-node, gamma < 1 for pymedphys, plus pymedphys' gamma counted with <= 1),
both times, the speed ratio and the targets: ratio >= 10 and pass rates
within 0.3 percentage points.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np
import torch
from scipy.special import erf

from dosimetry.gamma import gamma_index

SPACING_MM = 2.5
SHIFT_MM = (0.6, -0.8, 0.5)
SCALE = 1.01
NOISE_FRACTION = 0.01
SEED = 20240611


def plan_dose(
    size: int, shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """A seven-beam, plan-like dose (Gy) on a ``size``^3 grid; coordinates shifted by ``shift_mm``."""
    axes = tuple((np.arange(size) - (size - 1) / 2.0) * SPACING_MM for _ in range(3))
    z, y, x = np.meshgrid(*[axis - s for axis, s in zip(axes, shift_mm)], indexing="ij", sparse=True)
    extent = size * SPACING_MM
    body_a, body_b = 0.42 * extent, 0.32 * extent  # elliptical body (x, y semi-axes), mm
    body = (x / body_a) ** 2 + (y / body_b) ** 2 <= 1.0
    sigma = 3.0  # penumbra, mm
    half_lateral, half_height = 0.12 * extent, 0.10 * extent
    dose = np.zeros(np.broadcast_shapes(z.shape, y.shape, x.shape))
    for angle in np.deg2rad(np.arange(7) * 360.0 / 7 + 10.0):
        direction = np.array([np.sin(angle), np.cos(angle)])  # (y, x) of the beam axis
        lateral = -np.sin(angle) * x + np.cos(angle) * y  # across the beam
        depth = direction[0] * y + direction[1] * x + 0.5 * extent  # along the beam, from its source side
        width = np.sqrt(2) * sigma
        aperture = 0.25 * (
            (erf((lateral + half_lateral) / width) - erf((lateral - half_lateral) / width))
            * (erf((z + half_height) / width) - erf((z - half_height) / width))
        )
        dose = dose + aperture * np.exp(-0.0045 * depth) + 0.02 * np.exp(-0.01 * depth)
    dose = np.where(body, dose, 0.0)
    return axes, 2.0 * dose / dose.max()


def evaluated_dose(size: int) -> np.ndarray:
    """The plan shifted, scaled and with Monte Carlo-like noise."""
    _, shifted = plan_dose(size, SHIFT_MM)
    rng = np.random.default_rng(SEED)
    noisy = SCALE * shifted + NOISE_FRACTION * np.sqrt(shifted * shifted.max()) * rng.standard_normal(shifted.shape)
    return np.clip(noisy, 0.0, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=100, help="grid points per axis (default 100)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per implementation; the best counts (default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for sct-node (default: torch's default, one per core)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    import pymedphys  # the peer; installed with the test extras

    interp_algo = "pymedphys" if importlib.util.find_spec("numba") else "scipy"
    axes, reference = plan_dose(args.size)
    evaluated = evaluated_dose(args.size)
    criteria = {"dose_percent_threshold": 2.0, "distance_mm_threshold": 2.0}

    def ours() -> tuple[float, np.ndarray]:
        result = gamma_index(axes, reference, axes, evaluated, **criteria, lower_percent_dose_cutoff=10.0)
        return result.pass_rate_percent, result.gamma

    def peer() -> tuple[float, np.ndarray]:
        gamma = pymedphys.gamma(
            axes, reference, axes, evaluated, **criteria, lower_percent_dose_cutoff=10.0, interp_algo=interp_algo
        )
        valid = gamma[~np.isnan(gamma)]
        return 100.0 * np.count_nonzero(valid < 1.0) / valid.size, gamma

    # Warm-up on a small grid (imports, torch thread pool, scipy caches).
    middle = slice(args.size // 2 - 6, args.size // 2 + 6)
    small_axes = tuple(a[middle] for a in axes)
    gamma_index(small_axes, reference[middle, middle, middle], small_axes, evaluated[middle, middle, middle], 2.0, 2.0)

    def timed(run) -> tuple[float, float, np.ndarray]:
        best = np.inf
        for _ in range(args.repeat):
            start = time.perf_counter()
            rate, gamma = run()
            best = min(best, time.perf_counter() - start)
        return best, rate, gamma

    time_ours, rate_ours, gamma_ours = timed(ours)
    time_peer, rate_peer, gamma_peer = timed(peer)
    valid = ~np.isnan(gamma_peer)
    rate_peer_le = 100.0 * np.count_nonzero(gamma_peer[valid] <= 1.0) / np.count_nonzero(valid)
    both = valid & ~np.isnan(gamma_ours)
    difference = gamma_ours[both] - gamma_peer[both]

    points_ours, points_peer = int(np.count_nonzero(~np.isnan(gamma_ours))), int(np.count_nonzero(valid))
    print(f"grid {args.size}^3 at {SPACING_MM} mm, 2%/2mm global, 10% cutoff, interp_fraction 10; "
          f"evaluated points: {points_ours} (sct-node), {points_peer} (pymedphys)")
    print(f"pymedphys interp_algo={interp_algo!r} (numpy/scipy, one thread); sct-node torch threads "
          f"{torch.get_num_threads()}; best of {args.repeat}")
    print(f"sct-node   pass rate {rate_ours:7.3f} %   time {time_ours:8.2f} s")
    print(f"pymedphys  pass rate {rate_peer:7.3f} %   time {time_peer:8.2f} s   (gamma <= 1: {rate_peer_le:.3f} %)")
    print(f"pass-rate difference {rate_ours - rate_peer:+.3f} pp (target within 0.3)")
    print(f"speed ratio pymedphys / sct-node: {time_peer / time_ours:.1f}x (target >= 10x)")
    print(f"gamma difference sct-node - pymedphys: mean {difference.mean():+.4f}, "
          f"5th..95th percentile {np.percentile(difference, 5):+.3f} .. {np.percentile(difference, 95):+.3f}, "
          f"max |.| {np.abs(difference).max():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
