"""The node's DICOMweb service: STOW-RS into the same durable spool as C-STORE (``[dicomweb]``, off by default).

See :mod:`sct_node.dicomweb.app` for what a request goes through. Delivery to DICOMweb destinations (STOW-RS
out) is the dispatcher's (:mod:`sct_node.node.stow`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sct_node.console.server import HttpServer
from sct_node.dicomweb.app import ROOT, create_app

if TYPE_CHECKING:
    from sct_node.node.service import Node

__all__ = ["create_app", "start_dicomweb"]

logger = logging.getLogger(__name__)


def start_dicomweb(node: Node) -> HttpServer | None:
    """Serve STOW-RS for a started node when its configuration enables it; None when it does not.

    Raises
    ------
    SctNodeError
        When the service cannot listen (the node itself keeps running: the caller decides).
    """
    config = node.config.dicomweb
    if not config.enabled:
        return None
    app = create_app(config, node.scp.store, node.state, node.spool, on_released=node.scp.on_released)
    # uvicorn's own limit a little above the app's, so that requests beyond it get the app's 503 with its
    # Retry-After, and a flood of idle connections still cannot take every slot.
    server = HttpServer("DICOMweb service", app, config.host, config.port, config.certificate, config.private_key,
                        limit_concurrency=config.max_concurrent_requests * 4)
    server.start()
    logger.info("DICOMweb: STOW-RS at %s://%s:%d%s/studies (%s)", server.scheme, config.host, server.port, ROOT,
                ", ".join(kind for kind, on in (("bearer tokens", config.tokens_file),
                                                ("console users", config.users_file)) if on is not None))
    return server
