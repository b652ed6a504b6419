"""The U-Net and PatchGAN of the learned models: shapes, refusals, determinism, size, and that they learn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.errors import ModelError
from models.learned.networks import PatchDiscriminator, UNet, count_parameters


def _seeded(seed: int, build):
    """``build()`` under ``torch.manual_seed(seed)`` without touching the global RNG state of other tests."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _tiny(in_channels: int, out_channels: int = 1, **kwargs) -> UNet:
    options = {"base_channels": 8, "channel_mults": (1, 2), "attention_levels": (1,)}
    options.update(kwargs)
    return UNet(in_channels, out_channels, **options)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("in_channels, out_channels", [(3, 1), (1, 1), (3, 2)])
@pytest.mark.parametrize("height, width", [(16, 24), (32, 32), (8, 40)])
@pytest.mark.parametrize("time_embedding", [False, True])
def test_unet_keeps_the_spatial_shape(in_channels, out_channels, height, width, time_embedding):
    net = _seeded(0, lambda: _tiny(in_channels, out_channels, time_embedding=time_embedding))
    x = _randn(2, in_channels, height, width)
    t = torch.tensor([0.1, 0.9]) if time_embedding else None
    with torch.no_grad():
        out = net(x, t)
    assert out.shape == (2, out_channels, height, width)
    assert torch.isfinite(out).all()
    assert net.size_multiple == 2


def test_three_levels_with_two_blocks_and_dropout():
    net = _seeded(0, lambda: UNet(2, 1, base_channels=8, channel_mults=(1, 2, 2), attention_levels=(1, -1),
                                  time_embedding=True, num_res_blocks=2, dropout=0.1))
    assert net.size_multiple == 4
    assert net.attention_levels == (1, 2)
    with torch.no_grad():
        assert net.eval()(_randn(1, 2, 12, 20), torch.tensor([0.5])).shape == (1, 1, 12, 20)


def test_time_changes_the_output_of_a_trained_denoiser():
    net = _seeded(0, lambda: _tiny(2, time_embedding=True))
    # The output conv starts at zero (v = 0 everywhere); give it weights so t can show.
    with torch.no_grad():
        net.conv_out.weight.normal_(generator=torch.Generator().manual_seed(1))
        x = _randn(1, 2, 16, 16)
        assert not torch.allclose(net(x, torch.tensor([0.0])), net(x, torch.tensor([1.0])))
        # A 0-d t is broadcast to the batch.
        assert torch.equal(net(x, torch.tensor(0.25)), net(x, torch.tensor([0.25])))


def test_the_diffusion_unet_starts_at_zero():
    net = _seeded(0, lambda: _tiny(2, time_embedding=True))
    with torch.no_grad():
        assert torch.count_nonzero(net(_randn(1, 2, 16, 16), torch.tensor([0.3]))) == 0


@pytest.mark.parametrize("height, width", [(15, 16), (16, 18)])
def test_indivisible_sizes_are_refused_with_the_multiple(height, width):
    net = _seeded(0, lambda: UNet(1, 1, base_channels=8, channel_mults=(1, 2, 4)))
    with pytest.raises(ModelError, match="multiples of 4"):
        net(torch.zeros(1, 1, height, width))


def test_missing_or_unexpected_t_is_refused():
    denoiser = _seeded(0, lambda: _tiny(2, time_embedding=True))
    with pytest.raises(ModelError, match="needs t"):
        denoiser(torch.zeros(1, 2, 16, 16))
    with pytest.raises(ModelError, match=r"shape \(2,\)"):
        denoiser(torch.zeros(2, 2, 16, 16), torch.zeros(3))
    plain = _seeded(0, lambda: _tiny(2))
    with pytest.raises(ModelError, match="no time embedding"):
        plain(torch.zeros(1, 2, 16, 16), torch.zeros(1))
    with pytest.raises(ModelError, match=r"\(N, 2, H, W\)"):
        plain(torch.zeros(1, 3, 16, 16))


@pytest.mark.parametrize("kwargs, message", [
    ({"in_channels": 0, "out_channels": 1}, "in_channels"),
    ({"in_channels": 1, "out_channels": 1, "base_channels": 0}, "base_channels"),
    ({"in_channels": 1, "out_channels": 1, "channel_mults": ()}, "channel_mults"),
    ({"in_channels": 1, "out_channels": 1, "channel_mults": (1, 0)}, "channel_mults"),
    ({"in_channels": 1, "out_channels": 1, "channel_mults": (1, 2)}, "attention_levels"),
    ({"in_channels": 1, "out_channels": 1, "dropout": 1.0}, "dropout"),
    ({"in_channels": 1, "out_channels": 1, "num_res_blocks": 0}, "num_res_blocks"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ModelError, match=message):
        UNet(**kwargs)


def test_same_seed_same_weights_and_output():
    first = _seeded(7, lambda: _tiny(3, time_embedding=True))
    second = _seeded(7, lambda: _tiny(3, time_embedding=True))
    other = _seeded(8, lambda: _tiny(3, time_embedding=True))
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert not torch.equal(first.conv_in.weight, other.conv_in.weight)
    x, t = _randn(2, 3, 16, 24), torch.tensor([0.2, 0.7])
    with torch.no_grad():
        assert torch.equal(first(x, t), second(x, t))


def test_default_unet_is_modest_in_size():
    plain = _seeded(0, lambda: UNet(3, 1))
    denoiser = _seeded(0, lambda: UNet(4, 1, time_embedding=True))
    # Stated in the UNet docstring: about 2.6 M and 2.9 M parameters, under 20 MB of float32 weights.
    assert 2.4e6 < count_parameters(plain) < 2.8e6
    assert 2.7e6 < count_parameters(denoiser) < 3.0e6
    assert count_parameters(denoiser) * 4 < 20e6
    for parameter in plain.conv_in.parameters():
        parameter.requires_grad_(False)
    assert count_parameters(plain, trainable_only=True) == count_parameters(plain) - 3 * 32 * 9 - 32


def test_group_norm_groups_divide_odd_widths():
    net = _seeded(0, lambda: UNet(1, 1, base_channels=6, channel_mults=(1, 2), attention_levels=(1,)))
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    # The largest divisor <= 8: 6 for 6, 12 and 18 channels, 8 for the decoder's concatenated 24.
    assert {(m.num_channels, m.num_groups) for m in norms} == {(6, 6), (12, 6), (18, 6), (24, 8)}
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 8, 8)).shape == (1, 1, 8, 8)


@pytest.mark.parametrize("layers, size, expected", [(3, 256, 30), (3, 64, 6), (2, 32, 6)])
def test_patch_discriminator_logit_map(layers, size, expected):
    disc = _seeded(0, lambda: PatchDiscriminator(4, base_channels=8, layers=layers))
    assert disc.output_size(size, size) == (expected, expected)
    with torch.no_grad():
        assert disc(torch.zeros(2, 4, size, size)).shape == (2, 1, expected, expected)
    with torch.no_grad():
        assert disc(torch.zeros(1, 4, size, size + 8)).shape == (1, 1, expected, disc.output_size(size, size + 8)[1])


def test_patch_discriminator_refuses_tiny_inputs_and_wrong_channels():
    disc = _seeded(0, lambda: PatchDiscriminator(2, base_channels=8))
    with pytest.raises(ModelError, match="at least 24"):
        disc(torch.zeros(1, 2, 16, 32))
    with pytest.raises(ModelError, match=r"\(N, 2, H, W\)"):
        disc(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ModelError, match="layers"):
        PatchDiscriminator(2, layers=0)


def test_a_tiny_unet_overfits_one_pair():
    net = _seeded(0, lambda: _tiny(1))
    x = _randn(1, 1, 16, 16, seed=1)
    # A target the identity cannot give: a smooth nonlinear function of the input plus a gradient.
    y = torch.tanh(2 * x) * 0.5 + torch.linspace(-0.5, 0.5, 16)[None, None, None, :]
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = F.l1_loss(net(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5


def test_space_to_depth_works_on_pixel_blocks_but_answers_per_pixel():
    torch.manual_seed(0)
    net = UNet(3, 1, base_channels=8, channel_mults=(1, 2), attention_levels=(-1,), space_to_depth=2)
    assert net.size_multiple == 4
    out = net(torch.randn(2, 3, 8, 12))
    assert out.shape == (2, 1, 8, 12)
    # The four pixels of a 2 x 2 block come from four output channels: not one value per block.
    blocks = out[:, 0].unfold(1, 2, 2).unfold(2, 2, 2).reshape(2, 4, 6, 4)
    assert (blocks.max(-1).values - blocks.min(-1).values).abs().min() > 0
    with pytest.raises(ModelError, match="multiples of 4 .*space_to_depth 2"):
        net(torch.randn(1, 3, 6, 8))
    with pytest.raises(ModelError, match="space_to_depth"):
        UNet(3, 1, space_to_depth=0)


def test_checkpoints_from_before_space_to_depth_load_at_full_resolution():
    from models.learned.model import build_network

    old = build_network({"architecture": "unet", "context": 1, "base_channels": 8, "channel_mults": [1, 2]})
    assert old.space_to_depth == 1 and old.conv_in.in_channels == 3
    new = build_network({"architecture": "unet", "context": 1, "base_channels": 8, "channel_mults": [1, 2],
                         "space_to_depth": 2})
    assert new.conv_in.in_channels == 12 and new.conv_out.out_channels == 4
