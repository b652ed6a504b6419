"""The node's web console, served in the node's process (``[console]`` in node.toml, off by default).

``/metrics`` for Prometheus (:mod:`sct_node.node.metrics`) and ``/healthz`` need no login and serve nothing
about a patient. The pages (jobs, a job with its QA, report and deliveries, release/dismiss/retry, the audit
trail) need a login: local users (:mod:`sct_node.console.users`, sessions in :mod:`sct_node.console.sessions`)
or a trusted reverse proxy's header (single sign-on). See :mod:`sct_node.console.app`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sct_node.console.app import create_app
from sct_node.console.server import ConsoleServer

if TYPE_CHECKING:
    from sct_node.node.service import Node

__all__ = ["ConsoleServer", "create_app", "start_console"]


def start_console(node: Node) -> ConsoleServer | None:
    """Serve the console of a started node when its configuration enables it; None when it does not.

    Raises
    ------
    SctNodeError
        When the console cannot listen (the node itself keeps running: the caller decides).
    """
    config = node.config.console
    if not config.enabled:
        return None
    server = ConsoleServer(config, create_app(node.config, node.state, node.spool, node.metrics,
                                              receiving=lambda: node.scp.server is not None,
                                              node_status=node.status))
    server.start()
    return server
