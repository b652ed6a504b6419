"""DICOMweb in and out: the node's STOW-RS service and its STOW-RS destinations (issue 19, point 2).

Senders are real clients: dicomweb-client (what research platforms use) and plain HTTP requests for the bodies
a client library would never send. The node runs in this process with ``[dicomweb]`` on, and its STOW-RS
service is checked the way its Storage SCP is in test_node.py: what is acknowledged is on disk and in the
database, everything refused is answered for, one instance by one, and nothing of a refused request is kept.
Orthanc's DICOMweb plugin as both peers is in test_orthanc_dicomweb.py.
"""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from sct_node.config import (
    DestinationConfig,
    DicomwebConfig,
    DispatchConfig,
    NetworkConfig,
    NodeConfig,
    ProcessingConfig,
    RouteConfig,
    StorageConfig,
)
from sct_node.console.users import add_user
from sct_node.dicomweb import start_dicomweb
from sct_node.dicomweb.tokens import add_token, verify_token
from sct_node.errors import ConfigError
from sct_node.node.service import Node
from tests.sct_node.node_helpers import MrSeries, db_rows, free_port, phantom_mr_series, wait_for

ROOT = "/dicom-web"
#: Generous for a loaded 2-core machine; a healthy run takes about a second per wait.
JOB_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def mr_series(tmp_path_factory) -> MrSeries:
    return phantom_mr_series(tmp_path_factory.mktemp("scanner"))


class StowNode:
    """A node with its STOW-RS service, and what a sender needs to reach it."""

    def __init__(self, node: Node, server, token: str, users_file: Path) -> None:
        self.node, self.server, self.token, self.users_file = node, server, token, users_file
        scheme = "https" if node.config.dicomweb.certificate is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{node.config.dicomweb.port}{ROOT}"

    @property
    def spool(self) -> Path:
        return self.node.config.storage.spool_dir

    def client(self, token: str | None = None) -> DICOMwebClient:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token or self.token}"
        return DICOMwebClient(self.url, session=session)

    def post(self, body: bytes, *, content_type: str | None = None, boundary: str = "b0undary",
             auth: str | None = None, path: str = "/studies", headers: dict | None = None) -> requests.Response:
        return requests.post(self.url + path, data=body, timeout=30, headers={
            "Authorization": auth or f"Bearer {self.token}",
            "Content-Type": content_type or f'multipart/related; type="application/dicom"; boundary={boundary}',
            **(headers or {})})

    def stored_uids(self) -> set[str]:
        return {row[0] for row in db_rows(self.spool, "SELECT sop_instance_uid FROM instances")}


@pytest.fixture
def stow_nodes(tmp_path) -> Iterator:
    """``start(**changes)`` starts a node with STOW-RS on (a token and a users file); all are stopped after."""
    started: list[StowNode] = []

    def start(name: str = "node", *, route: RouteConfig | None = None, destinations=(), min_free_space_mb=0.0,
              dicomweb: dict | None = None, quiet_period_s: float = 60.0) -> StowNode:
        folder = tmp_path / name
        folder.mkdir()
        tokens, users = folder / "tokens.toml", folder / "users.toml"
        token = add_token(tokens, "research-pacs")
        add_user(users, "alice", "physicist", "correct horse battery")
        add_user(users, "victor", "viewer", "correct horse battery")
        config = NodeConfig(
            network=NetworkConfig(ae_title="SCT_NODE", port=free_port(), network_timeout_s=10),
            storage=StorageConfig(spool_dir=folder / "spool", min_free_space_mb=min_free_space_mb),
            processing=ProcessingConfig(quiet_period_s=quiet_period_s, poll_interval_s=0.1, preload=False),
            dispatch=DispatchConfig(max_attempts=3, initial_delay_s=0.2, max_delay_s=0.5, timeout_s=20),
            dicomweb=DicomwebConfig(enabled=True, port=free_port(), tokens_file=tokens, users_file=users,
                                    **(dicomweb or {})),
            routes=(route or RouteConfig(name="mr-to-sct", model="bulk", qa=False,
                                         destinations=tuple(d.name for d in destinations),
                                         complete_on=("association",), association_grace_s=0.2),),
            destinations=tuple(destinations),
        )
        node = Node(config)
        node.start()
        try:
            server = start_dicomweb(node)
        except BaseException:
            node.stop()
            raise
        started.append(StowNode(node, server, token, users))
        return started[-1]

    yield start
    for stow in reversed(started):
        stow.server.stop()
        stow.node.stop()


def multipart(parts: list[tuple[str, bytes]], boundary: str = "b0undary") -> bytes:
    """A multipart/related body of (content type, bytes) parts, as RFC 2046 writes it."""
    out = io.BytesIO()
    for media_type, content in parts:
        out.write(f"--{boundary}\r\nContent-Type: {media_type}\r\n\r\n".encode())
        out.write(content)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def failures(response: requests.Response) -> dict[str, int]:
    """SOP Instance UID (or '' when the part had none) -> Failure Reason, from a STOW-RS response."""
    body = response.json()
    return {(item.get("00081155", {}).get("Value") or [""])[0]: item["00081197"]["Value"][0]
            for item in body.get("00081198", {}).get("Value", [])}


def referenced(response: requests.Response) -> set[str]:
    return {item["00081155"]["Value"][0] for item in response.json().get("00081199", {}).get("Value", [])}


def jobs(spool: Path) -> list[tuple]:
    return db_rows(spool, "SELECT id, state, completed_by FROM jobs ORDER BY id")


def basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


# --- in ----------------------------------------------------------------------------------------------------


def test_a_series_stowed_by_dicomweb_client_is_stored_as_sent_and_completed_by_its_request(stow_nodes, mr_series):
    stow = stow_nodes()
    datasets = [pydicom.dcmread(path) for path in mr_series.files]
    response = stow.client().store_instances(datasets)

    uids = {str(ds.SOPInstanceUID) for ds in datasets}
    assert {str(item.ReferencedSOPInstanceUID) for item in response.ReferencedSOPSequence} == uids
    assert "FailedSOPSequence" not in response
    assert stow.stored_uids() == uids  # acknowledged = recorded (and the record follows the durable write)
    for path in mr_series.files:
        dataset = pydicom.dcmread(path)
        stored = pydicom.dcmread(stow.spool / "instances" / mr_series.series_uid / f"{dataset.SOPInstanceUID}.dcm")
        assert stored.PixelData == dataset.PixelData and stored.SOPInstanceUID == dataset.SOPInstanceUID
    rows = db_rows(stow.spool, "SELECT DISTINCT calling_ae FROM series")
    assert rows == [("STOW:research-pacs",)]  # what a route's match.calling_ae sees
    # One request is one association for the completion rule: done at its end, not after the 60 s quiet period.
    wait_for(lambda: jobs(stow.spool) and jobs(stow.spool)[0][1] == "done", JOB_TIMEOUT_S, "the job")
    assert jobs(stow.spool)[0][2].startswith("association:")
    assert not list((stow.spool / "incoming").iterdir()), "the request's temporary body was left behind"


def test_every_request_is_authenticated_and_failures_lock_the_address_out(stow_nodes, mr_series):
    stow = stow_nodes()
    body = multipart([("application/dicom", mr_series.files[0].read_bytes())])

    anonymous = requests.post(stow.url + "/studies", data=body, timeout=10, headers={
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=b0undary'})
    assert anonymous.status_code == 401
    assert 'Bearer realm="sct-node"' in anonymous.headers["WWW-Authenticate"]
    assert 'Basic realm="sct-node"' in anonymous.headers["WWW-Authenticate"]
    assert stow.post(body, auth="Bearer not-a-token").status_code == 401
    assert stow.post(body, auth=basic("victor", "correct horse battery")).status_code == 403  # a viewer
    assert stow.post(body, auth=basic("alice", "wrong password!!")).status_code == 401
    assert stow.stored_uids() == set()

    assert stow.post(body, auth=basic("alice", "correct horse battery")).status_code == 200
    assert stow.stored_uids() == {str(pydicom.dcmread(mr_series.files[0]).SOPInstanceUID)}
    # Failures so far: a wrong token, a wrong password (the anonymous request was a challenge, the viewer's a
    # refusal); three more make five from this address.
    assert [stow.post(body, auth="Bearer wrong").status_code for _ in range(3)] == [401, 401, 401]
    locked = stow.post(body)  # locked out: even the right token waits
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0


def test_each_instance_of_a_request_is_answered_for_and_only_good_ones_are_stored(stow_nodes, mr_series):
    stow = stow_nodes()
    good = mr_series.files[0].read_bytes()
    truncated_ds = pydicom.dcmread(mr_series.files[1])
    truncated_ds.PixelData = truncated_ds.PixelData[:100]
    secondary = pydicom.dcmread(mr_series.files[2])
    secondary.SOPClassUID = secondary.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    encoded = []
    for dataset in (truncated_ds, secondary):
        out = io.BytesIO()
        dataset.save_as(out, enforce_file_format=True)
        encoded.append(out.getvalue())
    response = stow.post(multipart([("application/dicom", good), ("application/dicom", encoded[0]),
                                    ("application/dicom", encoded[1]), ("text/plain", b"hello")]))

    assert response.status_code == 202  # some stored, some not
    assert response.headers["Content-Type"] == "application/dicom+json"
    good_uid = str(pydicom.dcmread(mr_series.files[0]).SOPInstanceUID)
    assert referenced(response) == {good_uid}
    assert failures(response) == {str(truncated_ds.SOPInstanceUID): 0xC000, str(secondary.SOPInstanceUID): 0x0122,
                                  "": 0xC000}
    assert stow.stored_uids() == {good_uid}


def test_an_instance_of_another_study_than_the_url_names_is_refused(stow_nodes, mr_series):
    stow = stow_nodes()
    response = stow.post(multipart([("application/dicom", mr_series.files[0].read_bytes())]),
                         path=f"/studies/{generate_uid()}")
    assert response.status_code == 409  # none stored
    assert list(failures(response).values()) == [0xC000]
    assert stow.stored_uids() == set()
    ok = stow.post(multipart([("application/dicom", mr_series.files[0].read_bytes())]),
                   path=f"/studies/{mr_series.study_uid}")
    assert ok.status_code == 200 and len(stow.stored_uids()) == 1


def test_bodies_that_are_not_stow_requests_are_refused_whole_and_leave_nothing(stow_nodes, mr_series):
    stow = stow_nodes(dicomweb={"max_request_mb": 0.05})
    one = mr_series.files[0].read_bytes()  # about 5 kB
    assert stow.post(multipart([("application/dicom", one)]),
                     content_type="application/dicom").status_code == 415
    assert stow.post(multipart([("application/dicom", one)]),
                     content_type='multipart/related; type="application/dicom+json"; boundary=b0undary'
                     ).status_code == 415
    truncated = multipart([("application/dicom", one)])[:-40]
    refused = stow.post(truncated)
    assert refused.status_code == 400 and "not terminated by the boundary" in refused.text
    assert stow.post(b"--b0undary--\r\n").status_code == 400  # no part
    too_large = stow.post(multipart([("application/dicom", one)] * 12))  # 60 kB > 0.05 MB
    assert too_large.status_code == 413
    chunked = requests.post(stow.url + "/studies", data=iter([multipart([("application/dicom", one)] * 12)]),
                            timeout=10, headers={"Authorization": f"Bearer {stow.token}", "Content-Type":
                                                 'multipart/related; type="application/dicom"; boundary=b0undary'})
    assert chunked.status_code == 413  # no Content-Length: counted while it streams
    assert requests.get(stow.url + "/studies", timeout=10).status_code == 405
    assert stow.stored_uids() == set()
    assert not list((stow.spool / "incoming").iterdir())


def test_below_the_free_space_reserve_the_sender_is_told_to_come_back(stow_nodes, mr_series):
    stow = stow_nodes(min_free_space_mb=1e9)
    response = stow.post(multipart([("application/dicom", mr_series.files[0].read_bytes())]))
    assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
    assert list(failures(response).values()) == [0xA700]
    assert stow.stored_uids() == set()


def test_tokens_are_stored_hashed_and_replaced(tmp_path):
    path = tmp_path / "tokens.toml"
    first = add_token(path, "pacs")
    assert first not in path.read_text() and oct(path.stat().st_mode & 0o777) == "0o600"
    assert verify_token(path, first) == "pacs"
    second = add_token(path, "pacs")
    assert verify_token(path, first) is None and verify_token(path, second) == "pacs"
    assert verify_token(path, "") is None
    with pytest.raises(ConfigError, match="letters, digits"):
        add_token(path, "bad name")


def test_the_service_refuses_configurations_that_would_leak_credentials(tmp_path):
    with pytest.raises(ConfigError, match="tokens_file or users_file"):
        _load(tmp_path, "[dicomweb]\nenabled = true\n")
    with pytest.raises(ConfigError, match="clear text"):
        _load(tmp_path, f'[dicomweb]\nenabled = true\nhost = "0.0.0.0"\ntokens_file = "{tmp_path / "t"}"\n')
    with pytest.raises(ConfigError, match="url must be"):
        _load(tmp_path, '[[destinations]]\nname = "web"\nprotocol = "stow-rs"\nurl = "ftp://x"\n')
    with pytest.raises(ConfigError, match="storage_commitment is a DIMSE service"):
        _load(tmp_path, '[[destinations]]\nname = "web"\nprotocol = "stow-rs"\nurl = "http://x/dicom-web"\n'
                        'storage_commitment = true\n')
    with pytest.raises(ConfigError, match="ae_title, host, port missing"):
        _load(tmp_path, '[[destinations]]\nname = "tps"\n')


def _load(tmp_path: Path, text: str) -> NodeConfig:
    from sct_node.config import load_config

    path = tmp_path / f"{uuid.uuid4().hex}.toml"
    path.write_text(text)
    return load_config(path)


# --- out ---------------------------------------------------------------------------------------------------


def test_the_sct_is_delivered_by_stow_rs_and_a_refused_token_is_retried_with_a_clear_error(stow_nodes, mr_series,
                                                                                          tmp_path):
    archive = stow_nodes("archive", route=RouteConfig(name="keep", model="bulk", qa=False,
                                                      match={"modality": ["NONE"]}))
    token_file = tmp_path / "archive-token"
    token_file.write_text("wrong\n")
    destination = DestinationConfig(name="archive", protocol="stow-rs", url=archive.url, token_file=token_file,
                                    max_request_mb=0.02)  # several requests per delivery
    node = stow_nodes("node", destinations=(destination,))
    node.client().store_instances([pydicom.dcmread(path) for path in mr_series.files])

    def delivery() -> tuple | None:
        rows = db_rows(node.spool, "SELECT state, attempts, last_error FROM deliveries")
        return rows[0] if rows and rows[0][1] >= 1 else None

    _, _, error = wait_for(delivery, JOB_TIMEOUT_S, "a first delivery attempt")
    assert "HTTP 401" in error and "token_file" in error
    assert archive.stored_uids() == set()
    token_file.write_text(archive.token + "\n")  # read at each attempt: no restart needed
    wait_for(lambda: jobs(node.spool) and jobs(node.spool)[0][1] == "done", JOB_TIMEOUT_S, "the delivery")
    sct = db_rows(archive.spool, "SELECT s.modality, COUNT(*) FROM instances i JOIN series s ON "
                                 "i.series_uid = s.series_uid GROUP BY s.modality")
    assert sct == [("CT", len(mr_series.files))]
    ct_series = db_rows(archive.spool, "SELECT DISTINCT series_uid FROM instances")
    assert ct_series != [(mr_series.series_uid,)]


def test_a_stalled_body_is_cut_at_its_deadline_and_other_senders_are_served_meanwhile(stow_nodes, mr_series):
    import socket

    stow = stow_nodes(dicomweb={"request_timeout_s": 2.0, "max_concurrent_requests": 2})
    body = multipart([("application/dicom", mr_series.files[0].read_bytes())])
    port = stow.node.config.dicomweb.port
    stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        head = (f"POST {ROOT}/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {stow.token}\r\n"
                f'Content-Type: multipart/related; type="application/dicom"; boundary=b0undary\r\n'
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        stalled.sendall(head + body[:len(body) // 2])  # half the body, then nothing
        served = stow.post(multipart([("application/dicom", mr_series.files[1].read_bytes())]))
        assert served.status_code == 200  # the stalled request holds one slot, not the service
        answer = stalled.recv(4096).decode(errors="replace")  # waits for the deadline
        assert answer.startswith("HTTP/1.1 408"), answer
    finally:
        stalled.close()
    assert stow.stored_uids() == {str(pydicom.dcmread(mr_series.files[1]).SOPInstanceUID)}
    wait_for(lambda: not list((stow.spool / "incoming").iterdir()), 5, "the stalled body's file to be removed")


@pytest.fixture
def loopback_certificate(pki, tmp_path) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 (subjectAltName IP), signed by the test CA: HTTPS clients check the
    name as well as the chain."""
    import subprocess

    ca = pki["ca.pem"].parent
    key, csr, cert, ext = (tmp_path / name for name in ("web.key", "web.csr", "web.pem", "web.ext"))
    ext.write_text("subjectAltName = IP:127.0.0.1\n")
    for args in (["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
                 ["x509", "-req", "-in", csr, "-CA", ca / "ca.pem", "-CAkey", ca / "ca.key", "-CAcreateserial",
                  "-out", cert, "-days", "2", "-extfile", ext]):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)
    return cert, key


def test_over_https_a_sender_and_a_destination_verify_the_node_against_its_ca(stow_nodes, mr_series, pki, tmp_path,
                                                                            loopback_certificate):
    certificate, private_key = loopback_certificate
    archive = stow_nodes("archive", route=RouteConfig(name="keep", model="bulk", qa=False,
                                                      match={"modality": ["NONE"]}),
                         dicomweb={"certificate": certificate, "private_key": private_key})
    assert archive.url.startswith("https://")
    with pytest.raises(requests.exceptions.SSLError):  # not trusted without the hospital's CA
        requests.post(archive.url + "/studies", data=b"", timeout=10)
    token_file = tmp_path / "archive-token"
    token_file.write_text(archive.token)
    destination = DestinationConfig(name="archive", protocol="stow-rs", url=archive.url, token_file=token_file,
                                    tls={"ca_certificates": pki["ca.pem"]})
    node = stow_nodes("node", destinations=(destination,))
    node.client().store_instances([pydicom.dcmread(path) for path in mr_series.files])
    wait_for(lambda: jobs(node.spool) and jobs(node.spool)[0][1] in ("done", "failed"), JOB_TIMEOUT_S, "the job")
    deliveries = db_rows(node.spool, "SELECT state, last_error FROM deliveries")
    assert deliveries[0][0] == "done", deliveries
    assert len(archive.stored_uids()) == len(mr_series.files)
