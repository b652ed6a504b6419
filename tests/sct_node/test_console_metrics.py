"""The console's monitoring: /metrics scraped after a real node run and parsed with prometheus-client's own
parser, every counter equal to what happened; /healthz; the console off unless configured."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pynetdicom import AE

from sct_node.config import (
    ConsoleConfig,
    DestinationConfig,
    DispatchConfig,
    NetworkConfig,
    NodeConfig,
    ProcessingConfig,
    RouteConfig,
    StorageConfig,
)
from sct_node.console import start_console
from sct_node.node.service import Node
from tests.sct_node.node_helpers import StoreScp, dcmtk, free_port, phantom_mr_series, storescu, wait_for

needs_dcmtk = pytest.mark.skipif(dcmtk("storescu") is None or dcmtk("storescp") is None,
                                 reason="dcmtk storescu/storescp not installed (tests/install-system-tools.sh)")


def _config(tmp_path, tps_port: int | None, *, console: bool = True, reserve_mb: float = 0) -> NodeConfig:
    destinations = (DestinationConfig(name="tps", ae_title="TPS", host="127.0.0.1", port=tps_port),) \
        if tps_port else ()
    return NodeConfig(
        network=NetworkConfig(ae_title="SCT_NODE", port=free_port()),
        storage=StorageConfig(spool_dir=tmp_path / "spool", min_free_space_mb=reserve_mb),
        processing=ProcessingConfig(quiet_period_s=0.5, poll_interval_s=0.1, preload=False),
        dispatch=DispatchConfig(max_attempts=3, initial_delay_s=0.1, max_delay_s=0.2, timeout_s=10),
        routes=(RouteConfig(name="mr", model="bulk", destinations=tuple(d.name for d in destinations)),),
        destinations=destinations,
        console=ConsoleConfig(enabled=console, port=free_port()),
    )


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by (name, sorted labels), as prometheus-client parses it."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _refused_instance(node_port: int, path) -> int:
    """Send an MR instance without its Series Instance UID: the node answers Cannot Understand."""
    dataset = pydicom.dcmread(path)
    del dataset.SeriesInstanceUID
    ae = AE(ae_title="PACS")
    ae.add_requested_context(str(dataset.SOPClassUID), ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", node_port, ae_title="SCT_NODE")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(dataset).Status)
    finally:
        assoc.release()


@needs_dcmtk
@pytest.mark.slow
def test_the_metrics_count_what_the_node_did(tmp_path):
    mr = phantom_mr_series(tmp_path / "mr")
    tps_port = free_port()
    scp = StoreScp(tmp_path / "tps", tps_port)
    node = Node(_config(tmp_path, tps_port))
    node.start()
    console = start_console(node)
    assert console is not None
    base = f"http://127.0.0.1:{node.config.console.port}"
    try:
        assert storescu(node.port, mr.files).returncode == 0
        job = wait_for(lambda: (j := node.state.jobs(limit=1)) and j[0].state == "done" and j[0], 120,
                       "the job to be delivered")
        assert storescu(node.port, mr.files).returncode == 0  # the same series again: duplicates
        assert _refused_instance(node.port, mr.files[0]) == 0xC000
        status, text = _get(f"{base}/metrics")
        assert status == 200
        samples = _samples(text)
        slices = len(mr.files)

        def value(name: str, **labels: str) -> float:
            return samples[(name, tuple(sorted(labels.items())))]

        assert value("sctnode_instances_received_total") == slices
        assert value("sctnode_instances_duplicate_total") == slices
        assert value("sctnode_instances_refused_total", status="0xC000") == 1
        assert value("sctnode_jobs", state="done") == 1 and value("sctnode_jobs", state="failed") == 0
        assert value("sctnode_jobs_processed_total", outcome="processed") == 1
        for stage in ("read", "guard", "model", "write", "qa", "report", "total"):
            assert value("sctnode_job_stage_seconds_count", stage=stage) == 1, stage
        assert value("sctnode_job_stage_seconds_sum", stage="total") == pytest.approx(job.timings.total_s)
        assert value("sctnode_qa_verdicts_total", verdict=job.timings.qa_verdict) == 1
        assert value("sctnode_input_guard_verdicts_total", verdict=job.timings.guard_verdict) == 1
        assert value("sctnode_deliveries_total", destination="tps", outcome="delivered") == 1
        assert ("sctnode_deliveries_total", (("destination", "tps"), ("outcome", "retry"))) not in samples
        assert value("sctnode_images_sent_ahead_total", destination="tps") == slices
        assert value("sctnode_spool_free_bytes") > 0 and value("sctnode_spool_reserve_bytes") == 0
        # Nothing about a patient, and no UID, is in a label or a value.
        assert mr.series_uid not in text and mr.study_uid not in text

        status, text = _get(f"{base}/healthz")
        assert status == 200, text
        assert json.loads(text)["status"] == "ok"
    finally:
        console.stop()
        node.stop()
        scp.stop()


def test_healthz_fails_below_the_disk_reserve_and_says_why(tmp_path):
    node = Node(_config(tmp_path, None, reserve_mb=10**12))  # a reserve no disk has: instances are refused
    node.start()
    console = start_console(node)
    assert console is not None
    try:
        status, text = _get(f"http://127.0.0.1:{node.config.console.port}/healthz")
        answer = json.loads(text)
        assert status == 503 and answer["status"] == "failing"
        assert answer["checks"]["storage_scp"] == "ok" and answer["checks"]["database"] == "ok"
        assert "instances are refused" in answer["checks"]["disk"]
    finally:
        console.stop()
        node.stop()


def test_the_console_is_off_unless_configured(tmp_path):
    config = _config(tmp_path, None, console=False)
    node = Node(config)
    node.start()
    try:
        assert start_console(node) is None
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{config.console.port}/healthz", timeout=5)
    finally:
        node.stop()
    assert NodeConfig().console.enabled is False and NodeConfig().console.host == "127.0.0.1"


def test_the_grafana_dashboard_uses_only_metrics_the_node_exports(tmp_path):
    """deploy/grafana/sct-node-dashboard.json: every metric its queries name is in a scrape of a node."""
    import re
    from pathlib import Path

    node = Node(_config(tmp_path, None))
    node.start()
    console = start_console(node)
    assert console is not None
    try:
        _, text = _get(f"http://127.0.0.1:{node.config.console.port}/metrics")
    finally:
        console.stop()
        node.stop()
    exported = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    exported |= {f"{family.name}_bucket" for family in text_string_to_metric_families(text)
                 if family.type == "histogram"}
    exported |= {f"{family.name}_total" for family in text_string_to_metric_families(text)
                 if family.type == "counter"}  # a labelled counter has no sample before its first event
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "deploy" / "grafana" /
                            "sct-node-dashboard.json").read_text(encoding="utf-8"))
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for query in queries for name in re.findall(r"\bsctnode_\w+", query)}
    assert len(dashboard["panels"]) >= 8 and used
    assert used <= exported, f"the dashboard queries metrics the node does not export: {sorted(used - exported)}"


def _console_node(tmp_path, **console) -> tuple[Node, object, int]:
    port = free_port()
    config = _config(tmp_path, None).model_copy(update={"console": ConsoleConfig(enabled=True, port=port, **console)})
    node = Node(config)
    node.start()
    return node, start_console(node), port


def test_the_console_speaks_https_with_the_configured_certificate(tmp_path, pki):
    import ssl

    node, console, port = _console_node(tmp_path, certificate=pki["server.pem"], private_key=pki["server.key"])
    try:
        context = ssl.create_default_context(cafile=str(pki["ca.pem"]))
        context.check_hostname = False  # the test certificate names no host; its chain is still verified
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=10, context=context) as answer:
            assert json.loads(answer.read())["status"] == "ok"
        with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10)  # plain HTTP is not served
        untrusting = ssl.create_default_context()  # the system's CAs do not know the test CA
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=10, context=untrusting)
    finally:
        console.stop()
        node.stop()


def _post(url: str, form: dict[str, str], headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_a_trusted_proxy_vouches_for_its_user_and_forms_still_need_their_token(tmp_path):
    import re

    node, console, port = _console_node(tmp_path, trusted_user_header="X-Remote-User",
                                        trusted_role_header="X-Remote-Role")
    base = f"http://127.0.0.1:{port}"
    try:
        physicist = {"X-Remote-User": "dr.alice", "X-Remote-Role": "physicist"}
        page = urllib.request.urlopen(urllib.request.Request(f"{base}/", headers=physicist), timeout=10).read().decode()
        assert "dr.alice (physicist)" in page
        token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        # The token and the role pass: the action reaches the job, which does not exist.
        status, text = _post(f"{base}/jobs/99/release", {"csrf": token, "comment": "ok"}, physicist)
        assert status == 409 and "no job 99" in text
        assert _post(f"{base}/jobs/99/release", {"comment": "forged"}, physicist)[0] == 403
        other = {"X-Remote-User": "mallory", "X-Remote-Role": "physicist"}
        assert _post(f"{base}/jobs/99/release", {"csrf": token, "comment": "stolen token"}, other)[0] == 403
        # Without a role header the proxy's user is a viewer; an unknown role too.
        viewer = {"X-Remote-User": "dr.bob", "X-Remote-Role": "superuser"}
        page = urllib.request.urlopen(urllib.request.Request(f"{base}/", headers=viewer), timeout=10).read().decode()
        assert "dr.bob (viewer)" in page
    finally:
        console.stop()
        node.stop()
    # From an address that is not a trusted proxy, the header is nobody.
    node, console, port = _console_node(tmp_path / "untrusted", trusted_user_header="X-Remote-User",
                                        trusted_proxies=("10.9.9.9",))
    try:
        answer = urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/",
                                                               headers={"X-Remote-User": "dr.alice"}), timeout=10)
        assert answer.url.endswith("/login") and "dr.alice" not in answer.read().decode()
    finally:
        console.stop()
        node.stop()
