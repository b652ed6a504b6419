"""Soak: four PACSs send 100-instance series at once while garbage and stalled connections come and go.

Real senders (dcmtk ``storescu``, one process each) against a real ``sct-node serve``; the attackers
connect from other loopback addresses. Afterwards every instance the node acknowledged is in its database
and on disk, and every series was processed exactly once (one job, done, first generation).
"""

from __future__ import annotations

import random
import socket
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sct_node.config import (
    NetworkConfig,
    NodeConfig,
    ProcessingConfig,
    RouteConfig,
    SeriesMatch,
    StorageConfig,
)
from tests.sct_node.node_helpers import (
    NodeProcess,
    db_rows,
    dcmtk,
    free_port,
    phantom_mr_series,
    storescu,
    wait_for,
    write_toml,
)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(dcmtk("storescu") is None, reason="dcmtk storescu not installed "
                                                                   "(tests/install-system-tools.sh installs it)")]
SENDERS = 4
SLICES = 100


def _attack(port: int, stop: threading.Event, counts: dict[str, int]) -> None:
    """Garbage connections and half-sent association requests, over and over, from 127.0.3.x / 127.0.4.x."""
    rng = random.Random(7)
    stalled: list[socket.socket] = []
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2,
                                          source_address=(f"127.0.3.{rng.randrange(1, 20)}", 0)) as sock:
                sock.sendall(rng.randbytes(rng.randrange(1, 4000)))
                counts["garbage"] += 1
        except OSError:
            pass
        if len(stalled) < 8:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=2,
                                                source_address=(f"127.0.4.{rng.randrange(1, 3)}", 0))
                sock.sendall(struct.pack(">BBL", 0x01, 0, 300) + bytes(40))
                stalled.append(sock)
                counts["stalled"] += 1
            except OSError:
                pass
        else:  # let one go; the node closes the others at their deadline
            stalled.pop(0).close()
        stop.wait(0.02)
    for sock in stalled:
        sock.close()


def test_four_senders_under_attack_lose_nothing_and_each_series_is_processed_once(tmp_path):
    series = [phantom_mr_series(tmp_path / f"pacs-{i}", slices=SLICES, rows=32, seed=i, case_id=f"soak-{i}")
              for i in range(SENDERS)]
    assert len({s.series_uid for s in series}) == SENDERS
    port = free_port()
    spool = tmp_path / "spool"
    config = NodeConfig(
        network=NetworkConfig(port=port, network_timeout_s=2.0),
        storage=StorageConfig(spool_dir=spool, min_free_space_mb=0),
        processing=ProcessingConfig(quiet_period_s=3.0, poll_interval_s=0.2),
        routes=(RouteConfig(name="soak", model="bulk", qa=False, match=SeriesMatch(min_instances=2)),),
    )
    node = NodeProcess(write_toml(config, tmp_path / "node.toml"), port, tmp_path / "node.log")
    stop, counts = threading.Event(), {"garbage": 0, "stalled": 0}
    attacker = threading.Thread(target=_attack, args=(port, stop, counts), daemon=True)
    try:
        attacker.start()
        with ThreadPoolExecutor(SENDERS) as pool:
            results = list(pool.map(lambda s: storescu(port, [s.folder], calling_ae=f"PACS{s.folder.name[-1]}",
                                                         timeout_s=300), series))
        stop.set()
        attacker.join(timeout=30)
        assert counts["garbage"] > 10 and counts["stalled"] > 2, counts
        for mr, result in zip(series, results, strict=True):
            acknowledged = result.stored()
            assert len(acknowledged) == SLICES, f"{mr.series_uid}: {len(acknowledged)} acknowledged\n{result.output[-2000:]}"
            rows = dict(db_rows(spool, "SELECT sop_instance_uid, path FROM instances WHERE series_uid = ?",
                                (mr.series_uid,)))
            assert acknowledged <= set(rows), "an acknowledged instance is missing from the database"
            assert all(Path(rows[uid]).is_file() for uid in acknowledged), "an acknowledged file is missing"
        wait_for(lambda: db_rows(spool, "SELECT COUNT(*) FROM jobs WHERE state = 'done'")[0][0] >= SENDERS, 180,
                 "every series to be processed")
        jobs = db_rows(spool, "SELECT series_uid, generation, state FROM jobs ORDER BY series_uid")
        assert sorted(jobs) == sorted((s.series_uid, 1, "done") for s in series), jobs
        assert "Traceback" not in node.log()
    finally:
        stop.set()
        node.stop()
