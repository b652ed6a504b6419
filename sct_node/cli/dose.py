"""``sct-node dose``: an RT Plan's dose on a CT series, written as an RT Dose."""

from __future__ import annotations

import argparse
from pathlib import Path

from sct_node.cli.common import EXIT_OK, Subcommands, positive_float, positive_int


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add ``dose`` to ``commands``, with the options every verb takes from ``common``."""
    dose = commands.add_parser(
        "dose", parents=[common], help="compute an RT Plan's dose on a CT series and write it as RT Dose",
        description="Compute a photon RT Plan's dose on a CT series with sct-node's simplified engine and write it "
                    "as an RT Dose: physical dose in Gy, the sum over all fractions of the computed fraction group "
                    "(Dose Summation Type PLAN, or FRACTION when the plan has several fraction groups), referencing "
                    "the plan; hold it against your planning system's dose with `sct-node gamma`. Plans the engine "
                    "does not model are refused by name, one line each (docs/dose.md).")
    dose.add_argument("--ct", type=Path, required=True, help="CT series folder (the plan's frame of reference)")
    dose.add_argument("--plan", type=Path, required=True, help="photon RT Plan file (with or without file meta)")
    dose.add_argument("--output", "-o", type=Path, required=True, help="RT Dose file to write")
    dose.add_argument("--fraction-group", type=positive_int, metavar="N",
                      help="Fraction Group Number to compute (default: the only one, or the first that holds "
                           "treatment beams with MU)")
    dose.add_argument("--dose-grid-mm", type=positive_float, default=None, metavar="MM",
                      help="dose grid spacing (default 2.5; never finer than the CT)")
    dose.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Compute the plan's dose on the CT with the simplified engine and write it as an RT Dose."""
    from dosimetry.beam import ARC_GANTRY_BIN_DEG, beams_from_plan
    from dosimetry.density import relative_electron_density_volume
    from dosimetry.dose_sampling import DEFAULT_DOSE_GRID_MM
    from dosimetry.engine import compute_dose
    from dosimetry.plans import read_rt_plan
    from dosimetry.qa import dose_grid_image
    from sct_node.dicom.files import open_dataset
    from sct_node.dicom.reader import read_series
    from sct_node.dicom.rtdose_writer import write_rt_dose
    from sct_node.dicom.uids import CT_IMAGE_STORAGE, derive_uid
    from sct_node.errors import InputError

    ct = read_series([args.ct], sop_classes=[CT_IMAGE_STORAGE])
    plan_dataset = open_dataset(args.plan)  # the project's opener: Part 10 files and raw data sets alike
    plan = read_rt_plan(plan_dataset, frame_of_reference_uid=ct.frame_of_reference_uid,
                        fraction_group=args.fraction_group, source_name=str(args.plan))
    ct_position = str(ct.header.get("PatientPosition", "") or "") or None
    if plan.patient_position and ct_position and plan.patient_position != ct_position:
        raise InputError(f"{args.plan}: the plan's patient position is {plan.patient_position}, the CT's "
                         f"{ct_position}; they must be the same")
    beams = beams_from_plan(plan, patient_position=plan.patient_position or ct_position,
                            gantry_bin_deg=ARC_GANTRY_BIN_DEG)
    grid = dose_grid_image(ct.volume, args.dose_grid_mm or DEFAULT_DOSE_GRID_MM)
    per_fraction = compute_dose(relative_electron_density_volume(grid), beams)
    total = per_fraction.with_array(per_fraction.array * plan.fractions)
    groups = len(plan_dataset.get("FractionGroupSequence", []))
    summation = "PLAN" if groups == 1 else "FRACTION"
    what = (f"the whole plan ({plan.fractions} fraction{'s' if plan.fractions != 1 else ''})" if groups == 1 else
            f"all {plan.fractions} fraction(s) of fraction group {plan.fraction_group_number} of {groups}")
    statement = (f"Dose of RT Plan {plan.label!r}, {what}, computed on a CT by sct-node's simplified photon dose "
                 "engine for comparison with a planning system's dose. Not a commissioned treatment planning "
                 "system dose: not for treatment planning or delivery."
                 + (" " + " ".join(f"{note}." for note in plan.notes) if plan.notes else ""))
    headers = [open_dataset(path) for path in ct.files]
    seed = (str(plan.sop_instance_uid), ct.series_instance_uid, str(plan.fraction_group_number),
            f"{args.dose_grid_mm or DEFAULT_DOSE_GRID_MM:g}")
    write_rt_dose(dose_gy=total, sct_headers=headers, path=args.output,
                  sop_instance_uid=derive_uid(*seed, "rtdose"), series_instance_uid=derive_uid(*seed, "rtdose-series"),
                  series_description=f"sct-node dose: {plan.label}", referenced_plan_uid=plan.sop_instance_uid,
                  fraction_group_number=plan.fraction_group_number or 1, summation_type=summation,
                  statement=statement, dose_comment="sct-node simplified engine - NOT FOR TREATMENT")
    print(f"RT Dose ({summation}: {what}; {len(plan.beams)} beam(s) as {len(beams)} static beam(s)), "
          f"maximum {float(total.array.max()):.3f} Gy: {args.output}")
    for note in plan.notes:
        print(f"  - {note}")
    return EXIT_OK
