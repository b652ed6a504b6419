"""What a hostile peer can do to the node, measured against the same attack on a stock pynetdicom SCP.

Run from the repository root with the project installed and its virtual environment active::

    python benchmarks/hostile_network.py [--timeout-s 5]

Method
------
Two receivers, each in its own process on 127.0.0.1, each with ``network_timeout_s`` (pynetdicom:
``network_timeout``, ``acse_timeout``, ``dimse_timeout``) = ``--timeout-s`` and 10 associations at most:

(a) ``sct-node serve`` (this project: sct_node/node/netguard.py in front of pynetdicom), allowed caller PACS;
(b) the peer: a stock pynetdicom Storage SCP (``AE.start_server``), what the node was before the guard.

For each receiver:

1. **Stalled connections.** Ten TCP connections send the first 50 bytes of an A-ASSOCIATE-RQ that declares
   200 bytes, then go quiet. Then the allowed PACS asks for an association (C-ECHO) every 0.1 s: the time
   until it is served is printed, (i) with the ten stalls from another address than the PACS and (ii)
   from the PACS's own address. Target: at most ``timeout_s + 1`` s. Ten more that declare ~4 GiB are
   tried too (iii). A receiver that never serves the PACS within ``3 x timeout_s + 10`` s is reported as
   "not served".
2. **A 200 MiB PDU.** One connection sends an A-ASSOCIATE-RQ header declaring 200 MiB and streams zeros
   as fast as the receiver takes them, until 200 MiB or until the receiver closes. The growth is
   how far the receiver's peak resident memory (VmHWM) rose above what it was before (VmRSS, or the
   earlier peak if higher). Target: growth < 50 MiB.

Times are wall clock on a shared machine: they are printed, never asserted (tests/sct_node/
test_hostile_network.py checks the same behaviour functionally). The fuzz count comes from
``python -m pytest -s tests/sct_node/test_scp_fuzz.py``.
"""

from __future__ import annotations

import argparse
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from sct_node.config import AllowedCaller, NetworkConfig, NodeConfig, ProcessingConfig, StorageConfig
from tests.sct_node.node_helpers import free_port, port_open, wait_for, write_toml
from tests.sct_node.raw_dicom import RawAssociation

_STOCK_SCP = textwrap.dedent("""
    import sys
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Verification
    ae = AE(ae_title="STOCK")
    ae.maximum_associations = 10
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = float(sys.argv[2])
    ae.add_supported_context(Verification)
    ae.add_supported_context("1.2.840.10008.5.1.4.1.1.4", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    ae.start_server(("127.0.0.1", int(sys.argv[1])), block=True,
                    evt_handlers=[(evt.EVT_C_ECHO, lambda event: 0x0000)])
""")


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def served(port: int, source: str = "127.0.0.1") -> bool:
    try:
        assoc = RawAssociation(port, "PACS", source=source, timeout_s=2)
    except Exception:  # noqa: BLE001  any failure to associate is what the probe measures
        return False
    try:
        return assoc.echo().status == 0
    finally:
        assoc.release()


def time_to_serve(port: int, limit_s: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if served(port):
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def stalls(port: int, source: str, declared: int) -> list[socket.socket]:
    held = []
    for _ in range(10):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=60, source_address=(source, 0))
            sock.sendall(struct.pack(">BBL", 0x01, 0, declared) + bytes(50))
            held.append(sock)
        except OSError:
            pass
    return held


def stream_200_mib(port: int) -> int:
    sent = 0
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30, source_address=("127.0.0.77", 0)) as sock:
            sock.sendall(struct.pack(">BBL", 0x01, 0, 200 << 20))
            chunk = bytes(1 << 20)
            while sent < 200 << 20:
                sock.sendall(chunk)
                sent += len(chunk)
    except OSError:
        pass
    return sent


def measure(name: str, port: int, pid: int, timeout_s: float) -> dict[str, object]:
    limit_s = 3 * timeout_s + 10
    result: dict[str, object] = {"receiver": name}
    for label, source, declared in (("stalls from another address", "127.0.0.66", 200),
                                    ("stalls from the PACS's address", "127.0.0.1", 200),
                                    ("stalls declaring ~4 GiB, PACS's address", "127.0.0.1", 0xFFFFFFF0)):
        held = stalls(port, source, declared)
        try:
            result[label] = time_to_serve(port, limit_s)
        finally:
            for sock in held:
                sock.close()
        wait_for(lambda: served(port), limit_s * 2, f"{name} to recover")
    before = rss_mib(pid)
    peak_before = rss_mib(pid, "VmHWM")
    sent = stream_200_mib(port)
    time.sleep(0.5)
    peak_after = rss_mib(pid, "VmHWM")
    result["200 MiB PDU: MiB read before close"] = round(sent / 2**20)
    # The peak is what matters (a receiver frees the buffer once it gives up); a peak that did not move
    # means the stream cost at most the distance to the earlier peak, reported as 0.
    result["200 MiB PDU: RSS growth MiB"] = round(max(0.0, peak_after - max(before, peak_before)), 1)
    result["RSS before MiB / peak after MiB"] = f"{before:.1f} / {peak_after:.1f}"
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timeout-s", type=float, default=5.0, help="network_timeout_s of both receivers")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        port = free_port()
        config = NodeConfig(
            network=NetworkConfig(port=port, network_timeout_s=args.timeout_s,
                                  allowed_callers=(AllowedCaller(ae_title="PACS"),)),
            storage=StorageConfig(spool_dir=root / "spool", min_free_space_mb=0),
            processing=ProcessingConfig(quiet_period_s=3600),
        )
        log = open(root / "node.log", "wb")
        node = subprocess.Popen([sys.executable, "-m", "sct_node", "serve", "--config",
                                 str(write_toml(config, root / "node.toml"))], cwd=REPO_ROOT, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: port_open(port), 60, "sct-node to listen")
            results.append(measure("sct-node", port, node.pid, args.timeout_s))
        finally:
            node.terminate()
            node.wait(timeout=30)
            log.close()
        port = free_port()
        stock = subprocess.Popen([sys.executable, "-c", _STOCK_SCP, str(port), str(args.timeout_s)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: port_open(port), 60, "the stock pynetdicom SCP to listen")
            results.append(measure("stock pynetdicom", port, stock.pid, args.timeout_s))
        except AssertionError as error:
            results.append({"receiver": "stock pynetdicom", "error": str(error)})
        finally:
            stock.kill()
            stock.wait(timeout=30)
    target_s = args.timeout_s + 1
    print(f"network_timeout_s = {args.timeout_s:g}; target: PACS served within {target_s:g} s, memory growth < 50 MiB")
    for result in results:
        print(f"\n{result['receiver']}")
        for key, value in result.items():
            if key == "receiver":
                continue
            if key.startswith("stalls"):
                shown = "not served" if value is None else f"{value:.2f} s ({value / target_s:.2f} x target)"
                print(f"  PACS served, {key}: {shown}")
            else:
                print(f"  {key}: {value}")
    ours, stock = results[0], results[-1]
    growth = ours["200 MiB PDU: RSS growth MiB"]
    stock_growth = stock.get("200 MiB PDU: RSS growth MiB")
    if isinstance(stock_growth, float) and stock_growth > 0:
        print(f"\nmemory growth under a 200 MiB PDU, sct-node / stock pynetdicom: {growth / stock_growth:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
