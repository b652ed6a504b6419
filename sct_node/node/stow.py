"""Deliver files to a DICOMweb destination by STOW-RS (``protocol = "stow-rs"``), with dicomweb-client.

The files go in delivery order (:func:`sct_node.node.dispatch.ordered_outputs`) as ``multipart/related;
type="application/dicom"`` requests to ``{url}/studies``, one study's instances per request and at most the
destination's ``max_request_mb`` per request (one instance at least). A request succeeds only when the
server names every instance of it in its Referenced SOP Sequence and none in its Failed SOP Sequence
(PS3.18 10.5.3: 200 all stored, 202 some failed, 409 none stored); anything else is a
:class:`~sct_node.node.dispatch.DeliveryError` naming the first failed instance and its Failure Reason, and
the dispatcher retries the whole delivery with its backoff. Re-sending is harmless: the output UIDs are
deterministic, and a STOW-RS server replaces or ignores an instance it already holds.

Authentication: a bearer token read from ``token_file`` at each delivery (so a rotated token needs no
restart), or HTTP Basic with ``username`` and ``password_file``. HTTPS verifies the server against
``tls.ca_certificates`` (default: the system's CAs); ``tls.certificate`` and ``tls.private_key`` add a
client certificate. Each HTTP exchange has the dispatcher's timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from requests.adapters import HTTPAdapter

from sct_node.config import DestinationConfig
from sct_node.errors import SctNodeError

__all__ = ["StowDeliveryError", "deliver_stow"]

logger = logging.getLogger(__name__)

#: PS3.18 Table 10.5.3-2 / PS3.4 B.2.3 failure reasons a STOW-RS server gives, by name.
FAILURE_REASONS = {0xA700: "Out of Resources", 0xA900: "Data Set does not match SOP Class",
                   0xC000: "Cannot understand", 0x0110: "Processing failure", 0x0122: "SOP Class not supported",
                   0x0124: "Not authorized", 0x0112: "No such SOP Instance", 0x0211: "Unrecognized operation"}


class StowDeliveryError(SctNodeError):
    """A STOW-RS request failed; the message says where and why (the dispatcher turns it into a retry)."""


class _TimeoutAdapter(HTTPAdapter):
    """Gives every request of the session a timeout: dicomweb-client passes none, and requests waits forever."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(max_retries=0)
        self.timeout_s = timeout_s

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs["timeout"] = kwargs.get("timeout") or self.timeout_s
        return super().send(request, **kwargs)


def _session(destination: DestinationConfig, timeout_s: float) -> requests.Session:
    session = requests.Session()
    adapter = _TimeoutAdapter(timeout_s)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.trust_env = False  # no proxy or .netrc from the service's environment: only what node.toml says
    try:
        if destination.token_file is not None:
            token = Path(destination.token_file).read_text(encoding="utf-8").strip()
            session.headers["Authorization"] = f"Bearer {token}"
        if destination.username is not None and destination.password_file is not None:
            session.auth = (destination.username,
                            Path(destination.password_file).read_text(encoding="utf-8").rstrip("\r\n"))
    except OSError as error:
        raise StowDeliveryError(f"{destination.name}: its credentials cannot be read ({error.strerror or error}: "
                                f"{error.filename})") from None
    tls = destination.tls
    if tls is not None:
        if tls.ca_certificates is not None:
            session.verify = str(tls.ca_certificates)
        if tls.certificate is not None and tls.private_key is not None:
            session.cert = (str(tls.certificate), str(tls.private_key))
    return session


def _batches(files: list[Path], max_bytes: int) -> Iterator[list[pydicom.Dataset]]:
    """The files read once, as consecutive data sets of one study at a time, each batch at most ``max_bytes`` of
    files (one at least); the delivery order is kept."""
    batch: list[pydicom.Dataset] = []
    size, study = 0, None
    for path in files:
        dataset = pydicom.dcmread(path)
        this_study = str(dataset.get("StudyInstanceUID", ""))
        length = path.stat().st_size
        if batch and (size + length > max_bytes or this_study != study):
            yield batch
            batch, size = [], 0
        batch.append(dataset)
        size, study = size + length, this_study
    if batch:
        yield batch


def _failures(response: pydicom.Dataset) -> list[tuple[str, int]]:
    return [(str(item.get("ReferencedSOPInstanceUID", "?")), int(item.get("FailureReason", 0) or 0))
            for item in response.get("FailedSOPSequence", [])]


def deliver_stow(files: list[Path], destination: DestinationConfig, timeout_s: float) -> None:
    """STOW-RS every file to ``destination``; see the module docstring.

    Raises
    ------
    StowDeliveryError
        A request was refused, failed or timed out, or the server did not confirm every instance.
    """
    if not files:
        raise StowDeliveryError("no output files to deliver")
    url = str(destination.url).rstrip("/")
    where = f"{destination.name} ({url})"
    session = _session(destination, timeout_s)
    client = DICOMwebClient(url, session=session)
    max_bytes = int(destination.max_request_mb * 2**20)
    try:
        for datasets in _batches(files, max_bytes):
            try:
                response = client.store_instances(datasets)
            except requests.HTTPError as error:
                raise StowDeliveryError(f"{where} answered {_http_error(error)}") from None
            except requests.RequestException as error:
                raise StowDeliveryError(f"{where}: {type(error).__name__}: {error}") from None
            failed = _failures(response)
            if failed:
                uid, reason = failed[0]
                raise StowDeliveryError(f"{where} did not store {len(failed)} of {len(datasets)} instance(s); the first, "
                                        f"{uid}: Failure Reason 0x{reason:04X} "
                                        f"({FAILURE_REASONS.get(reason, 'see the server log')})")
            referenced = {str(item.get("ReferencedSOPInstanceUID", ""))
                          for item in response.get("ReferencedSOPSequence", [])}
            missing = [str(ds.SOPInstanceUID) for ds in datasets if str(ds.SOPInstanceUID) not in referenced]
            if missing:
                raise StowDeliveryError(f"{where} answered without confirming {len(missing)} of {len(datasets)} "
                                        f"instance(s) (first: {missing[0]}); not counted as delivered")
            logger.debug("STOW-RS: %d instance(s) stored at %s", len(datasets), where)
    finally:
        session.close()


def _http_error(error: requests.HTTPError) -> str:
    """``HTTP 409 Conflict`` and, when the body is a STOW-RS response, its first failure."""
    response = error.response
    if response is None:
        return str(error)
    text = f"HTTP {response.status_code} {response.reason or ''}".rstrip()
    try:
        failed = _failures(pydicom.Dataset.from_json(response.json()))
    except (ValueError, TypeError, KeyError, AttributeError):
        failed = []
    if failed:
        uid, reason = failed[0]
        text += (f"; {len(failed)} instance(s) failed, the first {uid} with Failure Reason 0x{reason:04X} "
                 f"({FAILURE_REASONS.get(reason, 'see the server log')})")
    elif response.status_code in (401, 403):
        text += "; check the destination's token_file or username and password_file"
    return text
