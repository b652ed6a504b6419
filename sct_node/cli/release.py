"""``sct-node release``: deliver an sCT that a QA FAIL held back."""

from __future__ import annotations

import argparse

from sct_node.cli.common import EXIT_OK, Subcommands, add_config_option, add_job_argument, comment, open_state


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add ``release`` to ``commands``, with the options every verb takes from ``common``."""
    release = commands.add_parser(
        "release", parents=[common], help="deliver an sCT that was held back after a QA FAIL",
        description="A route with on_qa_fail = \"hold\" keeps a failed sCT (and its RT objects) back and delivers "
                    "only the QA report. After review, release delivers the sCT, marked QA FAIL, with everything else.")
    add_job_argument(release)
    release.add_argument("--comment", type=comment, default=None,
                         help="why it may be delivered (kept in the audit trail; no patient identifiers)")
    add_config_option(release)
    release.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Move the held job's files back among its outputs and hand it to the dispatcher (audited)."""
    from sct_node.node.actions import cli_actor, release

    new_state, moved = release(open_state(args.config), args.job, cli_actor(), args.comment or "")
    print(f"job {args.job}: {new_state} ({moved} held file(s) released)")
    return EXIT_OK
