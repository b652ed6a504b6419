"""The STOW-RS service: ``POST /dicom-web/studies`` and ``POST /dicom-web/studies/{study}`` (PS3.18 10.5).

A request is handled in this order, and nothing of it is read before the step that needs it:

1. **Authentication** from the headers alone: ``Authorization: Bearer <token>`` (the tokens file) or
   ``Basic`` with a console user of role physicist or admin. Anything else is 401 with ``WWW-Authenticate``.
   Five failures in 15 minutes lock that client address (and that user name) out for 15 minutes (429), as
   the console's login does; each failure and lock-out is logged as a WARNING with the address, never the
   token or password.
2. **Limits**: a declared ``Content-Length`` over ``max_request_mb`` is 413 before the body is read;
   requests beyond ``max_concurrent_requests`` get 503 with ``Retry-After``.
3. **Media type**: ``multipart/related; type="application/dicom"`` with a boundary, else 415.
4. **The body** is streamed to a temporary file in the spool's ``incoming/`` (removed afterwards, and at
   start after a crash), within ``max_request_mb`` and ``request_timeout_s`` (408 when it is too slow).
5. **Each part** (``application/dicom``, a Part 10 instance) goes through
   :meth:`sct_node.node.store.InstanceStore.store`: the same checks, durable write and database record as a
   C-STORE, so an instance is named as stored only once it is on disk. A part of another media type fails
   with 0xC000.
6. **The response** (``application/dicom+json``): the Referenced SOP Sequence of what was stored (a duplicate
   counts as stored) and the Failed SOP Sequence with each Failure Reason; 200 when every instance was stored,
   202 when some were, 409 when none was, and 503 with ``Retry-After`` when none was for want of space
   (Out of Resources), so that the sender tries again later.

One request is one "association" for the association completion rule: a series whose instances all came in
one request is complete when the request ends (after the route's grace), as one whose instances came on one
DIMSE association is when it is released.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import mmap
import os
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sct_node.config import DicomwebConfig
from sct_node.console.sessions import LoginGuard
from sct_node.console.users import verify_password
from sct_node.dicom.uids import uid_problem
from sct_node.dicomweb.multipart import MultipartError, content_type, parts
from sct_node.dicomweb.tokens import verify_token
from sct_node.errors import ConfigError
from sct_node.node.spool import Spool
from sct_node.node.state import StateStore
from sct_node.node.store import InstanceSource, InstanceStore, StorageStatus, StoreOutcome, part10_parts

__all__ = ["ROOT", "STORING_ROLES", "create_app"]

logger = logging.getLogger(__name__)

#: The service root: instances are POSTed to {ROOT}/studies.
ROOT = "/dicom-web"
#: Console roles whose users may store by HTTP Basic.
STORING_ROLES = ("physicist", "admin")
_DICOM_JSON = "application/dicom+json"


@dataclass(frozen=True)
class _Sender:
    name: str
    kind: str  # "token" or "user"


def _dicom_json_item(sop_class: str, sop_uid: str, failure: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if sop_class and uid_problem(sop_class) is None:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop_uid and uid_problem(sop_uid) is None:
        item["00081155"] = {"vr": "UI", "Value": [sop_uid]}
    if failure is not None:
        item["00081197"] = {"vr": "US", "Value": [failure]}
    return item


def create_app(config: DicomwebConfig, store: InstanceStore, state: StateStore, spool: Spool,
               on_released: Callable[[], None] | None = None) -> Starlette:
    """The STOW-RS application (see the module docstring).

    ``store`` is the node's storage path (the Storage SCP's, so refusals share its per-address warning limit);
    ``on_released`` wakes the router when a request that stored something ends.
    """
    guard = LoginGuard()
    slots = threading.BoundedSemaphore(config.max_concurrent_requests)
    max_body = int(config.max_request_mb * 2**20)

    def authenticate(request: Request, client: str) -> _Sender | Response:
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        # A failed token counts against the client's address only (a shared name would let anyone lock every
        # token sender out); a failed Basic login also against its user name, as at the console's login.
        name = f"(token from {client})"
        if guard.locked(name, client):
            return _plain(429, "too many failed authentications from this address; try again later",
                          {"Retry-After": "900"})
        try:
            if scheme.lower() == "bearer" and config.tokens_file is not None and credentials:
                found = verify_token(config.tokens_file, credentials.strip())
                if found is not None:
                    guard.succeeded(found, client)
                    return _Sender(found, "token")
            elif scheme.lower() == "basic" and config.users_file is not None and credentials:
                try:
                    user_name, _, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(
                        ":")
                except (binascii.Error, UnicodeDecodeError):
                    user_name, password = "", ""
                name = user_name or name
                if guard.locked(name, client):
                    return _plain(429, "too many failed authentications; try again later", {"Retry-After": "900"})
                user = verify_password(config.users_file, user_name, password) if user_name else None
                if user is not None and user.role in STORING_ROLES:
                    guard.succeeded(name, client)
                    return _Sender(user.name, "user")
                if user is not None:
                    logger.warning("DICOMweb: user %s (role %s) from %s may not store; roles %s may", user.name,
                                   user.role, client, ", ".join(STORING_ROLES))
                    return _plain(403, f"role {user.role} may not store instances")
        except ConfigError as error:  # the tokens or users file is broken: the operator must see it
            logger.error("DICOMweb: %s", error)
            return _plain(500, "the node's credentials file cannot be read; see the node's log")
        if not header:  # the challenge a client gets before it sends credentials (RFC 9110 11.6.1): no failure
            locked = False
        else:
            locked = guard.failed(name, client)
        if header:
            logger.warning("DICOMweb: failed authentication from %s%s", client,
                           "; the address is locked out for 15 minutes" if locked else "")
        schemes = [s for s, on in (("Bearer", config.tokens_file), ("Basic", config.users_file)) if on is not None]
        return _plain(401, "authentication required",
                      {"WWW-Authenticate": ", ".join(f'{s} realm="sct-node"' for s in schemes)})

    async def stow(request: Request) -> Response:
        client = request.client.host if request.client is not None else "unknown"
        study = request.path_params.get("study")
        if study is not None and uid_problem(study):
            return _plain(400, f"the study in the URL is not a valid UID: {uid_problem(study)}")
        # In a worker thread: an argon2 check takes tens of milliseconds and 64 MiB, which must not hold up the
        # event loop that serves every other request.
        sender = await run_in_threadpool(authenticate, request, client)
        if isinstance(sender, Response):
            return sender
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_body):
            return _plain(413, f"the request is larger than this node accepts ({config.max_request_mb:.0f} MB; "
                               "send the series in several requests)")
        media_type, params = content_type(request.headers.get("content-type", ""))
        if media_type != "multipart/related" or content_type(params.get("type", ""))[0] != "application/dicom":
            return _plain(415, 'STOW-RS here takes multipart/related; type="application/dicom" (DICOM Part 10 '
                               'instances)')
        boundary = params.get("boundary", "")
        if not boundary:
            return _plain(400, "multipart/related without a boundary")
        if not slots.acquire(blocking=False):
            return _plain(503, "the node is busy with other requests; try again", {"Retry-After": "10"})
        body_path: Path | None = None
        try:
            try:
                body_path = await asyncio.wait_for(_receive_body(request, spool.incoming_dir, max_body),
                                                   timeout=config.request_timeout_s)
            except TimeoutError:
                logger.warning("DICOMweb: request from %s (%s) not received within %.0f s; nothing stored", client,
                               sender.name, config.request_timeout_s)
                return _plain(408, f"the request's body did not arrive within {config.request_timeout_s:.0f} s")
            except _TooLarge:
                return _plain(413, f"the request is larger than this node accepts ({config.max_request_mb:.0f} MB)")
            except ClientDisconnect:
                logger.warning("DICOMweb: %s (%s) disconnected before its request's end; nothing stored", client,
                               sender.name)
                return _plain(400, "the client disconnected")
            source = InstanceSource(calling_ae=f"STOW:{sender.name}", peer=f"STOW-RS {sender.name} at {client}",
                                    host=client, association=f"stow-{uuid.uuid4().hex}")
            try:
                results = await run_in_threadpool(_store_parts, body_path, boundary, store, source, study)
            except MultipartError as error:
                logger.warning("DICOMweb: request from %s (%s) refused: %s", client, sender.name, error)
                return _plain(400, str(error))
            return await run_in_threadpool(_respond, results, source, state, on_released)
        finally:
            if body_path is not None:
                body_path.unlink(missing_ok=True)
            slots.release()

    async def not_allowed(request: Request) -> Response:
        return _plain(405, "this node's DICOMweb service takes STOW-RS only (POST /dicom-web/studies)",
                      {"Allow": "POST"})

    routes = [Route(f"{ROOT}/studies", stow, methods=["POST"]),
              Route(f"{ROOT}/studies/{{study}}", stow, methods=["POST"]),
              Route(f"{ROOT}/{{rest:path}}", not_allowed, methods=["GET", "PUT", "DELETE", "PATCH"])]
    return Starlette(routes=routes)


class _TooLarge(Exception):
    pass


async def _receive_body(request: Request, folder: Path, max_bytes: int) -> Path:
    """Stream the body into a temporary file of the spool's ``incoming/`` (``.part``: removed at start after a
    crash); at most ``max_bytes``."""
    handle, name = tempfile.mkstemp(prefix=".stow-", suffix=".part", dir=folder)
    path, size = Path(name), 0
    try:
        with os.fdopen(handle, "wb") as stream:
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise _TooLarge()
                stream.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _store_parts(body_path: Path, boundary: str, store: InstanceStore, source: InstanceSource,
                 study: str | None) -> list[tuple[str, str, StoreOutcome]]:
    """Store every part; (SOP class, SOP instance, outcome) each. Runs in a worker thread (blocking I/O)."""
    results = []
    size = body_path.stat().st_size
    if size == 0:
        raise MultipartError("the request has no body")
    with open(body_path, "rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as body:
        for part in parts(body, boundary):
            if part.media_type != "application/dicom":
                results.append(("", "", StoreOutcome(StorageStatus.CANNOT_UNDERSTAND,
                                                     f"a part of type {part.media_type[:40]}, not application/dicom")))
                continue
            if part.end - part.start > store.max_instance_bytes:
                results.append(("", "", StoreOutcome(StorageStatus.OUT_OF_RESOURCES, "instance larger than "
                                                     "storage.max_instance_mb")))
                continue
            encoded = bytes(body[part.start:part.end])
            sop_uid, sop_class, _ = part10_parts(encoded)
            results.append((sop_class, sop_uid, store.store(encoded, source, expected_study=study)))
    if not results:
        raise MultipartError("the request holds no part")
    return results


def _respond(results: list[tuple[str, str, StoreOutcome]], source: InstanceSource, state: StateStore,
             on_released: Callable[[], None] | None) -> Response:
    stored = [(cls, uid) for cls, uid, outcome in results if outcome.stored]
    failed = [(cls, uid, outcome) for cls, uid, outcome in results if not outcome.stored]
    new = sum(1 for _, _, outcome in results if outcome.stored and outcome.new)
    series = sorted({outcome.series_uid for _, _, outcome in results if outcome.series_uid})
    logger.info("DICOMweb: %s: %d instance(s) stored, %d duplicate(s), %d refused; series %s", source.peer, new,
                len(stored) - new, len(failed), ", ".join(series[:5]) + (f" and {len(series) - 5} more"
                                                                       if len(series) > 5 else "") or "none")
    if stored:
        try:
            if state.association_released(str(source.association)) and on_released is not None:
                on_released()  # the association rule may fire after its grace
        except Exception as error:  # noqa: BLE001  the quiet period still completes the series
            logger.error("DICOMweb: the end of the request from %s could not be recorded: %s", source.peer, error)
    body: dict[str, Any] = {}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_dicom_json_item(cls, uid) for cls, uid in stored]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_dicom_json_item(cls, uid, outcome.status)
                                                  for cls, uid, outcome in failed]}
    if not failed:
        return JSONResponse(body, status_code=200, media_type=_DICOM_JSON)
    if stored:
        return JSONResponse(body, status_code=202, media_type=_DICOM_JSON)
    if all(outcome.status == StorageStatus.OUT_OF_RESOURCES for _, _, outcome in failed):
        return JSONResponse(body, status_code=503, media_type=_DICOM_JSON, headers={"Retry-After": "60"})
    return JSONResponse(body, status_code=409, media_type=_DICOM_JSON)


def _plain(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(message + "\n", status_code=status, media_type="text/plain", headers=headers)
