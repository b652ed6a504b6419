"""Corrective diffusion: sampling maths, the residual scale, and training it over a trained U-Net."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from models.errors import ModelError
from models.learned.checkpoint import load_checkpoint
from models.learned.corrective import CorrectiveDiffusion, diffusion_sample, residual_scale_from
from models.learned.diffusion import ALPHA_BAR_MIN
from models.learned.model import LearnedModel
from models.learned.networks import UNet
from models.learned.train import TrainConfig, train
from models.phantoms import generate_phantom
from models.phantoms.synthrad import write_synthrad_case

SMALL = {"base_channels": 8, "channel_mults": (1, 2), "attention_levels": (-1,), "space_to_depth": 2}


def _pair(scale: float = 0.25) -> CorrectiveDiffusion:
    torch.manual_seed(0)
    return CorrectiveDiffusion(UNet(5, 1, time_embedding=True, **SMALL), UNet(3, 1, **SMALL), scale).eval()


def test_one_step_from_an_untrained_denoiser_is_the_mean_plus_the_scaled_start_noise():
    # A fresh diffusion U-Net predicts v = 0 (zero-initialised output), so one DDIM step from t = 1 gives
    # x0 = sqrt(alpha_bar(1)) x_T: the sCT is mu + scale * sqrt(ALPHA_BAR_MIN) * x_T, in closed form.
    network = _pair(scale=0.25)
    mr, noise = torch.randn(2, 3, 8, 12), torch.randn(2, 1, 8, 12)
    out = diffusion_sample(network, mr, 1, noise)
    mu = network.mean(mr)
    torch.testing.assert_close(out, mu + 0.25 * math.sqrt(ALPHA_BAR_MIN) * noise)


def test_the_training_pair_is_the_scaled_residual_and_the_mean_as_a_condition():
    network = _pair(scale=0.5)
    mr, ct = torch.randn(2, 3, 8, 12), torch.randn(2, 1, 8, 12)
    residual, condition = network.residual_and_condition(ct, mr)
    mu = network.mean(mr)
    torch.testing.assert_close(residual, (ct - mu) / 0.5)
    assert condition.shape == (2, 4, 8, 12)
    torch.testing.assert_close(condition[:, :3], mr)
    torch.testing.assert_close(condition[:, 3:], mu)
    # Only the denoiser learns; the mean network stays frozen and in eval mode.
    network.train()
    assert not network.mean.training and network.denoiser.training
    assert all(not p.requires_grad for p in network.mean.parameters())
    assert all(p.requires_grad for p in network.denoiser.parameters())


def test_the_mean_is_computed_in_float32_under_autocast():
    # bf16 would put ~4 HU steps into mu, and so into the residual target and the sCT.
    network = _pair()
    mr = torch.randn(2, 3, 8, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mu = network.predict_mean(mr)
    assert mu.dtype == torch.float32
    torch.testing.assert_close(mu, network.mean(mr), rtol=0, atol=0)


def test_residual_scale_is_the_standard_deviation_inside_the_body():
    torch.manual_seed(1)
    mean = UNet(3, 1, **SMALL)
    mr, ct = torch.randn(2, 3, 8, 8), torch.randn(2, 1, 8, 8)
    body = torch.zeros(2, 1, 8, 8)
    body[:, :, 2:6, 1:7] = 1
    with torch.no_grad():
        residual = (ct - mean(mr)).numpy()
    expected = float(np.std(residual[body.numpy() > 0.5], ddof=1))
    assert residual_scale_from(mean, [{"mr": mr, "ct": ct, "body": body}]) == pytest.approx(expected, rel=1e-5)


class _Copy(nn.Module):
    def forward(self, x):
        return x[:, :1]


def test_residual_scale_refuses_no_body_and_a_perfect_mean():
    mr = torch.randn(1, 3, 8, 8)
    with pytest.raises(ModelError, match="no body pixels"):
        residual_scale_from(_Copy(), [{"mr": mr, "ct": mr[:, :1], "body": torch.zeros(1, 1, 8, 8)}])
    with pytest.raises(ModelError, match="nothing to correct"):
        residual_scale_from(_Copy(), [{"mr": mr, "ct": mr[:, :1].clone(), "body": torch.ones(1, 1, 8, 8)}])


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_scales_are_refused(scale):
    with pytest.raises(ModelError, match="residual_scale"):
        CorrectiveDiffusion(UNet(5, 1, time_embedding=True, **SMALL), UNet(3, 1, **SMALL), scale)


def test_networks_that_do_not_fit_together_are_refused():
    with pytest.raises(ModelError, match="needs 5"):
        CorrectiveDiffusion(UNet(4, 1, time_embedding=True, **SMALL), UNet(3, 1, **SMALL), 0.1)
    with pytest.raises(ModelError, match="regression U-Net"):
        CorrectiveDiffusion(UNet(5, 1, time_embedding=True, **SMALL), UNet(3, 1, time_embedding=True, **SMALL), 0.1)


# --- training over a trained U-Net ------------------------------------------------------------------

TINY = {"batch_size": 4, "patch_size": 32, "base_channels": 8, "channel_mults": (1, 2), "validate_every": 1000,
        "checkpoint_every": 1000, "half_weights": False, "learning_rate": 1e-3}


@pytest.fixture(scope="module")
def trained_unet(tmp_path_factory):
    root = tmp_path_factory.mktemp("corrective")
    write_synthrad_case(generate_phantom("pelvis", 3, shape_zyx=(8, 40, 48)), root / "cases" / "pelvis-0003")
    write_synthrad_case(generate_phantom("head", 4, shape_zyx=(12, 40, 48)), root / "cases" / "head-0004")
    train(root / "cases", root / "unet", TrainConfig(architecture="unet", steps=40, **TINY), show_progress=False)
    return root


@pytest.mark.slow
def test_corrective_diffusion_trains_over_the_frozen_unet_and_resumes_exactly(trained_unet, tmp_path):
    cases, unet = trained_unet / "cases", trained_unet / "unet"
    settings = dict(architecture="diffusion", mean_model=str(unet), **{**TINY, "checkpoint_every": 20})
    metrics = train(cases, tmp_path / "straight", TrainConfig(steps=60, **settings), show_progress=False)
    # The residual of a 40-step U-Net is largely what the MR cannot tell, so the loss falls less than on the
    # whole CT (measured: 1.11 -> 0.87 in 60 steps; 0.84 after 150).
    assert metrics["run_loss_end"] * 1.2 < metrics["run_loss_start"], metrics
    config, state, card = load_checkpoint(tmp_path / "straight")
    unet_config, unet_state, unet_card = load_checkpoint(unet)
    assert config["mean_network"] == unet_config and config["residual_scale"] > 0
    for name, tensor in unet_state.items():  # the U-Net inside is the U-Net given, untouched by training
        torch.testing.assert_close(state[f"mean.{name}"], tensor, msg=name)
    assert card["mean_model"]["content_hash"] == unet_card["content_hash"]
    assert "Corrective" in card["description"] and unet_card["content_hash"] in card["description"]

    # Resumed without --mean-model: the checkpoint says what it corrects.
    train(cases, tmp_path / "resumed", TrainConfig(steps=20, **settings), show_progress=False)
    resume_settings = {k: v for k, v in settings.items() if k != "mean_model"}
    train(cases, tmp_path / "resumed", TrainConfig(steps=60, **resume_settings), show_progress=False)
    _, resumed, _ = load_checkpoint(tmp_path / "resumed")
    for name, tensor in state.items():
        torch.testing.assert_close(resumed[name], tensor, msg=name)

    # Inference: any size, body mask, determinism, and the ensemble's spread as the uncertainty map.
    mr = generate_phantom("pelvis", 1001, shape_zyx=(12, 45, 51), spacing_mm=(8.0, 8.0, 12.0)).mr_t1
    first = LearnedModel(tmp_path / "straight", steps=2, ensemble=2, seed=3).translate(mr)
    again = LearnedModel(tmp_path / "straight", steps=2, ensemble=2, seed=3).translate(mr)
    np.testing.assert_array_equal(first.hu.array, again.hu.array)
    assert np.all(first.hu.array[~first.body_mask] == -1024.0)
    assert first.uncertainty_hu.array[first.body_mask].max() > 0


def test_what_cannot_be_corrected_is_refused(trained_unet, tmp_path):
    cases, unet = trained_unet / "cases", trained_unet / "unet"
    with pytest.raises(ModelError, match="corrected only by the diffusion architecture"):
        TrainConfig(architecture="unet", mean_model=str(unet))
    with pytest.raises(ModelError, match="--context 1"):
        train(cases, tmp_path / "context", TrainConfig(steps=2, mean_model=str(unet), **{**TINY, "context": 2}),
              show_progress=False)
    train(cases, tmp_path / "plain", TrainConfig(steps=2, **TINY), show_progress=False)
    with pytest.raises(ModelError, match="is a diffusion checkpoint"):
        train(cases, tmp_path / "over-diffusion", TrainConfig(steps=2, mean_model=str(tmp_path / "plain"), **TINY),
              show_progress=False)
    with pytest.raises(ModelError, match="plain diffusion checkpoint"):
        train(cases, tmp_path / "plain", TrainConfig(steps=4, mean_model=str(unet), **TINY), show_progress=False)
    card = json.loads((tmp_path / "plain" / "card.json").read_text())
    assert card["training_steps"] == 2  # the refused runs changed nothing
