"""``sct-node release``: deliver an sCT that a QA FAIL held back."""

from __future__ import annotations

import argparse

from sct_node.cli.common import EXIT_OK, Subcommands, add_config_option, add_job_argument, open_state


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add ``release`` to ``commands``, with the options every verb takes from ``common``."""
    release = commands.add_parser(
        "release", parents=[common], help="deliver an sCT that was held back after a QA FAIL",
        description="A route with on_qa_fail = \"hold\" keeps a failed sCT (and its RT objects) back and delivers "
                    "only the QA report. After review, release delivers the sCT, marked QA FAIL, with everything else.")
    add_job_argument(release)
    add_config_option(release)
    release.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Move the held job's files back among its outputs and hand it to the dispatcher."""
    from sct_node.errors import SctNodeError
    from sct_node.node.qa_stage import release_held
    from sct_node.node.state import JobState

    state = open_state(args.config)
    job = state.job(args.job)
    if job.state != JobState.HELD:
        raise SctNodeError(f"job {args.job} is {job.state}, not held; only held jobs can be released")
    moved = release_held(job.output_dir) if job.output_dir else 0
    new_state = state.release_job(args.job)
    print(f"job {args.job}: {new_state} ({moved} held file(s) released)")
    return EXIT_OK
