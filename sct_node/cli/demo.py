"""``sct-node demo``: the whole path on loopback, phantom MR -> node -> stand-in planning system."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sct_node.cli.common import EXIT_OK, Subcommands


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add ``demo`` to ``commands``, with the options every verb takes from ``common``."""
    demo = commands.add_parser(
        "demo", parents=[common], help="run the whole path on loopback: phantom -> node -> planning system",
        description="Generate a phantom MR series, start the node and a stand-in planning system on loopback, send "
                    "the series as a PACS would, wait for the synthetic CT to arrive, and report each stage.")
    demo.add_argument("--workdir", type=Path, help="folder for the demo (default ./sct-demo)")
    demo.add_argument("--site", choices=("head", "pelvis"), default="pelvis")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo and report each stage (or print its summary as JSON)."""
    from sct_node.tools.demo import default_workdir, run_demo

    workdir = args.workdir or default_workdir()
    print(f"sct-node demo in {workdir}: phantom MR -> node -> stand-in planning system (loopback)", file=sys.stderr)
    result = run_demo(workdir, site=args.site)
    if args.json:
        print(json.dumps(result.as_dict()))
        return EXIT_OK
    print(f"MR series sent ({result.instances_sent} instances): {result.mr_dir}")
    print(f"node spool and database:        {result.spool_dir}")
    print(f"sCT and QA bundle received by the planning system ({result.instances_received} instances): "
          f"{result.received_dir}")
    print(f"dosimetric QA: {result.qa_verdict} ({result.qa_json})")
    if result.qa_json and Path(result.qa_json).exists():
        from dosimetry.qa_result import read_qa

        for reason in read_qa(Path(result.qa_json).parent, maps=False).result.reasons:
            print(f"  - {reason}")
    print(f"QA report (PDF): {result.qa_report_pdf}")
    print(f"stages (s): phantom {result.phantom_s}, send {result.send_s}, quiet period {result.quiet_period_s}, "
          f"process incl. QA {result.process_s}, deliver {result.deliver_s}; total {result.total_s}")
    return EXIT_OK
