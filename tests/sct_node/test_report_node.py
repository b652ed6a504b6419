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


def _count_dataset_writes(monkeypatch) -> list[str]:
    """Record the file name of every dataset the sCT writer and the bundle write."""
    import sct_node.dicom.sct_writer
    import sct_node.report.bundle

    names: list[str] = []
    for module in (sct_node.dicom.sct_writer, sct_node.report.bundle):
        def recording(dataset, path, *args, _write=module.write_dataset_atomic, **kwargs):
            names.append(Path(path).name)
            return _write(dataset, path, *args, **kwargs)
        monkeypatch.setattr(module, "write_dataset_atomic", recording)
    return names


def test_the_whole_bundle_arrives_images_first_and_marked(tmp_path, monkeypatch):
    written = _count_dataset_writes(monkeypatch)
    mr, scp, _, node = _run(tmp_path, "deliver")
    try:
        job = node.wait_for_job(120)
        assert job.state == "done", job.reason
        # The sCT is written once, after the QA, already marked: no file of it is rewritten afterwards.
        sct_writes = [name for name in written if name.startswith("CT.")]
        assert len(sct_writes) == len(set(sct_writes)) == len(mr.files)
        # Its images went ahead while the report was rendered; the delivery sent the rest, nothing twice.
        assert [(d.destination, d.images_sent) for d in node.state.deliveries(job.id)] == [("tps", True)]
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
        released = run_sct_node("release", str(job.id), "--comment", "FAIL reviewed: bone under-estimated at the "
                                "edge only", "--config", str(config_path))
        assert released.returncode == 0, released.stderr
        assert released.stdout.startswith(f"job {job.id}: delivering")
        (entry,) = node.state.audit_entries(job_id=job.id)  # who released it, and why, is on record
        assert (entry.action, entry.role, entry.outcome) == ("release", "cli", "delivering")
        assert entry.actor.startswith("cli:") and entry.comment.startswith("FAIL reviewed")
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


def test_images_that_could_not_go_ahead_are_delivered_with_the_rest(tmp_path):
    """The planning system is down while the report renders: sending ahead fails, the delivery's retries send
    everything once it is back, images first, and the job is done only then."""
    mr = phantom_mr_series(tmp_path / "mr")
    tps_port = free_port()  # nothing listens there yet
    config = _config(tmp_path, tps_port, "deliver")
    config = config.model_copy(update={"dispatch": DispatchConfig(max_attempts=50, initial_delay_s=0.2,
                                                                  max_delay_s=0.5, timeout_s=10)})
    node = Node(config)
    node.start()
    scp = None
    try:
        assert storescu(node.port, mr.files).returncode == 0
        wait_for(lambda: any(d.attempts for d in node.state.deliveries(1)), 120, "a failed delivery attempt")
        job = node.state.job(1)
        assert job.state == "delivering"
        assert [(d.destination, d.images_sent) for d in node.state.deliveries(job.id)] == [("tps", False)]
        scp = StoreScp(tmp_path / "tps", tps_port)
        wait_for(lambda: node.state.job(job.id).state == "done", 60, "the delivery once the TPS is back")
        received = _received_modalities_in_order(scp)
        assert received.count("CT") == len(mr.files)
        assert received == sorted(received, key=ORDER.index) and set(received) == set(ORDER)
    finally:
        node.stop()
        if scp is not None:
            scp.stop()


def test_a_failed_sct_is_held_back_even_when_its_report_cannot_be_built(tmp_path, monkeypatch):
    """The hold follows the QA's verdict, not the report's: a report that cannot be built must not let a FAIL
    through."""
    import sct_node.report.bundle

    def broken(*args, **kwargs):
        raise RuntimeError("the report renderer is broken (test)")

    monkeypatch.setattr(sct_node.report.bundle, "build_bundle", broken)
    _, scp, _, node = _run(tmp_path, "hold")
    try:
        job = node.wait_for_job(120)
        assert job.state == "held", (job.state, job.reason)
        assert job.timings.qa_verdict == "FAIL" and job.timings.report == "ERROR"
        assert "its report could not be built" in job.held
        assert any((job.output_dir / "held" / "sct").glob("*.dcm")) and not (job.output_dir / "sct").exists()
        assert _received_modalities_in_order(scp) == []  # nothing may go: no sCT, and no report exists
    finally:
        node.stop()
        scp.stop()
