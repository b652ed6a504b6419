"""Networks of the learned models: the U-Net generator / denoiser and the PatchGAN discriminator.

:class:`UNet` is the one generator of every architecture in :mod:`models.learned`:
a direct MR -> CT regressor (``unet``, ``pix2pix``) without a time embedding, or
the denoiser of a diffusion model (``diffusion``, ``contourdiff``) with one. It
follows the DDPM U-Net (residual blocks with GroupNorm and SiLU, self-attention
at the lowest resolution and in the middle, a sinusoidal time embedding fed to
every residual block) at a size that trains on one GPU in hours and bundles in
a few megabytes. :class:`PatchDiscriminator` is the pix2pix 70 x 70 PatchGAN.

References
----------
O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional networks for
biomedical image segmentation", MICCAI 2015, LNCS 9351:234-241 (the
encoder-decoder with skip connections).

J. Ho, A. Jain, P. Abbeel, "Denoising diffusion probabilistic models",
NeurIPS 2020 (the residual / attention U-Net with a sinusoidal time embedding,
Appendix B).

P. Isola, J.-Y. Zhu, T. Zhou, A. A. Efros, "Image-to-image translation with
conditional adversarial networks", CVPR 2017 (the PatchGAN discriminator,
Section 3.2.2 and Appendix 6.1.2).
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.errors import ModelError

__all__ = ["PatchDiscriminator", "UNet", "count_parameters"]

#: Channels per attention head; layers with fewer channels use a single head.
ATTENTION_HEAD_CHANNELS = 32

#: Diffusion time t in [0, 1] is scaled by this before the sinusoidal embedding, so the
#: embedding's frequencies cover the same range as DDPM's integer timesteps 0..1000.
TIME_SCALE = 1000.0


def count_parameters(module: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module``.

    Parameters
    ----------
    module : torch.nn.Module
        Any module.
    trainable_only : bool
        Count only parameters with ``requires_grad`` (default: all parameters).

    Returns
    -------
    int
        The number of scalars (not bytes; float32 weights take four bytes each).
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _group_count(channels: int) -> int:
    """The largest group count <= 8 that divides ``channels`` (8 for every multiple of 8)."""
    return next(g for g in range(min(8, channels), 0, -1) if channels % g == 0)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_group_count(channels), channels)


def _zero(conv: nn.Conv2d) -> None:
    """Set a convolution's weights and bias to zero: a new layer that outputs 0."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{name} must be a positive integer; found {value!r}")
    return value


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """Transformer-style sinusoidal embedding of diffusion times.

    Parameters
    ----------
    t : Tensor
        (N,) times in [0, 1]; scaled by :data:`TIME_SCALE` before embedding.
    dim : int
        Embedding width (even).

    Returns
    -------
    Tensor
        (N, dim) ``[sin(t * f_k), cos(t * f_k)]`` with frequencies ``f_k`` from 1 down to 1/10000.

    References
    ----------
    A. Vaswani et al., "Attention is all you need", NeurIPS 2017, Section 3.5; used for
    timesteps by Ho et al. 2020.
    """
    half = dim // 2
    exponent = torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1)
    frequencies = torch.exp(-math.log(10000.0) * exponent)
    angles = (t.float() * TIME_SCALE)[:, None] * frequencies[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class ResidualBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, with a residual connection.

    The time embedding, when given, modulates the second normalisation as a scale and
    shift (the "adaptive group norm" of Dhariwal & Nichol 2021, Section 3).
    """

    def __init__(self, in_channels: int, out_channels: int, time_channels: int | None, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time = (nn.Sequential(nn.SiLU(), nn.Linear(time_channels, 2 * out_channels))
                     if time_channels is not None else None)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, time: Tensor | None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.time is not None:
            scale, shift = self.time(time)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the flattened H x W positions, residual.

    One head per :data:`ATTENTION_HEAD_CHANNELS` channels (at least one). The output
    projection starts at zero so a new block is the identity.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.heads = max(1, channels // ATTENTION_HEAD_CHANNELS)
        if channels % self.heads:
            self.heads = 1
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        _zero(self.proj)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).unbind(1)
        # (N, heads, positions, channels per head), the layout scaled_dot_product_attention expects.
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class Downsample(nn.Module):
    """Stride-2 conv3x3: halves H and W."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then conv3x3 (no checkerboard artefacts of transposed convs)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """U-Net with residual blocks, self-attention and an optional diffusion-time embedding.

    Fully convolutional: any H and W divisible by :attr:`size_multiple` (callers pad).
    With the defaults (``base_channels=32``, ``channel_mults=(1, 2, 4)``, one residual
    block per level, attention at level 2 and in the middle) the network has about
    2.6 M parameters without the time embedding and 2.9 M with it (1-4 input channels,
    one output channel), i.e. under 12 MB of float32 weights.

    Parameters
    ----------
    in_channels : int
        Input channels (MR context slices, plus the noisy CT for a denoiser).
    out_channels : int
        Output channels (1: the CT, or the ``v`` prediction of a denoiser).
    base_channels : int
        Channels at the first level; level ``i`` has ``base_channels * channel_mults[i]``.
    channel_mults : tuple of int
        One multiplier per resolution level; each level after the first halves H and W.
    attention_levels : tuple of int
        Levels (indices into ``channel_mults``; negative indices count from the lowest
        resolution) with self-attention after each residual block. The middle block always
        has attention. The default, 2, is the lowest resolution of the default 3 levels.
    time_embedding : bool
        Condition every residual block on a diffusion time ``t`` in [0, 1]; the final conv
        then starts at zero (the untrained denoiser predicts v = 0).
    num_res_blocks : int
        Residual blocks per level in the encoder (the decoder has one more, as in DDPM).
    dropout : float
        Dropout probability inside the residual blocks, in [0, 1).
    space_to_depth : int
        Fold each ``f x f`` pixel block into channels before the first conv and unfold the
        output after the last (``pixel_unshuffle`` / ``pixel_shuffle``), so every level runs
        at 1/f of the slice's resolution. With f = 2 a 256 x 256 slice costs about a quarter
        of the FLOPs at the same width; the output is still per pixel. Hoogeboom et al. use
        this to make high-resolution diffusion U-Nets affordable. Default 1 (off).

    Raises
    ------
    ModelError
        A channel count or multiplier that is not a positive integer, an attention level
        outside ``channel_mults``, or a dropout outside [0, 1).

    References
    ----------
    Ronneberger et al. 2015; Ho et al. 2020, Appendix B (see the module docstring).
    E. Hoogeboom, J. Heek, T. Salimans, "simple diffusion: End-to-end diffusion for high
    resolution images", ICML 2023, Section 3 (downsampling the input before the U-Net).
    """

    def __init__(self, in_channels: int, out_channels: int, base_channels: int = 32,
                 channel_mults: tuple[int, ...] = (1, 2, 4), attention_levels: tuple[int, ...] = (2,),
                 time_embedding: bool = False, num_res_blocks: int = 1, dropout: float = 0.0,
                 space_to_depth: int = 1) -> None:
        super().__init__()
        self.in_channels = _check_positive_int("in_channels", in_channels)
        self.out_channels = _check_positive_int("out_channels", out_channels)
        self.space_to_depth = _check_positive_int("space_to_depth", space_to_depth)
        fold = self.space_to_depth ** 2
        base_channels = _check_positive_int("base_channels", base_channels)
        num_res_blocks = _check_positive_int("num_res_blocks", num_res_blocks)
        channel_mults = tuple(channel_mults)
        if not channel_mults:
            raise ModelError("channel_mults must name at least one level; found ()")
        for mult in channel_mults:
            _check_positive_int(f"every entry of channel_mults {channel_mults}", mult)
        levels = len(channel_mults)
        resolved_attention = set()
        for level in tuple(attention_levels):
            if isinstance(level, bool) or not isinstance(level, int) or not -levels <= level < levels:
                raise ModelError(f"attention_levels must index channel_mults {channel_mults} "
                                 f"(0..{levels - 1} or negative); found {level!r} in {tuple(attention_levels)}")
            resolved_attention.add(level % levels)
        if not 0.0 <= float(dropout) < 1.0:
            raise ModelError(f"dropout must lie in [0, 1); found {dropout!r}")
        self.channel_mults = channel_mults
        self.attention_levels = tuple(sorted(resolved_attention))
        self.time_embedding = bool(time_embedding)

        time_channels = None
        if self.time_embedding:
            self.embedding_channels = 2 * ((base_channels + 1) // 2)
            time_channels = 4 * base_channels
            self.time_mlp = nn.Sequential(nn.Linear(self.embedding_channels, time_channels), nn.SiLU(),
                                          nn.Linear(time_channels, time_channels))

        self.conv_in = nn.Conv2d(in_channels * fold, base_channels, 3, padding=1)
        # Encoder: blocks of each level then a downsample; every output is a skip for the decoder.
        self.down = nn.ModuleList()
        skip_channels = [base_channels]
        channels = base_channels
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                block = nn.ModuleList([ResidualBlock(channels, base_channels * mult, time_channels, dropout)])
                channels = base_channels * mult
                if level in resolved_attention:
                    block.append(SelfAttention(channels))
                self.down.append(block)
                skip_channels.append(channels)
            if level < levels - 1:
                self.down.append(nn.ModuleList([Downsample(channels)]))
                skip_channels.append(channels)

        self.mid_block1 = ResidualBlock(channels, channels, time_channels, dropout)
        self.mid_attention = SelfAttention(channels)
        self.mid_block2 = ResidualBlock(channels, channels, time_channels, dropout)

        # Decoder: num_res_blocks + 1 blocks per level, each consuming one skip, then an upsample.
        self.up = nn.ModuleList()
        for level in reversed(range(levels)):
            for _ in range(num_res_blocks + 1):
                out = base_channels * channel_mults[level]
                block = nn.ModuleList([ResidualBlock(channels + skip_channels.pop(), out, time_channels, dropout)])
                channels = out
                if level in resolved_attention:
                    block.append(SelfAttention(channels))
                self.up.append(block)
            if level > 0:
                self.up.append(nn.ModuleList([Upsample(channels)]))

        self.norm_out = _norm(channels)
        self.conv_out = nn.Conv2d(channels, out_channels * fold, 3, padding=1)
        if self.time_embedding:
            _zero(self.conv_out)

    @property
    def size_multiple(self) -> int:
        """H and W of the input must be multiples of this (``space_to_depth * 2 ** (levels - 1)``)."""
        return self.space_to_depth * 2 ** (len(self.channel_mults) - 1)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """Map ``x`` (N, in_channels, H, W) to (N, out_channels, H, W).

        Parameters
        ----------
        x : Tensor
            Input batch; H and W multiples of :attr:`size_multiple`.
        t : Tensor or None
            (N,) diffusion times in [0, 1] (a 0-d tensor or float is broadcast to the
            batch); required with ``time_embedding``, refused without.

        Raises
        ------
        ModelError
            Wrong rank or channel count, H or W not a multiple of :attr:`size_multiple`,
            ``t`` missing (or given to a network without a time embedding), or ``t`` of
            the wrong shape.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ModelError(f"UNet expects input of shape (N, {self.in_channels}, H, W); "
                             f"found {tuple(x.shape)}")
        height, width = x.shape[-2:]
        multiple = self.size_multiple
        if height % multiple or width % multiple:
            raise ModelError(f"UNet input H and W must be multiples of {multiple} "
                             f"({len(self.channel_mults)} levels, space_to_depth {self.space_to_depth}); "
                             f"found {height} x {width} (pad the input)")
        time = None
        if self.time_embedding:
            if t is None:
                raise ModelError("this UNet has a time embedding: forward needs t, a (N,) tensor of times in [0, 1]")
            t = torch.as_tensor(t, device=x.device)
            if t.ndim == 0:
                t = t.expand(x.shape[0])
            if t.shape != (x.shape[0],):
                raise ModelError(f"t must have shape ({x.shape[0]},) to match the batch; found {tuple(t.shape)}")
            time = self.time_mlp(sinusoidal_embedding(t, self.embedding_channels).to(x.dtype))
        elif t is not None:
            raise ModelError("this UNet has no time embedding (time_embedding=False); t must be None")

        if self.space_to_depth > 1:
            x = F.pixel_unshuffle(x, self.space_to_depth)
        h = self.conv_in(x)
        skips = [h]
        # Every entry of self.down and self.up is the ModuleList of one step (torch types the entries Module).
        for block in self.down:
            h = self._run(cast(nn.ModuleList, block), h, time)
            skips.append(h)
        h = self.mid_block2(self.mid_attention(self.mid_block1(h, time)), time)
        for block in self.up:
            layers = cast(nn.ModuleList, block)
            if isinstance(layers[0], ResidualBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(layers, h, time)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return F.pixel_shuffle(out, self.space_to_depth) if self.space_to_depth > 1 else out

    @staticmethod
    def _run(block: nn.ModuleList, h: Tensor, time: Tensor | None) -> Tensor:
        for layer in block:
            h = layer(h, time) if isinstance(layer, ResidualBlock) else layer(h)
        return h


class PatchDiscriminator(nn.Module):
    """The pix2pix PatchGAN: a map of real / fake logits, one per overlapping input patch.

    conv4x4 stride 2 + LeakyReLU(0.2) (no normalisation on the first layer), then
    ``layers - 1`` more stride-2 convs and one stride-1 conv with InstanceNorm and
    LeakyReLU, doubling the channels up to 8 x ``base_channels``, and a final stride-1
    conv4x4 to one logit channel. With ``layers=3`` each logit sees a 70 x 70 input
    patch and an H x W input (H, W multiples of 8) gives (H/8 - 2) x (W/8 - 2) logits.
    Weights start from N(0, 0.02) as in pix2pix.

    Parameters
    ----------
    in_channels : int
        Channels of the (condition, image) pair it judges, concatenated.
    base_channels : int
        Channels of the first layer (pix2pix: 64).
    layers : int
        Stride-2 layers (3 gives the 70 x 70 receptive field).

    Raises
    ------
    ModelError
        A non-positive argument.

    References
    ----------
    Isola et al. 2017, Section 3.2.2 and Appendix 6.1.2 (see the module docstring).
    """

    def __init__(self, in_channels: int, base_channels: int = 32, layers: int = 3) -> None:
        super().__init__()
        self.in_channels = _check_positive_int("in_channels", in_channels)
        base_channels = _check_positive_int("base_channels", base_channels)
        self.layers = _check_positive_int("layers", layers)
        modules: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1),
                                    nn.LeakyReLU(0.2)]
        channels = base_channels
        for n in range(1, layers + 1):
            out = base_channels * min(2 ** n, 8)
            stride = 2 if n < layers else 1
            modules += [nn.Conv2d(channels, out, 4, stride=stride, padding=1), nn.InstanceNorm2d(out),
                        nn.LeakyReLU(0.2)]
            channels = out
        modules.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*modules)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Logit-map size for an input of ``height`` x ``width`` pixels."""
        def after(size: int) -> int:
            for _ in range(self.layers):
                size = (size + 2 - 4) // 2 + 1
            return size - 2
        return after(height), after(width)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, 1, h, w) for ``x`` (N, in_channels, H, W); see :meth:`output_size`.

        Raises
        ------
        ModelError
            Wrong rank or channel count, or an input too small for the normalised layers.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ModelError(f"PatchDiscriminator expects input of shape (N, {self.in_channels}, H, W); "
                             f"found {tuple(x.shape)}")
        # InstanceNorm needs more than one position; the last normalised layer has output size + 1.
        if min(self.output_size(*x.shape[-2:])) < 1:
            raise ModelError(f"PatchDiscriminator input {x.shape[-2]} x {x.shape[-1]} is too small for "
                             f"{self.layers} layers; each side needs at least {2 ** self.layers * 3} pixels")
        return self.net(x)
