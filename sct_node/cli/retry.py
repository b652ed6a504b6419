"""``sct-node retry``: put a failed job back for the running node."""

from __future__ import annotations

import argparse

from sct_node.cli.common import EXIT_OK, Subcommands, add_config_option, add_job_argument, open_state


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add ``retry`` to ``commands``, with the options every verb takes from ``common``."""
    retry = commands.add_parser("retry", parents=[common], help="retry a failed job",
                                description="Put a failed job back: re-deliver its outputs, or process it again if "
                                            "it failed before delivery. The running node picks it up.")
    add_job_argument(retry)
    add_config_option(retry)
    retry.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Retry the job and print its new state."""
    from sct_node.node.actions import cli_actor, retry

    new_state = retry(open_state(args.config), args.job, cli_actor())
    print(f"job {args.job}: {new_state}")
    return EXIT_OK
