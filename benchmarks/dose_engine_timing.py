"""Wall-clock time of the photon dose engine (``dosimetry.engine.compute_dose``) on a pelvis-sized grid.

Run from the repository root::

    python benchmarks/dose_engine_timing.py [--repeat 3] [--device cpu|cuda]

Method
------
A 256 x 256 x 100 grid (1.5 x 1.5 x 3 mm voxels) holds an elliptical water
body (34 x 22 cm) with two femoral-head-like bone cylinders (relative
electron density 1.5). Four 10 x 10 cm beams (gantry 0, 90, 180, 270, 100 MU
each) and then four 20 x 20 cm beams are computed on it; each configuration
is timed by wall clock around ``compute_dose`` alone after one warm-up call,
and the best of ``--repeat`` runs is printed with the device and torch's
thread count.

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

from dosimetry.beam import Beam
from dosimetry.engine import EngineOptions, compute_dose
from models.volume import Volume


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
    arguments = parser.parse_args()
    phantom = pelvis_phantom()
    options = EngineOptions(device=arguments.device)
    print(f"grid (z, y, x) {phantom.shape}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"device {arguments.device or ('cuda' if torch.cuda.is_available() else 'cpu')}")
    for field_mm in (100.0, 200.0):
        beams = [Beam.open_field(g, (0.0, 0.0, 0.0), field_mm, field_mm, 100.0) for g in (0.0, 90.0, 180.0, 270.0)]
        compute_dose(phantom, beams[:1], options=options)
        times = []
        for _ in range(max(arguments.repeat, 1)):
            start = time.perf_counter()
            dose = compute_dose(phantom, beams, options=options)
            times.append(time.perf_counter() - start)
        print(f"4 beams {field_mm / 10:.0f} x {field_mm / 10:.0f} cm: best {min(times):.2f} s "
              f"(runs: {', '.join(f'{t:.2f}' for t in times)}), max dose {dose.array.max():.3f} Gy")


if __name__ == "__main__":
    main()
