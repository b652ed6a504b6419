"""The console's ASGI application (Starlette)."""

from __future__ import annotations

import shutil
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sct_node import __version__
from sct_node.config import NodeConfig
from sct_node.node.metrics import NodeMetrics
from sct_node.node.spool import Spool
from sct_node.node.state import StateStore

__all__ = ["create_app"]


def create_app(config: NodeConfig, state: StateStore, spool: Spool, metrics: NodeMetrics,
               receiving: Callable[[], bool]) -> Starlette:
    """The console of one node.

    ``receiving`` says whether the Storage SCP is listening (the node's own check, for ``/healthz``).
    """

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> JSONResponse:
        """200 when the node can take instances (listening, database readable, free space above the reserve);
        503 with the failed checks otherwise."""
        checks: dict[str, str] = {}
        checks["storage_scp"] = "ok" if receiving() else "not listening"
        try:
            state.instance_count()
            checks["database"] = "ok"
        except Exception as error:  # noqa: BLE001 - reported as the check's result
            checks["database"] = f"not readable: {type(error).__name__}"
        free_mb = shutil.disk_usage(spool.root).free / 2**20
        checks["disk"] = "ok" if free_mb > config.storage.min_free_space_mb else \
            f"{free_mb:.0f} MB free, reserve {config.storage.min_free_space_mb:.0f} MB: instances are refused"
        healthy = all(value == "ok" for value in checks.values())
        return JSONResponse({"status": "ok" if healthy else "failing", "version": __version__, "checks": checks},
                            status_code=200 if healthy else 503)

    return Starlette(routes=[Route("/metrics", prometheus), Route("/healthz", healthz)])
