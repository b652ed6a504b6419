"""``sct-node gamma``: the gamma index pass rate of two RT Dose files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sct_node.cli.common import EXIT_OK, Subcommands, non_negative_float, positive_float


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add ``gamma`` to ``commands``, with the options every verb takes from ``common``."""
    gamma = commands.add_parser(
        "gamma", parents=[common], help="gamma index of two RT Dose files",
        description="Compare two RT Dose files (same frame of reference) with the gamma index (Low et al. 1998) "
                    "using an interpolated search (Wendling et al. 2007) and print the pass rate.")
    gamma.add_argument("reference", type=Path, help="reference RT Dose file")
    gamma.add_argument("evaluated", type=Path, help="evaluated RT Dose file")
    gamma.add_argument("--dose-percent", type=positive_float, required=True, help="dose criterion, %%")
    gamma.add_argument("--distance-mm", type=positive_float, required=True, help="distance criterion, mm")
    gamma.add_argument("--cutoff-percent", type=non_negative_float, default=10.0,
                       help="ignore reference points below this %% of the reference maximum (default 10)")
    gamma.add_argument("--local", action="store_true", help="local instead of global gamma")
    gamma.add_argument("--max-gamma", type=positive_float, help="cap (and stop searching) at this gamma")
    gamma.add_argument("--json", action="store_true", help="print the result as JSON")
    gamma.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Compare the evaluated dose with the reference and print the pass rate (or a JSON summary)."""
    from dosimetry.gamma import gamma_volumes
    from dosimetry.rtdose import read_rt_dose
    from sct_node.errors import InputError

    reference = read_rt_dose(args.reference, allow_relative=True)
    evaluated = read_rt_dose(args.evaluated, allow_relative=True)
    if reference.frame_of_reference_uid != evaluated.frame_of_reference_uid:
        raise InputError(f"{args.evaluated} is in frame of reference {evaluated.frame_of_reference_uid}, "
                         f"the reference in {reference.frame_of_reference_uid}: they cannot be compared")
    options: dict[str, Any] = {"lower_percent_dose_cutoff": args.cutoff_percent, "local_gamma": args.local}
    if args.max_gamma is not None:
        options["max_gamma"] = args.max_gamma
    result = gamma_volumes(reference.dose_gy, evaluated.dose_gy, args.dose_percent, args.distance_mm, **options)
    summary = {
        "reference": str(args.reference), "evaluated": str(args.evaluated),
        "dose_percent_threshold": args.dose_percent, "distance_mm_threshold": args.distance_mm,
        "lower_percent_dose_cutoff": args.cutoff_percent, "local_gamma": args.local,
        "pass_rate_percent": round(result.pass_rate_percent, 4), "evaluated_points": result.evaluated_points,
        "mean_gamma": round(float(result.gamma[result.gamma == result.gamma].mean()), 4)
        if result.evaluated_points else None,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        kind = "local" if args.local else "global"
        print(f"gamma {args.dose_percent:g}%/{args.distance_mm:g} mm ({kind}, cutoff {args.cutoff_percent:g}%): "
              f"pass rate {result.pass_rate_percent:.2f}% of {result.evaluated_points} points")
    return EXIT_OK
