"""The bundled weights end to end: `translate --model diffusion` on a phantom they never saw, and `evaluate`."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from models.phantoms import generate_phantom
from models.phantoms.synthrad import write_synthrad_case
from models.registry import BUNDLED_WEIGHTS, load_model
from sct_node.cli import EXIT_OK, main
from sct_node.tools.phantom_writer import write_phantom_dicom

#: Seeds from 2000 up are never used for the bundled weights (training 0-3, validation 1000).
HELD_OUT_SEED = 2500
#: The training phantoms' in-plane size; a few slices keep the test fast.
SHAPE_ZYX = (10, 256, 256)
#: Upper bound of the body MAE of the bundled diffusion model on this held-out pelvis phantom: measured
#: 34.2 HU at its default 1 step when the weights were made (U-Net 39.6 HU, bulk 95.9 HU; 2-core CPU, torch
#: 2.13). The bound leaves a third for CPU/GPU (bf16) and library differences, and stays far below the bulk
#: model's, which has no bone. The test also asks for what the benchmark shows on whole volumes: the
#: diffusion model no worse than the U-Net it corrects.
MAE_BOUND_HU = 45.0


@pytest.mark.parametrize("name", ["diffusion", "unet"])
def test_bundled_weights_are_small_and_carry_a_phantom_only_model_card(name):
    folder = BUNDLED_WEIGHTS / name
    assert (folder / "model.pt").stat().st_size < 20e6
    card = json.loads((folder / "card.json").read_text())
    assert "phantom" in card["training_data"].lower() and "not for clinical use" in card["intended_use"].lower()
    assert card["architecture"] == name and len(card["content_hash"]) >= 16


@pytest.mark.slow
def test_translate_with_the_bundled_diffusion_model(tmp_path):
    phantom = generate_phantom("pelvis", HELD_OUT_SEED, shape_zyx=SHAPE_ZYX)
    written = write_phantom_dicom(phantom, "held-out", tmp_path / "dicom")
    assert main(["translate", "--input", str(written.mr_t1_dir), "--output", str(tmp_path / "sct"),
                 "--model", "diffusion", "--quiet"]) == EXIT_OK
    files = sorted((tmp_path / "sct").glob("*.dcm"))
    assert len(files) == SHAPE_ZYX[0]
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    identity = load_model("diffusion").card.identity
    assert identity in header.ContributingEquipmentSequence[0].ContributionDescription
    from sct_node.dicom.reader import read_series

    sct = read_series([tmp_path / "sct"], sop_classes=["1.2.840.10008.5.1.4.1.1.2"]).volume
    body = phantom.body_mask
    mae = float(np.abs(sct.array - phantom.ct_hu.array)[body].mean())
    bulk = float(np.abs(load_model("bulk").translate(phantom.mr_t1).hu.array - phantom.ct_hu.array)[body].mean())
    unet = float(np.abs(load_model("unet").translate(phantom.mr_t1).hu.array - phantom.ct_hu.array)[body].mean())
    # The corrective diffusion model's one-step estimate is its U-Net's mean plus a correction: at least as good
    # as the U-Net up to 1 HU (randomised weights of this commit: 38.26 against 38.23 HU on this phantom; the
    # T1w-only weights before them were 2-3 HU better than their U-Net).
    assert mae < MAE_BOUND_HU and mae < bulk and mae <= unet + 1.0, (mae, unet, bulk)


def test_the_bundled_diffusion_model_corrects_the_bundled_unet():
    from models.learned.checkpoint import load_checkpoint

    diffusion = json.loads((BUNDLED_WEIGHTS / "diffusion" / "card.json").read_text())
    unet = json.loads((BUNDLED_WEIGHTS / "unet" / "card.json").read_text())
    assert diffusion["mean_model"]["content_hash"] == unet["content_hash"]
    config, _, _ = load_checkpoint(BUNDLED_WEIGHTS / "diffusion")
    # The steps curve set both step counts: the one-step mean estimate, and converged samples for ensembles.
    assert config["default_steps"] == diffusion["evaluation"]["default_steps"] >= 1
    assert config["ensemble_steps"] == diffusion["evaluation"]["ensemble_steps"] >= 2


def test_evaluate_prints_the_table_and_writes_json(tmp_path, capsys):
    phantom = generate_phantom("head", HELD_OUT_SEED, shape_zyx=(12, 40, 48))
    write_synthrad_case(phantom, tmp_path / "data" / "head-2500")
    assert main(["evaluate", "--data", str(tmp_path / "data"), "--model", "bulk",
                 "--json-output", str(tmp_path / "results.json"), "--quiet"]) == EXIT_OK
    table = capsys.readouterr().out
    assert "head-2500" in table and "MAE bone" in table and "mean" in table
    results = json.loads((tmp_path / "results.json").read_text())
    # The MAE by hand: mean |CT - sCT| over the case's mask.
    hu = phantom.ct_hu.array.astype(np.float64)
    sct = load_model("bulk").translate(phantom.mr_t1).hu.array.astype(np.float64)
    expected = float(np.abs(hu - sct)[phantom.body_mask].mean())
    assert results["cases"][0]["mae_hu"] == pytest.approx(expected, rel=1e-6)
    assert results["summary"]["mae_hu"] == pytest.approx(expected, rel=1e-6)
    assert set(results["cases"][0]["mae_per_tissue_hu"]) >= {"air", "soft_tissue", "bone"}
