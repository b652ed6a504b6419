"""The node delivers the whole bundle to a real planning-system stand-in (dcmtk storescp), in order.

The bulk model has no bone, so every job here fails its QA: by default the sCT is still delivered,
marked QA FAIL, with its report; with ``on_qa_fail = "hold"`` only the report goes out until
``sct-node release``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pydicom
import pytest

from sct_node.config import (
    DestinationConfig,
    DispatchConfig,
    NetworkConfig,
    NodeConfig,
    ProcessingConfig,
    RouteConfig,
    StorageConfig,
)
from sct_node.node.service import Node
from tests.sct_node.node_helpers import (
    StoreScp,
    dcmtk,
    free_port,
    phantom_mr_series,
    run_sct_node,
    storescu,
    wait_for,
    write_toml,
)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(dcmtk("storescp") is None, reason="dcmtk storescp not installed "
                                                                   "(tests/install-system-tools.sh installs it)")]

ORDER = ["CT", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "DOC"]


def _config(tmp_path: Path, tps_port: int, on_qa_fail: str) -> NodeConfig:
    return NodeConfig(
        network=NetworkConfig(ae_title="SCT_NODE", port=free_port()),
        storage=StorageConfig(spool_dir=tmp_path / "spool", min_free_space_mb=0),
        processing=ProcessingConfig(quiet_period_s=0.5, poll_interval_s=0.1),
        dispatch=DispatchConfig(max_attempts=3, initial_delay_s=0.1, max_delay_s=0.2, timeout_s=10),
        routes=(RouteConfig(name="mr", model="bulk", destinations=("tps",), on_qa_fail=on_qa_fail),),
        destinations=(DestinationConfig(name="tps", ae_title="TPS", host="127.0.0.1", port=tps_port),),
    )


def _received_modalities_in_order(scp: StoreScp) -> list[str]:
    """Modality of every stored instance, in the order storescp stored them (from its verbose log)."""
    stored = re.findall(r"storing DICOM file: (\S+)", scp.log_path.read_text(errors="replace"))
    return [str(pydicom.dcmread(path, stop_before_pixels=True).Modality) for path in stored]


def _run(tmp_path: Path, on_qa_fail: str):
    mr = phantom_mr_series(tmp_path / "mr")
    tps_port = free_port()
    scp = StoreScp(tmp_path / "tps", tps_port)
    config = _config(tmp_path, tps_port, on_qa_fail)
    node = Node(config)
    node.start()
    result = storescu(node.port, mr.files)
    assert result.returncode == 0, result.output
    return mr, scp, config, node


def test_the_whole_bundle_arrives_images_first_and_marked(tmp_path):
    mr, scp, _, node = _run(tmp_path, "deliver")
    try:
        job = node.wait_for_job(120)
        assert job.state == "done", job.reason
        received = _received_modalities_in_order(scp)
        assert received.count("CT") == len(mr.files)
        assert sorted(set(received), key=ORDER.index) == ORDER
        assert received == sorted(received, key=ORDER.index), "not images first, then structures, plan, dose, report"
        for dataset in scp.datasets():
            assert dataset.StudyInstanceUID == mr.study_uid
            assert str(dataset.SeriesDescription).startswith("QA FAIL"), dataset.Modality
    finally:
        node.stop()
        scp.stop()


def test_a_failed_sct_is_held_back_until_released(tmp_path):
    mr, scp, config, node = _run(tmp_path, "hold")
    config_path = write_toml(config, tmp_path / "node.toml")
    try:
        job = node.wait_for_job(120)
        assert job.state == "held", (job.state, job.reason)
        assert sorted(_received_modalities_in_order(scp)) == ["DOC", "SR"]  # the verdict reaches the TPS at once
        assert not (job.output_dir / "sct").exists() and any((job.output_dir / "held" / "sct").glob("*.dcm"))
        status = run_sct_node("status", "--config", str(config_path))
        assert "held" in status.stdout and f"sct-node release {job.id}" in status.stdout
        released = run_sct_node("release", str(job.id), "--config", str(config_path))
        assert released.returncode == 0, released.stderr
        assert released.stdout.startswith(f"job {job.id}: delivering")
        wait_for(lambda: node.state.job(job.id).state == "done", 60, "the released job to be delivered")
        received = _received_modalities_in_order(scp)
        assert received.count("CT") == len(mr.files) and {"RTSTRUCT", "RTPLAN", "RTDOSE"} <= set(received)
        sct = [d for d in scp.datasets() if d.Modality == "CT"]
        assert all(str(d.SeriesDescription).startswith("QA FAIL") for d in sct)
        again = run_sct_node("release", str(job.id), "--config", str(config_path))
        assert again.returncode != 0 and "not held" in again.stderr
    finally:
        node.stop()
        scp.stop()
