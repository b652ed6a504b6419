"""`sct-node serve` stops cleanly on SIGTERM (what systemd sends) and answers C-ECHO while running."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from pynetdicom import AE

from tests.sct_node.node_helpers import free_port


def test_serve_answers_echo_and_exits_zero_on_sigterm(tmp_path):
    port = free_port()
    config = tmp_path / "node.toml"
    config.write_text(f'[network]\nport = {port}\n[storage]\nspool_dir = "{tmp_path / "spool"}"\n'
                      "min_free_space_mb = 0\n")
    process = subprocess.Popen([sys.executable, "-m", "sct_node", "serve", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ae = AE(ae_title="ECHO_TEST")
        ae.add_requested_context("1.2.840.10008.1.1")
        deadline = time.monotonic() + 180  # a loaded CI machine starts torch slowly
        while True:
            assoc = ae.associate("127.0.0.1", port, ae_title="SCT_NODE")
            if assoc.is_established:
                break
            assert time.monotonic() < deadline, "the node never started listening"
            time.sleep(0.2)
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert "shutting down" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()


def test_serve_serves_the_console_when_configured_and_stops_it_with_the_node(tmp_path):
    import json
    import urllib.request

    port, console_port = free_port(), free_port()
    config = tmp_path / "node.toml"
    config.write_text(f'[network]\nport = {port}\n[storage]\nspool_dir = "{tmp_path / "spool"}"\n'
                      f"min_free_space_mb = 0\n[processing]\npreload = false\n"
                      f"[console]\nenabled = true\nport = {console_port}\n")
    process = subprocess.Popen([sys.executable, "-m", "sct_node", "serve", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{console_port}/healthz", timeout=5) as answer:
                    health = json.loads(answer.read())
                break
            except OSError:
                assert process.poll() is None, process.stderr.read()
                assert time.monotonic() < deadline, "the console never answered"
                time.sleep(0.2)
        assert health["status"] == "ok" and health["checks"]["storage_scp"] == "ok"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        log = process.stderr.read()
        assert f"console: http://127.0.0.1:{console_port} (/metrics, /healthz)" in log
    finally:
        if process.poll() is None:
            process.kill()
