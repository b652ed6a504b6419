"""Fuzz the Storage SCP: thousands of mutated PDUs and data sets against a real `sct-node serve`.

Cases are mutated from valid traffic (an A-ASSOCIATE-RQ, a whole C-STORE session, an MR data set) with a
seeded generator, so a failure replays with the same ``SCT_NODE_FUZZ_SEED``: bit flips, byte changes,
insertions, deletions, truncations, duplicated runs, and length fields set to 0, small, huge or random.
Four senders run at once from their own loopback addresses. After each batch: an allowed AE still gets
C-ECHO and stores a valid instance, nothing was written outside the spool and every spooled file is named
by valid UIDs, the node logged no traceback, and its memory stayed bounded.

``SCT_NODE_FUZZ_CASES`` sets the cases per batch (default 600 PDU cases and 250 data-set cases per batch,
four batches: 3400 cases in a default run). The count run is printed (``pytest -s``).
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from tests.sct_node.node_helpers import db_rows
from tests.sct_node.raw_dicom import (
    MR_IMAGE_STORAGE,
    RawAssociation,
    associate_rq,
    c_store_rq,
    pdata,
    pdv,
)
from tests.sct_node.test_hostile_network import (
    echo,
    files_outside,
    mr_dataset,
    rss_kib,
    start_guarded_node,
    store_valid,
    valid_uid,
)

pytestmark = pytest.mark.slow  # see pyproject: `-m 'not slow'` is the fast subset

SEED = int(os.environ.get("SCT_NODE_FUZZ_SEED", "20261203"))
PDU_CASES_PER_BATCH = int(os.environ.get("SCT_NODE_FUZZ_CASES", "600"))
DATASET_CASES_PER_BATCH = max(1, PDU_CASES_PER_BATCH * 5 // 12)
BATCHES = 4
SENDERS = 4
MEMORY_BOUND_MIB = 150


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random mutations of ``data``."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(8)
        position = rng.randrange(len(out)) if out else 0
        if kind == 0 and out:  # flip a bit
            out[position] ^= 1 << rng.randrange(8)
        elif kind == 1 and out:  # any byte
            out[position] = rng.randrange(256)
        elif kind == 2:  # insert random bytes
            out[position:position] = rng.randbytes(rng.randint(1, 64))
        elif kind == 3 and out:  # delete a run
            del out[position:position + rng.randint(1, 64)]
        elif kind == 4:  # truncate
            del out[position:]
        elif kind == 5 and out:  # duplicate a run
            out[position:position] = out[position:position + rng.randint(1, 256)]
        elif kind == 6 and len(out) >= 6:  # a PDU or element length field set to an extreme
            offset = rng.choice([2, rng.randrange(max(1, len(out) - 4))])
            value = rng.choice([0, 1, 4, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFFFFFF0, rng.randrange(1 << 32)])
            out[offset:offset + 4] = struct.pack(">L" if offset == 2 else "<L", value)
        elif kind == 7:  # a PDU type byte
            out[0:1] = bytes([rng.randrange(256)]) if out else b""
    return bytes(out)


def valid_session(n: int) -> bytes:
    """Association request, one C-STORE of a valid instance, release: a whole well-formed conversation."""
    uid = valid_uid(900_000 + n)
    dataset = mr_dataset(uid, valid_uid(800_000 + n % 7))
    return (associate_rq("PACS") + pdata(pdv(3, 0x03, c_store_rq(1, MR_IMAGE_STORAGE, uid)))
            + pdata(pdv(3, 0x02, dataset)) + struct.pack(">BBLL", 0x05, 0, 4, 0))


def send_case(port: int, source: str, data: bytes) -> None:
    """Send bytes, half-close, read until the node closes (bounded)."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    except OSError:
        return
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    except OSError:
        pass
    finally:
        sock.close()


def pdu_case(rng: random.Random, n: int) -> bytes:
    choice = rng.randrange(10)
    if choice < 2:
        return rng.randbytes(rng.randint(0, 2048))
    if choice < 6:
        return mutate(associate_rq(rng.choice(["PACS", "OTHER", ""]), max_pdu=rng.choice([0, 1, 16384, 1 << 31])),
                      rng)
    return mutate(valid_session(n), rng)


def dataset_cases(port: int, source: str, rng: random.Random, count: int) -> int:
    """Mutated data sets inside well-formed C-STOREs on associations of the allowed AE; returns cases sent."""
    sent, refused = 0, 0
    while sent < count:
        try:
            assoc = RawAssociation(port, "PACS", source=source, timeout_s=5)
        except Exception as error:  # noqa: BLE001  e.g. the association limit while other senders' aborts wind down
            refused += 1
            if refused > 50:
                raise AssertionError(f"the allowed AE was refused 50 times in a row: {error}") from None
            time.sleep(0.1)
            continue
        refused = 0
        try:
            for _ in range(20):
                n = rng.randrange(10**6)
                uid = valid_uid(700_000 + n)
                dataset = mutate(mr_dataset(uid, valid_uid(600_000 + n % 5)), rng)
                command_uid = uid if rng.random() < 0.8 else mutate(uid.encode(), rng).decode("latin-1")
                sent += 1
                if assoc.store(MR_IMAGE_STORAGE, command_uid, dataset).status is None:
                    break  # the node aborted this association (a limit was broken): open another
                if sent >= count:
                    break
        except OSError:
            pass
        finally:
            assoc.release()
    return sent


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory):
    node = start_guarded_node(tmp_path_factory.mktemp("fuzz"), max_instance_mb=16, network_timeout_s=2.0,
                              max_connections=200, max_connections_per_host=50)
    yield node
    node.stop()


def test_fuzzed_pdus_and_data_sets_leave_the_node_serving_and_the_disk_untouched(fuzz_node, capsys):
    port, pid = fuzz_node.port, fuzz_node.process.pid
    assert echo(port)
    start_kib = rss_kib(pid)
    outside_before = files_outside(fuzz_node.root, fuzz_node.spool)
    totals = {"pdu": 0, "dataset": 0}
    lock = threading.Lock()

    def sender(index: int, batch: int) -> None:
        rng = random.Random(f"{SEED}-{batch}-{index}")
        source = f"127.0.1.{10 + index}"
        for n in range(PDU_CASES_PER_BATCH // SENDERS):
            send_case(port, source, pdu_case(rng, n))
        done = dataset_cases(port, source, rng, DATASET_CASES_PER_BATCH // SENDERS)
        with lock:
            totals["pdu"] += PDU_CASES_PER_BATCH // SENDERS
            totals["dataset"] += done

    for batch in range(BATCHES):
        threads = [threading.Thread(target=sender, args=(i, batch)) for i in range(SENDERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        assert not any(t.is_alive() for t in threads), "a fuzz sender hung"
        assert echo(port), f"batch {batch}: the allowed AE gets no C-ECHO"
        assert store_valid(port) == 0x0000, f"batch {batch}: the allowed AE cannot store"
        assert files_outside(fuzz_node.root, fuzz_node.spool) == outside_before, f"batch {batch}: wrote outside"
        for path in (fuzz_node.spool / "instances").rglob("*"):
            for part in path.relative_to(fuzz_node.spool / "instances").parts:
                assert part.removesuffix(".dcm").replace(".", "").isdigit(), f"spooled under {part!r}"
        log = fuzz_node.log()
        assert "Traceback" not in log, log[log.index("Traceback") - 2000: log.index("Traceback") + 2000]
        growth_mib = (rss_kib(pid) - start_kib) / 1024
        assert growth_mib < MEMORY_BOUND_MIB, f"batch {batch}: node memory grew {growth_mib:.0f} MiB"
    stored = db_rows(fuzz_node.spool, "SELECT COUNT(*) FROM instances")[0][0]
    assert totals["dataset"] >= BATCHES * DATASET_CASES_PER_BATCH // 2, totals
    with capsys.disabled():
        print(f"\nfuzz: {totals['pdu']} PDU cases + {totals['dataset']} data-set cases (seed {SEED}); "
              f"{stored} instances stored; node RSS {start_kib // 1024} -> {rss_kib(pid) // 1024} MiB, "
              f"peak {rss_kib(pid, 'VmHWM') // 1024} MiB")
    assert (Path(fuzz_node.root) / "data" / "canary" / "keep.txt").read_text() == "must survive"
