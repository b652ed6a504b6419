"""Corrective diffusion: a regression U-Net predicts the CT, a diffusion model samples what it missed.

The ``diffusion`` architecture can be trained in two ways:

* **plain** -- the denoiser learns the whole normalised CT from noise, conditioned
  on the MR context (:mod:`models.learned.diffusion`);
* **corrective** (``sct-node train --arch diffusion --mean-model UNET_CKPT``, the
  bundled default) -- a trained, frozen regression U-Net (the ``unet`` baseline)
  predicts the CT ``mu`` from the MR, and the diffusion model learns the
  *residual* ``r = (ct - mu) / residual_scale``, conditioned on the MR context
  and on ``mu``. The sCT is ``mu + residual_scale * r`` with ``r`` sampled by
  DDIM.

Why corrective: a regression network already gets the bulk of the CT right (the
large, smooth part of the MR -> CT map), and a diffusion model trained on a
small budget spends most of its capacity relearning it. The residual is what
regression gets wrong -- blurred bone and air edges, where an L1 regressor
settles on the median of what the MR allows -- and is a small, local signal the
denoiser learns quickly. Mardani et al. show the split (regression for the
mean, diffusion for the residual) beats either alone at a fraction of the
sampling steps. On this project's phantoms the plain diffusion model trained
with the U-Net's budget had twice the U-Net's MAE (96 vs 43 HU, 4000 steps);
see ``docs/models.md`` for the measured numbers of both designs.

``residual_scale`` is the standard deviation of ``ct - mu`` inside the body on
training patches (measured once at the start of training and kept in the
checkpoint), so the diffusion model sees data of unit variance, the scale the
noise schedule is designed for.

The mean network is part of the checkpoint (its weights and config), so one
folder still holds everything inference needs; the card names the U-Net it
came from.

References
----------
M. Mardani, N. Brenowitz, Y. Cohen, J. Pathak, C.-Y. Chen, C.-C. Liu, A. Vahdat,
et al., "Residual corrective diffusion modeling for km-scale atmospheric
downscaling" (CorrDiff), arXiv:2309.15214, 2023: regression U-Net for the
conditional mean, diffusion model for the residual.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from models.errors import ModelError
from models.learned.diffusion import ddim_sample
from models.learned.networks import UNet

__all__ = ["CorrectiveDiffusion", "diffusion_sample", "residual_scale_from"]


class CorrectiveDiffusion(nn.Module):
    """A frozen regression U-Net (``mean``) and the denoiser of its residual (``denoiser``).

    Calling the module calls the denoiser, so the diffusion code
    (:func:`~models.learned.diffusion.training_loss`, :func:`~models.learned.diffusion.ddim_sample`)
    uses it like any denoiser; the denoiser's conditioning channels are the MR context
    followed by ``mu``.

    Parameters
    ----------
    denoiser : UNet
        Denoiser with a time embedding taking ``1 + mr_channels + 1`` channels.
    mean : UNet
        Regression network without a time embedding, ``mr_channels`` -> 1; frozen.
    residual_scale : float
        The residual's scale in normalised CT units (> 0).

    Raises
    ------
    ModelError
        ``residual_scale`` is not a finite positive number, or the networks do not fit together.
    """

    def __init__(self, denoiser: UNet, mean: UNet, residual_scale: float) -> None:
        super().__init__()
        if not (isinstance(residual_scale, (int, float)) and math.isfinite(residual_scale) and residual_scale > 0):
            raise ModelError(f"residual_scale must be a finite number > 0; found {residual_scale!r}")
        if mean.time_embedding or not denoiser.time_embedding:
            raise ModelError("the mean network must be a regression U-Net (no time embedding) and the denoiser "
                             "a diffusion U-Net (with one)")
        if denoiser.in_channels != mean.in_channels + 2:
            raise ModelError(f"the denoiser takes {denoiser.in_channels} channels; a mean network on "
                             f"{mean.in_channels} MR channels needs {mean.in_channels + 2} (noisy residual, MR, mean)")
        self.denoiser = denoiser
        self.mean = mean
        self.residual_scale = float(residual_scale)
        for parameter in self.mean.parameters():
            parameter.requires_grad_(False)

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of both networks' size multiples."""
        return math.lcm(self.denoiser.size_multiple, self.mean.size_multiple)

    def train(self, mode: bool = True) -> CorrectiveDiffusion:
        """Train mode for the denoiser only: the mean network is frozen and stays in eval mode."""
        super().train(mode)
        self.mean.eval()
        return self

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """The denoiser: ``x`` = (noisy residual, MR context, mu) on the channel axis."""
        return self.denoiser(x, t)

    @torch.no_grad()
    def predict_mean(self, mr: Tensor) -> Tensor:
        """``mu``, the regression network's normalised CT for MR context channels ``mr`` (N, C, H, W).

        Always float32, also under autocast: in bf16 ``mu`` would carry steps of about 4 HU into both the
        residual the denoiser learns and the sCT. Scaled by ``residual_scale``, the denoiser's own bf16
        output is ~25x finer.
        """
        with torch.autocast(mr.device.type, enabled=False):
            return self.mean(mr.float())

    def residual_and_condition(self, ct: Tensor, mr: Tensor) -> tuple[Tensor, Tensor]:
        """Training pair: the scaled residual ``(ct - mu) / residual_scale`` and the condition ``cat(mr, mu)``."""
        mu = self.predict_mean(mr).to(ct.dtype)
        return (ct - mu) / self.residual_scale, torch.cat([mr, mu.to(mr.dtype)], dim=1)


def diffusion_sample(network: nn.Module, cond: Tensor, steps: int, x_T: Tensor) -> Tensor:
    """The normalised CT a diffusion network samples with DDIM from the starting noise ``x_T``.

    Plain diffusion: DDIM on the CT itself. :class:`CorrectiveDiffusion`: ``mu`` from the mean
    network, DDIM on the residual conditioned on (``cond``, ``mu``), and ``mu + scale * r``
    (the residual's x0 is not clipped; the caller clips the CT).
    """
    if isinstance(network, CorrectiveDiffusion):
        mu = network.predict_mean(cond)
        residual = ddim_sample(network, torch.cat([cond, mu], dim=1), steps, x_T=x_T, clip_x0=False)
        return mu + network.residual_scale * residual
    return ddim_sample(network, cond, steps, x_T=x_T)


@torch.no_grad()
def residual_scale_from(mean: UNet, batches: list[dict[str, Tensor]]) -> float:
    """Standard deviation of ``ct - mean(mr)`` over the body pixels of ``batches`` (normalised CT units).

    Raises
    ------
    ModelError
        No body pixels in the batches, or a residual that is zero (nothing for the diffusion model to learn).
    """
    mean.eval()
    residuals = []
    for batch in batches:
        mu = mean(batch["mr"])
        residuals.append((batch["ct"] - mu)[batch["body"] > 0.5].float())
    values = torch.cat(residuals) if residuals else torch.empty(0)
    if values.numel() < 2:
        raise ModelError("no body pixels in the batches used to measure the residual scale")
    scale = float(values.std())
    if not math.isfinite(scale) or scale <= 0:
        raise ModelError(f"the mean network's residual has standard deviation {scale}; nothing to correct")
    return scale
