"""``sct-node status``: the node's recent series and jobs, as tables or JSON."""

from __future__ import annotations

import argparse
import json

from sct_node.cli.common import EXIT_OK, Subcommands, add_config_option, open_state, positive_int


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add ``status`` to ``commands``, with the options every verb takes from ``common``."""
    status = commands.add_parser("status", parents=[common], help="list recent series and jobs",
                                 description="List recent series and jobs with their state, from the node's database.")
    add_config_option(status)
    status.add_argument("--limit", type=positive_int, default=20, help="rows per table (default 20)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the ``--limit`` newest series and jobs."""
    import dataclasses
    import datetime as dt

    state = open_state(args.config)
    series, jobs = state.series_status(args.limit), state.jobs(args.limit)
    if args.json:
        # "state" is what the table shows (the job's state once there is a job); "series_state" is the
        # generation's own (receiving, queued, unrouted, purged).
        print(json.dumps({"series": [{**dataclasses.asdict(s.series), "state": s.state, "series_state": s.series.state,
                                      "job_id": s.job_id, "job_state": s.job_state} for s in series],
                          "jobs": [{**dataclasses.asdict(j), "output_dir": str(j.output_dir),
                                    "deliveries": [dataclasses.asdict(d) for d in state.deliveries(j.id)]}
                                   for j in jobs]}, default=str))
        return EXIT_OK

    def when(t: float) -> str:
        return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")

    print("SERIES")
    print(f"{'last instance':19}  {'state':10}  {'gen':>3}  {'n':>5}  {'job':>5}  {'modality':8}  series instance UID")
    for s in series:
        job = str(s.job_id) if s.job_id is not None else ""
        print(f"{when(s.series.last_received_at):19}  {s.state:10}  {s.series.generation:>3}  {s.series.instances:>5}  "
              f"{job:>5}  {s.series.modality or '':8}  {s.series.series_uid}")
    print("\nJOBS")
    print(f"{'id':>5}  {'updated':19}  {'state':10}  {'route':12}  {'model':8}  deliveries / reason")
    for j in jobs:
        deliveries = ", ".join(f"{d.destination}:{d.state}({d.attempts})" for d in state.deliveries(j.id))
        notes = [note for note in (j.reason, j.held) if note]
        if j.dismissed_comment:
            notes.append(f"dismissed: {j.dismissed_comment}")
        print(f"{j.id:>5}  {when(j.updated_at):19}  {j.state:10}  {j.route[:12]:12}  {j.model[:8]:8}  "
              f"{'  '.join(part for part in (deliveries, *notes) if part)}")
    return EXIT_OK
