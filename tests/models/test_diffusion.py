"""The diffusion maths: the cosine schedule, v-parametrisation identities, DDIM with an oracle, and learning."""

from __future__ import annotations

import math

import pytest
import torch

from models.errors import ModelError
from models.learned.diffusion import (
    alpha_bar,
    ddim_sample,
    eps_from_v,
    q_sample,
    training_loss,
    v_target,
    x0_from_v,
)
from models.learned.networks import UNet


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _cosine_by_hand(t: float) -> float:
    """Nichol & Dhariwal Eq. 17 with s = 0.008, clipped to [1e-5, 0.9999], in plain floats."""
    s = 0.008
    f = math.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    return min(max(f / f0, 1e-5), 0.9999)


@pytest.mark.parametrize("t, expected", [(0.0, 0.9999), (0.25, None), (0.5, None), (1.0, 1e-5)])
def test_alpha_bar_closed_form(t, expected):
    expected = _cosine_by_hand(t) if expected is None else expected
    assert alpha_bar(torch.tensor([t], dtype=torch.float64)).item() == pytest.approx(expected, rel=1e-12)
    assert alpha_bar(torch.tensor([t])).item() == pytest.approx(expected, rel=1e-5)
    if t == 0.5:
        # The unclipped cosine ratio, worked out once: cos^2(0.508/1.008 * pi/2) / cos^2(0.008/1.008 * pi/2).
        assert expected == pytest.approx(0.493844, abs=1e-6)


def test_alpha_bar_is_monotone_from_one_to_zero():
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    ab = alpha_bar(t)
    assert torch.all(ab[1:] <= ab[:-1])
    interior = ab[10:-10]
    assert torch.all(interior[1:] < interior[:-1])
    assert ab[0] > 0.9998 and ab[-1] < 2e-5
    assert ab.min() >= 1e-5 and ab.max() <= 0.9999
    assert alpha_bar(torch.rand(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))).shape == (4, 3)


def test_alpha_bar_refuses_integer_times():
    with pytest.raises(ModelError, match="floating-point"):
        alpha_bar(torch.tensor([0, 1]))


def test_q_sample_with_zero_noise_scales_the_image():
    x0 = _randn(3, 1, 4, 5)
    t = torch.tensor([0.0, 0.3, 0.8])
    x_t = q_sample(x0, t, torch.zeros_like(x0))
    expected = torch.stack([math.sqrt(_cosine_by_hand(v)) * x0[i] for i, v in enumerate(t.tolist())])
    torch.testing.assert_close(x_t, expected, rtol=1e-6, atol=1e-7)
    # A 0-d time is broadcast over the batch.
    torch.testing.assert_close(q_sample(x0, torch.tensor(0.3), torch.zeros_like(x0))[1], x_t[1])


def test_v_round_trip_recovers_image_and_noise():
    x0, noise = _randn(4, 2, 6, 6, seed=1), _randn(4, 2, 6, 6, seed=2)
    t = torch.tensor([0.0, 0.01, 0.5, 1.0])
    x_t = q_sample(x0, t, noise)
    v = v_target(x0, t, noise)
    torch.testing.assert_close(x0_from_v(x_t, t, v), x0, rtol=0, atol=1e-5)
    torch.testing.assert_close(eps_from_v(x_t, t, v), noise, rtol=0, atol=1e-5)


def test_shape_mismatches_are_refused():
    x0 = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ModelError, match="one time per batch item"):
        q_sample(x0, torch.zeros(3), x0)
    with pytest.raises(ModelError, match="noise must have the shape"):
        v_target(x0, torch.zeros(2), torch.zeros(2, 1, 4, 5))


class _Oracle(torch.nn.Module):
    """Returns the exact v for a known clean image: v = (sqrt(ab) x_t - x0) / sqrt(1 - ab)."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0 = x0
        self.times: list[float] = []

    def forward(self, inputs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.times.append(float(t[0]))
        x_t = inputs[:, : self.x0.shape[1]]
        ab = alpha_bar(t).reshape(-1, 1, 1, 1)
        return (ab.sqrt() * x_t - self.x0) / (1 - ab).sqrt()


@pytest.mark.parametrize("steps", [1, 2, 10])
def test_ddim_with_an_oracle_recovers_the_image(steps):
    x0 = torch.tanh(_randn(2, 1, 8, 8, seed=3))  # inside [-1, 1], so clipping does not interfere
    cond = _randn(2, 3, 8, 8, seed=4)
    oracle = _Oracle(x0)
    calls = []
    sample = ddim_sample(oracle, cond, steps, generator=torch.Generator().manual_seed(0),
                         progress=lambda done, total: calls.append((done, total)))
    torch.testing.assert_close(sample, x0, rtol=0, atol=1e-5)
    assert oracle.times == pytest.approx([1 - i / steps for i in range(steps)])
    assert calls == [(i + 1, steps) for i in range(steps)]


def test_one_step_is_the_one_shot_prediction_and_clipping_applies():
    cond = _randn(1, 2, 4, 4, seed=5)
    x_T = _randn(1, 1, 4, 4, seed=6)

    def model(inputs, t):
        return 3.0 * inputs[:, 1:2] - inputs[:, :1]

    one_shot = x0_from_v(x_T, torch.ones(1), model(torch.cat([x_T, cond], 1), torch.ones(1)))
    assert one_shot.abs().max() > 1  # so the clamp is exercised
    torch.testing.assert_close(ddim_sample(model, cond, 1, x_T=x_T, clip_x0=False), one_shot)
    torch.testing.assert_close(ddim_sample(model, cond, 1, x_T=x_T), one_shot.clamp(-1, 1))


def test_ddim_is_deterministic_given_the_seed():
    cond = _randn(2, 1, 8, 8, seed=7)

    def model(inputs, t):
        return 0.3 * inputs[:, :1] + 0.1 * inputs[:, 1:] * t.reshape(-1, 1, 1, 1)

    def sample(seed):
        return ddim_sample(model, cond, 4, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(11), sample(11))
    assert not torch.allclose(sample(11), sample(12))
    x_T = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(11))
    assert torch.equal(ddim_sample(model, cond, 4, x_T=x_T), sample(11))
    assert sample(11).shape == (2, 1, 8, 8)


def test_ddim_refuses_bad_arguments():
    cond = torch.zeros(1, 2, 8, 8)

    def model(inputs, t):
        return inputs[:, :1]

    for steps in (0, -1, 2.0, True):
        with pytest.raises(ModelError, match="steps"):
            ddim_sample(model, cond, steps)
    with pytest.raises(ModelError, match="x_T"):
        ddim_sample(model, cond, 2, x_T=torch.zeros(1, 1, 8, 4))


def _tiny_denoiser(seed: int) -> UNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet(2, 1, base_channels=8, channel_mults=(1, 2), attention_levels=(1,), time_embedding=True)


def test_training_loss_is_mse_on_v_and_backpropagates():
    x0, cond = torch.tanh(_randn(3, 1, 8, 8, seed=8)), _randn(3, 1, 8, 8, seed=9)
    net = _tiny_denoiser(0)
    loss = training_loss(net, x0, cond, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert net.conv_out.weight.grad is not None and net.conv_out.weight.grad.abs().sum() > 0
    # The untrained denoiser predicts v = 0, so the loss is the mean square of the true v for the same draws.
    generator = torch.Generator().manual_seed(0)
    t = torch.rand(3, generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    assert loss.item() == pytest.approx(v_target(x0, t, noise).pow(2).mean().item(), rel=1e-6)


def test_training_loss_low_discrepancy_times_are_evenly_spaced():
    seen = []

    def model(inputs, t):
        seen.append(t)
        return torch.zeros_like(inputs[:, :1])

    training_loss(model, torch.zeros(8, 1, 4, 4), torch.zeros(8, 1, 4, 4),
                  generator=torch.Generator().manual_seed(3), low_discrepancy=True)
    gaps = torch.diff(torch.sort(seen[0]).values)
    torch.testing.assert_close(gaps, torch.full((7,), 1 / 8), rtol=0, atol=1e-6)


def test_training_loss_refuses_mismatched_condition():
    with pytest.raises(ModelError, match="cond"):
        training_loss(lambda x, t: x[:, :1], torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 4))


@pytest.mark.slow
def test_a_tiny_conditional_denoiser_learns_to_copy_its_condition():
    net = _tiny_denoiser(1)
    optimiser = torch.optim.Adam(net.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    data = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(200):
        # Smooth images in [-1, 1]: a random plane through the 8 x 8 grid.
        coefficients = torch.rand((8, 3, 1, 1), generator=data) * 2 - 1
        ramp = torch.linspace(-1, 1, 8)
        cond = (coefficients[:, :1] * ramp[None, None, :, None] + coefficients[:, 1:2] * ramp[None, None, None, :]
                + coefficients[:, 2:]).clamp(-1, 1)
        loss = training_loss(net, cond, cond, generator=generator)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < first / 3
