"""``sct-node report``: rebuild the QA report bundle from a QA folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from sct_node.cli.common import EXIT_OK, Subcommands


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add ``report`` to ``commands``, with the options every verb takes from ``common``."""
    report = commands.add_parser(
        "report", parents=[common], help="build the QA report bundle from a QA folder",
        description="Rebuild the bundle that goes with an sCT — PDF report, Encapsulated PDF, Structured Report, "
                    "RT Structure Set, and the QA dose as RT Dose (with the template RT Plan) — from qa.json and "
                    "qa_arrays.npz, without running the model or the QA again. The output folder also gets a copy "
                    "of the sCT series, so it holds the whole bundle (send it with any storescu).")
    report.add_argument("--qa", type=Path, required=True, help="folder with qa.json (from `qa` or a node job)")
    report.add_argument("--output", "-o", type=Path, required=True, help="folder for the bundle")
    report.add_argument("--no-rt-dose", action="store_true", help="leave out the RT Dose and RT Plan")
    report.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Build the bundle into ``--output`` and list its files."""
    from sct_node.report.bundle import build_bundle

    bundle = build_bundle(args.qa, args.output, rt_dose=not args.no_rt_dose, copy_sct=True)
    print(f"QA {bundle.verdict}: report {bundle.pdf}")
    for path in (*bundle.rt_files, *bundle.report_files):
        print(f"  {path}")
    return EXIT_OK
