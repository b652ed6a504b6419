"""``sct-node phantom``: seeded head/pelvis phantoms as DICOM series and SynthRAD-layout MHA files."""

from __future__ import annotations

import argparse
from pathlib import Path

from sct_node.cli.common import EXIT_OK, Subcommands, logger, non_negative_int, positive_float, positive_int, progress


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add ``phantom`` to ``commands``, with the options every verb takes from ``common``."""
    phantom = commands.add_parser(
        "phantom", parents=[common], help="generate paired MR/CT phantoms (DICOM + SynthRAD-layout MHA)",
        description="Generate seeded head/pelvis phantoms: MR T1w/T2w and CT as DICOM series, an RT Structure "
                    "Set, and mr.mha/ct.mha/mask.mha in the SynthRAD layout for training.",
    )
    phantom.add_argument("--output", "-o", type=Path, required=True, help="folder for the cases")
    phantom.add_argument("--site", choices=("head", "pelvis", "both"), default="both", help="anatomy (default both)")
    phantom.add_argument("--cases", type=positive_int, default=1, help="cases per site (default 1)")
    phantom.add_argument("--seed", type=non_negative_int, default=0,
                         help="seed of the first case; case i uses seed+i (default 0)")
    phantom.add_argument("--shape", type=positive_int, nargs=3, metavar=("Z", "Y", "X"),
                         help="voxels per axis (default: site default, 100 x 256 x 256)")
    phantom.add_argument("--spacing-mm", type=positive_float, nargs=3, metavar=("X", "Y", "Z"),
                         help="voxel size in mm (default: head 1 1 2.5, pelvis 1.6 1.6 2.5)")
    phantom.add_argument("--no-dicom", action="store_true", help="write only the SynthRAD-layout MHA files")
    phantom.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Write ``--cases`` phantoms per site into ``--output``."""
    from models.phantoms import generate_phantom, write_synthrad_case
    from sct_node.tools.phantom_writer import write_phantom_dicom

    sites = ("head", "pelvis") if args.site == "both" else (args.site,)
    args.output.mkdir(parents=True, exist_ok=True)
    for site in sites:
        for i in range(args.cases):
            seed = args.seed + i
            case_id = f"{site}-{seed:04d}"
            case_dir = args.output / case_id
            phantom = generate_phantom(site, seed, shape_zyx=tuple(args.shape) if args.shape else None,
                                       spacing_mm=tuple(args.spacing_mm) if args.spacing_mm else None)
            write_synthrad_case(phantom, case_dir)
            if not args.no_dicom:
                with progress(f"{case_id} DICOM", args.quiet) as update:
                    write_phantom_dicom(phantom, case_id, case_dir / "dicom", progress=update)
            logger.info("wrote phantom %s (%s voxels) to %s", case_id, "x".join(map(str, phantom.ct_hu.shape)),
                        case_dir)
    return EXIT_OK
