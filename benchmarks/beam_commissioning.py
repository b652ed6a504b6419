"""The dose engine against its commissioning data, in a water tank: output factors, depth doses, profiles.

    python benchmarks/beam_commissioning.py

Prints the tables a physicist reads before trusting the engine — "field size | output factor ours |
reference | diff" and, per measured field, "depth | PDD ours | reference | diff", then penumbrae, widths and
the calibration — computed by the real engine (dosimetry.engine) on a 50 x 50 x 32 cm water tank at SSD 90 cm.
The references and their sources are those of tests/dosimetry/test_commissioning.py (which asserts the
tolerances); the beam data the engine was fitted to are dosimetry/beam_data/elekta_agility_6mv.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.volume import Volume
from tests.dosimetry.test_commissioning import (
    D10_SSD90,
    D10_SSD100,
    DMAX_SSD100,
    OUTPUT_FACTORS,
    PDD,
    PROFILES,
    _dose,
)


def _tank() -> Volume:
    step = (5.0, 2.0, 5.0)
    nx, ny, nz = 100, 160, 100
    return Volume(np.ones((nz, ny, nx), np.float32), step, (-(nx - 1) * step[0] / 2, step[1] / 2,
                                                            -(nz - 1) * step[2] / 2))


def main() -> None:
    started = time.perf_counter()
    tank = _tank()
    doses = {side: float(_dose(tank, side, 900.0, [[0.0, 100.0, 0.0]])[0]) for side in (*OUTPUT_FACTORS, 100)}
    print("Output factors, 10 cm depth, SSD 90 cm, relative to 10 x 10 cm")
    print("| field size | output factor ours | reference | diff | source |\n| --- | --- | --- | --- | --- |")
    for side, (reference, source) in sorted(OUTPUT_FACTORS.items()):
        ours = doses[side] / doses[100]
        print(f"| {side / 10:g} x {side / 10:g} cm | {ours:.3f} | {reference:.3f} | {100 * (ours / reference - 1):+.1f} % "
              f"| {source} |")
    for side, table in PDD.items():
        depths = list(table)
        values = _dose(tank, side, 900.0, [[0.0, d, 0.0] for d in (12.0, 14.0, 16.0, *depths)])
        pdd = 100 * values[3:] / values[:3].max()
        print(f"\nPDD {side / 10:g} x {side / 10:g} cm, SSD 90 cm (AGILITY measurement)")
        print("| depth | PDD ours | reference | diff |\n| --- | --- | --- | --- |")
        for depth, ours in zip(depths, pdd):
            print(f"| {depth / 10:g} cm | {ours:.1f} % | {table[depth]:.1f} % | {100 * (ours / table[depth] - 1):+.1f} % |")
    print("\nProfiles, SSD 90 cm: 80-20 % penumbra and 50 % width (mm), ours / measured")
    print("| field | axis | depth | penumbra ours | measured | width ours | measured |\n| --- | --- | --- | --- | --- | --- | --- |")
    offsets = np.arange(0.0, 100.0, 0.5)
    for (side, axis), rows in PROFILES.items():
        grid = offsets[offsets < side]
        points = [[u, depth, 0.0] if axis == "x" else [0.0, depth, u] for depth, _, _ in rows for u in grid]
        profiles = _dose(tank, side, 900.0, points, lateral_spacing_mm=1.0).reshape(len(rows), len(grid))
        for (depth, penumbra, width), profile in zip(rows, profiles):
            profile = profile / profile[0]
            at = {level: float(np.interp(-level, -profile, grid)) for level in (0.8, 0.5, 0.2)}
            print(f"| {side / 10:g} x {side / 10:g} | {axis} | {depth / 10:g} cm | {at[0.2] - at[0.8]:.1f} | "
                  f"{penumbra:.1f} | {2 * at[0.5]:.1f} | {width:.1f} |")
    dmax = float(_dose(tank, 100, 1000.0, [[0.0, 14.0, 0.0]])[0])
    d10_100 = float(_dose(tank, 100, 1000.0, [[0.0, 100.0, 0.0]])[0])
    d10_90 = float(_dose(tank, 100, 900.0, [[0.0, 100.0, 0.0]])[0])
    print("\nCalibration (cGy/MU, 10 x 10 cm): ours / measured")
    print(f"d_max SSD 100: {dmax:.3f} / {DMAX_SSD100:.3f}; 10 cm SSD 100: {d10_100:.3f} / {D10_SSD100:.3f}; "
          f"10 cm SSD 90: {d10_90:.3f} / {D10_SSD90:.3f}; SSD 90/100 ratio {d10_90 / d10_100:.3f} / "
          f"{D10_SSD90 / D10_SSD100:.3f}")
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
