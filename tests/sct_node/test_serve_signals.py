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
