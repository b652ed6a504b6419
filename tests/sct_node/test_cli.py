"""The ``sct-node`` command end to end: phantom -> translate -> a valid sCT series; refusals as one line."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest

from sct_node.cli import EXIT_INPUT, EXIT_MODEL, EXIT_OK, build_parser, main
from sct_node.dicom.reader import read_series
from sct_node.dicom.uids import CT_IMAGE_STORAGE
from tests.factories.validation import assert_valid_dicom

#: A small pelvis grid: whole anatomy, quick to generate and translate.
SHAPE = ("20", "64", "64")
SPACING = ("6.5", "6.5", "10")


def _sct_node(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed console script (falls back to ``python -m sct_node``)."""
    executable = shutil.which("sct-node")
    command = [executable] if executable else [sys.executable, "-m", "sct_node"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture(autouse=True)
def restore_logging():
    """``main()`` run in-process sets up the process's logging (level, handler, warnings, hooks): undo it after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    libraries = {name: logging.getLogger(name).level for name in ("pydicom", "pynetdicom")}
    hooks = threading.excepthook, sys.unraisablehook
    yield
    root.handlers[:], root.level = handlers, level
    for name, library_level in libraries.items():
        logging.getLogger(name).setLevel(library_level)
    logging.captureWarnings(False)
    threading.excepthook, sys.unraisablehook = hooks


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("phantoms")
    result = _sct_node("--quiet", "phantom", "--site", "pelvis", "--seed", "7", "--shape", *SHAPE,
                       "--spacing-mm", *SPACING, "--output", str(output))
    assert result.returncode == EXIT_OK, result.stderr
    return output / "pelvis-0007"


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps them here
    assert {"phantom", "translate"} <= set(commands)
    # In this process (a subprocess each took 20 s of the suite); the entry point itself is run once below.
    for name in commands:
        with pytest.raises(SystemExit) as exited:
            main([name, "--help"])
        assert exited.value.code == 0
        assert f"usage: sct-node {name}" in capsys.readouterr().out
    result = _sct_node("serve", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: sct-node serve" in result.stdout and "--role" in result.stdout


def test_phantom_writes_dicom_and_synthrad_layout(phantom_dir):
    for name in ("mr.mha", "ct.mha", "mask.mha"):
        assert (phantom_dir / name).is_file()
    for series in ("MR_T1", "MR_T2", "CT"):
        assert len(list((phantom_dir / "dicom" / series).glob("*.dcm"))) == int(SHAPE[0])
    mr = read_series([phantom_dir / "dicom" / "MR_T1"])
    ct = read_series([phantom_dir / "dicom" / "CT"], sop_classes=[CT_IMAGE_STORAGE])
    assert mr.volume.same_grid(ct.volume)
    assert mr.frame_of_reference_uid == ct.frame_of_reference_uid
    assert mr.study_instance_uid == ct.study_instance_uid


@pytest.mark.slow
def test_every_phantom_object_passes_dciodvfy(phantom_dir):
    files = [*(phantom_dir / "dicom").rglob("*.dcm")]
    assert len(files) == 3 * int(SHAPE[0]) + 1
    for path in files:
        assert_valid_dicom(path)


def _rasterise_even_odd(rtstruct: pydicom.Dataset, name: str, grid) -> np.ndarray:
    """Pixel centres inside the ROI's contours, combining contours of a slice with the even-odd rule."""
    from matplotlib.path import Path as PolygonPath

    number = next(r.ROINumber for r in rtstruct.StructureSetROISequence if r.ROIName == name)
    contours = next(c for c in rtstruct.ROIContourSequence if c.ReferencedROINumber == number)
    _, ny, nx = grid.shape
    rows, columns = np.mgrid[0:ny, 0:nx]
    centres = np.column_stack([columns.ravel(), rows.ravel()])
    mask = np.zeros(grid.shape, dtype=bool)
    for contour in contours.ContourSequence:
        index = grid.patient_to_index(np.asarray(contour.ContourData, dtype=float).reshape(-1, 3))
        k = int(round(index[0, 2]))
        assert np.allclose(index[:, 2], k, atol=1e-3), "contour not on a slice"
        mask[k] ^= PolygonPath(index[:, :2]).contains_points(centres).reshape(ny, nx)
    return mask


def test_phantom_structure_set_reproduces_the_masks(phantom_dir):
    """Contours run midway between pixel centres, so rasterising them gives the masks back exactly.

    rt-utils, an independent reader, is checked too; it rounds contour vertices to whole pixels,
    which costs boundary pixels (Dice about 0.8-0.97 on this coarse grid), so it gets looser bounds.
    """
    from rt_utils import RTStructBuilder

    from models.phantoms import generate_phantom

    phantom = generate_phantom("pelvis", 7, shape_zyx=tuple(int(v) for v in SHAPE),
                               spacing_mm=tuple(float(v) for v in SPACING))
    rtstruct_path = next((phantom_dir / "dicom" / "RTSTRUCT").glob("*.dcm"))
    rtstruct = pydicom.dcmread(rtstruct_path)
    assert {r.ROIName for r in rtstruct.StructureSetROISequence} == {s.name for s in phantom.structures}
    by_rt_utils = RTStructBuilder.create_from(dicom_series_path=str(phantom_dir / "dicom" / "CT"),
                                              rt_struct_path=str(rtstruct_path))
    for structure in phantom.structures:
        exact = _rasterise_even_odd(rtstruct, structure.name, phantom.ct_hu)
        np.testing.assert_array_equal(exact, structure.mask, err_msg=structure.name)
        mask = np.moveaxis(by_rt_utils.get_roi_mask_by_name(structure.name), -1, 0)  # (y, x, z) -> (z, y, x)
        dice = 2 * np.sum(mask & structure.mask) / (mask.sum() + structure.mask.sum())
        assert dice > (0.95 if structure.kind == "EXTERNAL" else 0.7), (structure.name, dice)


def test_translate_end_to_end_on_a_phantom(phantom_dir, tmp_path):
    output = tmp_path / "sct"
    # bulk: its output is known exactly (water body, air outside); the default diffusion model's CLI run is
    # tests/models/test_bundled_models.py.
    result = _sct_node("translate", "--input", str(phantom_dir / "dicom" / "MR_T1"), "--output", str(output),
                       "--model", "bulk", "--json", "--quiet")
    assert result.returncode == EXIT_OK, result.stderr
    summary = json.loads(result.stdout)
    assert summary["instances"] == int(SHAPE[0]) and summary["model"].startswith("bulk:")

    mr = read_series([phantom_dir / "dicom" / "MR_T1"])
    sct = read_series([output], sop_classes=[CT_IMAGE_STORAGE])
    assert sct.volume.same_grid(mr.volume)
    assert sct.series_instance_uid == summary["sct_series_instance_uid"]
    assert set(np.unique(sct.volume.array)) == {-1000.0, 0.0}
    # The bulk model's body is the phantom's body.
    import SimpleITK as sitk

    body = sitk.GetArrayFromImage(sitk.ReadImage(str(phantom_dir / "mask.mha"))) > 0
    water = sct.volume.array == 0
    dice = 2 * np.sum(body & water) / (body.sum() + water.sum())
    assert dice > 0.95, dice
    for path in output.glob("*.dcm"):
        assert_valid_dicom(path)


def test_translate_refusal_is_one_line_and_writes_nothing(phantom_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(phantom_dir / "dicom" / "MR_T1", broken)
    files = sorted(broken.glob("*.dcm"), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    os.remove(files[5])
    output = tmp_path / "sct"
    result = _sct_node("translate", "--input", str(broken), "--output", str(output))
    assert result.returncode == EXIT_INPUT
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sct-node: error: 1 slice(s) missing between"), result.stderr
    assert "Traceback" not in result.stderr
    assert not output.exists() or not any(output.rglob("*.dcm"))


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["translate", "--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o"),
                 "--debug"]) == EXIT_INPUT
    assert "Traceback" in capsys.readouterr().err


def test_unknown_model_is_a_model_error(phantom_dir, tmp_path, capsys):
    code = main(["translate", "--input", str(phantom_dir / "dicom" / "MR_T1"), "--output", str(tmp_path / "o"),
                 "--model", "no-such-model"])
    assert code == EXIT_MODEL
    assert "unknown model 'no-such-model'; built-in models: bulk" in capsys.readouterr().err


def test_bad_arguments_exit_2_with_a_message(tmp_path):
    result = _sct_node("phantom", "--output", str(tmp_path), "--cases", "0")
    assert result.returncode == 2
    assert "expected a positive integer; found '0'" in result.stderr


def test_train_with_appearance_randomisation_records_it_and_needs_label_maps(tmp_path, capsys):
    """`sct-node train --randomise-appearance`: the card says how the model was trained; cases without a label
    map (real data) get a message that names the missing file instead of a silent fallback."""
    from models.phantoms import generate_phantom
    from models.phantoms.synthrad import write_synthrad_case

    data = tmp_path / "data"
    for site in ("head", "pelvis"):
        write_synthrad_case(generate_phantom(site, 11, shape_zyx=(12, 96, 96)), data / f"{site}-11")
    common = ["train", "--data", str(data), "--arch", "unet", "--steps", "2", "--batch-size", "2", "--patch-size",
              "32", "--base-channels", "8", "--validate-every", "2", "--checkpoint-every", "2", "--quiet"]
    assert main([*common, "--output", str(tmp_path / "ckpt"), "--randomise-appearance", "0.7"]) == EXIT_OK
    card = json.loads((tmp_path / "ckpt" / "card.json").read_text())
    assert card["training_config"]["randomisation"]["probability"] == 0.7
    assert "t1_fs" in card["training_config"]["randomisation"]["families"]
    (data / "head-11" / "labels.mha").unlink()  # a training case (the last one is held out for validation)
    assert main([*common, "--output", str(tmp_path / "other"), "--randomise-appearance", "0.5"]) == EXIT_MODEL
    assert "needs a tissue label map per case (labels.mha" in capsys.readouterr().err
    assert main([*common, "--output", str(tmp_path / "ckpt2"), "--randomise-appearance", "1.5"]) != EXIT_OK


def test_train_records_a_declared_acquisition_for_cases_without_a_sidecar(tmp_path, capsys):
    """Real data exported to the SynthRAD layout has no acquisition.json: --acquisition declares it."""
    from models.phantoms import generate_phantom
    from models.phantoms.synthrad import write_synthrad_case

    data = tmp_path / "data"
    for site in ("pelvis", "head"):
        write_synthrad_case(generate_phantom(site, 12, shape_zyx=(12, 96, 96)), data / f"{site}-12")
        (data / f"{site}-12" / "acquisition.json").unlink()
    declared = tmp_path / "acq.json"
    declared.write_text(json.dumps({"weighting": "T1", "scanning_sequence": ["GR"], "echo_time_ms": 2.5,
                                    "field_strength_t": 3.0, "body_part": "PELVIS"}))
    common = ["train", "--data", str(data), "--arch", "unet", "--steps", "1", "--batch-size", "2", "--patch-size",
              "32", "--base-channels", "8", "--quiet"]
    assert main([*common, "--output", str(tmp_path / "a"), "--acquisition", str(declared)]) == EXIT_OK
    envelope = json.loads((tmp_path / "a" / "card.json").read_text())["envelope"]
    assert envelope["echo_time_ms"] == {"low": 2.5, "high": 2.5} and envelope["body_sites"] == ["pelvis"]
    assert "declared for the other 1 (--acquisition)" in envelope["source"]
    declared.write_text(json.dumps({"echo_time": 2.5}))
    assert main([*common, "--output", str(tmp_path / "b"), "--acquisition", str(declared)]) == EXIT_MODEL
    assert "the declared acquisition (--acquisition)" in capsys.readouterr().err
