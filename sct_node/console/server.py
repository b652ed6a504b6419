"""Serve the console with uvicorn in a thread of the node's process."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn
from starlette.applications import Starlette

from sct_node.config import ConsoleConfig
from sct_node.errors import SctNodeError

__all__ = ["ConsoleServer"]

logger = logging.getLogger(__name__)


class ConsoleServer:
    """uvicorn serving ``app`` on the console's address; ``start()`` returns once it listens."""

    def __init__(self, config: ConsoleConfig, app: Starlette) -> None:
        self.config = config
        # uvicorn's own access log would name every request at INFO; the node's log stays about the node.
        self._server = uvicorn.Server(uvicorn.Config(
            app, host=config.host, port=config.port, log_level="warning", access_log=False, lifespan="off",
            ssl_certfile=str(config.certificate) if config.certificate is not None else None,
            ssl_keyfile=str(config.private_key) if config.private_key is not None else None))
        self._thread: threading.Thread | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.config.certificate is not None else "http"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start serving in a daemon thread.

        Raises
        ------
        SctNodeError
            When it does not listen within ``timeout_s`` (the port in use, a certificate that cannot be read).
        """
        self._thread = threading.Thread(target=self._server.run, name="sct-node-console", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise SctNodeError(f"the console could not listen on {self.config.host}:{self.config.port} "
                                   "(port in use, or its certificate or key cannot be read; see the log)")
            time.sleep(0.05)
        logger.info("console: %s://%s:%d (/metrics, /healthz)", self.scheme, self.config.host, self.config.port)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
