"""A trained checkpoint as a :class:`~models.base.TranslationModel`: volume inference for every architecture.

Inference runs slice by slice (2.5D: each slice with its ``context``
neighbours), in batches, on any in-plane size (the networks are fully
convolutional; slices are padded with the background value to the network's
size multiple and cropped back). The body mask comes from the MR
(:func:`models.body_mask.body_mask_from_mr`); outside it the sCT is
-1024 HU, inside it is clipped to [-1024, 3071] HU.

Diffusion models sample with deterministic DDIM in ``steps`` steps (default:
the checkpoint's, chosen from the measured quality-vs-steps curve); a
corrective diffusion model (:mod:`models.learned.corrective`) first runs its
regression network once and samples the residual over it. With
``ensemble = N > 1`` they draw N samples from N seeded starting noises and
return the mean as the sCT and the per-voxel standard deviation as the
uncertainty map. The result depends only on the MR, the weights, ``steps``,
``ensemble`` and ``seed``.

The device is CUDA when available (bf16 autocast there), else the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from models.base import HU_MAX, HU_MIN, MIN_ENSEMBLE_STEPS, ModelCard, ProgressCallback, SyntheticCT
from models.body_mask import body_mask_from_mr, given_body_mask
from models.envelope import Envelope
from models.errors import ModelError
from models.learned.checkpoint import load_checkpoint
from models.learned.corrective import CorrectiveDiffusion, diffusion_sample
from models.learned.data import context_stack
from models.learned.edges import edge_map, outline
from models.learned.networks import UNet
from models.learned.normalisation import denormalise_ct, normalise_mr
from models.volume import Volume

__all__ = ["ARCHITECTURES", "MIN_ENSEMBLE_STEPS", "LearnedModel", "build_network", "default_steps_from_curve",
           "pick_device"]

ARCHITECTURES = ("diffusion", "unet", "pix2pix", "contourdiff")
#: CT value outside the body (HU): air as the sCT writer stores it.
OUTSIDE_HU = -1024.0


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` ("cpu", "cuda", "cuda:1"), else CUDA when available, else the CPU."""
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelError(f"device {requested!r} requested but CUDA is not available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def input_channels(architecture: str, context: int, corrective: bool = False) -> int:
    """Channels the network of an architecture takes (``corrective``: the denoiser also sees the mean)."""
    mr = 2 * context + 1
    return {"diffusion": 1 + mr + int(corrective), "unet": mr, "pix2pix": mr, "contourdiff": 3}[architecture]


def build_network(config: dict) -> UNet | CorrectiveDiffusion:
    """The generator / denoiser network described by a checkpoint's ``config``.

    A diffusion config with ``mean_network`` (the config of a ``unet`` / ``pix2pix`` checkpoint) and
    ``residual_scale`` describes a :class:`~models.learned.corrective.CorrectiveDiffusion`.
    """
    architecture = config["architecture"]
    if architecture not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}")
    mean_config = config.get("mean_network")
    if mean_config is not None:
        if architecture != "diffusion" or mean_config.get("architecture") not in ("unet", "pix2pix"):
            raise ModelError("only a diffusion model can correct a mean network, and the mean network must be a "
                             f"unet or pix2pix generator; found {architecture} over {mean_config.get('architecture')}")
        if int(mean_config["context"]) != int(config["context"]):
            raise ModelError(f"the mean network sees {mean_config['context']} MR neighbours per side; the diffusion "
                             f"model {config['context']}: they must match")
    network = UNet(input_channels(architecture, int(config["context"]), mean_config is not None), 1,
                   base_channels=int(config.get("base_channels", 32)),
                   channel_mults=tuple(config.get("channel_mults", (1, 2, 2, 4))),
                   attention_levels=tuple(config.get("attention_levels", (-1,))),
                   time_embedding=architecture in ("diffusion", "contourdiff"),
                   space_to_depth=int(config.get("space_to_depth", 1)))
    if mean_config is None:
        return network
    mean = build_network(mean_config)
    # A unet / pix2pix config (checked above) builds a UNet: build_network refuses one with a mean network.
    assert isinstance(mean, UNet)
    return CorrectiveDiffusion(network, mean, float(config["residual_scale"]))


class LearnedModel:
    """A checkpoint folder written by ``sct-node train`` (or a bundled one).

    Parameters
    ----------
    folder : path
        Checkpoint folder (``model.pt``, ``card.json``).
    steps : int or None
        DDIM steps for diffusion models (default: the checkpoint's ``default_steps`` for one sample;
        for an ensemble its ``ensemble_steps``, at least :data:`MIN_ENSEMBLE_STEPS`).
    ensemble : int
        Samples per volume (diffusion models); > 1 adds the uncertainty map.
    seed : int
        Seed of the starting noise.
    device : str or None
        Torch device; default CUDA when available.
    batch_size : int
        Slices per forward pass.
    """

    def __init__(self, folder: Path | str, *, steps: int | None = None, ensemble: int = 1, seed: int = 0,
                 device: str | None = None, batch_size: int = 8) -> None:
        config, state, card = load_checkpoint(Path(folder))
        self.config = config
        self.architecture = config["architecture"]
        self.context = int(config["context"])
        self.diffusion = self.architecture in ("diffusion", "contourdiff")
        if ensemble < 1:
            raise ModelError(f"ensemble must be at least 1; found {ensemble}")
        if steps is None:
            steps = config.get("default_steps", 10)
            if ensemble > 1 and self.diffusion:
                steps = max(int(config.get("ensemble_steps", steps)), MIN_ENSEMBLE_STEPS)
        self.steps = int(steps)
        if self.steps < 1:
            raise ModelError(f"steps must be at least 1; found {self.steps}")
        if ensemble > 1 and self.diffusion and self.steps < MIN_ENSEMBLE_STEPS:
            raise ModelError(f"an ensemble needs at least {MIN_ENSEMBLE_STEPS} sampling steps; found {self.steps}: "
                             f"one DDIM step from pure noise returns the network's estimate of the mean, so the "
                             f"members would not differ and the uncertainty map would be empty")
        self.ensemble = ensemble if self.diffusion else 1
        self.seed, self.batch_size = int(seed), int(batch_size)
        self.device = pick_device(device)
        self.network = build_network(config)
        try:
            self.network.load_state_dict(state)
        except RuntimeError as error:
            raise ModelError(f"{folder}: weights do not fit the architecture in its config ({error})") from None
        # channels_last: oneDNN's convolutions run about 1.6x faster on the CPU in this layout (measured
        # on the benchmark machine); on CUDA it lets cuDNN pick its NHWC kernels.
        # torch's stubs of Module.to lack the memory_format keyword it accepts
        self.network.to(self.device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
        sampling = f", {self.steps} DDIM steps" if self.diffusion else ""
        sampling += f", ensemble of {self.ensemble}" if self.ensemble > 1 else ""
        self.card = ModelCard(
            name=str(card.get("name", self.architecture)),
            version=str(card.get("version", "")),
            description=str(card.get("description", "")),
            # Sampling settings change the output: they are part of the identity, hence of the output UIDs.
            content_hash=f"{card.get('content_hash', 'none')}"
                         + (f"-s{self.steps}-e{self.ensemble}-seed{self.seed}" if self.diffusion else ""),
            intended_use=str(card.get("intended_use", "")) + sampling,
        )
        self.model_card = card
        # The training envelope (models.envelope) the input guard checks series against; None for checkpoints
        # made before envelopes existed: the guard then says it cannot judge.
        self.envelope = Envelope.from_json(card["envelope"], f"{Path(folder) / 'card.json'}: envelope") \
            if card.get("envelope") is not None else None
        self.normalise = normalise_mr

    def translate(self, mr: Volume, *, progress: ProgressCallback | None = None,
                  body_mask: np.ndarray | None = None) -> SyntheticCT:
        """The sCT of an MR volume (see the module docstring); ``body_mask`` as :class:`TranslationModel` says."""
        body = body_mask_from_mr(mr) if body_mask is None else given_body_mask(body_mask, mr)
        mr_norm = normalise_mr(np.asarray(mr.array, dtype=np.float32), body)
        conditions = self._conditions(mr_norm, body)
        total = self.ensemble * mr.shape[0]
        # Running mean and sum of squares: memory does not grow with the ensemble size.
        mean = np.zeros(mr.shape, dtype=np.float64)
        squares = np.zeros(mr.shape, dtype=np.float64) if self.ensemble > 1 else None
        for member in range(self.ensemble):
            done = member * mr.shape[0]
            sample = self._predict(conditions, mr.shape, member,
                                   None if progress is None else _after(progress, done, total))
            mean += sample / self.ensemble
            if squares is not None:
                squares += sample.astype(np.float64) ** 2 / self.ensemble
        hu = denormalise_ct(mean.astype(np.float32))
        hu = np.where(body, np.clip(hu, HU_MIN, HU_MAX), OUTSIDE_HU).astype(np.float32)
        uncertainty = None
        if squares is not None:
            std = np.sqrt(np.maximum(squares - mean ** 2, 0.0)) * (HU_MAX - HU_MIN) / 2.0
            uncertainty = mr.with_array(np.where(body, std, 0.0).astype(np.float32))
        return SyntheticCT(hu=mr.with_array(hu), body_mask=body, uncertainty_hu=uncertainty)

    # ------------------------------------------------------------------------------------------------

    def _conditions(self, mr_norm: np.ndarray, body: np.ndarray) -> Callable[[int, int], np.ndarray]:
        """A function (start, stop) -> the conditioning channels of those slices, (n, C, y, x) float32.

        Made per batch, so a 512 x 512 x 200 volume never holds all its context stacks at once.
        """
        if self.architecture == "contourdiff":
            edges, filled = edge_map(mr_norm, body), outline(body)
            return lambda start, stop: np.stack([edges[start:stop], filled[start:stop]], axis=1).astype(np.float32)
        return lambda start, stop: np.stack([context_stack(mr_norm, k, self.context)
                                             for k in range(start, stop)]).astype(np.float32)

    @torch.no_grad()
    def _predict(self, conditions: Callable[[int, int], np.ndarray], shape: tuple[int, int, int], member: int,
                 progress: ProgressCallback | None) -> np.ndarray:
        """One member's normalised CT, (z, y, x) float32 in [-1, 1]: slices in batches, ``progress(done, nz)``."""
        nz, ny, nx = shape
        multiple = self.network.size_multiple
        pad_y, pad_x = (-ny) % multiple, (-nx) % multiple
        background = 0.0 if self.architecture == "contourdiff" else -1.0  # no edge / outside the body
        generator = torch.Generator(device="cpu").manual_seed(self.seed * 1000 + member)
        result = np.empty((nz, ny, nx), dtype=np.float32)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" \
            else torch.autocast("cpu", enabled=False)
        # batch_size is meant for 256 x 256 slices: larger slices go in smaller batches, so activation and
        # attention memory (quadratic in the positions at 1/8 resolution) stays about constant.
        batch_size = max(1, min(self.batch_size, self.batch_size * 256 * 256 // ((ny + pad_y) * (nx + pad_x))))
        for start in range(0, nz, batch_size):
            stop = min(start + batch_size, nz)
            batch = np.pad(conditions(start, stop), ((0, 0), (0, 0), (0, pad_y), (0, pad_x)),
                           constant_values=background)
            cond = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
            with autocast:
                if self.diffusion:
                    # The starting noise is drawn on the CPU from the seeded generator: the same on every device.
                    noise = torch.randn((stop - start, 1, ny + pad_y, nx + pad_x), generator=generator)
                    noise = noise.to(self.device).contiguous(memory_format=torch.channels_last)
                    out = diffusion_sample(self.network, cond, self.steps, noise)
                else:
                    out = self.network(cond)
            result[start:stop] = out.float().clamp(-1, 1)[:, 0, :ny, :nx].cpu().numpy()
            if progress is not None:
                progress(stop, nz)
        return result


def _after(progress: ProgressCallback, done: int, total: int) -> ProgressCallback:
    """``progress`` for one ensemble member: its slices counted after the ``done`` before it, out of ``total``."""
    return lambda k, n: progress(done + k, total)


def default_steps_from_curve(curve: dict[int, float], tolerance: float = 0.05, *, two_sided: bool = False) -> int:
    """The fewest steps whose MAE is within ``tolerance`` (relative) of the most-steps MAE.

    One-sided (default): at most ``1 + tolerance`` times the most-steps MAE -- the default steps of a
    checkpoint (a lower MAE counts as within). ``two_sided``: also at least ``1 - tolerance`` times it,
    i.e. the sampler has converged and more steps no longer change what a sample is -- the steps an
    ensemble needs for its spread to mean something (a checkpoint's ``ensemble_steps``).
    """
    if not curve:
        raise ModelError("no quality-vs-steps measurements to choose the default from")
    reference = curve[max(curve)]
    for steps in sorted(curve):
        value = curve[steps]
        if math.isfinite(value) and value <= reference * (1 + tolerance) \
                and (not two_sided or value >= reference * (1 - tolerance)):
            return steps
    return max(curve)
