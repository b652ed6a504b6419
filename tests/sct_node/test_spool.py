"""The spool makes every path from validated UIDs and never touches anything outside itself."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest

from sct_node.config import NetworkConfig, NodeConfig, ProcessingConfig, StorageConfig
from sct_node.dicom.uids import uid_problem
from sct_node.node.service import Node
from sct_node.node.spool import Spool, SpoolPathError
from tests.sct_node.node_helpers import free_port


@pytest.mark.parametrize("value, ok", [
    ("1.2.840.10008.5.1.4.1.1.4", True), ("2.25.329800735698586629295641978511506172918", True),
    ("1.2.05.3", True),  # leading zero in a component: breaks PS3.5 9.1, seen in the wild, harmless
    ("0", True), ("1" * 64, True), ("1" * 65, False), ("", False), (".", False), ("..", False),
    ("1..2", False), (".1.2", False), ("1.2.", False), ("../../x", False), ("/etc", False), ("1.2/3", False),
    ("1.2\\3", False), ("1.2 3", False), ("1.2\x003", False), ("1.2\n3", False), ("１.２", False),
])
def test_uid_rules(value, ok):
    assert (uid_problem(value) is None) is ok


def test_instance_paths_come_only_from_valid_uids(tmp_path):
    spool = Spool(tmp_path / "spool")
    path = spool.instance_path("1.2.3", "1.2.3.4")
    assert path == tmp_path / "spool" / "instances" / "1.2.3" / "1.2.3.4.dcm"
    for bad in ("..", ".", "../x", "/abs", "a/b", ""):
        with pytest.raises(SpoolPathError):
            spool.instance_path(bad, "1.2")
        with pytest.raises(SpoolPathError):
            spool.instance_path("1.2", bad)


def test_inside_resolves_links_and_refuses_the_root_itself(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.make_folders()
    outside = tmp_path / "outside"
    outside.mkdir()
    (spool.instances_dir / "1.2").symlink_to(outside, target_is_directory=True)
    with pytest.raises(SpoolPathError):
        spool.inside(spool.instances_dir / "1.2" / "x.dcm")
    with pytest.raises(SpoolPathError):
        spool.inside(spool.root)
    with pytest.raises(SpoolPathError):
        spool.inside(spool.root / "..")
    assert spool.inside(spool.instances_dir / "1.3") == spool.instances_dir / "1.3"


def test_removals_refuse_anything_but_what_the_node_made(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.make_folders()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    with pytest.raises(SpoolPathError):
        spool.remove_instance_file(victim)
    with pytest.raises(SpoolPathError):
        spool.remove_instance_file(spool.outputs_dir / "x.dcm")  # inside the spool but not an instance
    with pytest.raises(SpoolPathError):
        spool.remove_job_dir(tmp_path)
    (spool.outputs_dir / "not-a-job").mkdir()
    with pytest.raises(SpoolPathError):
        spool.remove_job_dir(spool.outputs_dir / "not-a-job")
    with pytest.raises(SpoolPathError):
        spool.remove_job_dir(spool.outputs_dir)
    job = spool.job_dir(7)
    (job / "sct").mkdir(parents=True)
    assert spool.remove_job_dir(job) and not job.exists()
    series = spool.series_dir("1.2.3")
    series.mkdir()
    (series / "unrecorded.dcm").write_text("x")
    assert not spool.remove_series_dir("1.2.3") and series.exists()  # not empty: left alone
    assert not spool.remove_series_dir("..")  # invalid UID: nothing removed
    assert victim.read_text() == "keep" and spool.state_db.parent.exists()


def test_cleaner_never_follows_a_recorded_path_outside_the_spool(tmp_path):
    """A database row edited to point outside the spool, or a row from before UIDs were checked, whose
    series UID is "..": the cleaner deletes nothing outside and keeps the spool and its database."""
    config = NodeConfig(network=NetworkConfig(port=free_port()),
                        storage=StorageConfig(spool_dir=tmp_path / "spool", min_free_space_mb=0,
                                              unrouted_retention_h=0, done_retention_h=0),
                        processing=ProcessingConfig(quiet_period_s=3600))
    node = Node(config)
    victim = tmp_path / "victim.dcm"
    victim.write_text("keep")
    outside_folder = tmp_path / "outside"
    outside_folder.mkdir()
    (outside_folder / "a.dcm").write_text("keep")
    now = time.time() - 10
    for series_uid, path in (("..", victim), (".", outside_folder / "a.dcm"), ("../../outside", victim)):
        node.state.record_instance(sop_instance_uid=f"1.2.{abs(hash(series_uid)) % 1000}", series_uid=series_uid,
                                   sop_class_uid="1.2.840.10008.5.1.4.1.1.4", path=path, calling_ae="PACS",
                                   study_uid=None, modality="MR", description=None, image_type=None, body_part=None,
                                   now=now)
    with sqlite3.connect(node.spool.state_db) as db:
        db.execute("UPDATE series SET state = 'unrouted', updated_at = ?", (now,))
    node.clean(now=time.time() + 3600)
    assert victim.read_text() == "keep" and (outside_folder / "a.dcm").read_text() == "keep"
    assert node.spool.state_db.exists() and node.spool.instances_dir.exists()
    node.state.close()


def test_spool_paths_are_absolute_whatever_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spool = Spool("relative-spool")
    assert spool.root.is_absolute() and spool.root == tmp_path / "relative-spool"
    assert os.path.isabs(spool.instance_path("1.2", "1.2.3"))


def test_processing_never_empties_an_output_folder_outside_the_spool(tmp_path):
    """The processor empties a job's folder before writing; a row pointing elsewhere fails the job instead."""
    from sct_node.config import RouteConfig
    from tests.sct_node.node_helpers import phantom_mr_series

    mr = phantom_mr_series(tmp_path / "mr", slices=8, rows=32)
    config = NodeConfig(network=NetworkConfig(port=free_port()),
                        storage=StorageConfig(spool_dir=tmp_path / "spool", min_free_space_mb=0),
                        processing=ProcessingConfig(quiet_period_s=0.01),
                        routes=(RouteConfig(name="r", model="bulk", qa=False),))
    node = Node(config)
    for index, path in enumerate(mr.files):
        node.state.record_instance(sop_instance_uid=f"1.2.3.{index}", series_uid=mr.series_uid,
                                   sop_class_uid="1.2.840.10008.5.1.4.1.1.4", path=path, calling_ae="PACS",
                                   study_uid=mr.study_uid, modality="MR", description=None, image_type=None,
                                   body_part=None, now=time.time() - 60)
    (series,) = node.state.quiet_series(0.01)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "job-1").mkdir(parents=True)
    (elsewhere / "job-1" / "keep.txt").write_text("keep")
    job_id = node.state.create_job(series, "r", "bulk", elsewhere)
    node.processor.process(node.state.claim_job())
    job = node.state.job(job_id)
    assert job.state == "failed" and "not inside" in job.reason
    assert (elsewhere / "job-1" / "keep.txt").read_text() == "keep"
    node.state.close()
