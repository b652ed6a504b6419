"""The console's pages over real HTTP on a real node run: nothing without a login, roles, CSRF, lock-out, and
the review-and-release of a held job (the sCT then arrives at a dcmtk storescp) with its audit entry.

(The same in a real browser is for the Selenium test; this one checks the server's rules exhaustively.)
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import urllib.error
import urllib.parse
import urllib.request

import pydicom
import pytest

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
from sct_node.console.users import add_user
from sct_node.node.service import Node
from tests.sct_node.node_helpers import StoreScp, dcmtk, free_port, phantom_mr_series, storescu, wait_for

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(dcmtk("storescu") is None or dcmtk("storescp") is None,
                                 reason="dcmtk storescu/storescp not installed (tests/install-system-tools.sh)")]

PASSWORDS = {"alice": "correct horse battery", "victor": "viewer of all things"}


class Browser:
    """A cookie-keeping HTTP client: (status, final URL, body) for every request, errors included."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def request(self, path: str, form: dict[str, str] | None = None) -> tuple[int, str, bytes, str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        try:
            with self.opener.open(self.base + path, data=data, timeout=30) as answer:
                return answer.status, answer.url, answer.read(), answer.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            return error.code, error.url, error.read(), error.headers.get("Content-Type", "")

    def text(self, path: str, form: dict[str, str] | None = None) -> tuple[int, str, str]:
        status, url, body, _ = self.request(path, form)
        return status, url, body.decode("utf-8", errors="replace")

    def csrf(self, path: str) -> str:
        _, _, page = self.text(path)
        match = re.search(r'name="csrf" value="([^"]+)"', page)
        assert match, f"no CSRF token on {path}"
        return match.group(1)

    def login(self, name: str, password: str) -> tuple[int, str, str]:
        return self.text("/login", {"name": name, "password": password, "csrf": self.csrf("/login")})


@pytest.fixture
def held_job(tmp_path):
    """A node whose bulk-model job is held after its QA FAIL, a console with two users, and the planning system."""
    mr = phantom_mr_series(tmp_path / "mr")
    users = tmp_path / "console-users.toml"
    add_user(users, "alice", "physicist", PASSWORDS["alice"])
    add_user(users, "victor", "viewer", PASSWORDS["victor"])
    tps_port = free_port()
    scp = StoreScp(tmp_path / "tps", tps_port)
    config = NodeConfig(
        network=NetworkConfig(ae_title="SCT_NODE", port=free_port()),
        storage=StorageConfig(spool_dir=tmp_path / "spool", min_free_space_mb=0),
        processing=ProcessingConfig(quiet_period_s=0.5, poll_interval_s=0.1, preload=False),
        dispatch=DispatchConfig(max_attempts=3, initial_delay_s=0.1, max_delay_s=0.2, timeout_s=10),
        routes=(RouteConfig(name="mr", model="bulk", destinations=("tps",), on_qa_fail="hold"),),
        destinations=(DestinationConfig(name="tps", ae_title="TPS", host="127.0.0.1", port=tps_port),),
        console=ConsoleConfig(enabled=True, port=free_port(), users_file=users))
    node = Node(config)
    node.start()
    console = start_console(node)
    try:
        assert storescu(node.port, mr.files).returncode == 0
        job = wait_for(lambda: (j := node.state.jobs(limit=1)) and j[0].state == "held" and j[0], 120,
                       "the job to be held after its QA FAIL")
        yield node, job, mr, scp, f"http://127.0.0.1:{config.console.port}"
    finally:
        if console is not None:
            console.stop()
        node.stop()
        scp.stop()


def test_a_physicist_reviews_and_releases_a_held_job_and_the_rules_hold(held_job):
    node, job, mr, scp, base = held_job
    patient = str(pydicom.dcmread(mr.files[0], stop_before_pixels=True).PatientName)
    assert patient

    # Nobody: every page leads to the login, and nothing about the patient is served.
    anonymous = Browser(base)
    for path in ("/", f"/jobs/{job.id}", f"/jobs/{job.id}/report.pdf", "/audit", "/audit?format=json"):
        status, url, body, _ = anonymous.request(path)
        assert url.endswith("/login"), (path, url)
        assert patient.encode() not in body and mr.series_uid.encode() not in body
    status, _, page = anonymous.text(f"/jobs/{job.id}/release", {"comment": "x"})
    assert node.state.job(job.id).state == "held"
    status, _, page = anonymous.text("/login", {"name": "alice", "password": PASSWORDS["alice"]})  # no CSRF token
    assert status == 403 and "expired" in page
    assert anonymous.login("alice", "wrong password")[0] == 401

    # A viewer sees the job but may not release it; the refusal is audited.
    viewer = Browser(base)
    status, url, _ = viewer.login("victor", PASSWORDS["victor"])
    assert status == 200 and url.rstrip("/") == base
    status, _, page = viewer.text(f"/jobs/{job.id}")
    assert status == 200 and patient in page and 'id="actions"' not in page
    status, _, page = viewer.text(f"/jobs/{job.id}/release", {"csrf": viewer.csrf(f"/jobs/{job.id}"),
                                                             "comment": "looks fine to me"})
    assert status == 403 and node.state.job(job.id).state == "held"

    # The physicist: the list, the job with its checks and report, then the release.
    physicist = Browser(base)
    assert physicist.login("alice", PASSWORDS["alice"])[0] == 200
    status, _, page = physicist.text("/?state=held")
    assert status == 200 and f'href="/jobs/{job.id}"' in page
    assert f'href="/jobs/{job.id}"' not in physicist.text("/?state=done")[2]
    status, _, page = physicist.text(f"/jobs/{job.id}")
    assert 'id="checks"' in page and "bone_fraction" in page and 'class="FAIL"' in page
    assert f'action="/jobs/{job.id}/release"' in page
    status, _, pdf, kind = physicist.request(f"/jobs/{job.id}/report.pdf")
    assert status == 200 and kind == "application/pdf" and pdf.startswith(b"%PDF")
    status, _, page = physicist.text(f"/jobs/{job.id}/figures")  # drawn from the held job's QA, sCT held back
    names = re.findall(rf'src="/jobs/{job.id}/figures/(page-\d\d\.png)"', page)
    assert status == 200 and len(names) >= 4, page[-500:]
    status, _, image, kind = physicist.request(f"/jobs/{job.id}/figures/{names[1]}")
    assert status == 200 and kind == "image/png" and image.startswith(b"\x89PNG")
    assert physicist.request(f"/jobs/{job.id}/figures/..%2Fqa%2Fqa.json")[0] == 404
    assert anonymous.request(f"/jobs/{job.id}/figures/{names[1]}")[1].endswith("/login")
    token = physicist.csrf(f"/jobs/{job.id}")
    status, _, _ = physicist.text(f"/jobs/{job.id}/release", {"comment": "forged: no token"})
    assert status == 403 and node.state.job(job.id).state == "held"
    status, _, _ = physicist.text(f"/jobs/{job.id}/release", {"csrf": viewer.csrf("/"), "comment": "another's token"})
    assert status == 403 and node.state.job(job.id).state == "held"
    status, _, page = physicist.text(f"/jobs/{job.id}/release", {"csrf": token, "comment": "  "})
    assert status == 400 and "comment is required" in page
    status, url, page = physicist.text(f"/jobs/{job.id}/release",
                                       {"csrf": token, "comment": "FAIL reviewed: bone missing, dose within 1 %"})
    assert status == 200 and url.endswith(f"/jobs/{job.id}")
    wait_for(lambda: node.state.job(job.id).state == "done", 60, "the released sCT to be delivered")
    received = [str(pydicom.dcmread(p, stop_before_pixels=True).Modality) for p in scp.folder.iterdir() if p.is_file()]
    assert received.count("CT") == len(mr.files)

    # The job's delivery log: the report delivered while the sCT was held, then everything after the release.
    log = physicist.text(f"/jobs/{job.id}")[2]
    log = log[log.index('id="delivery-log"'):]
    sent = [int(n) for n in re.findall(r"(\d+) instance\(s\)", log)]
    assert log.count("<td>delivered</td>") == 2 and sent[0] == 2 and sent[1] > len(mr.files), sent  # SR+PDF, all
    # The series page: the MR series with its job.
    status, _, page = physicist.text("/series")
    assert status == 200 and f'<a href="/jobs/{job.id}">{job.id}</a>' in page and f"<td>{len(mr.files)}</td>" in page

    # The audit trail: the release with its comment, the viewer's refusal, the logins; as JSON and CSV.
    entries = json.loads(physicist.text("/audit?format=json")[2])
    actions = [(e["actor"], e["action"], e["job_id"], e["outcome"]) for e in entries]
    assert ("alice", "release", job.id, "delivering") in actions
    assert ("victor", "release", job.id, "refused: role viewer") in actions
    assert ("alice", "login", None, "") in actions and ("victor", "login", None, "") in actions
    assert any(e["action"] == "login_refused" and e["actor"] == "alice" for e in entries)
    release = next(e for e in entries if e["action"] == "release" and e["actor"] == "alice")
    assert release["comment"] == "FAIL reviewed: bone missing, dose within 1 %"
    csv_text = physicist.text("/audit?format=csv")[2]
    assert csv_text.startswith("id,time,actor,role,action,job,comment,outcome")
    assert "FAIL reviewed: bone missing, dose within 1 %" in csv_text
    assert "alice" in physicist.text(f"/jobs/{job.id}")[2]  # the job's own audit table

    # The node page: roles, connections, queues, disk, routes and the model that ran.
    status, _, page = physicist.text("/node")
    assert status == 200 and "listening on port" in page and "bulk" in page and "STOPPED" not in page
    assert re.search(r"<th><a href=\"/\?state=done\">done</a></th>", page)

    # Trends: the job's numbers were kept with it (they outlive its folder) and are drawn per route and model.
    kept = node.state.job(job.id).timings
    assert kept.held_back is True and kept.qa_verdict == "FAIL" and kept.bone_percent == 0.0
    assert kept.gamma_pass_percent is not None and kept.soft_tissue_mean_hu is not None
    status, _, page = physicist.text("/trends")
    assert status == 200 and re.search(r"<td>mr</td><td>bulk</td><td>1</td>.*?<td class=\"FAIL\">1</td>.*?<td>100 %</td>",
                                       page, re.S), page[-1500:]
    status, _, image, kind = physicist.request("/trends.png?group=mr%2Fbulk")
    assert status == 200 and kind == "image/png" and image.startswith(b"\x89PNG")
    assert physicist.request("/trends.png?group=nothing")[0] == 404

    # Logging out ends the session.
    assert physicist.text("/logout", {"csrf": physicist.csrf("/")})[1].endswith("/login")
    assert physicist.text("/")[1].endswith("/login")

    # Lock-out: five wrong passwords, then even the right one is refused for a while.
    intruder = Browser(base)
    for _ in range(5):
        intruder.login("alice", "guess")
    status, _, page = intruder.login("alice", PASSWORDS["alice"])
    assert status == 429 and "Too many failed logins" in page
