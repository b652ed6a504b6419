"""Operating the node: dismissing a job, the cleaner's rules, what `status` shows, closed pipes, JSON logs.

Everything runs against a real database file, the real CLI in a subprocess (as an operator runs it) and,
for the logs, the real node as ``python -m sct_node serve`` fed by dcmtk's storescu. Jobs are driven
through :class:`StateStore`'s transitions (the ones the node's roles make), and the cleaner is called
directly with a ``now`` past the retention, as in test_state.py.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pydicom
import pytest

from sct_node.config import (
    DestinationConfig,
    LoggingConfig,
    NetworkConfig,
    NodeConfig,
    ProcessingConfig,
    RouteConfig,
    SeriesMatch,
    StorageConfig,
)
from sct_node.errors import SctNodeError
from sct_node.node.dispatch import Dispatcher
from sct_node.node.route import route_complete_series
from sct_node.node.service import Node
from sct_node.node.state import JobTimings, StateStore
from tests.sct_node.node_helpers import (
    REPO_ROOT,
    NodeProcess,
    db_rows,
    dcmtk,
    free_port,
    phantom_mr_series,
    run_sct_node,
    storescu,
    wait_for,
    write_toml,
)

RETENTION_H = 1.0
#: A moment when every retention of these tests is over (the transitions stamp the real time).
LATER_S = 2 * 3600.0
EXIT_INPUT, EXIT_USAGE, EXIT_BROKEN_PIPE = 3, 2, 141
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


# --- a node that is not started: its database and spool, driven by the node's own transitions ---------


def _config(spool: Path, destinations: tuple[str, ...] = ()) -> NodeConfig:
    # Destinations are named in the route only for the jobs' delivery rows; nothing is sent in these tests.
    return NodeConfig(
        storage=StorageConfig(spool_dir=spool, done_retention_h=RETENTION_H, unrouted_retention_h=RETENTION_H),
        routes=(RouteConfig(name="r", model="bulk", match=SeriesMatch(min_instances=1), destinations=destinations,
                            qa=False),),
        destinations=tuple(DestinationConfig(name=name, ae_title=name.upper(), host="127.0.0.1", port=free_port())
                           for name in destinations),
    )


def _receive(node: Node, series_uid: str, sop_uid: str, *, modality: str = "MR", age_s: float = 600.0) -> Path:
    """An instance file in the spool, recorded as the receiver records one (received ``age_s`` ago)."""
    path = node.spool.instance_path(series_uid, sop_uid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"DICM")
    node.state.record_instance(sop_instance_uid=sop_uid, series_uid=series_uid, sop_class_uid=MR_IMAGE_STORAGE,
                               path=path, calling_ae="PACS", study_uid="1.2.9", modality=modality,
                               description="T1 pelvis", image_type="ORIGINAL\\PRIMARY", body_part="PELVIS",
                               now=time.time() - age_s)
    return path


def _route(node: Node) -> int:
    """Route the quiet series; returns the one new job's ID."""
    (job_id,) = route_complete_series(node.state, node.config)
    return job_id


def _process(node: Node, job_id: int) -> Path:
    """Claim the job as a processor would, and leave an output file; returns it."""
    claimed = node.state.claim_job()
    assert claimed is not None and claimed.id == job_id, f"expected to claim job {job_id}, claimed {claimed}"
    output = claimed.output_dir / "sct" / f"CT.{job_id}.dcm"
    output.parent.mkdir(parents=True)
    output.write_bytes(b"sCT")
    return output


def _finish(node: Node, job_id: int, state: str) -> None:
    """Take a claimed job to ``done``, ``held`` or ``failed`` (no destinations)."""
    if state == "failed":
        node.state.job_failed(job_id, "model error: the image has 1 slice, the model needs 3")
    else:
        node.state.job_processed(job_id, (), JobTimings(), hold_reason="QA FAIL: gamma pass rate 81%" if state == "held"
                                 else None)
    assert node.state.job(job_id).state == state


def _job_with_outputs(node: Node, series_uid: str, sop_uid: str, state: str) -> tuple[int, Path, Path]:
    """A series generation received, routed, processed and finished in ``state``: (job ID, input, output)."""
    instance = _receive(node, series_uid, sop_uid)
    job_id = _route(node)
    output = _process(node, job_id)
    _finish(node, job_id, state)
    return job_id, instance, output


@pytest.fixture
def node(tmp_path) -> Node:
    node = Node(_config(tmp_path / "spool"))  # not started: nothing runs behind the test's back
    yield node
    node.state.close()


def _series_states(node: Node, series_uid: str) -> list[str]:
    return [s.state for s in node.state.series(limit=1000) if s.series_uid == series_uid]


# --- 1. dismiss --------------------------------------------------------------------------------------


def test_dismiss_keeps_the_job_reason_and_comment_and_cancels_pending_deliveries(tmp_path):
    node = Node(_config(tmp_path / "spool", destinations=("tps", "archive")))
    try:
        _receive(node, "1.2.3", "1.2.3.1")
        job_id = _route(node)
        _process(node, job_id)
        node.state.job_processed(job_id, ("tps", "archive"), JobTimings())
        # tps runs out of attempts while archive still waits for its next one: the job fails.
        node.state.delivery_failed(job_id, "archive", "association rejected", time.time() + 3600)
        node.state.delivery_failed(job_id, "tps", "association rejected", None)
        failed = node.state.job(job_id)
        assert failed.state == "failed" and failed.reason == "delivery to tps failed: association rejected"

        dismissed = node.state.dismiss_job(job_id, "  sCT made by hand in the TPS instead  ")

        assert (dismissed.state, dismissed.reason) == ("dismissed", failed.reason)
        assert dismissed.dismissed_comment == "sCT made by hand in the TPS instead"
        assert dismissed.dismissed_at is not None and abs(dismissed.dismissed_at - time.time()) < 60
        assert {d.destination: d.state for d in node.state.deliveries(job_id)} == {"tps": "failed",
                                                                                    "archive": "cancelled"}
        assert node.state.due_deliveries(now=time.time() + 10 * 3600) == []
        assert Dispatcher(node.state, {}, node.config.dispatch, "SCT_NODE").run_due() == 0
        # An attempt that was under way when the job was dismissed changes neither the job nor the cancellation.
        node.state.delivery_failed(job_id, "archive", "connection reset", None)
        assert node.state.job(job_id).state == "dismissed"
        assert {d.destination: d.state for d in node.state.deliveries(job_id)}["archive"] == "cancelled"
        with pytest.raises(SctNodeError, match=f"job {job_id} is dismissed, not failed"):
            node.state.retry_job(job_id)
        with pytest.raises(SctNodeError, match=f"job {job_id} is dismissed, not held"):
            node.state.release_job(job_id)
        with pytest.raises(SctNodeError, match=f"job {job_id} is dismissed; only failed or held jobs can be dismissed"):
            node.state.dismiss_job(job_id, "again")
    finally:
        node.state.close()


def test_dismiss_takes_failed_and_held_jobs_and_refuses_every_other(node):
    held, _, _ = _job_with_outputs(node, "1.2.3", "1.2.3.1", "held")
    done, _, _ = _job_with_outputs(node, "1.2.4", "1.2.4.1", "done")
    _receive(node, "1.2.5", "1.2.5.1")
    running = _route(node)
    node.state.claim_job()

    assert node.state.dismiss_job(held, "QA FAIL confirmed: MR has a metal artefact").state == "dismissed"
    for job_id, state in ((done, "done"), (running, "processing")):
        with pytest.raises(SctNodeError, match=f"job {job_id} is {state}; only failed or held jobs can be dismissed"):
            node.state.dismiss_job(job_id, "a comment")
        assert node.state.job(job_id).state == state
    with pytest.raises(SctNodeError, match="no job 99 in .*state.sqlite3"):
        node.state.dismiss_job(99, "a comment")
    node.state.job_failed(running, "model error")
    with pytest.raises(SctNodeError, match=f"job {running}: a comment saying why it is dismissed is required"):
        node.state.dismiss_job(running, " \t ")
    assert node.state.job(running).state == "failed"


def test_a_delivery_that_ends_after_the_dismissal_does_not_finish_the_job(tmp_path):
    node = Node(_config(tmp_path / "spool", destinations=("tps",)))
    try:
        _receive(node, "1.2.3", "1.2.3.1")
        job_id = _route(node)
        _process(node, job_id)
        node.state.job_processed(job_id, ("tps",), JobTimings())
        node.state.job_failed(job_id, "outputs unreadable")  # failed while its one delivery was still pending
        node.state.dismiss_job(job_id, "made again by hand")

        node.state.delivery_succeeded(job_id, "tps")  # the attempt the dispatcher had started meanwhile

        assert node.state.job(job_id).state == "dismissed"
    finally:
        node.state.close()


def test_a_database_made_before_dismissals_existed_gets_the_columns(tmp_path):
    """The first release's jobs table had neither ``held`` nor the dismissal columns."""
    path = tmp_path / "state.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, series_uid TEXT NOT NULL, "
                   "generation INTEGER NOT NULL, route TEXT NOT NULL, model TEXT NOT NULL, state TEXT NOT NULL, "
                   "reason TEXT, output_dir TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL, timings TEXT, "
                   "UNIQUE (series_uid, generation, route))")
        db.execute("INSERT INTO jobs VALUES (1, '1.2.3', 1, 'r', 'bulk', 'failed', 'model error', '/spool/outputs/"
                   "job-1', 1000.0, 1000.0, NULL)")
    db.close()
    state = StateStore(path)
    try:
        assert {row[1] for row in db_rows(tmp_path, "PRAGMA table_info(jobs)")} >= {
            "held", "dismissed_comment", "dismissed_at"}
        job = state.dismiss_job(1, "series re-sent under a new UID")
        assert (job.state, job.reason, job.output_dir, job.held) == ("dismissed", "model error",
                                                                     Path("/spool/outputs/job-1"), None)
        assert job.dismissed_comment == "series re-sent under a new UID"
    finally:
        state.close()


@pytest.mark.slow
def test_dismiss_command_says_what_it_did_and_refuses_with_exit_codes(tmp_path):
    config = _config(tmp_path / "spool", destinations=("tps",))
    config_path = write_toml(config, tmp_path / "node.toml")
    node = Node(config)
    try:
        _receive(node, "1.2.3", "1.2.3.1")
        failed = _route(node)
        _process(node, failed)
        node.state.job_processed(failed, ("tps",), JobTimings())
        node.state.job_failed(failed, "delivery to tps failed: association rejected")  # its delivery still pending
        done, _, _ = _job_with_outputs(node, "1.2.4", "1.2.4.1", "done")
    finally:
        node.state.close()
    spool = config.storage.spool_dir

    missing = run_sct_node("dismiss", str(failed), "--config", str(config_path))
    assert missing.returncode == EXIT_USAGE and "the following arguments are required: --comment" in missing.stderr
    blank = run_sct_node("dismiss", str(failed), "--comment", "  ", "--config", str(config_path))
    assert blank.returncode == EXIT_USAGE and "expected a comment saying why; found '  '" in blank.stderr
    unknown = run_sct_node("dismiss", "99", "--comment", "typo", "--config", str(config_path))
    assert unknown.returncode == EXIT_INPUT
    assert unknown.stderr.startswith("sct-node: error: no job 99 in ") and len(unknown.stderr.splitlines()) == 1
    finished = run_sct_node("dismiss", str(done), "--comment", "not needed", "--config", str(config_path))
    assert finished.returncode == EXIT_INPUT, finished.stderr
    assert finished.stderr.strip() == f"sct-node: error: job {done} is done; only failed or held jobs can be dismissed"
    assert db_rows(spool, "SELECT state FROM jobs WHERE id = ?", (done,)) == [("done",)]

    dismissed = run_sct_node("dismiss", str(failed), "--comment", "patient moved to another centre",
                             "--config", str(config_path))

    assert dismissed.returncode == 0, dismissed.stderr
    assert dismissed.stdout.startswith(f"job {failed}: dismissed (1 pending delivery cancelled;"), dismissed.stdout
    assert db_rows(spool, "SELECT state, reason, dismissed_comment FROM jobs WHERE id = ?", (failed,)) == [
        ("dismissed", "delivery to tps failed: association rejected", "patient moved to another centre")]
    assert db_rows(spool, "SELECT destination, state FROM deliveries WHERE job_id = ?", (failed,)) == [
        ("tps", "cancelled")]
    again = run_sct_node("retry", str(failed), "--config", str(config_path))
    assert again.returncode == EXIT_INPUT
    assert again.stderr.strip() == (f"sct-node: error: job {failed} is dismissed, not failed; only failed jobs can "
                                    "be retried")
    status = run_sct_node("status", "--config", str(config_path))
    assert status.returncode == 0, status.stderr
    line = next(x for x in status.stdout.splitlines() if x.split()[:1] == [str(failed)])
    assert "dismissed" in line.split() and "dismissed: patient moved to another centre" in line, line


# --- 2. the cleaner ----------------------------------------------------------------------------------


@pytest.mark.parametrize("earlier", ["failed", "held"])
def test_a_waiting_job_superseded_by_a_later_done_generation_is_cleaned_with_its_series(node, earlier):
    old_job, old_input, old_output = _job_with_outputs(node, "1.2.3", "1.2.3.1", earlier)
    late_input = _receive(node, "1.2.3", "1.2.3.2", age_s=300)  # a late instance: generation 2
    new_job = _route(node)
    new_output = _process(node, new_job)

    # Generation 2 is still processing: it may fail, so generation 1 is not superseded yet.
    assert node.clean(now=time.time() + LATER_S) == 0
    assert all(p.exists() for p in (old_input, late_input, old_output, new_output))

    _finish(node, new_job, "done")
    assert node.clean(now=time.time()) == 0, "removed before the retention was over"
    assert all(p.exists() for p in (old_input, late_input, old_output, new_output))

    assert node.clean(now=time.time() + LATER_S) == 1

    assert not any(p.exists() for p in (old_input, late_input, old_output, new_output))
    assert not node.spool.series_dir("1.2.3").exists()
    assert _series_states(node, "1.2.3") == ["purged", "purged"]
    assert (node.state.job(old_job).state, node.state.job(new_job).state) == (earlier, "done")  # history kept
    assert node.state.instance_count() == 0


def test_a_failed_job_nothing_supersedes_keeps_its_series_until_the_newest_job_is_dismissed(node):
    first, first_input, first_output = _job_with_outputs(node, "1.2.3", "1.2.3.1", "failed")
    _receive(node, "1.2.3", "1.2.3.2", age_s=300)
    second = _route(node)
    second_output = _process(node, second)
    _finish(node, second, "failed")
    # Another series: failed, then a late instance that matches no route (a CT): nothing supersedes the job.
    lone, lone_input, lone_output = _job_with_outputs(node, "1.2.4", "1.2.4.1", "failed")
    _receive(node, "1.2.4", "1.2.4.2", modality="CT", age_s=300)
    assert route_complete_series(node.state, node.config) == []

    assert node.clean(now=time.time() + LATER_S) == 0

    assert all(p.exists() for p in (first_input, first_output, second_output, lone_input, lone_output))
    assert _series_states(node, "1.2.4") == ["unrouted", "queued"]
    # Dismissing the newest job is enough: the earlier failed job is superseded by a dismissed one.
    node.state.dismiss_job(second, "the re-send was a mistake; the MR is repeated tomorrow")
    assert node.clean(now=time.time() + LATER_S) == 1
    assert not any(p.exists() for p in (first_input, first_output, second_output))
    assert all(p.exists() for p in (lone_input, lone_output))
    assert node.state.job(first).state == "failed" and node.state.job(lone).state == "failed"


def test_a_dismissed_series_and_its_outputs_go_after_the_retention_counted_from_the_dismissal(node):
    job_id, instance, output = _job_with_outputs(node, "1.2.3", "1.2.3.1", "failed")
    assert node.clean(now=time.time() + LATER_S) == 0 and instance.exists() and output.exists()
    node.state.dismiss_job(job_id, "wrong sequence sent")

    assert node.clean(now=time.time()) == 0 and instance.exists() and output.exists()
    assert node.clean(now=time.time() + LATER_S) == 1

    assert not instance.exists() and not output.exists() and not output.parent.parent.exists()
    assert _series_states(node, "1.2.3") == ["purged"]
    job = node.state.job(job_id)
    assert (job.state, job.dismissed_comment) == ("dismissed", "wrong sequence sent")


def test_outputs_of_a_superseded_job_go_while_the_series_waits_for_a_held_generation(node):
    _, first_input, first_output = _job_with_outputs(node, "1.2.3", "1.2.3.1", "failed")
    _receive(node, "1.2.3", "1.2.3.2", age_s=300)
    held = _route(node)
    held_output = _process(node, held)
    _finish(node, held, "held")

    assert node.clean(now=time.time() + LATER_S) == 0

    assert not first_output.exists(), "the superseded job's outputs outlived the retention"
    assert first_input.exists() and held_output.exists(), "the held generation still needs the series and its sCT"
    assert _series_states(node, "1.2.3") == ["queued", "queued"]


# --- 3. status ---------------------------------------------------------------------------------------


def test_status_names_each_series_by_what_happened_to_it(tmp_path):
    config = _config(tmp_path / "spool")
    config_path = write_toml(config, tmp_path / "node.toml")
    node = Node(config)
    expected: dict[str, tuple[str, str, int | None, str | None]] = {}  # UID: state, series_state, job, job state
    try:
        for index, state in enumerate(("done", "failed", "held"), start=1):
            uid = f"1.2.{index}"
            job_id, _, _ = _job_with_outputs(node, uid, f"{uid}.1", state)
            expected[uid] = (state, "queued", job_id, state)
        dismissed, _, _ = _job_with_outputs(node, "1.2.4", "1.2.4.1", "failed")
        node.state.dismiss_job(dismissed, "repeated")
        expected["1.2.4"] = ("dismissed", "queued", dismissed, "dismissed")
        _receive(node, "1.2.5", "1.2.5.1")
        processing = _route(node)
        node.state.claim_job()
        expected["1.2.5"] = ("processing", "queued", processing, "processing")
        _receive(node, "1.2.6", "1.2.6.1", modality="CT")
        assert route_complete_series(node.state, config) == []
        expected["1.2.6"] = ("unrouted", "unrouted", None, None)
        purged, _, _ = _job_with_outputs(node, "1.2.7", "1.2.7.1", "done")
        node.state.purge_series("1.2.7")
        expected["1.2.7"] = ("purged", "purged", purged, "done")
        _receive(node, "1.2.8", "1.2.8.1", age_s=0)
        expected["1.2.8"] = ("receiving", "receiving", None, None)
    finally:
        node.state.close()

    text = run_sct_node("status", "--config", str(config_path))
    as_json = run_sct_node("status", "--json", "--config", str(config_path))

    assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
    series_table = text.stdout.split("\nJOBS")[0].splitlines()[2:]
    shown = {line.split()[-1]: line.split()[2] for line in series_table}  # UID: the state column
    assert shown == {uid: values[0] for uid, values in expected.items()}, text.stdout
    assert "queued" not in text.stdout
    entries = {s["series_uid"]: (s["state"], s["series_state"], s["job_id"], s["job_state"])
               for s in json.loads(as_json.stdout)["series"]}
    assert entries == expected


# --- 4. a closed pipe --------------------------------------------------------------------------------


def test_status_into_a_pipe_closed_early_exits_quietly(tmp_path):
    config = _config(tmp_path / "spool")
    config_path = write_toml(config, tmp_path / "node.toml")
    node = Node(config)
    try:  # enough failed jobs with long reasons that the output is several times a pipe's 64 KiB buffer
        for index in range(150):
            _receive(node, f"1.2.{index + 1}", f"1.2.{index + 1}.1")
            job_id = _route(node)
            node.state.claim_job()
            node.state.job_failed(job_id, f"model error {index}: " + "the image is not what the model expects " * 50)
    finally:
        node.state.close()
    command = [sys.executable, "-m", "sct_node", "status", "--limit", "1000", "--config", str(config_path)]
    whole = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, timeout=60, check=False)
    assert whole.returncode == 0 and len(whole.stdout) > 4 * 65536, (whole.returncode, len(whole.stdout))

    reader = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert reader.stdout.readline() == b"SERIES\n"
        reader.stdout.close()  # as `| head -1` does after its line
        returncode = reader.wait(timeout=60)
        stderr = reader.stderr.read().decode()
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
        reader.stderr.close()

    assert stderr == ""
    assert returncode == EXIT_BROKEN_PIPE


# --- 5. JSON logs ------------------------------------------------------------------------------------


def test_warnings_and_uncaught_thread_exceptions_are_json_lines():
    """A process set up for JSON logs: a warning, a thread that dies, and a bad log call each give one JSON line."""
    program = (
        "import logging, threading, warnings\n"
        "from sct_node.logs import configure_logging\n"
        "configure_logging('INFO', json_lines=True)\n"
        "warnings.warn('the value length (70) exceeds the maximum length of 64 allowed for VR LO')\n"
        "thread = threading.Thread(target=lambda: 1 / 0, name='doomed')\n"
        "thread.start(); thread.join()\n"
        "logging.getLogger('sct_node.test').info('job %d of %d', 1)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    entries = [_json_line(line) for line in result.stderr.splitlines()]
    assert [(e["logger"], e["level"]) for e in entries] == [
        ("py.warnings", "WARNING"), ("sct_node", "ERROR"), ("sct_node.test", "INFO")], result.stderr
    assert "exceeds the maximum length of 64" in entries[0]["message"]
    assert entries[1]["message"] == "uncaught exception in thread doomed"
    assert "ZeroDivisionError" in entries[1]["exception"]
    assert entries[2]["message"].startswith("job %d of %d (log arguments could not be formatted")


@pytest.mark.slow
def test_serve_with_json_lines_writes_nothing_but_json_to_stderr(tmp_path):
    """The real node receives a series whose Series Description pydicom warns about; every line is JSON."""
    if dcmtk("storescu") is None:
        pytest.skip("dcmtk's storescu is not on PATH (apt-get install dcmtk)")
    mr = phantom_mr_series(tmp_path / "scanner")
    long_description = "T1 pelvis " + "x" * 60  # 70 characters; LO allows 64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns here too, in the test's own process
        for path in mr.files:
            dataset = pydicom.dcmread(path)
            dataset.SeriesDescription = long_description
            dataset.save_as(path)
    config = NodeConfig(
        network=NetworkConfig(port=free_port()),
        storage=StorageConfig(spool_dir=tmp_path / "spool", min_free_space_mb=0),
        processing=ProcessingConfig(quiet_period_s=0.5, poll_interval_s=0.1),
        logging=LoggingConfig(level="INFO", json_lines=True),
        routes=(RouteConfig(name="mr-to-sct", model="bulk", qa=False),),
    )
    config_path = write_toml(config, tmp_path / "node.toml")
    node = NodeProcess(config_path, config.network.port, tmp_path / "node.log")
    try:
        sent = storescu(node.port, [mr.folder])
        assert sent.returncode == 0 and len(sent.stored()) == len(mr.files), sent.output
        wait_for(lambda: db_rows(config.storage.spool_dir, "SELECT state FROM jobs") == [("done",)], 60,
                 "the job to be done")
        status = run_sct_node("status", "--json", "--config", str(config_path))
        assert status.returncode == 0, status.stderr
        assert [(s["state"], s["job_state"]) for s in json.loads(status.stdout)["series"]] == [("done", "done")]
    finally:
        node.stop()
    assert node.process.returncode == 0, node.log()

    entries = [_json_line(line) for line in node.log().splitlines()]

    # pydicom's warn_and_log logs (logger pydicom) and warns (warnings.warn) together, so a record proves that the
    # warning was raised in the node; uncaptured, it would have been a plain-text line on stderr. (Raised while
    # receiving, it is about the peer's data and the node keeps it at DEBUG; see sct_node.node.netguard.)
    assert any("exceeds the maximum length of 64 allowed for VR LO" in e["message"] for e in entries), \
        "pydicom never warned about the Series Description: the test shows nothing"
    assert any(e["message"] == "signal 15: shutting down" for e in entries), "the log was not read to its end"


def test_an_error_after_json_logs_are_set_up_is_a_json_line(tmp_path):
    """``serve`` whose spool cannot be made (a file is in the way): the command's error is a JSON record too."""
    in_the_way = tmp_path / "spool"
    in_the_way.write_text("not a folder")
    config = NodeConfig(network=NetworkConfig(port=free_port()), storage=StorageConfig(spool_dir=in_the_way),
                        logging=LoggingConfig(json_lines=True))
    result = run_sct_node("serve", "--config", str(write_toml(config, tmp_path / "node.toml")))

    assert result.returncode != 0 and result.stdout == ""
    entries = [_json_line(line) for line in result.stderr.splitlines()]
    errors = [e for e in entries if e["level"] == "ERROR" and e["message"].startswith("sct-node: error: ")]
    assert len(errors) == 1, result.stderr
    assert str(in_the_way) in errors[0]["message"]


def _json_line(line: str) -> dict:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        raise AssertionError(f"expected every line to be a JSON object; found {line!r}") from None
    assert isinstance(entry, dict), f"expected a JSON object; found {line!r}"
    return entry


def test_retry_of_a_job_superseded_by_a_later_generation_is_refused(node):
    """Its sCT carries the same UIDs as the later one: re-delivering it would replace newer with older."""
    old_job, _, _ = _job_with_outputs(node, "1.2.5", "1.2.5.1", "failed")
    _receive(node, "1.2.5", "1.2.5.2", age_s=300)
    new_job = _route(node)
    _process(node, new_job)
    _finish(node, new_job, "done")
    with pytest.raises(SctNodeError, match=f"superseded by job {new_job}"):
        node.state.retry_job(old_job)
    assert node.state.job(old_job).state == "failed"
