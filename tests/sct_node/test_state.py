"""The job state machine, routing rules and the cleaner, without the network.

Every test that takes ``state_location`` runs twice: on a SQLite file and on a real PostgreSQL server
started by the tests (tests/sct_node/conftest.py), so both backends pass the same state-machine tests.
The migration tests are SQLite's alone (databases made by earlier releases are SQLite files).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sct_node.config import ClusterConfig, NodeConfig, RouteConfig, SeriesMatch, StorageConfig
from sct_node.errors import SctNodeError
from sct_node.node.route import matching_route, route_complete_series
from sct_node.node.service import Node
from sct_node.node.state import JobTimings, StateStore, database_errors


def _receive(state: StateStore, uid: str, series: str = "1.2.3", now: float = 1000.0, description: str = "T2 pelvis",
             path: Path | None = None) -> bool:
    return state.record_instance(sop_instance_uid=uid, series_uid=series, sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                                 path=path or Path(f"/nowhere/{uid}.dcm"), calling_ae="PACS", study_uid="9",
                                 modality="MR", description=description, image_type="ORIGINAL\\PRIMARY",
                                 body_part="PELVIS", now=now)


def _cluster(state_location: Path | str) -> ClusterConfig:
    """The node's [cluster] for a state location: its PostgreSQL URL, or none for the spool's SQLite file."""
    return ClusterConfig(database_url=state_location if isinstance(state_location, str) else None)


def _raw_execute(state_location: Path | str, sql: str) -> None:
    """Run one statement on the database directly, as its owner would without the node's code."""
    if isinstance(state_location, str):
        import psycopg

        with psycopg.connect(state_location, autocommit=True) as db:
            db.execute(sql)
    else:
        import sqlite3

        with sqlite3.connect(state_location) as db:
            db.execute(sql)


def test_duplicates_are_idempotent_and_late_instances_open_a_new_generation(tmp_path, state_location):
    state = StateStore(state_location)
    assert _receive(state, "1.1", now=1000) and _receive(state, "1.2", now=1001)
    assert not _receive(state, "1.1", now=1002)  # duplicate
    assert state.instance_count() == 2
    assert state.quiet_series(60, now=1050) == []
    (series,) = state.quiet_series(60, now=1062)
    assert (series.generation, series.instances) == (1, 2)
    job_id = state.create_job(series, "r", "bulk", tmp_path / "out")
    assert job_id == 1 and state.job(1).state == "complete"
    assert state.create_job(series, "r", "bulk", tmp_path / "out") is None  # already queued
    assert _receive(state, "1.3", now=1100)  # late instance
    (late,) = state.quiet_series(60, now=1200)
    assert late.generation == 2 and late.instances == 1
    assert [i.sop_instance_uid for i in state.series_instances("1.2.3", 2)] == ["1.1", "1.2", "1.3"]
    assert [i.sop_instance_uid for i in state.series_instances("1.2.3", 1)] == ["1.1", "1.2"]


def test_job_lifecycle_recovery_and_retry(tmp_path, state_location):
    state = StateStore(state_location)
    _receive(state, "1.1", now=1000)
    (series,) = state.quiet_series(1, now=2000)
    job_id = state.create_job(series, "r", "bulk", tmp_path / "out")
    assert state.claim_job().id == job_id and state.claim_job() is None
    assert state.recover() == 1 and state.job(job_id).state == "complete"  # crash while processing
    state.claim_job()
    state.job_processed(job_id, ("tps",), JobTimings())
    assert state.job(job_id).state == "delivering"
    (_delivery,) = state.due_deliveries()
    state.delivery_failed(job_id, "tps", "association rejected", time.time() + 3600)
    assert state.due_deliveries() == [] and state.deliveries(job_id)[0].attempts == 1
    state.delivery_failed(job_id, "tps", "association rejected", None)
    assert state.job(job_id).state == "failed" and "tps" in state.job(job_id).reason
    with pytest.raises(SctNodeError, match="no job 99"):
        state.retry_job(99)
    assert state.retry_job(job_id) == "delivering"
    with pytest.raises(SctNodeError, match="not failed"):
        state.retry_job(job_id)
    state.delivery_succeeded(job_id, "tps")
    assert state.job(job_id).state == "done"


def test_first_matching_route_wins_and_criteria_are_anded(tmp_path, state_location):
    state = StateStore(state_location)
    _receive(state, "1.1", description="T1 head")
    _receive(state, "1.2", description="T1 head")
    (series,) = state.quiet_series(1, now=5000)
    t2_only = RouteConfig(name="t2", match=SeriesMatch(series_description="(?i)t2", min_instances=1))
    any_mr = RouteConfig(name="any", match=SeriesMatch(min_instances=1))
    ct_only = RouteConfig(name="ct", match=SeriesMatch(modality=("CT",), min_instances=1))
    wrong_caller = RouteConfig(name="caller", match=SeriesMatch(calling_ae="^OTHER$", min_instances=1))
    too_few = RouteConfig(name="few", match=SeriesMatch(min_instances=3))
    assert matching_route(series, (t2_only, ct_only, wrong_caller, too_few, any_mr)).name == "any"
    assert matching_route(series, (t2_only, ct_only)) is None


def test_unrouted_series_are_kept_then_cleaned_after_retention(tmp_path, state_location):
    spool = tmp_path / "spool"
    config = NodeConfig(storage=StorageConfig(spool_dir=spool, unrouted_retention_h=1.0),
                        routes=(RouteConfig(name="ct", match=SeriesMatch(modality=("CT",))),),
                        cluster=_cluster(state_location))
    node = Node(config)  # not started: the cleaner is called directly
    instance = spool / "instances" / "1.2.3" / "1.1.dcm"
    instance.parent.mkdir(parents=True)
    instance.write_bytes(b"x")
    _receive(node.state, "1.1", path=instance, now=time.time() - 7200)
    assert route_complete_series(node.state, config) == []
    assert node.state.series()[0].state == "unrouted"
    assert node.clean(now=time.time()) == 0 and instance.exists()  # kept: unrouted only just now
    assert node.clean(now=time.time() + 2 * 3600) == 1
    assert not instance.exists() and node.state.instance_count() == 0
    node.state.close()


def test_inputs_and_outputs_are_removed_only_after_delivery_and_retention(tmp_path, state_location):
    spool = tmp_path / "spool"
    config = NodeConfig(storage=StorageConfig(spool_dir=spool, done_retention_h=1.0),
                        routes=(RouteConfig(name="r", match=SeriesMatch(min_instances=1)),),
                        cluster=_cluster(state_location))
    node = Node(config)
    instance = spool / "instances" / "1.2.3" / "1.1.dcm"
    instance.parent.mkdir(parents=True)
    instance.write_bytes(b"x")
    _receive(node.state, "1.1", path=instance, now=time.time() - 600)
    (job_id,) = route_complete_series(node.state, config)
    job = node.state.claim_job()
    output = job.output_dir / "sct" / "CT.1.dcm"
    output.parent.mkdir(parents=True)
    output.write_bytes(b"y")
    node.state.job_processed(job_id, ("tps",), JobTimings())
    later = time.time() + 2 * 3600
    assert node.clean(now=later) == 0 and instance.exists() and output.exists()  # still delivering
    node.state.delivery_succeeded(job_id, "tps")
    assert node.clean(now=time.time()) == 0 and instance.exists() and output.exists()  # retention not over
    assert node.clean(now=later) == 1
    assert not instance.exists() and not output.exists()
    node.state.close()


def test_images_sent_ahead_are_kept_per_destination_and_retry_sends_everything(tmp_path, state_location):
    state = StateStore(state_location)
    _receive(state, "1.1", now=1000)
    (series,) = state.quiet_series(1, now=2000)
    job_id = state.create_job(series, "r", "bulk", tmp_path / "out")
    state.claim_job()
    state.job_processed(job_id, ("tps", "archive"), JobTimings(), images_sent=("tps",))
    sent = {d.destination: d.images_sent for d in state.due_deliveries()}
    assert sent == {"tps": True, "archive": False}
    assert {d.destination: d.images_sent for d in state.deliveries(job_id)} == sent
    state.delivery_succeeded(job_id, "archive")
    state.delivery_failed(job_id, "tps", "association rejected", None)
    assert state.job(job_id).state == "failed"
    # A person retrying after a failure wants everything sent again, the images sent ahead too.
    assert state.retry_job(job_id) == "delivering"
    (again,) = state.due_deliveries()
    assert (again.destination, again.images_sent) == ("tps", False)


def test_a_database_from_before_sending_ahead_is_migrated(tmp_path):
    import sqlite3

    path = tmp_path / "db.sqlite3"
    StateStore(path).close()
    with sqlite3.connect(path) as db:  # the deliveries table as the node before sending ahead made it
        db.execute("DROP TABLE deliveries")
        db.execute("CREATE TABLE deliveries (job_id INTEGER NOT NULL, destination TEXT NOT NULL, state TEXT NOT NULL, "
                   "attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL, last_error TEXT, "
                   "updated_at REAL NOT NULL, PRIMARY KEY (job_id, destination))")
        db.execute("INSERT INTO deliveries VALUES (7, 'tps', 'pending', 0, 0, NULL, 0)")
    state = StateStore(path)
    (old,) = state.deliveries(7)
    assert (old.destination, old.images_sent) == ("tps", False)
    _receive(state, "1.1", now=1000)
    (series,) = state.quiet_series(1, now=2000)
    job_id = state.create_job(series, "r", "bulk", tmp_path / "out")
    state.claim_job()
    state.job_processed(job_id, ("tps",), JobTimings(), images_sent=("tps",))
    assert state.deliveries(job_id)[0].images_sent


def test_actions_on_jobs_are_audited_in_the_same_transaction_and_the_trail_is_append_only(tmp_path, state_location):
    from sct_node.node.actions import dismiss, release, retry
    from sct_node.node.state import Actor

    state = StateStore(state_location)
    physicist = Actor("alice", "physicist")
    for n in range(3):
        _receive(state, f"1.{n}", series=f"9.{n}", now=1000)
    ids = [state.create_job(series, "r", "bulk", tmp_path / f"out{i}")
           for i, series in enumerate(state.quiet_series(1, now=2000))]
    for _ in ids:
        state.claim_job()
    state.job_processed(ids[0], (), JobTimings(), hold_reason="QA FAIL, held")
    state.job_failed(ids[1], "delivery to tps failed")
    state.job_failed(ids[2], "model error")
    assert release(state, ids[0], physicist, " reviewed: FAIL is the rectal gas, dose fine ")[0] == "done"
    assert retry(state, ids[1], Actor("cli:bob", "cli")) == "complete"
    assert dismiss(state, ids[2], physicist, "re-acquired as series 7").state == "dismissed"
    with pytest.raises(SctNodeError, match="not held"):
        release(state, ids[2], physicist, "again")  # a refused action changes nothing and leaves no entry
    entries = state.audit_entries()
    assert [(e.action, e.job_id, e.actor, e.role, e.outcome) for e in entries] == [
        ("dismiss", ids[2], "alice", "physicist", "dismissed"),
        ("retry", ids[1], "cli:bob", "cli", "complete"),
        ("release", ids[0], "alice", "physicist", "done")]
    assert entries[2].comment == "reviewed: FAIL is the rectal gas, dose fine"
    assert [e.action for e in state.audit_entries(job_id=ids[0])] == ["release"]
    # Not even the database's owner rewrites history, connected without the node's code.
    for sql in ("UPDATE audit SET comment = 'nothing to see'", "DELETE FROM audit", "TRUNCATE audit"):
        if state.dialect == "sqlite" and sql.startswith("TRUNCATE"):
            continue  # SQLite has no TRUNCATE (its DELETE without WHERE is refused above)
        with pytest.raises(database_errors(), match="append-only"):
            _raw_execute(state_location, sql)
    assert len(state.audit_entries()) == 3


# --- claims and idempotency: several workers and dispatchers on one database ---------------------------------


def _queued_jobs(state: StateStore, count: int, out: Path) -> list[int]:
    for n in range(count):
        _receive(state, f"1.{n}", series=f"9.{n}", now=1000)
    ids = [state.create_job(series, "r", "bulk", out) for series in state.quiet_series(1, now=2000)]
    assert None not in ids and len(ids) == count
    return [job_id for job_id in ids if job_id is not None]


def _race(workers: list[StateStore], take: Callable[[StateStore], int | None]) -> list[list[int]]:
    """Each store in its own thread calls ``take(store)`` until it returns None; what each one took."""
    start = threading.Barrier(len(workers))
    taken: list[list[int]] = [[] for _ in workers]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            start.wait(timeout=30)
            while (job_id := take(workers[k])) is not None:
                taken[k].append(job_id)
        except BaseException as error:  # noqa: BLE001  a failure in a thread must fail the test
            errors.append(error)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return taken


def test_two_workers_racing_for_jobs_never_claim_the_same_one(tmp_path, state_location):
    """Two StateStores (two worker processes' connections) claim 40 jobs at once: each job exactly once."""
    setup = StateStore(state_location)
    ids = _queued_jobs(setup, 40, tmp_path / "out")
    workers = [StateStore(state_location), StateStore(state_location)]

    def take(store: StateStore) -> int | None:
        job = store.claim_job()
        return None if job is None else job.id

    first, second = _race(workers, take)
    assert sorted(first + second) == ids  # every job claimed, none twice
    assert not set(first) & set(second)
    assert all(setup.job(job_id).claims == 1 for job_id in ids)
    for store in (*workers, setup):
        store.close()


def test_two_cluster_workers_given_the_same_messages_claim_each_job_once(tmp_path, state_location):
    """Every job's message delivered to both workers at once (a redelivery race): one claim per job."""
    setup = StateStore(state_location)
    ids = _queued_jobs(setup, 30, tmp_path / "out")
    workers = [StateStore(state_location), StateStore(state_location)]
    claimed: list[list[int]] = [[], []]
    start = threading.Barrier(2)

    def work(k: int) -> None:
        start.wait(timeout=30)
        for job_id in ids:
            if workers[k].claim_job_by_id(job_id, f"worker-{k}", lease_s=600) is not None:
                claimed[k].append(job_id)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(claimed[0] + claimed[1]) == ids and not set(claimed[0]) & set(claimed[1])
    assert {setup.job(job_id).claimed_by for job_id in claimed[0]} <= {"worker-0"}
    for store in (*workers, setup):
        store.close()


def test_a_redelivered_job_never_delivers_twice(tmp_path, state_location):
    state = StateStore(state_location)
    done, lost = _queued_jobs(state, 2, tmp_path / "out")
    assert state.jobs_to_queue(now=3000) == [done, lost]

    # A message redelivered after its job was processed (the worker died before acknowledging it) does nothing.
    job = state.claim_job_by_id(done, "w1", lease_s=60, now=3000)
    assert job is not None and (job.state, job.claims, job.claimed_by, job.lease_until) == ("processing", 1, "w1",
                                                                                            3060)
    assert state.claim_job_by_id(done, "w2", lease_s=60, now=3010) is None  # held under a live lease
    assert state.job_processed(done, ("tps",), JobTimings(), claim=job.claims)
    assert state.claim_job_by_id(done, "w2", lease_s=60, now=9999) is None  # past processing
    assert state.delivery_succeeded(done, "tps", "2 instance(s)")
    assert not state.delivery_succeeded(done, "tps", "2 instance(s)")  # reported again: recorded once
    assert [line[2] for line in state.delivery_log(done)] == ["delivered"]
    assert state.job(done).state == "done"
    assert not state.job_processed(done, ("tps",), JobTimings(), claim=job.claims)  # a late duplicate result
    assert [(d.state, d.attempts) for d in state.deliveries(done)] == [("done", 1)]  # not reset to pending

    # A worker whose lease ran out loses the job to another; its late result is refused, the new claim's counts.
    slow = state.claim_job_by_id(lost, "w1", lease_s=60, now=3000)
    assert slow is not None and state.renew_lease(lost, "w1", lease_s=60, now=3050)
    assert state.jobs_to_queue(now=3100) == [] and state.jobs_to_queue(now=3111) == [lost]
    taken = state.claim_job_by_id(lost, "w2", lease_s=60, now=3111)
    assert taken is not None and (taken.claims, taken.claimed_by) == (2, "w2")
    assert not state.renew_lease(lost, "w1", lease_s=60, now=3112)
    assert not state.job_processed(lost, ("tps",), JobTimings(), claim=slow.claims)
    assert not state.job_failed(lost, "interrupted", claim=slow.claims)
    assert state.deliveries(lost) == [] and state.job(lost).state == "processing"
    assert state.job_processed(lost, ("tps",), JobTimings(), claim=taken.claims)
    assert [d.destination for d in state.deliveries(lost)] == ["tps"]
    state.close()


def test_two_dispatchers_never_send_the_same_delivery(tmp_path, state_location):
    """Two dispatchers see the same 20 due deliveries and both try each at once: each is sent by exactly one."""
    setup = StateStore(state_location)
    for _ in _queued_jobs(setup, 10, tmp_path / "out"):
        job = setup.claim_job()
        assert job is not None
        setup.job_processed(job.id, ("tps", "archive"), JobTimings(), claim=job.claims)
    due = [(d.job_id, d.destination) for d in setup.due_deliveries()]
    assert len(due) == 20
    dispatchers = [StateStore(state_location), StateStore(state_location)]
    won: list[list[tuple[int, str]]] = [[], []]
    start = threading.Barrier(2)

    def work(k: int) -> None:
        start.wait(timeout=30)
        won[k] = [key for key in due if dispatchers[k].claim_delivery(*key, lease_s=300)]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(won[0] + won[1]) == sorted(due) and not set(won[0]) & set(won[1])
    assert setup.due_deliveries() == []  # every delivery under a claim, none due again before its lease ends
    assert len(setup.due_deliveries(now=time.time() + 301)) == 20  # a dispatcher that died: due again after it
    with pytest.raises(SctNodeError, match="lease_s must be > 0"):
        setup.claim_delivery(due[0][0], "tps", lease_s=0)
    for store in (*dispatchers, setup):
        store.close()
