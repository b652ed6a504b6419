"""The node's configuration: a TOML file validated at start, with defaults that run on loopback.

Every option is documented in ``deploy/node.toml``. Unknown keys are errors
(``extra="forbid"``): a misspelt option must never be silently ignored on a
clinical node. The configuration is loaded once and passed in explicitly.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from dosimetry.dose_sampling import DEFAULT_DOSE_GRID_MM
from dosimetry.verdict import QaThresholds
from sct_node.errors import ConfigError

__all__ = [
    "AllowedCaller", "ClusterConfig", "ConsoleConfig", "DestinationConfig", "DicomwebConfig", "DispatchConfig",
    "LoggingConfig", "NetworkConfig", "NodeConfig", "PacsConfig", "ProcessingConfig", "ReferenceKind", "RouteConfig",
    "SeriesMatch", "StorageConfig", "TlsConfig", "load_config",
]

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 6.2: 16 chars, no backslash or control chars


def _check_ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError(f"AE title must be 1-16 printable characters without backslash; found {value!r}")
    return value.strip()


AeTitle = Annotated[str, Field(min_length=1, max_length=16)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Strict):
    """TLS for the Storage SCP (server side) or for a destination (client side)."""

    certificate: Path | None = Field(None, description="PEM certificate of this node")
    private_key: Path | None = Field(None, description="PEM private key of this node")
    ca_certificates: Path | None = Field(None, description="PEM bundle of trusted CAs (peer verification)")
    require_client_certificate: bool = Field(False, description="SCP: refuse clients without a certificate "
                                                                "signed by ca_certificates")


class AllowedCaller(_Strict):
    """A calling AE allowed to associate, optionally only from one host."""

    ae_title: AeTitle
    host: str | None = Field(None, description="IP address the association must come from")

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))


class NetworkConfig(_Strict):
    """The Storage SCP."""

    ae_title: AeTitle = "SCT_NODE"
    bind_address: str = "127.0.0.1"
    port: int = Field(11112, ge=1, le=65535)
    max_associations: int = Field(10, ge=1, le=1000, description="established associations at the same time; "
                                                                   "more are rejected (transient, local limit)")
    max_connections: int = Field(40, ge=1, le=10000, description="open TCP connections at the same time, in any "
                                                                 "state (before and after association); more are "
                                                                 "closed at once")
    max_connections_per_host: int = Field(10, ge=1, le=10000, description="open TCP connections from one IP "
                                                                          "address; more are closed at once")
    allowed_callers: tuple[AllowedCaller, ...] | None = Field(
        None, description="None accepts any calling AE (only sensible on loopback); otherwise only these")
    tls: TlsConfig | None = None
    network_timeout_s: float = Field(60.0, gt=0, description="idle association, whole PDU, TLS handshake and "
                                                             "association request deadline")

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))


class StorageConfig(_Strict):
    """Where received instances and outputs live."""

    spool_dir: Path = Path("sct-node-spool")
    min_free_space_mb: float = Field(1024.0, ge=0, description="refuse instances (Out of Resources) below this")
    max_instance_mb: float = Field(1024.0, gt=0, description="largest data set accepted (an enhanced MR of 400 "
                                                             "512 x 512 frames is 200 MB); larger ones abort the "
                                                             "association before they fill memory")
    unrouted_retention_h: float = Field(72.0, ge=0, description="keep series that match no route this long")
    done_retention_h: float = Field(24.0, ge=0, description="keep inputs and outputs of finished jobs this long")


class SeriesMatch(_Strict):
    """What a route selects; every given criterion must match (AND). Patterns are Python regexes, searched."""

    modality: tuple[str, ...] = ("MR",)
    series_description: str | None = None
    image_type: str | None = Field(None, description="regex against the backslash-joined Image Type")
    body_part: str | None = None
    calling_ae: str | None = None
    min_instances: int = Field(2, ge=1)

    @field_validator("series_description", "image_type", "body_part", "calling_ae")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"not a valid regular expression {value!r}: {error}") from None
        return value


#: QA reference data a route may fetch from a PACS (:class:`PacsConfig`): the real CT, the RT Plan and the
#: RT Structure Set in the MR's frame of reference.
ReferenceKind = Literal["ct", "plan", "structures"]


class RouteConfig(_Strict):
    """A routing rule: which series, which model, which destinations."""

    name: str
    match: SeriesMatch = SeriesMatch()
    model: str = Field("diffusion", description="built-in model (diffusion, unet, bulk) or a checkpoint folder")
    model_steps: int | None = Field(None, ge=1, description="DDIM steps of a diffusion model (default: the model's; "
                                                            "with model_ensemble > 1 its ensemble steps, at least 2)")
    model_ensemble: int = Field(1, ge=1, description="samples per volume of a diffusion model; > 1 adds an "
                                                      "uncertainty map that the QA checks")
    destinations: tuple[str, ...] = ()
    complete_on: tuple[Literal["association", "expected_count"], ...] = Field(
        (), description="completion rules besides the quiet period (processing.quiet_period_s, always the fallback): "
                        "association = a series whose instances all came on one association is complete when that "
                        "association is released normally (after association_grace_s); for senders that send a "
                        "whole series per association (Orthanc's OnStableSeries, Mercure, dcm4chee forwarding). "
                        "expected_count = complete when the instances the data announce have arrived (Images in "
                        "Acquisition; an Enhanced MR's concatenation); docs/node.md, Completion")
    association_grace_s: float = Field(
        2.0, ge=0, le=60, description="association rule: wait this long after the release for another association "
                                      "that continues the series")
    qa: bool = Field(True, description="run the dosimetric QA (qa.json next to the outputs)")
    qa_site: str = Field("pelvis", pattern="^(pelvis|head)$", description="template plan when no RT Plan is known")
    qa_dose: bool = Field(True, description="include the dose comparison (template plan, gamma, DVH)")
    qa_dose_grid_mm: float = Field(DEFAULT_DOSE_GRID_MM, ge=1.0, le=10.0,
                                   description="dose grid of the QA and of the delivered RT Dose (mm; never finer "
                                               "than the sCT); DVHs are read at every structure voxel whatever it is")
    qa_thresholds: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="override QA limits: {check: {pass_limit, fail_limit}} (docs/qa.md)")
    qa_hu_reference: Path | None = Field(
        None, description="an HU reference of real CTs of the route's qa_site, built with `sct-node hu-reference`: "
                          "adds the hu_distribution check (docs/qa.md); none: the check is not run")
    qa_report: bool = Field(True, description="build and deliver the QA report bundle: PDF (as Encapsulated PDF), "
                                              "Structured Report, RT Structure Set on the sCT")
    qa_rt_dose: bool = Field(True, description="add the QA dose on the sCT as RT Dose (and the template RT Plan)")
    on_input_outside_envelope: Literal["refuse-hard", "refuse", "mark"] = Field(
        "refuse-hard", description="when the input guard finds the series outside the model's training envelope "
                                   "(docs/models.md, Input guard): refuse-hard = no sCT for a hard mismatch (another "
                                   "weighting or sequence family, body site, contrast far from the training data), "
                                   "mark a soft one; refuse = no sCT for any mismatch; mark = always make the sCT, "
                                   "marked, with guard.json in the job's output folder")
    on_qa_fail: Literal["deliver", "hold"] = Field(
        "deliver", description="after a QA FAIL: deliver the sCT marked 'QA FAIL' with its report, or hold it back "
                               "and deliver only the report until `sct-node release JOB`")
    fetch_references: tuple[ReferenceKind, ...] = Field(
        (), description="QA reference data to fetch from the PACS named by fetch_from when none was routed to the "
                        "node in the MR's frame of reference: ct, plan, structures (docs/node.md, Reference data "
                        "from the PACS); none: only what was routed is used")
    fetch_from: str | None = Field(None, description="the [[pacs]] entry (its name) fetch_references queries")

    @model_validator(mode="after")
    def _fetch_needs_source(self) -> RouteConfig:
        if self.fetch_references and self.fetch_from is None:
            raise ValueError(f"fetch_references = {list(self.fetch_references)} needs fetch_from, the name of the "
                             f"[[pacs]] entry to query")
        if self.fetch_from is not None and not self.fetch_references:
            raise ValueError(f"fetch_from = {self.fetch_from!r} needs fetch_references (ct, plan, structures): "
                             f"which reference data to fetch")
        if self.fetch_references and not self.qa:
            raise ValueError("fetch_references needs qa = true: reference data are only used by the QA")
        if len(set(self.fetch_references)) != len(self.fetch_references):
            raise ValueError(f"fetch_references names a kind twice; found {list(self.fetch_references)}")
        return self

    @model_validator(mode="after")
    def _ensemble_needs_steps(self) -> RouteConfig:
        from models.base import MIN_ENSEMBLE_STEPS

        if self.model_ensemble > 1 and self.model_steps is not None and self.model_steps < MIN_ENSEMBLE_STEPS:
            raise ValueError(f"model_ensemble = {self.model_ensemble} needs model_steps >= {MIN_ENSEMBLE_STEPS} (or no "
                             f"model_steps: the model's ensemble steps): one sampling step gives members that do not "
                             f"differ")
        return self

    @model_validator(mode="after")
    def _hu_reference_matches_site(self) -> RouteConfig:
        if self.qa_hu_reference is not None:
            from dosimetry.errors import DosimetryError
            from dosimetry.hu_reference import load_hu_reference

            try:
                reference = load_hu_reference(self.qa_hu_reference)
            except DosimetryError as error:
                raise ValueError(str(error)) from None
            if reference.site != self.qa_site:
                raise ValueError(f"qa_hu_reference {self.qa_hu_reference} was built for site {reference.site!r}; this "
                                 f"route's qa_site is {self.qa_site!r}")
        return self

    #: ``qa_thresholds`` parsed once, when the configuration is loaded (:attr:`thresholds`).
    _thresholds: QaThresholds = PrivateAttr(default_factory=QaThresholds)

    @field_validator("qa_thresholds")
    @classmethod
    def _known_thresholds(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        """Refuse unknown checks and bad limits here, where the error names the field."""
        from dosimetry.errors import DosimetryError
        from dosimetry.verdict import thresholds_from_mapping

        try:
            thresholds_from_mapping(value)
        except DosimetryError as error:
            raise ValueError(str(error)) from None
        return value

    @model_validator(mode="after")
    def _parse_thresholds(self) -> RouteConfig:
        from dosimetry.verdict import thresholds_from_mapping

        self._thresholds = thresholds_from_mapping(self.qa_thresholds)  # validated above: cannot fail
        return self

    @property
    def thresholds(self) -> QaThresholds:
        """The QA limits of this route: the published defaults with ``qa_thresholds`` applied."""
        return self._thresholds


class DestinationConfig(_Strict):
    """Where the results are delivered (the planning system, an archive): a C-STORE SCP (``protocol = "dimse"``,
    with ``ae_title``, ``host``, ``port``) or a DICOMweb server's STOW-RS (``protocol = "stow-rs"``, with
    ``url``)."""

    name: str
    protocol: Literal["dimse", "stow-rs"] = Field(
        "dimse", description="dimse = C-STORE to ae_title@host:port; stow-rs = DICOMweb STOW-RS to url")
    ae_title: AeTitle | None = Field(None, description="dimse: the destination's AE title")
    host: str | None = Field(None, description="dimse: its address")
    port: int | None = Field(None, ge=1, le=65535, description="dimse: its port")
    url: str | None = Field(None, description="stow-rs: the DICOMweb service root, e.g. "
                                              "https://pacs.example.org/dicom-web (instances are POSTed to "
                                              "{url}/studies)")
    token_file: Path | None = Field(None, description="stow-rs: a file holding a bearer token sent as "
                                                      "'Authorization: Bearer ...' (read at each delivery)")
    username: str | None = Field(None, description="stow-rs: HTTP Basic user name (with password_file)")
    password_file: Path | None = Field(None, description="stow-rs: a file holding that user's password")
    max_request_mb: float = Field(64.0, gt=0, le=4096, description="stow-rs: instances are sent in requests of "
                                                                   "at most this size (one instance at least)")
    tls: TlsConfig | None = Field(None, description="dimse: DICOM TLS; stow-rs: ca_certificates verifies the "
                                                    "server (default: the system's CAs), certificate and "
                                                    "private_key make a client certificate")
    bundle: Literal["all", "images-and-rt", "images"] = Field(
        "all", description="what this destination gets: the sCT, its RT objects (structures, plan, dose) and the "
                           "QA report (SR, Encapsulated PDF) = all; the sCT and RT objects = images-and-rt (planning "
                           "systems that refuse SR or PDF); the sCT only = images")
    storage_commitment: bool = Field(
        False, description="dimse: after the C-STOREs, ask the destination to commit to keep every instance of the "
                           "bundle (Storage Commitment Push Model, N-ACTION) and count the delivery done only when its "
                           "N-EVENT-REPORT says all were committed; a refusal, a failed instance or no report "
                           "within commitment_timeout_s is a failed delivery, retried with the backoff. The report "
                           "may come on the delivery's association or on a new one to the node's Storage SCP: list "
                           "the destination's AE title in network.allowed_callers (docs/node.md, Storage commitment)")
    commitment_timeout_s: float = Field(
        60.0, gt=0, le=600, description="storage_commitment: how long to wait for the destination's N-EVENT-REPORT "
                                        "after it accepted the request; the dispatcher waits in line (other "
                                        "deliveries wait too), hence the 600 s bound")

    @model_validator(mode="after")
    def _commitment_needs_dimse(self) -> DestinationConfig:
        if self.storage_commitment and self.protocol != "dimse":
            raise ValueError(f"destination {self.name!r}: storage_commitment is a DIMSE service (N-ACTION, "
                             f"N-EVENT-REPORT); protocol = \"{self.protocol}\" has none")
        return self

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae_title(v) if v is not None else v))

    @model_validator(mode="after")
    def _protocol_fields(self) -> DestinationConfig:
        if self.protocol == "dimse":
            missing = [key for key in ("ae_title", "host", "port") if getattr(self, key) is None]
            if missing:
                raise ValueError(f"destination {self.name!r} (protocol dimse): {', '.join(missing)} missing")
            if self.url or self.token_file or self.username or self.password_file:
                raise ValueError(f"destination {self.name!r}: url, token_file, username and password_file are for "
                                 f"protocol = \"stow-rs\"")
            return self
        if not self.url or not re.match(r"^https?://[^\s/]+", self.url):
            raise ValueError(f"destination {self.name!r} (protocol stow-rs): url must be an http:// or https:// "
                             f"DICOMweb service root; found {self.url!r}")
        if self.ae_title or self.host or self.port:
            raise ValueError(f"destination {self.name!r}: ae_title, host and port are for protocol = \"dimse\"; "
                             f"a STOW-RS destination has a url")
        if (self.username is None) != (self.password_file is None):
            raise ValueError(f"destination {self.name!r}: username and password_file go together (HTTP Basic)")
        if self.token_file is not None and self.username is not None:
            raise ValueError(f"destination {self.name!r}: a bearer token_file or a username, not both")
        if self.storage_commitment:
            raise ValueError(f"destination {self.name!r}: storage_commitment is a DIMSE service; STOW-RS "
                             f"answers for every instance it stored in its response")
        return self

    @property
    def address(self) -> str:
        """Where it is, for messages: ``AE@host:port`` or the URL."""
        return (self.url or "") if self.protocol == "stow-rs" else f"{self.ae_title}@{self.host}:{self.port}"


class PacsConfig(_Strict):
    """A PACS the node queries (C-FIND) and retrieves QA reference data from (C-MOVE or C-GET), ``[[pacs]]``.

    ``retrieve = "move"`` (C-MOVE): the PACS sends the instances to the node's own Storage SCP on an association
    of its own, so the PACS must list the node's AE title (``network.ae_title``, sent as the Move Destination)
    with the node's address and port, and the PACS's AE title must be an allowed caller of the node. ``"get"``
    (C-GET): the instances come back on the node's own association, the node taking the Storage SCP role on it
    (SCP/SCU role selection); nothing has to be configured at the PACS for the way back, and no firewall has to
    let the PACS connect to the node. Either way they are stored and checked exactly as a C-STORE is.
    """

    name: str
    ae_title: AeTitle
    host: str
    port: int = Field(ge=1, le=65535)
    tls: TlsConfig | None = None
    retrieve: Literal["move", "get"] = Field("move", description="C-MOVE to the node's Storage SCP, or C-GET")
    query_timeout_s: float = Field(30.0, gt=0, le=600, description="the whole query (association and C-FINDs)")
    retrieve_timeout_s: float = Field(300.0, gt=0, le=3600, description="the whole retrieval (association and "
                                                                         "every C-MOVE or C-GET); then it is "
                                                                         "aborted and the QA uses what arrived")
    max_series: int = Field(10, ge=1, le=1000, description="series retrieved for one job at most")
    max_instances: int = Field(2000, ge=1, le=100000, description="instances retrieved for one job at most "
                                                                 "(a planning CT has 100 to 400)")

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: _check_ae_title(v)))


class DispatchConfig(_Strict):
    """Retries of deliveries: delay doubles from ``initial_delay_s`` up to ``max_delay_s``."""

    max_attempts: int = Field(5, ge=1)
    initial_delay_s: float = Field(30.0, ge=0)
    max_delay_s: float = Field(900.0, ge=0)
    timeout_s: float = Field(60.0, gt=0)


class ProcessingConfig(_Strict):
    """When a series is complete and how many run at once."""

    quiet_period_s: float = Field(
        60.0, gt=0, description="a series is complete this long after its last instance (Orthanc, Mercure: 60 s)")
    workers: int = Field(1, ge=1, le=64, description="series processed at the same time (one GPU: 1)")
    poll_interval_s: float = Field(1.0, gt=0)
    preload: bool = Field(
        True, description="load every route's model and the QA and report code when the node starts, in the "
                          "background, so the first series does not wait for them (seconds on a CPU)")


class ConsoleConfig(_Strict):
    """The node's web console (``[console]``): monitoring (``/metrics``, ``/healthz``) in the node's process."""

    enabled: bool = Field(False, description="serve the console; off by default")
    host: str = Field("127.0.0.1", description="address to listen on; loopback by default: put a reverse proxy "
                                               "(TLS, single sign-on) in front to serve it further")
    port: int = Field(8104, ge=1, le=65535)
    certificate: Path | None = Field(None, description="PEM certificate: serve HTTPS (with private_key)")
    private_key: Path | None = Field(None, description="PEM private key of the certificate")
    users_file: Path | None = Field(None, description="local users with roles and argon2 password hashes "
                                                      "(sct-node console-user add); read at each login")
    trusted_user_header: str | None = Field(
        None, description="single sign-on: the header a reverse proxy sets to the authenticated user's name "
                          "(e.g. X-Remote-User); believed only from trusted_proxies")
    trusted_role_header: str | None = Field(
        None, description="the header with that user's role (viewer, physicist, admin); without it, viewer")
    trusted_proxies: tuple[str, ...] = Field(("127.0.0.1",), description="addresses whose identity headers count")
    session_idle_timeout_min: float = Field(30.0, gt=0, le=24 * 60)

    @model_validator(mode="after")
    def _tls_pair(self) -> ConsoleConfig:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("console: certificate and private_key go together (HTTPS needs both)")
        return self


class DicomwebConfig(_Strict):
    """The node's DICOMweb STOW-RS service (``[dicomweb]``, off by default): instances POSTed to
    ``/dicom-web/studies`` go to the same spool, with the same checks, as a C-STORE (docs/node.md, DICOMweb).

    Every request is authenticated: a bearer token (``tokens_file``, made with ``sct-node dicomweb-token add``)
    or HTTP Basic with a console user of role physicist or admin (``users_file``). Served on loopback unless a
    certificate is given: a token or a password must not cross a network in clear text.
    """

    enabled: bool = Field(False, description="serve STOW-RS; off by default")
    host: str = Field("127.0.0.1", description="address to listen on; an address other than loopback needs "
                                               "certificate and private_key (HTTPS)")
    port: int = Field(8105, ge=1, le=65535)
    certificate: Path | None = Field(None, description="PEM certificate: serve HTTPS (with private_key)")
    private_key: Path | None = Field(None, description="PEM private key of the certificate")
    tokens_file: Path | None = Field(None, description="senders' bearer tokens (hashed; sct-node dicomweb-token add); "
                                                       "read at each request")
    users_file: Path | None = Field(None, description="console users (sct-node console-user add) who may store "
                                                      "by HTTP Basic: roles physicist and admin")
    max_request_mb: float = Field(2048.0, gt=0, description="largest request body; larger ones are refused (413) "
                                                            "before they are read")
    request_timeout_s: float = Field(600.0, gt=0, description="a request's body must arrive within this")
    max_concurrent_requests: int = Field(4, ge=1, le=64, description="requests served at once; more get 503")

    @model_validator(mode="after")
    def _secure(self) -> DicomwebConfig:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("dicomweb: certificate and private_key go together (HTTPS needs both)")
        if self.enabled and self.tokens_file is None and self.users_file is None:
            raise ValueError("dicomweb: enabled needs tokens_file or users_file: every request is authenticated")
        if self.enabled and self.certificate is None and self.host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(f"dicomweb: host {self.host!r} without a certificate would take tokens and passwords "
                             f"in clear text; give certificate and private_key, or serve on 127.0.0.1 behind a "
                             f"TLS reverse proxy")
        return self


class ClusterConfig(_Strict):
    """Several processes as one node (``[cluster]``; docs/cluster.md): receivers enqueue complete series as jobs on
    a Dramatiq queue in Redis, workers process them, dispatchers deliver; the state database is the source of
    truth. Without ``broker_url``, ``sct-node serve`` is today's single process (``--role all``)."""

    broker_url: str | None = Field(None, description="Redis URL of the job queue, e.g. redis://queue.example.org:6379/0 "
                                                     "(Redis with appendonly yes, appendfsync everysec)")
    database_url: str | None = Field(
        None, pattern=r"^postgres(ql)?://",
        description="PostgreSQL URL of the state database every role shares, e.g. "
                    "postgresql://sct:PASSWORD@db.example.org:5432/sct_node (psycopg 3: pip install "
                    "'sct-node[cluster]'); unset: the embedded SQLite file storage.spool_dir/state.sqlite3 "
                    "(docs/node.md, State database)")
    namespace: str = Field("sct-node", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                           description="Dramatiq namespace in Redis: several nodes can share one Redis")
    queue: str = Field("jobs", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="the queue jobs go on")
    worker_threads: int = Field(1, ge=1, le=64, description="jobs one worker process runs at once (one GPU: 1)")
    job_time_limit_s: float = Field(6 * 3600.0, gt=0, description="a job running longer is interrupted and failed "
                                                                   "(Dramatiq's default of 10 min is too short for "
                                                                   "a large diffusion ensemble on a CPU)")
    heartbeat_timeout_s: float = Field(60.0, ge=5, description="a worker silent this long is taken for dead: its "
                                                               "unfinished job goes back on the queue")
    lease_s: float = Field(120.0, ge=5, description="a claimed job is the claimer's while it renews this lease "
                                                    "(every lease_s / 4); a job whose lease ran out may be taken "
                                                    "by another worker")
    queue_poll_ms: int = Field(20, ge=1, le=1000, description="an idle worker asks Redis for a job this often: the "
                                                              "queue's added latency (Dramatiq's default backs "
                                                              "off to 1000 ms, about 0.35 s a job measured)")
    requeue_check_probability: float = Field(
        0.01, gt=0, le=1, description="chance per queue poll that a worker looks for dead workers' jobs "
                                      "(Dramatiq's maintenance; its default 0.001 can leave a job many minutes)")


class LoggingConfig(_Strict):
    level: str = Field("INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    json_lines: bool = False


class NodeConfig(_Strict):
    """The whole configuration."""

    network: NetworkConfig = NetworkConfig()
    storage: StorageConfig = StorageConfig()
    processing: ProcessingConfig = ProcessingConfig()
    dispatch: DispatchConfig = DispatchConfig()
    logging: LoggingConfig = LoggingConfig()
    console: ConsoleConfig = ConsoleConfig()
    dicomweb: DicomwebConfig = DicomwebConfig()
    cluster: ClusterConfig = ClusterConfig()
    routes: tuple[RouteConfig, ...] = (RouteConfig(name="mr-to-sct"),)
    destinations: tuple[DestinationConfig, ...] = ()
    pacs: tuple[PacsConfig, ...] = Field((), description="PACSs the routes' fetch_references query")

    @model_validator(mode="after")
    def _references(self) -> NodeConfig:
        names = [d.name for d in self.destinations]
        if len(set(names)) != len(names):
            raise ValueError(f"destination names must be unique; found {names}")
        for route in self.routes:
            for name in route.destinations:
                if name not in names:
                    raise ValueError(f"route {route.name!r} names destination {name!r}, which is not defined "
                                     f"(defined: {', '.join(names) or 'none'})")
        sources = [p.name for p in self.pacs]
        if len(set(sources)) != len(sources):
            raise ValueError(f"pacs names must be unique; found {sources}")
        for route in self.routes:
            if route.fetch_from is not None and route.fetch_from not in sources:
                raise ValueError(f"route {route.name!r}: fetch_from names PACS {route.fetch_from!r}, which is not "
                                 f"defined (defined: {', '.join(sources) or 'none'})")
        return self

    def destination(self, name: str) -> DestinationConfig:
        return next(d for d in self.destinations if d.name == name)


def load_config(path: Path | None) -> NodeConfig:
    """Read and validate a TOML configuration; ``None`` gives the embedded defaults.

    Raises
    ------
    ConfigError
        With every problem, each naming the key path (``network.port``) and what was found.
    """
    if path is None:
        return NodeConfig()
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {_message(e)}" for e in error.errors())
        raise ConfigError(f"{path}: {problems}") from None


def _message(error: ErrorDetails) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    found = error.get("input")
    text = error["msg"]
    if not isinstance(found, dict | list):
        text += f" (found {found!r})"
    return text
