"""When a series is complete: the association, expected-count and quiet-period rules (sct_node.node.route).

The unit tests drive the state store and the rule with a clock of their own; the node tests send with
dcmtk's storescu, the way a PACS does, and check that a sender splitting a series over associations is
never processed half-done under any rule.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from sct_node.config import (
    NetworkConfig,
    NodeConfig,
    ProcessingConfig,
    RouteConfig,
    StorageConfig,
)
from sct_node.dicom.uids import ENHANCED_MR_IMAGE_STORAGE, MR_IMAGE_STORAGE
from sct_node.node.receive import expected_instances
from sct_node.node.route import completion, route_complete_series
from sct_node.node.service import Node
from sct_node.node.state import StateStore
from tests.sct_node.node_helpers import (
    MrSeries,
    db_rows,
    dcmtk,
    free_port,
    phantom_mr_series,
    storescu,
    wait_for,
)

# --- the rule, on the state store ---------------------------------------------------------------------------


def _record(state: StateStore, n: int, *, now: float, association: str | None = "a1", expected: int | None = None,
            series: str = "1.2.3", acquisition: str | None = None) -> bool:
    return state.record_instance(sop_instance_uid=f"1.2.3.{n}", series_uid=series, sop_class_uid=MR_IMAGE_STORAGE,
                                 path=Path(f"/spool/{n}.dcm"), calling_ae="PACS", study_uid="1.2", modality="MR",
                                 description=None, image_type=None, body_part=None, now=now, association=association,
                                 expected_instances=expected, acquisition=acquisition)


def _route(*rules: str, grace_s: float = 2.0) -> RouteConfig:
    return RouteConfig(name="r", model="bulk", complete_on=rules, association_grace_s=grace_s)  # type: ignore[arg-type]


def test_association_rule_fires_after_the_grace_following_a_normal_release(tmp_path: Path, state_location: Path | str):
    state = StateStore(state_location)
    for n in range(3):
        _record(state, n, now=1000.0 + n)
    route = _route("association")
    (series,) = state.receiving_series()
    assert completion(series, route, 60.0, now=1010.0) is None  # the association is still open
    assert state.association_released("a1", now=1003.0) == 1
    (series,) = state.receiving_series()
    assert completion(series, route, 60.0, now=1004.0) is None  # within the grace
    rule = completion(series, route, 60.0, now=1005.5)
    assert rule is not None and rule.startswith("association")
    assert completion(series, _route(), 60.0, now=1005.5) is None  # a route without the rule waits its quiet period


def test_a_second_association_turns_the_association_rule_off(tmp_path: Path, state_location: Path | str):
    state = StateStore(state_location)
    _record(state, 0, now=1000.0, association="a1")
    state.association_released("a1", now=1001.0)
    _record(state, 1, now=1001.5, association="a2")  # the sender goes on, on a new association
    state.association_released("a2", now=1002.0)
    (series,) = state.receiving_series()
    assert not series.single_association
    assert completion(series, _route("association"), 60.0, now=1100.0).startswith("quiet period")
    assert completion(series, _route("association"), 60.0, now=1010.0) is None
    # A duplicate re-sent on another association counts too.
    state2 = StateStore(tmp_path / "state2.db")
    _record(state2, 0, now=1000.0, association="a1")
    _record(state2, 0, now=1000.5, association="a2")
    state2.association_released("a1", now=1001.0)
    (series,) = state2.receiving_series()
    assert not series.single_association
    assert completion(series, _route("association"), 60.0, now=1010.0) is None


def test_expected_count_fires_when_the_announced_instances_are_in(tmp_path: Path, state_location: Path | str):
    state = StateStore(state_location)
    route = _route("expected_count")
    for n in range(3):
        _record(state, n, now=1000.0 + n, expected=4)
    (series,) = state.receiving_series()
    assert series.expected_instances == 4 and completion(series, route, 60.0, now=1004.0) is None
    _record(state, 3, now=1004.0, expected=4)
    (series,) = state.receiving_series()
    rule = completion(series, route, 60.0, now=1004.0)
    assert rule is not None and rule.startswith("expected count")


def test_instances_that_disagree_on_the_count_turn_expected_count_off(tmp_path: Path, state_location: Path | str):
    state = StateStore(state_location)
    _record(state, 0, now=1000.0, expected=2)
    _record(state, 1, now=1001.0, expected=3)
    _record(state, 2, now=1002.0, expected=2)
    (series,) = state.receiving_series()
    assert series.expected_instances == -1
    assert completion(series, _route("expected_count"), 60.0, now=1003.0) is None


def test_two_acquisitions_in_one_series_turn_expected_count_off(tmp_path: Path, state_location: Path | str):
    """Images in Acquisition counts one acquisition: a series of two stacks (acquisitions 1 and 2, 2 images each,
    a multi-station scan say) announces 2 on every image, and must not be complete after the first stack."""
    state = StateStore(state_location)
    _record(state, 0, now=1000.0, expected=2, acquisition="1")
    _record(state, 1, now=1000.5, expected=2, acquisition="1")
    (series,) = state.receiving_series()
    assert completion(series, _route("expected_count"), 60.0, now=1001.0) is not None  # one stack alone: complete
    _record(state, 2, now=1001.0, expected=2, acquisition="2")
    (series,) = state.receiving_series()
    assert series.expected_instances == -1 and series.acquisition == "1"
    _record(state, 3, now=1001.5, expected=2, acquisition="2")
    assert completion(state.receiving_series()[0], _route("expected_count"), 60.0, now=1002.0) is None


def test_late_instances_complete_the_whole_series_count_in_a_new_generation(tmp_path: Path, state_location: Path | str):
    """A first generation closed by its quiet period short of the count; the late rest completes at once."""
    state = StateStore(state_location)
    config = NodeConfig(storage=StorageConfig(spool_dir=tmp_path / "spool"),
                        processing=ProcessingConfig(quiet_period_s=60.0), routes=(_route("expected_count"),))
    for n in range(3):
        _record(state, n, now=1000.0 + n, expected=5)
    (first,) = route_complete_series(state, config, now=1100.0)
    assert state.job(first).completed_by.startswith("quiet period")
    _record(state, 3, now=1200.0, expected=5)
    assert route_complete_series(state, config, now=1200.0) == []
    _record(state, 4, now=1201.0, expected=5)
    (second,) = route_complete_series(state, config, now=1201.0)
    job = state.job(second)
    assert job.generation == 2 and job.completed_by.startswith("expected count")
    assert len(state.series_instances("1.2.3", 2)) == 5


def test_what_an_instance_announces():
    classic = pydicom.Dataset()
    classic.SOPClassUID = MR_IMAGE_STORAGE
    assert expected_instances(classic) is None
    classic.ImagesInAcquisition = 24
    assert expected_instances(classic) == 24
    classic.ImagesInAcquisition = 0
    assert expected_instances(classic) is None  # nothing announced
    enhanced = pydicom.Dataset()
    enhanced.SOPClassUID = ENHANCED_MR_IMAGE_STORAGE
    enhanced.NumberOfFrames = 96
    assert expected_instances(enhanced) == 1  # the whole acquisition in one instance
    enhanced.ConcatenationUID = "1.2.3.4"
    enhanced.InConcatenationTotalNumber = 3
    assert expected_instances(enhanced) == 3


def test_a_database_from_before_the_rules_gets_their_columns(tmp_path: Path):
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE instances (sop_instance_uid TEXT PRIMARY KEY, series_uid TEXT NOT NULL, "
            "sop_class_uid TEXT NOT NULL, path TEXT NOT NULL, calling_ae TEXT NOT NULL, received_at REAL NOT NULL, "
            "generation INTEGER NOT NULL, frame_of_reference_uid TEXT);"
            "CREATE TABLE series (series_uid TEXT NOT NULL, generation INTEGER NOT NULL, state TEXT NOT NULL, "
            "study_uid TEXT, modality TEXT, description TEXT, image_type TEXT, body_part TEXT, calling_ae TEXT, "
            "instances INTEGER NOT NULL DEFAULT 0, first_received_at REAL NOT NULL, last_received_at REAL NOT NULL, "
            "updated_at REAL NOT NULL, PRIMARY KEY (series_uid, generation));"
            "INSERT INTO series VALUES ('1.2.3', 1, 'receiving', NULL, 'MR', NULL, NULL, NULL, 'PACS', 1, 1, 1, 1);")
    state = StateStore(path)
    (series,) = state.receiving_series()
    assert series.single_association and series.released_at is None and series.expected_instances is None
    assert _record(state, 7, now=2.0, association="a9")
    (series,) = state.receiving_series()
    assert series.instances == 2 and not series.single_association  # the old instance came on no known association


# --- the node, with storescu as the sender ------------------------------------------------------------------

needs_dcmtk = pytest.mark.skipif(dcmtk("storescu") is None,
                                 reason="dcmtk storescu not installed (tests/install-system-tools.sh installs it)")
SLICES = 12


@pytest.fixture(scope="module")
def halves(tmp_path_factory) -> tuple[MrSeries, Path, Path]:
    """A 12-slice phantom series (announcing 12 Images in Acquisition) and its two halves in two folders."""
    series = phantom_mr_series(tmp_path_factory.mktemp("scanner"), slices=SLICES)
    assert int(pydicom.dcmread(series.files[0], stop_before_pixels=True).ImagesInAcquisition) == SLICES
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    for k, path in enumerate(series.files):
        shutil.copy(path, (first if k < SLICES // 2 else second) / path.name)
    return series, first, second


@pytest.fixture
def node_with(tmp_path: Path) -> Iterator:
    started: list[Node] = []

    def start(*rules: str, quiet_period_s: float, grace_s: float = 2.0, poll_interval_s: float = 0.1) -> Node:
        config = NodeConfig(
            network=NetworkConfig(port=free_port(), network_timeout_s=10),
            storage=StorageConfig(spool_dir=tmp_path / "spool", min_free_space_mb=0),
            processing=ProcessingConfig(quiet_period_s=quiet_period_s, poll_interval_s=poll_interval_s),
            routes=(RouteConfig(name="mr-to-sct", model="bulk", qa=False, complete_on=rules,  # type: ignore[arg-type]
                                association_grace_s=grace_s),))
        node = Node(config)
        started.append(node)
        node.start()
        return node

    yield start
    for node in started:
        node.stop()


def _jobs(node: Node) -> list[tuple[int, int, str]]:
    spool = node.config.storage.spool_dir
    return [(row[0], row[1], row[2]) for row in db_rows(spool, "SELECT id, generation, completed_by FROM jobs")]


def _instances_of_generation_one(node: Node, series_uid: str) -> int:
    rows = db_rows(node.config.storage.spool_dir, "SELECT instances FROM series WHERE series_uid = ? AND generation = 1",
                   (series_uid,))
    return int(rows[0][0])


@needs_dcmtk
def test_a_series_sent_whole_on_one_association_is_complete_at_its_release(halves, node_with):
    series, _, _ = halves
    node = node_with("association", quiet_period_s=60.0, grace_s=0.5)
    assert len(storescu(node.port, [series.folder]).stored()) == SLICES
    ((_, generation, rule),) = wait_for(lambda: _jobs(node), 15, "the job made at the association's release")
    assert generation == 1 and rule.startswith("association"), rule
    assert _instances_of_generation_one(node, series.series_uid) == SLICES


@needs_dcmtk
def test_the_release_wakes_the_router_when_the_grace_has_passed(halves, node_with):
    """With the router polling only every 60 s, the job still comes right after the grace: the release itself
    schedules the look (no poll interval added to the completion wait)."""
    series, _, _ = halves
    node = node_with("association", quiet_period_s=600.0, grace_s=0.5, poll_interval_s=60.0)
    assert len(storescu(node.port, [series.folder]).stored()) == SLICES
    ((_, _, rule),) = wait_for(lambda: _jobs(node), 20, "the job made after the grace, well before the next poll")
    assert rule.startswith("association"), rule


@needs_dcmtk
@pytest.mark.parametrize("rules, quiet_period_s, pause_s, fired_by", [
    # The sender releases after half the series and opens a second association within the grace: the second
    # association turns the association rule off, and the quiet period decides.
    (("association",), 3.0, 0.3, "quiet period"),
    # A pause longer than the grace (which would close the series if the association rule were on) and
    # shorter than the quiet period: the count the instances announce is not reached until the end.
    (("expected_count",), 30.0, 2.5, "expected count"),
    # No rule but the quiet period: a pause shorter than it keeps the series open.
    ((), 3.0, 1.0, "quiet period"),
], ids=["association", "expected_count", "quiet_period"])
def test_a_sender_splitting_a_series_over_associations_is_not_processed_half_done(
        halves, node_with, rules, quiet_period_s, pause_s, fired_by):
    series, first, second = halves
    node = node_with(*rules, quiet_period_s=quiet_period_s)
    assert len(storescu(node.port, [first]).stored()) == SLICES // 2
    time.sleep(pause_s)
    assert _jobs(node) == [], "the series was made a job after its first half"
    assert len(storescu(node.port, [second]).stored()) == SLICES - SLICES // 2
    ((_, generation, rule),) = wait_for(lambda: _jobs(node), quiet_period_s + 15, "the job of the whole series")
    assert generation == 1 and rule.startswith(fired_by), rule
    assert _instances_of_generation_one(node, series.series_uid) == SLICES
    time.sleep(0.5)
    assert len(_jobs(node)) == 1, _jobs(node)
