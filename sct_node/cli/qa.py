"""``sct-node qa``: the dosimetric QA of a synthetic CT, written as qa.json with a PASS/WARN/FAIL verdict."""

from __future__ import annotations

import argparse
from pathlib import Path

from sct_node.cli.common import EXIT_OK, EXIT_QA_FAIL, Subcommands, logger, positive_float


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add ``qa`` to ``commands``, with the options every verb takes from ``common``."""
    qa = commands.add_parser(
        "qa", parents=[common], help="dosimetric QA of a synthetic CT",
        description="HU and geometry checks, image metrics against a real CT (when given), the plan's dose on the "
                    "sCT against a reference (the real CT, or a bulk-density version of the sCT), gamma and DVH, "
                    "and a PASS/WARN/FAIL verdict. Writes qa.json (and qa_arrays.npz) to --output.")
    qa.add_argument("--sct", type=Path, required=True, help="synthetic CT series folder")
    qa.add_argument("--mr", type=Path, help="the MR series it was made from (body outline, geometry)")
    qa.add_argument("--reference-ct", type=Path, help="a real CT on the same grid (commissioning)")
    qa.add_argument("--plan", type=Path, help="photon RT Plan (default: the site's template plan)")
    qa.add_argument("--structures", type=Path, help="RT Structure Set (targets and organs at risk)")
    qa.add_argument("--site", choices=("pelvis", "head"), default="pelvis", help="template plan (default pelvis)")
    qa.add_argument("--no-dose", action="store_true", help="skip the dose comparison")
    qa.add_argument("--uncertainty", type=Path, metavar="PATH",
                    help="the ensemble's uncertainty map from `translate --ensemble` (its folder, .mha or Parametric "
                         "Map): adds the uncertainty check and the QA_HIGH_UNCERT structure")
    qa.add_argument("--uncertainty-level-hu", type=positive_float, default=100.0, metavar="HU",
                    help="standard deviation above which a body voxel counts as uncertain (default 100)")
    qa.add_argument("--dose-grid-mm", type=positive_float, default=None, metavar="MM",
                    help="dose grid of the comparison and of the RT Dose (default 2.5; never finer than the sCT)")
    qa.add_argument("--thresholds", type=Path,
                    help="TOML file overriding QA limits, e.g. [gamma_pass_rate_percent] pass_limit = 97 (docs/qa.md)")
    qa.add_argument("--hu-reference", type=Path, metavar="FILE",
                    help="HU reference of real CTs of the site (`sct-node hu-reference`): adds the hu_distribution check")
    qa.add_argument("--output", "-o", type=Path, required=True, help="folder for qa.json")
    qa.add_argument("--json", action="store_true", help="print qa.json on stdout")
    qa.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the QA on the named files, write qa.json and print the verdict; EXIT_QA_FAIL on a FAIL."""
    from dosimetry.qa import QaInputs, run_qa
    from dosimetry.qa_result import write_qa
    from dosimetry.verdict import QaThresholds, Verdict, thresholds_from_mapping
    from models.body_mask import body_mask_from_mr
    from sct_node.dicom.reader import read_series
    from sct_node.dicom.uids import CT_IMAGE_STORAGE
    from sct_node.dicom.uncertainty_writer import read_uncertainty_map
    from sct_node.errors import InputError
    from sct_node.node.qa_stage import read_references
    from sct_node.report.context import qa_context

    sct = read_series([args.sct], sop_classes=[CT_IMAGE_STORAGE])
    mr = mr_mask = None
    if args.mr:
        mr = read_series([args.mr])
        if mr.frame_of_reference_uid != sct.frame_of_reference_uid:
            raise InputError(f"{args.mr}: the MR is in another frame of reference than the sCT; it is not its source")
        if mr.volume.same_grid(sct.volume):
            mr_mask = body_mask_from_mr(mr.volume)
        else:  # judged (and failed) by the slice-coverage check; the outline cannot be compared
            logger.warning("%s: the MR grid differs from the sCT's; the body outline is not compared", args.mr)
    # A structure set may have been drawn on the sCT, the MR or the reference CT.
    references = read_references(sct, reference_ct=[args.reference_ct] if args.reference_ct else (),
                                 plan=args.plan, structures=args.structures,
                                 drawn_on=[mr.series_instance_uid] if mr else (), strict=True)
    uncertainty = read_uncertainty_map(args.uncertainty, sct.volume) if args.uncertainty else None
    thresholds = QaThresholds()
    if args.thresholds:
        import tomllib

        try:
            thresholds = thresholds_from_mapping(tomllib.loads(args.thresholds.read_text()))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise InputError(f"{args.thresholds}: cannot read QA thresholds ({error})") from None
    from dosimetry.hu_reference import load_hu_reference

    hu_reference = load_hu_reference(args.hu_reference) if args.hu_reference else None
    record = run_qa(QaInputs(sct=sct.volume, site=args.site, mr_body_mask=mr_mask, mr_grid=mr.volume if mr else None,
                             hu_reference=hu_reference, reference_ct=references.reference_ct, plan=references.plan,
                             structures=references.structures, compute_dose=not args.no_dose,
                             uncertainty_hu=uncertainty, uncertainty_level_hu=args.uncertainty_level_hu,
                             **({"dose_grid_mm": args.dose_grid_mm} if args.dose_grid_mm else {})), thresholds)
    context = qa_context(sct_dir=args.sct, model_card=None, mr_files=mr.files if mr else (),
                         mr_series_uid=mr.series_instance_uid if mr else "",
                         mr_series_description=str(mr.header.get("SeriesDescription", "") or "") if mr else "",
                         reference_ct_files=references.reference_ct_files, structures_file=args.structures,
                         plan_file=args.plan, site=args.site)
    path = write_qa(record, args.output, context)
    result = record.result
    if args.json:
        print(path.read_text())
    else:
        print(f"QA {result.verdict.value}: {path}")
        for reason in result.reasons:
            print(f"  - {reason}")
    return EXIT_QA_FAIL if result.verdict == Verdict.FAIL else EXIT_OK
