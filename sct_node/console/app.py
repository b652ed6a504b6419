"""The console's ASGI application (Starlette, server-rendered Jinja2 pages, no JavaScript).

Public: ``/healthz`` and ``/metrics`` (nothing about a patient). Everything else needs a login (a local
user, :mod:`sct_node.console.users`, or a trusted reverse proxy's header) and answers a request without one
with a redirect to ``/login``, before reading anything. Every form carries a CSRF token; actions on jobs
check the user's role, go through :mod:`sct_node.node.actions` (the same path as the CLI) and are audited,
refusals too.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import hmac
import io
import json
import logging
import re
import secrets
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from sct_node import __version__
from sct_node.config import NodeConfig
from sct_node.console.sessions import LoginGuard, SessionStore
from sct_node.console.users import ROLES, User, allowed, verify_password
from sct_node.errors import SctNodeError
from sct_node.job_folder import JobFolder
from sct_node.node import actions
from sct_node.node.metrics import NodeMetrics
from sct_node.node.spool import Spool
from sct_node.node.state import Actor, AuditEntry, Job, JobState, StateStore

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

SESSION_COOKIE = "sctnode_session"
LOGIN_CSRF_COOKIE = "sctnode_login_csrf"
_TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
#: The actions a job's page offers in each state: (action, button label, comment prompt or "" for none).
_OFFERED = {
    JobState.HELD: (("release", "Release the sCT", "Why it may be delivered (kept in the audit trail)"),
                    ("dismiss", "Dismiss", "Why the job is given up")),
    JobState.FAILED: (("retry", "Retry", ""), ("dismiss", "Dismiss", "Why the job is given up")),
}
_COMMENT_REQUIRED = {"release", "dismiss"}


def create_app(config: NodeConfig, state: StateStore, spool: Spool, metrics: NodeMetrics,
               receiving: Callable[[], bool], node_status: Callable[[], dict[str, Any]] | None = None) -> Starlette:
    """The console of one node.

    ``receiving`` says whether the Storage SCP is listening (the node's own check, for ``/healthz``);
    ``node_status`` what the node page shows (:meth:`sct_node.node.service.Node.status`).
    """
    console = config.console
    sessions = SessionStore(console.session_idle_timeout_min * 60)
    guard = LoginGuard()
    secure = console.certificate is not None
    #: Signs the CSRF tokens of users a proxy vouches for (they have no session of ours); new at each start.
    proxy_secret = secrets.token_bytes(32)
    known_routes = sorted(route.name for route in config.routes)

    # --- who is asking ---------------------------------------------------------------------------------

    def client(request: Request) -> str:
        return request.client.host if request.client is not None else "unknown"

    def current(request: Request) -> tuple[User | None, str]:
        """The logged-in user and the CSRF token their forms carry; (None, "") for nobody.

        A trusted proxy's user has no session of ours: their token is an HMAC of their name, so a form
        forged on another site still lacks it.
        """
        if console.trusted_user_header and client(request) in console.trusted_proxies:
            name = request.headers.get(console.trusted_user_header, "").strip()[:64]
            if name:
                role = request.headers.get(console.trusted_role_header or "", "").strip().lower()
                return User(name, role if role in ROLES else "viewer"), hmac.new(
                    proxy_secret, name.encode("utf-8"), hashlib.sha256).hexdigest()
        session = sessions.get(request.cookies.get(SESSION_COOKIE))
        return (session.user, session.csrf) if session is not None else (None, "")

    def page(request: Request, template: str, context: dict[str, Any], status_code: int = 200) -> Response:
        user, csrf = current(request)
        return _TEMPLATES.TemplateResponse(request, template, {"user": user, "csrf": csrf, **context},
                                           status_code=status_code)

    def error(request: Request, status: int, message: str) -> Response:
        return page(request, "error.html", {"status": status, "message": message}, status_code=status)

    def needs_login(handler: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapped(request: Request) -> Response:
            user, _ = current(request)
            if user is None:
                return RedirectResponse("/login", status_code=303)
            response: Response = await handler(request, user)
            return response
        return wrapped

    # --- public ------------------------------------------------------------------------------------------

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> JSONResponse:
        """200 when the node can take instances (listening, database readable, free space above the reserve);
        503 with the failed checks otherwise."""
        checks: dict[str, str] = {}
        checks["storage_scp"] = "ok" if receiving() else "not listening"
        try:
            await run_in_threadpool(state.instance_count)
            checks["database"] = "ok"
        except Exception as failure:  # noqa: BLE001 - reported as the check's result
            checks["database"] = f"not readable: {type(failure).__name__}"
        free_mb = shutil.disk_usage(spool.root).free / 2**20
        checks["disk"] = "ok" if free_mb > config.storage.min_free_space_mb else \
            f"{free_mb:.0f} MB free, reserve {config.storage.min_free_space_mb:.0f} MB: instances are refused"
        healthy = all(value == "ok" for value in checks.values())
        return JSONResponse({"status": "ok" if healthy else "failing", "version": __version__, "checks": checks},
                            status_code=200 if healthy else 503)

    # --- logging in and out --------------------------------------------------------------------------

    async def login_form(request: Request, message: str = "", status_code: int = 200) -> Response:
        token = secrets.token_urlsafe(32)
        response = page(request, "login.html", {"login_csrf": token, "message": message}, status_code)
        response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=secure)
        return response

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return await login_form(request)
        form = await request.form()
        name, password = str(form.get("name", "")).strip()[:64], str(form.get("password", ""))
        sent = str(form.get("csrf", ""))
        if not sent or not secrets.compare_digest(sent, request.cookies.get(LOGIN_CSRF_COOKIE, "")):
            return await login_form(request, "The form expired; log in again.", 403)
        where = client(request)
        if guard.locked(name, where):
            await run_in_threadpool(state.audit, Actor(name, ""), "login_refused", None, "", "locked out")
            return await login_form(request, "Too many failed logins: try again in 15 minutes.", 429)
        user = await run_in_threadpool(verify_password, console.users_file, name, password) \
            if console.users_file is not None else None
        if user is None:
            locked = guard.failed(name, where)
            await run_in_threadpool(state.audit, Actor(name, ""), "login_refused", None, "",
                                    "wrong name or password" + ("; locked out" if locked else ""))
            logger.warning("console: a failed login from %s%s", where, " (now locked out)" if locked else "")
            return await login_form(request, "Wrong user name or password.", 401)
        guard.succeeded(name, where)
        await run_in_threadpool(state.audit, Actor(user.name, user.role), "login", None, "", "")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, sessions.create(user), httponly=True, samesite="strict", secure=secure)
        response.delete_cookie(LOGIN_CSRF_COOKIE)
        return response

    async def logout(request: Request) -> Response:
        user, csrf = current(request)
        form = await request.form()
        if user is not None and _csrf_ok(csrf, form.get("csrf")):
            sessions.end(request.cookies.get(SESSION_COOKIE))
            await run_in_threadpool(state.audit, Actor(user.name, user.role), "logout", None, "", "")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    # --- pages -----------------------------------------------------------------------------------------

    @needs_login
    async def jobs_page(request: Request, user: User) -> Response:
        filters = {key: request.query_params.get(key, "") for key in ("state", "route", "verdict")}
        jobs = await run_in_threadpool(state.jobs, 500)
        rows = [_job_row(job) for job in jobs
                if (not filters["state"] or job.state == filters["state"])
                and (not filters["route"] or job.route == filters["route"])
                and (not filters["verdict"] or (job.timings and job.timings.qa_verdict) == filters["verdict"])]
        return page(request, "jobs.html", {"jobs": rows, "filters": filters, "states": [s.value for s in JobState],
                                           "routes": known_routes, "verdicts": ["PASS", "WARN", "FAIL", "ERROR"]})

    @needs_login
    async def job_page(request: Request, user: User, message: str = "", status_code: int = 200) -> Response:
        job = await _job_or_none(state, request.path_params["job_id"])
        if job is None:
            return error(request, 404, "No such job.")
        context = await run_in_threadpool(_job_context, state, job)
        offered = [{"name": name, "label": label, "comment": prompt} for name, label, prompt in
                   _OFFERED.get(job.state, ()) if allowed(user.role, name)]
        return page(request, "job.html", {**context, "actions": offered, "message": message},
                    status_code=status_code)

    @needs_login
    async def report_pdf(request: Request, user: User) -> Response:
        job = await _job_or_none(state, request.path_params["job_id"])
        pdf = _pdf_of(job) if job is not None else None
        if job is None or pdf is None:
            return error(request, 404, "This job has no QA report.")
        return FileResponse(pdf, media_type="application/pdf",
                            headers={"Content-Disposition": f'inline; filename="job-{job.id}-qa-report.pdf"'})

    @needs_login
    async def figures_page(request: Request, user: User) -> Response:
        job = await _job_or_none(state, request.path_params["job_id"])
        if job is None or job.output_dir is None:
            return error(request, 404, "No such job.")
        try:
            pages = await run_in_threadpool(_report_pages, job.output_dir)
        except SctNodeError as failure:
            return error(request, 404, f"The report of job {job.id} cannot be drawn: {failure}")
        return page(request, "figures.html", {"job": job, "pages": [p.name for p in pages]})

    @needs_login
    async def figure(request: Request, user: User) -> Response:
        job = await _job_or_none(state, request.path_params["job_id"])
        name = request.path_params["name"]
        if job is None or job.output_dir is None or not re.fullmatch(r"page-\d{2}\.png", name):
            return error(request, 404, "No such figure.")
        path = job.output_dir / _PAGES_DIR / name
        if not path.is_file():
            return error(request, 404, "No such figure (open the job's report pages first).")
        return FileResponse(path, media_type="image/png")

    async def job_action(request: Request) -> Response:
        user, csrf = current(request)
        if user is None:
            return RedirectResponse("/login", status_code=303)
        job_id, action = request.path_params["job_id"], request.path_params["action"]
        form = await request.form()
        if not _csrf_ok(csrf, form.get("csrf")):
            return error(request, 403, "The form's security token is missing or wrong; open the page again.")
        actor = Actor(user.name, user.role)
        if action not in _COMMENT_REQUIRED | {"retry"}:
            return error(request, 404, "No such action.")
        if not allowed(user.role, action):
            await run_in_threadpool(state.audit, actor, action, job_id, "", f"refused: role {user.role}")
            return error(request, 403, f"A {user.role} may not {action} jobs.")
        comment = str(form.get("comment", "")).strip()
        if action in _COMMENT_REQUIRED and not comment:
            return error(request, 400, f"Say why you {action} the job: a comment is required.")
        try:
            if action == "release":
                await run_in_threadpool(actions.release, state, job_id, actor, comment)
            elif action == "dismiss":
                await run_in_threadpool(actions.dismiss, state, job_id, actor, comment)
            else:
                await run_in_threadpool(actions.retry, state, job_id, actor)
        except SctNodeError as refused:
            return error(request, 409, str(refused))
        logger.info("console: job %d: %s by %s (%s)", job_id, action, user.name, user.role)
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    @needs_login
    async def series_page(request: Request, user: User) -> Response:
        rows = [{"when": _when(s.series.last_received_at), "description": s.series.description or "",
                 "modality": s.series.modality or "", "sender": s.series.calling_ae or "",
                 "instances": s.series.instances, "expected": s.series.expected_instances
                 if (s.series.expected_instances or 0) > 0 else "", "generation": s.series.generation,
                 "state": str(s.state), "job_id": s.job_id}
                for s in await run_in_threadpool(state.series_status, 500)]
        return page(request, "series.html", {"series": rows})

    @needs_login
    async def trends_page(request: Request, user: User) -> Response:
        from sct_node.console.trends import groups_of

        groups = groups_of(await run_in_threadpool(state.jobs, _TREND_JOBS))
        return page(request, "trends.html", {"groups": [{"key": g.key, **g.summary()} for g in groups]})

    @needs_login
    async def trends_png(request: Request, user: User) -> Response:
        from sct_node.console.trends import draw_trends, groups_of

        groups = {g.key: g for g in groups_of(await run_in_threadpool(state.jobs, _TREND_JOBS))}
        group = groups.get(request.query_params.get("group", ""))
        if group is None:
            return error(request, 404, "No QA'd jobs of that route and model.")
        return Response(await run_in_threadpool(draw_trends, group), media_type="image/png")

    @needs_login
    async def node_page(request: Request, user: User) -> Response:
        if node_status is None:
            return error(request, 404, "This console has no node to show.")
        status = await run_in_threadpool(node_status)
        return page(request, "node.html", {"node": status, "started": _when(status["started_at"]),
                                           "free_gb": f"{status['free_mb'] / 1024:.1f}",
                                           "reserve_gb": f"{status['reserve_mb'] / 1024:.1f}"})

    @needs_login
    async def audit_page(request: Request, user: User) -> Response:
        entries = await run_in_threadpool(state.audit_entries, None)
        kind = request.query_params.get("format", "")
        if kind == "json":
            return JSONResponse([_audit_json(e) for e in entries])
        if kind == "csv":
            text = io.StringIO()
            writer = csv.writer(text)
            writer.writerow(["id", "time", "actor", "role", "action", "job", "comment", "outcome"])
            for e in reversed(entries):
                writer.writerow([e.id, _when(e.at), _cell(e.actor), e.role, e.action, e.job_id or "", _cell(e.comment),
                                 _cell(e.outcome)])
            return Response(text.getvalue(), media_type="text/csv",
                            headers={"Content-Disposition": 'attachment; filename="sct-node-audit.csv"'})
        return page(request, "audit.html", {"entries": [_audit_row(e) for e in entries]})

    return Starlette(routes=[
        Route("/metrics", prometheus), Route("/healthz", healthz),
        Route("/login", login, methods=["GET", "POST"]), Route("/logout", logout, methods=["POST"]),
        Route("/", jobs_page), Route("/jobs/{job_id:int}", job_page),
        Route("/jobs/{job_id:int}/report.pdf", report_pdf),
        Route("/jobs/{job_id:int}/figures", figures_page), Route("/jobs/{job_id:int}/figures/{name:str}", figure),
        Route("/jobs/{job_id:int}/{action:str}", job_action, methods=["POST"]),
        Route("/audit", audit_page), Route("/node", node_page),
        Route("/trends", trends_page), Route("/trends.png", trends_png), Route("/series", series_page),
    ])


#: How many of the newest jobs the trends look at.
_TREND_JOBS = 5000
#: Where the console keeps a job's report pages as images (inside the job's folder: they go with it).
_PAGES_DIR = Path("console") / "pages"
_PAGES_LOCK = threading.Lock()


def _report_pages(output_dir: Path) -> list[Path]:
    """The job's report pages as PNG, drawn once from its QA folder (as the PDF is) and kept in the job."""
    from sct_node.report.context import load_qa_folder
    from sct_node.report.pdf import render_report_pages

    folder = output_dir / _PAGES_DIR
    with _PAGES_LOCK:
        pages = sorted(folder.glob("page-*.png"))
        if not pages:
            pages = render_report_pages(load_qa_folder(output_dir / JobFolder.QA).data, folder)
    return pages


def _cell(text: str) -> str:
    """Free text for a CSV cell that a spreadsheet must not run as a formula (a comment starting with =)."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csrf_ok(expected: str, sent: object) -> bool:
    return bool(expected) and isinstance(sent, str) and bool(sent) and secrets.compare_digest(sent, expected)


async def _job_or_none(state: StateStore, job_id: int) -> Job | None:
    try:
        return await run_in_threadpool(state.job, job_id)
    except SctNodeError:
        return None


def _when(epoch: float) -> str:
    return _dt.datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _job_row(job: Job) -> dict[str, Any]:
    t = job.timings
    return {"id": job.id, "created": _when(job.created_at), "route": job.route, "model": job.model,
            "state": job.state.value, "qa": (t.qa_verdict if t else None) or "", "guard": (t.guard_verdict if t else
                                                                                         None) or "",
            "total": f"{t.total_s:.1f} s" if t and t.total_s is not None else "",
            "completed_by": (job.completed_by or "").split(":")[0]}


def _pdf_of(job: Job) -> Path | None:
    if job.output_dir is None:
        return None
    pdf = job.output_dir / JobFolder.REPORT / "sct-qa-report.pdf"
    return pdf if pdf.is_file() else None


def _job_context(state: StateStore, job: Job) -> dict[str, Any]:
    """What a job's page shows, read from the database and the job's folder."""
    from dosimetry.errors import DosimetryError
    from dosimetry.qa_result import read_qa

    qa = None
    guard = None
    patient = None
    if job.output_dir is not None:
        try:
            result = read_qa(job.output_dir / JobFolder.QA, maps=False).result
            qa = {"verdict": result.verdict.value, "reasons": list(result.reasons),
                  "checks": [{"name": c.name, "verdict": c.verdict.value, "value": f"{c.value:.4g} {c.unit}".strip(),
                              "warn": f"{c.pass_limit:g}", "fail": f"{c.fail_limit:g}", "description": c.reason}
                             for c in result.checks]}
        except DosimetryError:
            qa = None
        guard_file = job.output_dir / "guard.json"
        if guard_file.is_file():
            try:
                guard = json.loads(guard_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                guard = None
        patient = _patient(job.output_dir)
    timings = [] if job.timings is None else [
        (name, f"{value:.2f} s" if isinstance(value, float) else str(value))
        for name, value in json.loads(job.timings.to_json()).items()]
    return {"job": job, "created": _when(job.created_at), "qa": qa, "guard": guard, "patient": patient,
            "pdf": _pdf_of(job) is not None,
            "timings": timings, "deliveries": state.deliveries(job.id),
            "delivery_log": [{"when": _when(at), "destination": destination, "outcome": outcome, "detail": detail}
                             for at, destination, outcome, detail in state.delivery_log(job.id)],
            "entries": [_audit_row(e) for e in state.audit_entries(job_id=job.id)]}


def _patient(output_dir: Path) -> dict[str, str] | None:
    """Who the job is for, from its sCT (held back or not): shown only to a logged-in user."""
    for folder in (output_dir / JobFolder.SCT, output_dir / JobFolder.HELD / JobFolder.SCT):
        first = next(iter(sorted(folder.glob("*.dcm"))), None) if folder.is_dir() else None
        if first is None:
            continue
        try:
            header = pydicom.dcmread(first, stop_before_pixels=True)
        except (OSError, pydicom.errors.InvalidDicomError):
            return None
        return {"name": str(header.get("PatientName", "") or ""), "id": str(header.get("PatientID", "") or ""),
                "study_date": str(header.get("StudyDate", "") or ""),
                "series": str(header.get("SeriesDescription", "") or "")}
    return None


def _audit_row(entry: AuditEntry) -> dict[str, Any]:
    return {**_audit_json(entry), "when": _when(entry.at)}


def _audit_json(entry: AuditEntry) -> dict[str, Any]:
    return {"id": entry.id, "time": _dt.datetime.fromtimestamp(entry.at).astimezone().isoformat(timespec="seconds"),
            "actor": entry.actor, "role": entry.role, "action": entry.action, "job_id": entry.job_id,
            "comment": entry.comment, "outcome": entry.outcome}
