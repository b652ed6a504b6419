"""``sct-node dismiss``: give up on a failed or held job, with a comment saying why."""

from __future__ import annotations

import argparse

from sct_node.cli.common import EXIT_OK, Subcommands, add_config_option, add_job_argument, comment, open_state


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add ``dismiss`` to ``commands``, with the options every verb takes from ``common``."""
    dismiss = commands.add_parser(
        "dismiss", parents=[common], help="give up on a failed or held job, saying why",
        description="A failed or held job that will be neither retried nor released ends 'dismissed': its row, "
                    "reason and your comment stay in the history (sct-node status), deliveries still pending are "
                    "cancelled, and the cleaner removes its inputs and outputs after storage.done_retention_h.")
    add_job_argument(dismiss)
    dismiss.add_argument("--comment", required=True, type=comment,
                         help="why the job is given up (required; kept with the job; no patient identifiers)")
    add_config_option(dismiss)
    dismiss.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Dismiss the job and say how many pending deliveries that cancelled."""
    from sct_node.node.actions import cli_actor, dismiss
    from sct_node.node.state import DeliveryState

    state = open_state(args.config)
    job = dismiss(state, args.job, cli_actor(), args.comment)
    cancelled = sum(1 for delivery in state.deliveries(job.id) if delivery.state == DeliveryState.CANCELLED)
    print(f"job {job.id}: dismissed ({cancelled} pending deliver{'y' if cancelled == 1 else 'ies'} cancelled; "
          "inputs and outputs are removed after storage.done_retention_h)")
    return EXIT_OK
