"""Fit the dose engine's beam model to the beam data in dosimetry/beam_data/<name>.json and write the fit back.

    python scripts/commission_beam_model.py [elekta_agility_6mv] [--dry-run]

The engine's on-axis dose and profiles in water have a closed form in its kernel parameters (a product of
error functions, :mod:`dosimetry.engine`), so the fit is a small least-squares problem and needs no dose
calculation: the primary widths along X and Y, the scatter width, weight and build-up, and the head-scatter
amplitude and length are chosen to reproduce, in one weighted sum of squares,

* every output factor of the file (at 10 cm depth, SSD 90 cm), in percent;
* the 5 x 5 cm PDD beyond 2 cm, in percent (the 10 x 10 cm PDD is the model's own depth dose, exact by
  construction);
* the 80-20 % penumbrae (weight 2) and 50 % widths, in mm, of every measured profile (converted from SSD 90 cm
  to the isocentre plane, where the kernel lives).

It prints the residuals; tests/dosimetry/test_commissioning.py then checks the real engine against the same
figures (copied into the test with their sources). Replace the file's measurements with a clinic's own and
re-run to commission the engine for another machine.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares
from scipy.special import erf

DATA = Path(__file__).resolve().parents[1] / "dosimetry" / "beam_data"
PARAMETERS = ("primary_sigma_y_mm", "primary_sigma_y_mm_per_mm", "primary_sigma_x_mm", "primary_sigma_x_mm_per_mm",
              "scatter_sigma_mm", "scatter_sigma_mm_per_mm", "scatter_weight_max", "scatter_buildup_mm",
              "head_scatter_amplitude", "head_scatter_length_mm")
START = (1.8, 0.01, 2.8, 0.015, 40.0, 0.05, 0.2, 80.0, 0.1, 30.0)
LOWER = (0.3, 0.0, 0.3, 0.0, 5.0, 0.0, 0.0, 5.0, 0.0, 2.0)
UPPER = (6.0, 0.05, 8.0, 0.06, 150.0, 0.5, 0.9, 400.0, 0.9, 500.0)
ROOT2 = math.sqrt(2.0)


def _widths(q: dict, depth) -> tuple:
    sx = q["primary_sigma_x_mm"] + q["primary_sigma_x_mm_per_mm"] * depth
    sy = q["primary_sigma_y_mm"] + q["primary_sigma_y_mm_per_mm"] * depth
    ss = q["scatter_sigma_mm"] + q["scatter_sigma_mm_per_mm"] * depth
    w = q["scatter_weight_max"] * (1 - np.exp(-depth / q["scatter_buildup_mm"]))
    return sx, sy, ss, w


def on_axis(q: dict, side, depth):
    """The kernel of a square field on its axis (the engine's F conv K at the centre)."""
    sx, sy, ss, w = _widths(q, depth)
    a = side / 2
    return (1 - w) * erf(a / (ROOT2 * sx)) * erf(a / (ROOT2 * sy)) + w * erf(a / (ROOT2 * ss)) ** 2


def head_scatter(q: dict, side):
    raw = lambda s: 1 - q["head_scatter_amplitude"] * np.exp(-s / q["head_scatter_length_mm"])
    return raw(side) / raw(100.0)


def edges(q: dict, side: float, depth: float, axis: str) -> tuple[float, float]:
    """80-20 % penumbra and 50 % width of a square field's profile along ``axis`` (isocentre plane, mm)."""
    sx, sy, ss, w = _widths(q, depth)
    along, other = (sx, sy) if axis == "x" else (sy, sx)
    a = side / 2
    u = np.linspace(0.0, side, 2001)
    half = lambda s: (erf((a - u) / (ROOT2 * s)) + erf((a + u) / (ROOT2 * s))) / 2
    profile = (1 - w) * half(along) * erf(a / (ROOT2 * other)) + w * half(ss) * erf(a / (ROOT2 * ss))
    profile = profile / profile[0]
    at = lambda level: float(np.interp(-level, -profile, u))
    return at(0.2) - at(0.8), 2 * at(0.5)


def residuals(values, data: dict) -> np.ndarray:
    q = dict(zip(PARAMETERS, values))
    out = []
    for row in data["output_factors_depth_100_mm_ssd_900"]:
        side, reference = float(row["field_mm"]), float(row["value"])
        ours = head_scatter(q, side) * on_axis(q, side, 100.0) / on_axis(q, 100.0, 100.0)
        out.append((0.5 if side < 30 else 1.0) * 100 * (ours / reference - 1))
    reference_pdd = np.asarray(data["pdd_ssd_900"]["10x10"], dtype=float)
    small = np.asarray(data["pdd_ssd_900"]["5x5"], dtype=float)
    depth = reference_pdd[:, 0]
    predicted = reference_pdd[:, 1] * on_axis(q, 50.0, depth) / on_axis(q, 100.0, depth)
    predicted = 100 * predicted / predicted.max()
    judged = (depth >= 20) & (depth <= 300)
    out += list((predicted[judged] / small[judged, 1] - 1) * 100)
    ssd = float(data["reference_ssd_mm"])
    for name, side in (("5x5", 50.0), ("10x10", 100.0)):
        for axis, rows in data["profiles_ssd_900"][name].items():
            for row in rows:
                scale = 1000.0 / (ssd + row["depth_mm"])  # measured at SSD 90: to the isocentre plane
                penumbra, width = edges(q, side, row["depth_mm"], axis)
                out.append(2 * (penumbra - row["penumbra_80_20_mm"] * scale))
                out.append(width - row["width_50_mm"] * scale)
    return np.asarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", nargs="?", default="elekta_agility_6mv")
    parser.add_argument("--dry-run", action="store_true", help="print the fit, do not write it")
    args = parser.parse_args()
    path = DATA / f"{args.name}.json"
    data = json.loads(path.read_text())
    fit = least_squares(residuals, START, bounds=(LOWER, UPPER), args=(data,))
    fitted = dict(zip(PARAMETERS, (float(v) for v in fit.x)))
    print(json.dumps(fitted, indent=1))
    print(f"largest weighted residual {np.abs(fit.fun).max():.2f} (% for output factors and PDD, mm for profiles)")
    if not args.dry_run:
        data["fitted"] = fitted
        path.write_text(json.dumps(data, indent=1) + "\n")
        print(f"written to {path}")


if __name__ == "__main__":
    main()
