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
    "AllowedCaller", "ConsoleConfig", "DestinationConfig", "DispatchConfig", "LoggingConfig", "NetworkConfig", "NodeConfig",
    "ProcessingConfig", "RouteConfig", "SeriesMatch", "StorageConfig", "TlsConfig", "load_config",
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
    """A C-STORE SCP the results are delivered to (the planning system, an archive)."""

    name: str
    ae_title: AeTitle
    host: str
    port: int = Field(ge=1, le=65535)
    tls: TlsConfig | None = None
    bundle: Literal["all", "images-and-rt", "images"] = Field(
        "all", description="what this destination gets: the sCT, its RT objects (structures, plan, dose) and the "
                           "QA report (SR, Encapsulated PDF) = all; the sCT and RT objects = images-and-rt (planning "
                           "systems that refuse SR or PDF); the sCT only = images")

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
    routes: tuple[RouteConfig, ...] = (RouteConfig(name="mr-to-sct"),)
    destinations: tuple[DestinationConfig, ...] = ()

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
