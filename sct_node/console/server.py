"""Serve the console (and the DICOMweb service) with uvicorn in a thread of the node's process."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from sct_node.config import ConsoleConfig
from sct_node.errors import SctNodeError

__all__ = ["ConsoleServer", "HttpServer"]

logger = logging.getLogger(__name__)


class HttpServer:
    """uvicorn serving ``app`` in a daemon thread of the node's process; ``start()`` returns once it listens.

    The console and the DICOMweb service (:mod:`sct_node.dicomweb`) each run one. ``limit_concurrency``: more
    connections and requests at once than this are answered 503 at once (uvicorn's own limit).
    """

    def __init__(self, name: str, app: Starlette, host: str, port: int, certificate: Path | None = None,
                 private_key: Path | None = None, limit_concurrency: int | None = None) -> None:
        self.name, self.host, self.port, self.certificate = name, host, port, certificate
        # uvicorn's own access log would name every request at INFO; the node's log stays about the node.
        self._server = uvicorn.Server(uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
            limit_concurrency=limit_concurrency,
            ssl_certfile=str(certificate) if certificate is not None else None,
            ssl_keyfile=str(private_key) if private_key is not None else None))
        self._thread: threading.Thread | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.certificate is not None else "http"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start serving in a daemon thread.

        Raises
        ------
        SctNodeError
            When it does not listen within ``timeout_s`` (the port in use, a certificate that cannot be read).
        """
        self._thread = threading.Thread(target=self._server.run, name=f"sct-node-{self.name}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise SctNodeError(f"the {self.name} could not listen on {self.host}:{self.port} "
                                   "(port in use, or its certificate or key cannot be read; see the log)")
            time.sleep(0.05)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)


class ConsoleServer(HttpServer):
    """The console's server, on ``[console]``'s address."""

    def __init__(self, config: ConsoleConfig, app: Starlette) -> None:
        super().__init__("console", app, config.host, config.port, config.certificate, config.private_key)
        self.config = config

    def start(self, timeout_s: float = 30.0) -> None:
        super().start(timeout_s)
        logger.info("console: %s://%s:%d (/metrics, /healthz)", self.scheme, self.config.host, self.config.port)
