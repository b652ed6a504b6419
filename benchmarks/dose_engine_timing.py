"""Wall-clock time of the photon dose engine (``dosimetry.engine.compute_dose``) on a pelvis-sized grid.

Run from the repository root::

    python benchmarks/dose_engine_timing.py [--repeat 3] [--device cpu|cuda] [--vmat-only] [--profile]

Method
------
A 256 x 256 x 100 grid (1.5 x 1.5 x 3 mm voxels) holds an elliptical water
body (34 x 22 cm) with two femoral-head-like bone cylinders (relative
electron density 1.5). Four 10 x 10 cm beams (gantry 0, 90, 180, 270, 100 MU
each) and then four 20 x 20 cm beams are computed on it; each configuration
is timed by wall clock around ``compute_dose`` alone after one warm-up call,
and the best of ``--repeat`` runs is printed with the device and torch's
thread count.

VMAT (issue 15): a two-arc 6 MV VMAT plan (2 x 178 control points, 181 -> 179
degrees clockwise and back, leaves sweeping a modulated gap across a 6 x 6 cm
field; built by ``tests/factories/rt_plans.py``) is read with
``dosimetry.plans.read_rt_plan``, turned into static sub-arcs by
``dosimetry.beam.beams_from_plan`` (2 x 177 sub-arcs at the default 2.5-degree
step, computed as one beam per 5-degree gantry bin with every sub-arc's
aperture, as the QA and ``sct-node dose`` do: 2 x 72 beams) and computed once
on the same grid; the seconds for the conversion and for ``compute_dose`` are
printed, with ``--profile`` also the functions where the time goes (cProfile,
cumulative), with ``--compare-unbinned`` also the dose with one beam per
sub-arc and the largest difference. Target: 30 s on the 2-core CPU.

There is no peer in this run: no open-source photon engine with the same
inputs installs offline here (matRad needs MATLAB/Octave; a collapsed-cone
engine would not be a like-for-like comparison of this simplified model).
The target is "a few seconds at most" on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dosimetry.beam import ARC_GANTRY_BIN_DEG, Beam, beams_from_plan
from dosimetry.engine import EngineOptions, compute_dose
from dosimetry.plans import read_rt_plan
from models.volume import Volume
from tests.factories.rt_plans import vmat_two_arcs


def pelvis_phantom() -> Volume:
    """The 256 x 256 x 100 water-and-bone phantom described in the module docstring."""
    nx, ny, nz = 256, 256, 100
    spacing = (1.5, 1.5, 3.0)
    x = (np.arange(nx) - (nx - 1) / 2) * spacing[0]
    y = (np.arange(ny) - (ny - 1) / 2) * spacing[1]
    body = (x[None, :] / 170.0) ** 2 + (y[:, None] / 110.0) ** 2 <= 1.0
    density = body.astype(np.float32)
    for centre_x in (-90.0, 90.0):
        density[(x[None, :] - centre_x) ** 2 + (y[:, None] - 10.0) ** 2 <= 25.0**2] = 1.5
    origin = tuple(-(n - 1) / 2 * s for n, s in zip((nx, ny, nz), spacing, strict=True))
    return Volume(np.repeat(density[None], nz, axis=0), spacing, origin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default=None, help="cpu, cuda; default: CUDA when available")
    parser.add_argument("--vmat-only", action="store_true", help="time only the two-arc VMAT plan")
    parser.add_argument("--vmat-beams", type=int, default=None,
                        help="compute only the first N static sub-arcs of the VMAT plan (a quick estimate)")
    parser.add_argument("--profile", action="store_true", help="profile the VMAT dose calculation (cProfile)")
    parser.add_argument("--gantry-bin-deg", type=float, default=ARC_GANTRY_BIN_DEG,
                        help=f"sub-arcs computed as one beam per gantry bin (default {ARC_GANTRY_BIN_DEG:g}, what "
                             "the QA and `sct-node dose` use; 0: one beam per sub-arc)")
    parser.add_argument("--compare-unbinned", action="store_true",
                        help="also compute the arcs with one beam per sub-arc and print the largest dose difference")
    arguments = parser.parse_args()
    phantom = pelvis_phantom()
    options = EngineOptions(device=arguments.device)
    print(f"grid (z, y, x) {phantom.shape}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"device {arguments.device or ('cuda' if torch.cuda.is_available() else 'cpu')}")
    for field_mm in () if arguments.vmat_only else (100.0, 200.0):
        beams = [Beam.open_field(g, (0.0, 0.0, 0.0), field_mm, field_mm, 100.0) for g in (0.0, 90.0, 180.0, 270.0)]
        compute_dose(phantom, beams[:1], options=options)
        times = []
        for _ in range(max(arguments.repeat, 1)):
            start = time.perf_counter()
            dose = compute_dose(phantom, beams, options=options)
            times.append(time.perf_counter() - start)
        print(f"4 beams {field_mm / 10:.0f} x {field_mm / 10:.0f} cm: best {min(times):.2f} s "
              f"(runs: {', '.join(f'{t:.2f}' for t in times)}), max dose {dose.array.max():.3f} Gy")
    dose = time_vmat(phantom, options, arguments.vmat_beams, arguments.profile, arguments.gantry_bin_deg)
    if arguments.compare_unbinned and arguments.vmat_beams is None:
        unbinned = time_vmat(phantom, options, None, False, 0.0)
        difference = np.abs(dose.array - unbinned.array) / unbinned.array.max() * 100
        high = unbinned.array >= 0.5 * unbinned.array.max()
        print(f"binned - unbinned: largest {difference.max():.2f} % of the maximum dose, "
              f"{difference[high].max():.2f} % where the dose is at least half of it")


def time_vmat(phantom: Volume, options: EngineOptions, limit: int | None, profile: bool,
              gantry_bin_deg: float) -> Volume:
    """The two-arc VMAT plan of the module docstring: conversion and dose, seconds."""
    start = time.perf_counter()
    plan = read_rt_plan(vmat_two_arcs(points=178, mu=300.0))
    beams = beams_from_plan(plan, gantry_bin_deg=gantry_bin_deg)
    converted = time.perf_counter() - start
    computed = beams if limit is None else beams[:limit]
    compute_dose(phantom, beams[:1], options=options)  # warm-up
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    start = time.perf_counter()
    dose = compute_dose(phantom, computed, options=options)
    seconds = time.perf_counter() - start
    if profiler is not None:
        import pstats

        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(18)
    part = "" if limit is None else f" (first {len(computed)} of {len(beams)} beams; all: about " \
                                    f"{seconds / len(computed) * len(beams):.0f} s)"
    print(f"VMAT 2 arcs x 178 control points -> {len(beams)} beams (gantry bins {gantry_bin_deg:g} deg; read + "
          f"convert {converted:.2f} s): dose {seconds:.2f} s{part}, {1000 * seconds / len(computed):.0f} ms per beam, "
          f"max dose {dose.array.max():.3f} Gy")
    return dose


if __name__ == "__main__":
    main()
