"""Conditional diffusion in continuous time: cosine schedule, v-prediction, DDIM sampling.

Time ``t`` runs over [0, 1] (0: clean CT, 1: pure noise). The forward process is
``x_t = sqrt(alpha_bar(t)) x_0 + sqrt(1 - alpha_bar(t)) eps`` with the cosine
schedule of Nichol & Dhariwal; the denoiser predicts ``v`` (Salimans & Ho), from
which both the clean image and the noise follow in closed form. Sampling is the
deterministic DDIM update (eta = 0) on any number of uniformly spaced steps, so
the same trained network serves a 1-step preview and a 50-step final image.

Names and the papers' symbols:

* ``ab`` / :func:`alpha_bar` -- the cumulative signal level, DDPM's alpha-bar_t
  (``alphas_cumprod`` in diffusers); ``sqrt(ab)`` is VDM's alpha_t and
  ``sqrt(1 - ab)`` its sigma_t.
* ``x0`` -- the clean (normalised) CT, x_0 (``pred_original_sample`` when predicted).
* ``eps`` / ``noise`` -- the Gaussian noise, epsilon.
* ``v`` -- ``sqrt(ab) eps - sqrt(1 - ab) x0``, Salimans & Ho's v.
* ``cond`` -- the conditioning channels (MR context or edge maps), concatenated
  after ``x_t`` on the channel axis of the denoiser's input.

Every function works on any device and floating dtype; the schedule is computed
in the dtype of ``t`` (float32 from the samplers here).

References
----------
J. Ho, A. Jain, P. Abbeel, "Denoising diffusion probabilistic models", NeurIPS 2020.

A. Q. Nichol, P. Dhariwal, "Improved denoising diffusion probabilistic models",
ICML 2021, Eq. 17 (the cosine schedule, s = 0.008).

J. Song, C. Meng, S. Ermon, "Denoising diffusion implicit models", ICLR 2021,
Eq. 12 with sigma_t = 0 (the deterministic DDIM update).

T. Salimans, J. Ho, "Progressive distillation for fast sampling of diffusion
models", ICLR 2022, Section 4 and Appendix D (v-prediction).

D. P. Kingma, T. Salimans, B. Poole, J. Ho, "Variational diffusion models",
NeurIPS 2021, Appendix I.1 (low-discrepancy sampling of t).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.errors import ModelError

__all__ = [
    "ALPHA_BAR_MAX",
    "ALPHA_BAR_MIN",
    "COSINE_OFFSET",
    "alpha_bar",
    "ddim_sample",
    "eps_from_v",
    "q_sample",
    "training_loss",
    "v_target",
    "x0_from_v",
]

#: Nichol & Dhariwal's offset s: keeps the noise level at t = 0 small but non-zero.
COSINE_OFFSET = 0.008
#: alpha_bar is clipped to [ALPHA_BAR_MIN, ALPHA_BAR_MAX]: t = 1 keeps a trace of signal and
#: t = 0 a trace of noise, so neither sqrt(ab) nor sqrt(1 - ab) is exactly zero.
ALPHA_BAR_MIN = 1e-5
ALPHA_BAR_MAX = 0.9999

#: ``progress(done, total)`` after each DDIM step (the same signature as models.base.ProgressCallback).
StepCallback = Callable[[int, int], None]


def alpha_bar(t: Tensor) -> Tensor:
    """Cosine-schedule signal level ``alpha_bar(t)`` for continuous times ``t`` in [0, 1].

    ``alpha_bar(t) = f(t) / f(0)``, ``f(t) = cos^2((t + s) / (1 + s) * pi / 2)``, ``s = 0.008``,
    clipped to [:data:`ALPHA_BAR_MIN`, :data:`ALPHA_BAR_MAX`]: about 1 at t = 0, about 0 at
    t = 1, non-increasing in between.

    Parameters
    ----------
    t : Tensor
        Times of any shape, floating point, in [0, 1].

    Returns
    -------
    Tensor
        ``alpha_bar`` of the same shape, dtype and device as ``t``.

    Raises
    ------
    ModelError
        ``t`` is not a floating-point tensor.

    References
    ----------
    Nichol & Dhariwal 2021, Eq. 17.
    """
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise ModelError(f"t must be a floating-point tensor of times in [0, 1]; found "
                         f"{t.dtype if isinstance(t, Tensor) else type(t).__name__}")
    s = COSINE_OFFSET
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    ab = torch.cos((t + s) / (1 + s) * (math.pi / 2)) ** 2 / f0
    return ab.clamp(ALPHA_BAR_MIN, ALPHA_BAR_MAX)


def _per_item(t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """``sqrt(ab)`` and ``sqrt(1 - ab)`` for times ``t`` ((N,) or 0-d), shaped to broadcast over ``x``."""
    if not isinstance(t, Tensor):
        raise ModelError(f"t must be a tensor of times; found {type(t).__name__}")
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ModelError(f"t must have shape ({x.shape[0]},), one time per batch item; found {tuple(t.shape)}")
    ab = alpha_bar(t.to(x.device)).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return ab.sqrt(), (1 - ab).sqrt()


def q_sample(x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Noise ``x0`` to time ``t``: ``x_t = sqrt(ab) x0 + sqrt(1 - ab) noise``.

    Parameters
    ----------
    x0 : Tensor
        (N, C, H, W) clean images.
    t : Tensor
        (N,) times in [0, 1] (a 0-d tensor is broadcast to the batch).
    noise : Tensor
        Standard normal noise of the shape of ``x0``.

    Returns
    -------
    Tensor
        ``x_t``, the shape of ``x0``.

    References
    ----------
    Ho et al. 2020, Eq. 4.
    """
    _same_shape("noise", noise, x0)
    signal, sigma = _per_item(t, x0)
    return signal * x0 + sigma * noise


def v_target(x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """The v the denoiser learns: ``v = sqrt(ab) noise - sqrt(1 - ab) x0``.

    References
    ----------
    Salimans & Ho 2022, Section 4.
    """
    _same_shape("noise", noise, x0)
    signal, sigma = _per_item(t, x0)
    return signal * noise - sigma * x0


def x0_from_v(x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """The clean image implied by a v prediction: ``x0 = sqrt(ab) x_t - sqrt(1 - ab) v``.

    References
    ----------
    Salimans & Ho 2022, Appendix D.
    """
    _same_shape("v", v, x_t)
    signal, sigma = _per_item(t, x_t)
    return signal * x_t - sigma * v


def eps_from_v(x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """The noise implied by a v prediction: ``eps = sqrt(1 - ab) x_t + sqrt(ab) v``.

    References
    ----------
    Salimans & Ho 2022, Appendix D.
    """
    _same_shape("v", v, x_t)
    signal, sigma = _per_item(t, x_t)
    return sigma * x_t + signal * v


def _same_shape(name: str, tensor: Tensor, reference: Tensor) -> None:
    if tensor.shape != reference.shape:
        raise ModelError(f"{name} must have the shape of the image, {tuple(reference.shape)}; "
                         f"found {tuple(tensor.shape)}")


def _check_condition(cond: Tensor, batch: int | None, spatial: tuple[int, ...] | None) -> None:
    if cond.ndim != 4:
        raise ModelError(f"cond must be (N, C, H, W); found shape {tuple(cond.shape)}")
    if batch is not None and cond.shape[0] != batch:
        raise ModelError(f"cond has {cond.shape[0]} batch items; the image has {batch}")
    if spatial is not None and tuple(cond.shape[-2:]) != spatial:
        raise ModelError(f"cond is {cond.shape[-2]} x {cond.shape[-1]}; the image is {spatial[0]} x {spatial[1]}")


def _device_of(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    # Random numbers are drawn where the generator lives and then moved, so a CPU generator
    # gives the same draws whatever device the model runs on.
    return generator.device if generator is not None else fallback


def training_loss(model: nn.Module, x0: Tensor, cond: Tensor, generator: torch.Generator | None = None, *,
                  low_discrepancy: bool = False, batch_size: int | None = None,
                  rows: slice | None = None) -> Tensor:
    """The v-prediction denoising loss on one batch: plain MSE between predicted and true v.

    Draws ``t ~ U(0, 1)`` per item and standard normal noise, forms ``x_t`` with
    :func:`q_sample` and asks ``model(cat([x_t, cond], 1), t)`` for v.

    Parameters
    ----------
    model : torch.nn.Module
        Denoiser taking ``x.shape[1] + cond.shape[1]`` channels and returning the shape of ``x0``.
    x0 : Tensor
        (N, C, H, W) clean images (the normalised CT).
    cond : Tensor
        (N, C_cond, H, W) conditioning channels.
    generator : torch.Generator or None
        Source of t and the noise (any device; draws are moved to ``x0``'s device);
        None uses the global generator of ``x0``'s device.
    low_discrepancy : bool
        Spread the batch's times evenly, ``t_i = (u + i / N) mod 1`` with one uniform ``u``:
        the same expected loss with less variance across batches (Kingma et al. 2021).
    batch_size, rows : int and slice, or None
        ``x0`` and ``cond`` are these rows of a batch of ``batch_size`` (one process's shard in
        data-parallel training, :mod:`models.learned.distributed`): t and the noise are drawn for the
        whole batch, as one process would, and the rows' part is used, so the shards together see
        exactly the draws of the whole batch and every process's generator stays in step. Both None:
        ``x0`` is the whole batch.

    Returns
    -------
    Tensor
        The scalar loss (the mean over ``x0``'s elements), differentiable with respect to the
        model's parameters.

    Raises
    ------
    ModelError
        ``cond`` does not match ``x0`` in batch size or H x W, the model's output does
        not have the shape of ``x0``, or ``rows`` of ``batch_size`` are not ``x0``'s rows.
    """
    if x0.ndim != 4:
        raise ModelError(f"x0 must be (N, C, H, W); found shape {tuple(x0.shape)}")
    _check_condition(cond, x0.shape[0], tuple(x0.shape[-2:]))
    if (batch_size is None) != (rows is None):
        raise ModelError("give both batch_size and rows (a shard of a batch) or neither")
    n = x0.shape[0] if batch_size is None else batch_size
    kept = slice(0, n) if rows is None else rows
    if len(range(n)[kept]) != x0.shape[0]:
        raise ModelError(f"rows {kept} of a batch of {n} are {len(range(n)[kept])} rows; x0 has {x0.shape[0]}")
    draw_device = _device_of(generator, x0.device)
    if low_discrepancy:
        u = torch.rand((), generator=generator, device=draw_device)
        t = torch.remainder(u + torch.arange(n, device=draw_device) / n, 1.0)
    else:
        t = torch.rand(n, generator=generator, device=draw_device)
    noise = torch.randn((n, *x0.shape[1:]), generator=generator, device=draw_device)
    t, noise = t[kept], noise[kept]
    t = t.to(x0.device, torch.float32)
    noise = noise.to(x0.device, x0.dtype)
    x_t = q_sample(x0, t, noise)
    prediction = model(torch.cat([x_t, cond.to(x_t.dtype)], dim=1), t)
    if prediction.shape != x0.shape:
        raise ModelError(f"the model returned shape {tuple(prediction.shape)}; "
                         f"v must have the shape of x0, {tuple(x0.shape)}")
    return F.mse_loss(prediction.float(), v_target(x0, t, noise).float())


def ddim_sample(model: nn.Module, cond: Tensor, steps: int, generator: torch.Generator | None = None,
                x_T: Tensor | None = None, clip_x0: bool = True, *, channels: int = 1,
                progress: StepCallback | None = None) -> Tensor:
    """Deterministic DDIM sampling (eta = 0) from t = 1 to t = 0 in ``steps`` uniform steps.

    At each time ``t`` the model predicts v; ``x0 = sqrt(ab) x_t - sqrt(1 - ab) v`` (clamped
    to [-1, 1] when ``clip_x0``) and ``eps = sqrt(1 - ab) x_t + sqrt(ab) v``; then
    ``x_t' = sqrt(ab') x0 + sqrt(1 - ab') eps`` at the next time ``t'``. The last step
    returns its ``x0``, so ``steps = 1`` is the network's one-shot prediction from noise.

    Runs without building a graph (``torch.no_grad``). The model's train / eval mode is left
    as it is: call ``model.eval()`` first if it has dropout.

    Parameters
    ----------
    model : torch.nn.Module
        Denoiser called as ``model(cat([x_t, cond], 1), t)`` with ``t`` of shape (N,).
    cond : Tensor
        (N, C_cond, H, W) conditioning channels; H and W as the network requires.
    steps : int
        Number of model evaluations, >= 1.
    generator : torch.Generator or None
        Source of the starting noise when ``x_T`` is None (any device; drawn there and moved).
    x_T : Tensor or None
        Starting noise (N, channels, H, W); when given, ``generator`` is not used.
    clip_x0 : bool
        Clamp each predicted x0 to [-1, 1], the range of the normalised CT.
    channels : int
        Channels of the sampled image when ``x_T`` is None (1: the CT).
    progress : callable or None
        ``progress(done, steps)`` after each step.

    Returns
    -------
    Tensor
        (N, channels, H, W) samples, in ``cond``'s dtype and device.

    Raises
    ------
    ModelError
        ``steps`` < 1, or ``x_T`` / ``cond`` of mismatched shapes.

    References
    ----------
    Song et al. 2021, Eq. 12 with sigma = 0; Salimans & Ho 2022, Appendix D.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ModelError(f"steps must be an integer >= 1; found {steps!r}")
    _check_condition(cond, None, None)
    n, spatial = cond.shape[0], tuple(cond.shape[-2:])
    if x_T is None:
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ModelError(f"channels must be a positive integer; found {channels!r}")
        x = torch.randn((n, channels, *spatial), generator=generator, device=_device_of(generator, cond.device))
    else:
        if x_T.ndim != 4 or x_T.shape[0] != n or tuple(x_T.shape[-2:]) != spatial:
            raise ModelError(f"x_T must be (N={n}, C, {spatial[0]}, {spatial[1]}) to match cond; "
                             f"found {tuple(x_T.shape)}")
        x = x_T
    dtype = cond.dtype if cond.is_floating_point() else torch.float32
    x = x.to(cond.device, dtype)
    # Times 1 = t_0 > t_1 > ... > t_steps = 0, in float32 whatever the image dtype.
    times = torch.linspace(1.0, 0.0, steps + 1, device=cond.device, dtype=torch.float32)
    with torch.no_grad():
        for i in range(steps):
            t = times[i].expand(n)
            v = model(torch.cat([x, cond.to(dtype)], dim=1), t).to(dtype)
            pred_original_sample = x0_from_v(x, t, v)
            if clip_x0:
                pred_original_sample = pred_original_sample.clamp(-1.0, 1.0)
            if i == steps - 1:
                x = pred_original_sample
            else:
                pred_epsilon = eps_from_v(x, t, v)
                x = q_sample(pred_original_sample, times[i + 1].expand(n), pred_epsilon)
            if progress is not None:
                progress(i + 1, steps)
    return x
