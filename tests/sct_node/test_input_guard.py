"""The input guard in `sct-node translate` and in the node: refuse, override, mark, guard.json, status."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest

from dosimetry.qa_result import read_qa
from dosimetry.verdict import Verdict
from models.bulk import BulkDensityModel
from models.envelope import Envelope
from models.phantoms import generate_phantom
from models.registry import BUNDLED_WEIGHTS
from sct_node.cli import EXIT_INPUT, EXIT_OK, main
from sct_node.config import DestinationConfig, NodeConfig, ProcessingConfig, RouteConfig, SeriesMatch, StorageConfig
from sct_node.dicom.qa_sr import read_qa_sr
from sct_node.dicom.uids import MR_IMAGE_STORAGE
from sct_node.node.process import GUARD_FILE
from sct_node.node.route import route_complete_series
from sct_node.node.service import Node
from sct_node.report.refusal import REFUSAL_PDF
from sct_node.tools.phantom_writer import write_phantom_dicom
from tests.factories.validation import assert_valid_dicom

#: The bundled weights' training grid: a held-out phantom on it is inside the envelope in every respect.
TRAIN_SHAPE = (32, 256, 256)
#: A smaller grid for the runs that translate with the diffusion model (a soft voxel-size mismatch, no more).
SMALL_SHAPE = (10, 128, 128)


@pytest.fixture(autouse=True)
def restore_logging():
    """``main()`` run in-process sets up the process's logging: undo it after (as tests/sct_node/test_cli.py)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    hooks = threading.excepthook, sys.unraisablehook
    yield
    root.handlers[:], root.level = handlers, level
    logging.captureWarnings(False)
    threading.excepthook, sys.unraisablehook = hooks


@pytest.fixture(scope="module")
def pelvis_dicom(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pelvis")
    return write_phantom_dicom(generate_phantom("pelvis", 2100, shape_zyx=SMALL_SHAPE), "pelvis-2100", folder)


def test_translate_refuses_a_t2_series_for_the_t1_model_with_exit_code_3(pelvis_dicom, tmp_path, capsys):
    code = main(["translate", "--input", str(pelvis_dicom.mr_t2_dir), "--output", str(tmp_path / "sct"),
                 "--model", "diffusion", "--quiet"])
    error = capsys.readouterr().err
    assert code == EXIT_INPUT
    assert "hard mismatch with the training envelope of model diffusion: T2-weighted (from TR/TE)" in error
    assert "--allow-outside-envelope" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "sct").exists() or not list((tmp_path / "sct").glob("*.dcm"))


def test_allow_outside_envelope_translates_and_says_so_on_the_sct(pelvis_dicom, tmp_path, capsys):
    code = main(["translate", "--input", str(pelvis_dicom.mr_t2_dir), "--output", str(tmp_path / "sct"),
                 "--model", "diffusion", "--quiet", "--json", "--allow-outside-envelope"])
    assert code == EXIT_OK
    summary = json.loads(capsys.readouterr().out)
    assert summary["input_guard"]["verdict"] == "hard"
    files = sorted((tmp_path / "sct").glob("*.dcm"))
    assert len(files) == SMALL_SHAPE[0]
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert header.ImageComments.startswith(
        "INPUT OUTSIDE THE MODEL'S TRAINING ENVELOPE (hard; made by --allow-outside-envelope): T2-weighted")
    assert "INPUT OUTSIDE THE MODEL'S TRAINING ENVELOPE" in header.DerivationDescription


def test_a_soft_mismatch_is_translated_and_marked(pelvis_dicom, tmp_path, capsys):
    # The T1 series on a coarser grid than the training phantoms': a soft (voxel size) mismatch only.
    code = main(["translate", "--input", str(pelvis_dicom.mr_t1_dir), "--output", str(tmp_path / "sct"),
                 "--model", "diffusion", "--quiet", "--json"])
    assert code == EXIT_OK
    guard = json.loads(capsys.readouterr().out)["input_guard"]
    assert guard["verdict"] == "soft" and {f["check"] for f in guard["findings"]} == {"spacing_mm"}
    header = pydicom.dcmread(min((tmp_path / "sct").glob("*.dcm")), stop_before_pixels=True)
    assert "(soft; made by sct-node translate (soft mismatch))" in header.ImageComments


# ------------------------------------------------------------------------------------------------ the node


class _EnvelopedBulk(BulkDensityModel):
    """The bulk model (fast, exact output) carrying the bundled models' envelope: the node's wiring, not a network."""

    def __init__(self) -> None:
        super().__init__()
        card = json.loads((BUNDLED_WEIGHTS / "unet" / "card.json").read_text())
        self.envelope = Envelope.from_json(card["envelope"])


@pytest.fixture(scope="module")
def training_grid_dicom(tmp_path_factory):
    folder = tmp_path_factory.mktemp("held-out")
    return write_phantom_dicom(generate_phantom("pelvis", 2200, shape_zyx=TRAIN_SHAPE), "pelvis-2200", folder)


def _run_job(tmp_path: Path, series_dir: Path, policy: str | None, qa: bool = False, destination_port: int = 0,
             keep_node: bool = False):
    options = {} if policy is None else {"on_input_outside_envelope": policy}
    destinations = ((DestinationConfig(name="tps", ae_title="TPS", host="127.0.0.1", port=destination_port),)
                    if destination_port else ())
    config = NodeConfig(storage=StorageConfig(spool_dir=tmp_path / "spool", min_free_space_mb=0),
                        processing=ProcessingConfig(quiet_period_s=0.01), destinations=destinations,
                        routes=(RouteConfig(name="r", model="bulk", match=SeriesMatch(min_instances=1), qa=qa,
                                            qa_dose=False, qa_report=False, destinations=tuple(d.name for d in destinations),
                                            **options),))
    node = Node(config)
    node.processor._models[("bulk", ())] = _EnvelopedBulk()
    files = sorted(series_dir.glob("*.dcm"))
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        node.state.record_instance(sop_instance_uid=header.SOPInstanceUID, series_uid=first.SeriesInstanceUID,
                                   sop_class_uid=MR_IMAGE_STORAGE, path=path, calling_ae="PACS",
                                   study_uid=first.StudyInstanceUID, modality="MR", description=None,
                                   image_type=None, body_part="PELVIS", now=time.time() - 60)
    (job_id,) = route_complete_series(node.state, node.config)
    node.processor.process(node.state.claim_job())
    job = node.state.job(job_id)
    if keep_node:
        return job, Path(job.output_dir), node
    node.state.close()
    return job, Path(job.output_dir)


def test_the_node_refuses_a_hard_mismatch_by_default_and_status_shows_why(training_grid_dicom, tmp_path, capsys):
    job, output = _run_job(tmp_path, training_grid_dicom.mr_t2_dir, None)
    assert job.state == "failed"
    assert job.reason.startswith('input refused by the input guard (route on_input_outside_envelope = "refuse-hard"):'
                                 " hard mismatch with the training envelope of model bulk: T2-weighted")
    saved = json.loads((output / GUARD_FILE).read_text())
    assert saved["action"] == "refused" and saved["verdict"] == "hard" and saved["policy"] == "refuse-hard"
    # No sCT; the refusal notice (SR and Encapsulated PDF in the MR's study) says why.
    modalities = sorted(str(pydicom.dcmread(p, stop_before_pixels=True).Modality) for p in output.rglob("*.dcm"))
    assert modalities == ["DOC", "SR"]
    sr = read_qa_sr(output / "report" / "SR.refused.dcm")
    assert sr["verdict"] == "FAIL" and sr["reasons"][0].startswith("no sCT was generated: the input guard found a "
                                                                  "hard mismatch")
    assert any("T2-weighted" in reason for reason in sr["reasons"])
    assert [(name, c["verdict"], c["value"]) for name, c in sr["checks"].items()] == [("input_envelope", "FAIL", 2.0)]
    mr = pydicom.dcmread(min(training_grid_dicom.mr_t2_dir.glob("*.dcm")), stop_before_pixels=True)
    doc = pydicom.dcmread(output / "report" / "DOC.refused.dcm")
    assert doc.StudyInstanceUID == mr.StudyInstanceUID and doc.PatientID == mr.PatientID
    assert doc.SourceInstanceSequence[0].ReferencedSOPClassUID == MR_IMAGE_STORAGE
    assert doc.EncapsulatedDocument[: doc.EncapsulatedDocumentLength] == (output / "report" / REFUSAL_PDF).read_bytes()
    for name in ("SR.refused.dcm", "DOC.refused.dcm"):  # dciodvfy (dicom3tools): zero errors
        assert_valid_dicom(output / "report" / name)
    config = tmp_path / "node.toml"
    config.write_text(f'[storage]\nspool_dir = "{tmp_path / "spool"}"\n')
    assert main(["status", "--config", str(config)]) == EXIT_OK
    assert "input refused by the input guard" in capsys.readouterr().out


def test_a_refused_series_sends_its_notice_to_the_planning_system_then_fails_with_the_reason(
        training_grid_dicom, tmp_path):
    """The physicist still receives the SR and the PDF; status keeps the reason; retry processes again."""
    from tests.sct_node.node_helpers import StoreScp, dcmtk, free_port

    if dcmtk("storescp") is None:
        pytest.skip("dcmtk storescp is not installed (tests/install-system-tools.sh installs it)")
    port = free_port()
    scp = StoreScp(tmp_path / "tps", port)
    try:
        job, _output, node = _run_job(tmp_path, training_grid_dicom.mr_t2_dir, None, destination_port=port,
                                     keep_node=True)
        assert job.state == "delivering" and job.refused.startswith("input refused by the input guard")
        node.dispatcher.run_due()
        job = node.state.job(job.id)
        assert job.state == "failed" and job.reason == job.refused
        received = sorted(str(d.Modality) for d in scp.datasets())
        assert received == ["DOC", "SR"]  # the notice, no sCT
        # Retry processes the series again (here refused again: same policy, same notice UIDs).
        assert node.state.retry_job(job.id) == "complete"
        node.processor.process(node.state.claim_job())
        assert node.state.job(job.id).state == "delivering"
        node.state.close()
    finally:
        scp.stop()


def test_the_node_marks_when_the_route_says_mark(training_grid_dicom, tmp_path):
    job, output = _run_job(tmp_path, training_grid_dicom.mr_t2_dir, "mark")
    assert job.state == "done"
    saved = json.loads((output / GUARD_FILE).read_text())
    assert saved["action"] == "marked" and saved["verdict"] == "hard" and saved["model"].startswith("bulk:")
    assert any("T2-weighted" in reason for reason in saved["reasons"])
    header = pydicom.dcmread(min((output / "sct").glob("*.dcm")), stop_before_pixels=True)
    assert 'made by route on_input_outside_envelope = "mark"' in header.ImageComments


def test_the_node_passes_a_series_of_the_training_kind(training_grid_dicom, tmp_path):
    job, output = _run_job(tmp_path, training_grid_dicom.mr_t1_dir, "refuse")
    assert job.state == "done", job.reason
    saved = json.loads((output / GUARD_FILE).read_text())
    assert saved["action"] == "passed" and saved["verdict"] == "ok" and saved["fields_missing"] == []
    header = pydicom.dcmread(min((output / "sct").glob("*.dcm")), stop_before_pixels=True)
    assert "ImageComments" not in header


def test_route_option_rejects_an_unknown_policy():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="on_input_outside_envelope"):
        RouteConfig(name="r", on_input_outside_envelope="ignore")


@pytest.mark.parametrize("series, expected", [("mr_t2_dir", "FAIL"), ("mr_t1_dir", None)])
def test_the_qa_cannot_pass_an_sct_made_from_input_outside_the_envelope(training_grid_dicom, tmp_path, series,
                                                                        expected):
    """Marked (route "mark"): the sCT is made, and the QA's input_envelope check fails it for a hard mismatch."""
    job, output = _run_job(tmp_path, getattr(training_grid_dicom, series), "mark", qa=True)
    assert job.state == "done", job.reason
    qa = read_qa(output / "qa", maps=False).result
    check = qa.check("input_envelope")
    if expected is None:
        assert check.verdict == Verdict.PASS and check.value == 0 and qa.input_guard.verdict == "ok"
    else:
        assert check.verdict == expected and qa.verdict == Verdict.FAIL and check.value == 2
        assert qa.input_guard.verdict == "hard" and any("T2-weighted" in r for r in qa.input_guard.reasons)
        assert "T2-weighted" in check.reason and any("training envelope" in r for r in qa.reasons)
