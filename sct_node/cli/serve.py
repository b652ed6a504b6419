"""``sct-node serve``: run the DICOM node until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from sct_node.cli.common import EXIT_OK, Subcommands, logger
from sct_node.logs import configure_logging

if TYPE_CHECKING:
    from types import FrameType



def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add ``serve`` to ``commands``, with the options every verb takes from ``common``."""
    serve = commands.add_parser(
        "serve", parents=[common], help="run the DICOM node",
        description="Run the DICOM node: Storage SCP, router, processors, dispatcher and cleaner. Without --config "
                    "it runs on embedded defaults (127.0.0.1:11112, AE SCT_NODE, spool ./sct-node-spool, model diffusion).",
    )
    serve.add_argument("--config", "-c", type=Path, help="node.toml (see deploy/node.toml)")
    serve.add_argument("--check", action="store_true", help="validate the configuration, print it and exit")
    serve.add_argument("--role", default="all",
                       help="all (default: one process does everything, no queue), or a comma-separated list of "
                            "receiver (Storage SCP, DICOMweb, router, console; puts jobs on [cluster]'s queue), "
                            "worker (takes jobs off the queue: model, QA, report) and dispatcher (delivers); "
                            "see docs/cluster.md")
    serve.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Read the configuration, set up the node's logging and run the node (or only print it with ``--check``)."""
    import signal

    from sct_node.config import load_config

    config = load_config(args.config)
    if args.check:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
        return EXIT_OK
    configure_logging(config.logging.level, config.logging.json_lines, debug=args.debug)
    # Imported once the node's log format is set: importing the models (torch) may warn, and in JSON mode even
    # that must be a JSON line.
    from sct_node.console import start_console
    from sct_node.dicomweb import start_dicomweb
    from sct_node.errors import SctNodeError
    from sct_node.node.service import Node

    node = Node(config, roles=tuple(role.strip() for role in args.role.split(",") if role.strip()))
    node.start()
    console = dicomweb = None
    try:
        if "receiver" in node.roles:  # the network's ways in, and the console, live with the receiver
            console = start_console(node)
            dicomweb = start_dicomweb(node)
    except SctNodeError:
        if console is not None:
            console.stop()
        node.stop()
        raise

    def shutdown(signum: int, frame: FrameType | None) -> None:  # frame: unused, the handler's signature
        logger.info("signal %d: shutting down", signum)
        node.request_stop()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    node.wait()
    for server in (console, dicomweb):
        if server is not None:
            server.stop()
    node.stop()
    return EXIT_OK
