"""Train any of the learned architectures on SynthRAD-layout cases (or the phantom generator's output).

One loop for all four architectures; what differs is the loss:

* ``diffusion``: DDPM objective with v-prediction on the cosine schedule
  (:func:`models.learned.diffusion.training_loss`), conditioned on the MR
  slice and its neighbours; with ``mean_model`` (a trained ``unet`` or
  ``pix2pix`` checkpoint) the objective is on the residual over that
  network's prediction (:mod:`models.learned.corrective`);
* ``unet``: L1 between the predicted and the real CT (the CNN approach);
* ``pix2pix``: L1 (weight 100) plus the adversarial loss of a PatchGAN that
  sees MR and CT together (Isola et al. 2017);
* ``contourdiff``: the diffusion objective on CT alone, conditioned on the
  CT's own edge map and body outline: no paired MR is needed (Chen et al. 2025).

Training samples patches inside the body (:class:`models.learned.data.SliceDataset`),
keeps an exponential moving average (EMA) of the weights (the EMA weights are
what is saved and used), is seeded, runs mixed precision (bf16) on CUDA, shows
a progress bar with the loss and throughput, measures the validation MAE
(HU, inside the body) every ``validate_every`` steps on held-out cases, and
saves a checkpoint every ``checkpoint_every`` steps and at the end. Running
the same command again resumes from the last checkpoint (optimizer, EMA, step
and random state included) until ``steps`` is reached.

Started by ``torchrun``, the same loop trains data-parallel on several GPUs
and hosts (:mod:`models.learned.distributed`): ``batch_size`` is the global
batch, each process trains its equal share of it with DistributedDataParallel,
and the result is one process's with that batch, to rounding; rank 0 alone
reads and writes checkpoints.
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from models import __version__
from models.base import HU_MAX, HU_MIN
from models.envelope import acquisition_from_sidecar, envelope_from_cases, read_sidecar
from models.errors import ModelError
from models.learned.checkpoint import load_checkpoint, load_train_state, save_checkpoint
from models.learned.corrective import (
    CorrectiveDiffusion,
    diffusion_sample,
    residual_scale_from,
)
from models.learned.data import Case, SliceDataset, load_cases, validation_slices
from models.learned.diffusion import training_loss
from models.learned.distributed import DataParallel, Shard, data_parallel, launch_from_environment
from models.learned.model import ARCHITECTURES, build_network
from models.learned.networks import PatchDiscriminator, UNet
from models.learned.normalisation import denormalise_ct
from models.learned.randomisation import RandomisationConfig

if TYPE_CHECKING:  # imported when a progress bar is shown
    from tqdm import tqdm

__all__ = ["TrainConfig", "train"]

logger = logging.getLogger(__name__)

#: What each architecture is, for its model card.
DESCRIPTIONS = {
    "diffusion": "Conditional denoising diffusion model (v-prediction, cosine schedule, DDIM sampling); U-Net "
                 "denoiser with attention, conditioned on the MR slice and its neighbours (2.5D).",
    "unet": "U-Net regression with an L1 loss, MR slice and neighbours (2.5D) to CT (the CNN baseline).",
    "pix2pix": "pix2pix conditional GAN: U-Net generator, PatchGAN discriminator, L1 + adversarial loss (2.5D).",
    "contourdiff": "ContourDiff-style unpaired diffusion model: trained on CT alone, conditioned on edge maps and "
                   "the body outline; at inference the edges come from the MR.",
}


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in the checkpoint)."""

    architecture: str = "diffusion"
    steps: int = 2000
    batch_size: int = 8
    patch_size: int | None = 64
    learning_rate: float = 2e-4
    context: int = 1
    base_channels: int = 32
    # Three downsamplings: attention runs at 1/8 of the slice (32 x 32 for 256 x 256, 64 x 64 for 512 x 512),
    # which keeps its memory (quadratic in positions) within the CPU budget for 512 x 512 slices.
    channel_mults: tuple[int, ...] = (1, 2, 2, 4)
    attention_levels: tuple[int, ...] = (-1,)
    # 2: the U-Net works on 2 x 2 pixel blocks folded into channels (see networks.UNet): ~4x fewer FLOPs per
    # slice, which is what lets the diffusion model sample a 96-slice volume within a minute on a 2-core CPU.
    space_to_depth: int = 2
    ema_decay: float = 0.999
    seed: int = 0
    validate_every: int = 250
    checkpoint_every: int = 250
    validation_cases: int = 1
    default_steps: int = 10
    half_weights: bool = True
    training_data: str = ""
    # Corrective diffusion (models.learned.corrective): the checkpoint folder of a trained unet / pix2pix
    # whose prediction the diffusion model corrects. train() fills in mean_network (that checkpoint's config)
    # and residual_scale at the start of a run; a resumed run takes all three from its checkpoint.
    mean_model: str | None = None
    mean_network: dict | None = None
    residual_scale: float | None = None
    # The acquisition of cases without an acquisition.json (the sidecar's keys), for the envelope; None: unknown.
    acquisition: dict | None = None
    # MR appearance randomisation (models.learned.randomisation.RandomisationConfig as a dict); None: off.
    randomisation: dict | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ModelError(f"unknown architecture {self.architecture!r}; expected one of {', '.join(ARCHITECTURES)}")
        for name in ("steps", "batch_size", "validate_every", "checkpoint_every", "default_steps"):
            if int(getattr(self, name)) < 1:
                raise ModelError(f"{name} must be at least 1; found {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ModelError(f"ema_decay must lie in [0, 1); found {self.ema_decay}")
        if self.randomisation is not None:
            RandomisationConfig.from_json(self.randomisation)  # refuses bad settings before any work
        if self.acquisition is not None:
            acquisition_from_sidecar(self.acquisition, "the declared acquisition (--acquisition)")
        if self.mean_model is not None and self.architecture != "diffusion":
            raise ModelError(f"a mean model is corrected only by the diffusion architecture; found "
                             f"{self.architecture} (leave --mean-model out)")

    def network_config(self) -> dict:
        return {"architecture": self.architecture, "context": self.context, "base_channels": self.base_channels,
                "channel_mults": list(self.channel_mults), "attention_levels": list(self.attention_levels),
                "space_to_depth": self.space_to_depth,
                "default_steps": self.default_steps, "normalisation": "mr: p99.5 in body, [-1,1]; ct: [-1024,3071]",
                **({"mean_network": self.mean_network, "residual_scale": self.residual_scale}
                   if self.mean_network is not None else {})}


def train(data_dir: Path, output: Path, config: TrainConfig, *, device: str | None = None,
          show_progress: bool = True) -> dict[str, Any]:
    """Train (or resume) and write the checkpoint to ``output``; returns the last validation metrics.

    Started by ``torchrun``, each process trains its shard of every batch with DistributedDataParallel
    (:mod:`models.learned.distributed`): ``config.batch_size`` is then the global batch, split evenly over the
    processes, and the run computes what one process with that batch computes (to floating-point rounding).
    Rank 0 alone reads the checkpoint to resume from (and hands it to the others), validates and writes; every
    process returns rank 0's metrics.

    Parameters
    ----------
    data_dir : pathlib.Path
        Folder of case folders (every process reads it: on several hosts, the same path on each).
    output : pathlib.Path
        Checkpoint folder, resumed from when it holds a ``train_state.pt`` (rank 0's host only).
    config : TrainConfig
        The run's settings.
    device : str or None
        Torch device; default CUDA when available. Under torchrun ``cuda`` (meaning ``cuda:LOCAL_RANK``) or
        ``cpu``.
    show_progress : bool
        Show a progress bar (rank 0 only).

    Returns
    -------
    dict
        ``step``, ``validation_mae_hu`` and ``loss`` (mean of the last ten steps' global-batch losses) of the
        last validation, and ``run_loss_start`` / ``run_loss_end`` (first and last ten steps of this run).

    Raises
    ------
    ModelError
        No usable cases, a checkpoint in ``output`` made with another architecture, bad settings, a global
        batch that the torchrun processes cannot share evenly, or a torchrun environment that is incomplete.
    """
    launch = launch_from_environment()
    if launch is not None:
        # Before the rendezvous: a process that refuses its settings there would leave the others waiting.
        Shard(launch.rank, launch.world_size).rows(config.batch_size)
    with data_parallel(launch, device) as parallel:
        return _train(Path(data_dir), Path(output), config, parallel, show_progress)


def _train(data_dir: Path, output: Path, config: TrainConfig, parallel: DataParallel,
           show_progress: bool) -> dict[str, Any]:
    """:func:`train` in one process of ``parallel`` (which may be the only one)."""
    main = parallel.is_main
    cases = load_cases(data_dir)
    paired = config.architecture != "contourdiff"
    if paired and any(case.ct is None for case in cases):
        raise ModelError(f"{data_dir}: the {config.architecture} model needs a CT for every case")
    held_out = min(config.validation_cases, len(cases) - 1) if len(cases) > 1 else 0
    training, validation = cases[: len(cases) - held_out], cases[len(cases) - held_out:]
    # The envelope goes into the card, which rank 0 alone writes.
    envelope = training_envelope(data_dir, training, config.network_config()["normalisation"],
                                 config.acquisition) if main else None
    torch.manual_seed(config.seed)
    run_device = parallel.device
    # Rank 0 reads the resume state and sends it to the others, so that the output folder need exist on its
    # host only and every process starts from the same bytes.
    state = parallel.broadcast(load_train_state(output) if main and (output / "train_state.pt").exists() else None)
    if state is not None and state["config"]["architecture"] != config.architecture:
        raise ModelError(f"{output} holds a {state['config']['architecture']} checkpoint; "
                         f"choose another --output for {config.architecture}")
    dataset = SliceDataset(training, context=config.context, patch_size=config.patch_size, seed=config.seed,
                           ct_only=not paired, randomisation=RandomisationConfig.from_json(config.randomisation))
    mean_state = mean_card = None
    if state is not None and state["config"].get("mean_network") is not None:
        # A resumed corrective run: the mean network's config, weights and scale come from the checkpoint.
        for name in ("mean_model", "mean_network", "residual_scale"):
            setattr(config, name, state["config"][name])
    elif state is not None and config.mean_model is not None:
        raise ModelError(f"{output} holds a plain diffusion checkpoint (no mean model); choose another --output "
                         f"to train one that corrects {config.mean_model}")
    elif config.mean_model is not None:
        mean_state, mean_card = _load_mean_network(config, dataset, run_device)
        # Every process measured the same batches; rank 0's scale is the one in the checkpoint, so all use it.
        config.residual_scale = parallel.broadcast(config.residual_scale)
    # channels_last: ~10 % faster training steps on the CPU (oneDNN), NHWC kernels on CUDA.
    network = build_network(config.network_config())
    if config.patch_size is not None and config.patch_size % network.size_multiple:
        raise ModelError(f"patch size {config.patch_size} must be a multiple of {network.size_multiple} for this "
                         f"network (space_to_depth {config.space_to_depth} x 2 ** {len(config.channel_mults) - 1} "
                         f"downsamplings)")
    if mean_state is not None:
        # _load_mean_network set config.mean_network, so the config describes a corrective model.
        assert isinstance(network, CorrectiveDiffusion)
        network.mean.load_state_dict(mean_state)
    # torch's stubs of Module.to lack the memory_format keyword it accepts
    network = network.to(run_device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    ema = copy.deepcopy(network).eval()
    for parameter in ema.parameters():
        parameter.requires_grad_(False)
    # A corrective model's mean network is frozen: only the denoiser is optimised.
    optimiser = torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=config.learning_rate,
                                  weight_decay=0.0)
    discriminator: PatchDiscriminator | None = None
    optimiser_d: torch.optim.Optimizer | None = None
    if config.architecture == "pix2pix":
        discriminator = PatchDiscriminator(2 * config.context + 2).to(run_device)
        optimiser_d = torch.optim.AdamW(discriminator.parameters(), lr=config.learning_rate, betas=(0.5, 0.999))
    generator = torch.Generator().manual_seed(config.seed)
    step = 0
    if state is not None:
        network.load_state_dict(state["network"])
        ema.load_state_dict(state["ema"])
        optimiser.load_state_dict(state["optimiser"])
        if discriminator is not None and optimiser_d is not None and state.get("discriminator"):
            discriminator.load_state_dict(state["discriminator"])
            optimiser_d.load_state_dict(state["optimiser_d"])
        generator.set_state(state["generator"])
        step = int(state["step"])
        if main:
            logger.info("resuming %s training at step %d of %d", config.architecture, step, config.steps)
        mean_card = state.get("mean_card")
    if parallel.distributed and main:
        logger.info("training on %d processes: %d of the global batch of %d each (%s)", parallel.world_size,
                    config.batch_size // parallel.world_size, config.batch_size, run_device)
    # The networks the training step calls: DistributedDataParallel around them under torchrun (the gradients
    # averaged over processes), the networks themselves otherwise. Weights are saved from the networks.
    forward = parallel.wrap(network)
    forward_d = parallel.wrap(discriminator) if discriminator is not None else None
    rows = parallel.shard.rows(config.batch_size)
    val_slices = validation_slices(validation or training, config.context, max_slices=8) if main else []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if run_device.type == "cuda" \
        else torch.autocast("cpu", enabled=False)
    bar = _progress(config.steps, step, show_progress and main)
    metrics: dict[str, Any] = state.get("metrics", {}) if state else {}
    started, started_step = time.perf_counter(), step
    losses: list[float] = []
    # The losses of the steps before a resume, so that a resumed run's "loss" (mean of the last ten steps) is the
    # uninterrupted run's; checkpoints from before this was kept start without them.
    earlier_losses = [float(x) for x in state.get("recent_losses", [])] if state else []
    while step < config.steps:
        # Every process draws the whole global batch (its generator stays in step with the others) and crops
        # only its rows.
        batch = {k: v.to(run_device).contiguous(memory_format=torch.channels_last)
                 for k, v in dataset.sample_batch(config.batch_size, generator, rows=rows).items()}
        forward.train()
        with autocast:
            loss = _loss(config.architecture, network, forward, batch, generator, forward_d, optimiser_d,
                         config.batch_size, rows)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()  # under DDP, returns with the gradients averaged over the processes
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimiser.step()
        _ema_update(ema, network, config.ema_decay if step >= 100 else 0.0)
        losses.append(parallel.mean(loss))  # the global batch's loss: the mean of the equal shards' means
        step += 1
        if main:
            logger.debug("step %d: loss %.9g", step, losses[-1])
        if bar is not None:
            rate = (step - started_step) * config.batch_size / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", slices_per_s=f"{rate:.1f}")
            bar.update(1)
        if main and (step % config.validate_every == 0 or step == config.steps):
            metrics = {"step": step, "validation_mae_hu": _validate(ema, config, val_slices, run_device),
                       "loss": float(np.mean((earlier_losses + losses)[-10:]))}
            logger.info("step %d: validation MAE %.1f HU", step, metrics["validation_mae_hu"])
        if step % config.checkpoint_every == 0 or step == config.steps:
            if main:
                _save(output, config, network, ema, optimiser, discriminator, optimiser_d, generator, step, metrics,
                      training, validation, mean_card, envelope, processes=parallel.world_size,
                      recent_losses=(earlier_losses + losses)[-10:])
            # Nobody runs ahead of a checkpoint: a job stopped after this point resumes from this step.
            parallel.barrier()
    if bar is not None:
        bar.close()
    metrics = parallel.broadcast(metrics)
    if losses:  # how this run's loss moved (first and last ten steps), e.g. to check that training learns
        metrics = {**metrics, "run_loss_start": float(np.mean(losses[:10])), "run_loss_end": float(np.mean(losses[-10:]))}
    return metrics


def training_envelope(data_dir: Path, cases: Sequence[Case], normalisation: str,
                      default_acquisition: dict[str, Any] | None = None) -> dict[str, Any]:
    """The envelope (:mod:`models.envelope`) of the training cases, as the model card stores it.

    The acquisition part comes from each case's ``acquisition.json`` sidecar (``sct-node phantom`` writes one);
    cases without one take ``default_acquisition`` (the same keys; ``sct-node train --acquisition``) or, without
    it, leave it unknown. The images part comes from the MR files: voxel size, field of view,
    orientation and the body intensity histogram after the MR normalisation (body mask from the MR, as at
    inference).
    """
    entries = []
    for case in cases:
        case_dir = data_dir / case.case_id if (data_dir / case.case_id).is_dir() else data_dir
        entries.append((case.case_id, case.mr, read_sidecar(case_dir)))
    with_sidecar = sum(1 for _, _, acquisition in entries if acquisition is not None)
    declared = 0
    if default_acquisition is not None:
        fallback = acquisition_from_sidecar(default_acquisition, "the declared acquisition (--acquisition)")
        declared = len(entries) - with_sidecar
        entries = [(i, mr, a if a is not None else fallback) for i, mr, a in entries]
    source = (f"acquisition from acquisition.json sidecars ({with_sidecar} of {len(entries)} training cases)"
              + (f" and declared for the other {declared} (--acquisition)" if declared else "")
              + "; images from the training MR files")
    return envelope_from_cases(entries, normalisation=normalisation, source=source).to_json()


def _load_mean_network(config: TrainConfig, dataset: SliceDataset,
                       device: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read the checkpoint a corrective diffusion model corrects; set ``mean_network`` and ``residual_scale``.

    The scale is measured on 16 batches drawn with their own generator (seeded from ``config.seed``), so
    the training batches that follow are the same as in a run without a mean model.
    """
    if config.mean_model is None:
        raise ModelError("no mean model to correct (--mean-model) was given")
    mean_config, mean_state, mean_card = load_checkpoint(Path(config.mean_model))
    if mean_config.get("architecture") not in ("unet", "pix2pix"):
        raise ModelError(f"--mean-model {config.mean_model} is a {mean_config.get('architecture')} checkpoint; the "
                         f"diffusion model corrects a regression network: give a unet or pix2pix checkpoint")
    if int(mean_config["context"]) != config.context:
        raise ModelError(f"--mean-model {config.mean_model} sees {mean_config['context']} MR neighbours per side; "
                         f"train the diffusion model with --context {mean_config['context']}")
    mean = build_network(mean_config)
    assert isinstance(mean, UNet)  # a unet / pix2pix config (checked above) builds a UNet
    mean.load_state_dict(mean_state)
    mean = mean.to(device)
    scale_generator = torch.Generator().manual_seed(config.seed + 1)
    batches = [{k: v.to(device) for k, v in dataset.sample_batch(config.batch_size, scale_generator).items()}
               for _ in range(16)]
    config.mean_network = mean_config
    config.residual_scale = residual_scale_from(mean, batches)
    logger.info("correcting %s: residual scale %.4f (%.0f HU)", config.mean_model, config.residual_scale,
                config.residual_scale * (HU_MAX - HU_MIN) / 2)
    return mean_state, {k: mean_card.get(k) for k in ("name", "version", "content_hash", "training_steps")}


def _loss(architecture: str, network: UNet | CorrectiveDiffusion, forward: torch.nn.Module,
          batch: dict[str, torch.Tensor], generator: torch.Generator, discriminator: torch.nn.Module | None,
          optimiser_d: torch.optim.Optimizer | None, batch_size: int, rows: slice) -> torch.Tensor:
    """The architecture's training loss on ``batch``; for pix2pix, after one discriminator step.

    ``batch`` holds ``rows`` of a global batch of ``batch_size`` (all of it in a single process); the loss is
    the mean over those rows. ``forward`` (and ``discriminator``) are what to call for a forward pass whose
    gradients are to be averaged over processes (the DDP wrappers under torchrun); ``network`` is the network
    itself, for its other methods.
    """
    ct = batch["ct"]
    if architecture == "diffusion":
        if isinstance(network, CorrectiveDiffusion):
            residual, condition = network.residual_and_condition(ct, batch["mr"])
            return training_loss(forward, residual, condition, generator=generator, batch_size=batch_size, rows=rows)
        return training_loss(forward, ct, batch["mr"], generator=generator, batch_size=batch_size, rows=rows)
    if architecture == "contourdiff":
        return training_loss(forward, ct, torch.cat([batch["edges"], batch["outline"]], 1), generator=generator,
                             batch_size=batch_size, rows=rows)
    prediction = forward(batch["mr"])
    l1 = F.l1_loss(prediction, ct)
    if architecture == "unet":
        return l1
    # pix2pix: one discriminator step on (MR, real) vs (MR, fake), then the generator's L1 + adversarial loss.
    assert discriminator is not None and optimiser_d is not None  # train() makes both for pix2pix
    real, fake = torch.cat([batch["mr"], ct], 1), torch.cat([batch["mr"], prediction], 1)
    # Real and fake in one forward pass (InstanceNorm is per sample, so this is two passes' result): DDP allows
    # one forward pass per backward pass.
    logits_real, logits_fake = discriminator(torch.cat([real, fake.detach()])).chunk(2)
    loss_d = 0.5 * (F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
                    + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake)))
    optimiser_d.zero_grad(set_to_none=True)
    loss_d.backward()
    optimiser_d.step()
    # The generator's adversarial term through the discriminator itself, not its DDP wrapper: the gradients it
    # leaves on the discriminator's weights are never used (zeroed before the next discriminator step), so
    # averaging them over processes would be wasted traffic.
    logits = _unwrapped(discriminator)(fake)
    return 100.0 * l1 + F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def _unwrapped(module: torch.nn.Module) -> torch.nn.Module:
    """The network inside a DistributedDataParallel wrapper, or ``module`` itself."""
    inner = getattr(module, "module", None)
    return inner if isinstance(inner, torch.nn.Module) else module


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, network: torch.nn.Module, decay: float) -> None:
    for target, source in zip(ema.state_dict().values(), network.state_dict().values()):
        if target.dtype.is_floating_point:
            target.mul_(decay).add_(source.detach(), alpha=1.0 - decay)
        else:
            target.copy_(source)


@torch.no_grad()
def _validate(network: UNet | CorrectiveDiffusion, config: TrainConfig, slices: list[dict[str, Any]],
              device: torch.device) -> float:
    """MAE (HU) inside the body on validation slices, with the EMA weights (diffusion: 5 DDIM steps)."""
    errors = []
    generator = torch.Generator().manual_seed(1234)
    for item in slices:
        if config.architecture == "contourdiff":
            cond = torch.from_numpy(np.concatenate([item["mr_edges"], item["outline"]], axis=0))[None]
        else:
            cond = torch.from_numpy(item["mr"])[None]
        ny, nx = cond.shape[-2:]
        multiple = network.size_multiple
        pad = (0, (-nx) % multiple, 0, (-ny) % multiple)
        cond = F.pad(cond, pad, value=0.0 if config.architecture == "contourdiff" else -1.0).to(device)
        if config.architecture in ("diffusion", "contourdiff"):
            noise = torch.randn((1, 1, *cond.shape[-2:]), generator=generator).to(device)
            out = diffusion_sample(network, cond, 5, noise)
        else:
            out = network(cond)
        predicted = denormalise_ct(out.float().clamp(-1, 1)[0, 0, :ny, :nx].cpu().numpy())
        truth = denormalise_ct(item["ct"][0])
        body = item["body"][0] > 0.5
        errors.append(np.abs(predicted - truth)[body])
    return float(np.concatenate(errors).mean()) if errors else math.nan


def _save(output: Path, config: TrainConfig, network: torch.nn.Module, ema: torch.nn.Module,
          optimiser: torch.optim.Optimizer, discriminator: PatchDiscriminator | None,
          optimiser_d: torch.optim.Optimizer | None, generator: torch.Generator, step: int, metrics: dict[str, Any],
          training: Sequence[Case], validation: Sequence[Case], mean_card: dict[str, Any] | None = None,
          envelope: dict[str, Any] | None = None, processes: int = 1,
          recent_losses: Sequence[float] = ()) -> None:
    """Write the checkpoint (EMA weights, config, card) and the state a resumed run starts from.

    ``processes``: how many processes trained (torchrun), recorded in the card; a run may be resumed with
    another number, as long as the global batch divides among them. ``recent_losses``: the last ten steps'
    losses, which a resumed run's first validation averages with its own.
    """
    description = DESCRIPTIONS[config.architecture]
    if config.mean_network is not None:
        description += (" Corrective: the denoiser samples the residual over a frozen "
                        f"{config.mean_network['architecture']} regression network's CT "
                        f"({(mean_card or {}).get('name')}, content hash {(mean_card or {}).get('content_hash')}).")
    card = {
        "name": config.architecture, "version": f"{__version__}+step{step}",
        "architecture": config.architecture, "description": description,
        "training_data": config.training_data or (f"{len(training)} case(s): "
                                                  + ", ".join(c.case_id for c in training[:10])
                                                  + (" ..." if len(training) > 10 else "")),
        "validation_data": ", ".join(c.case_id for c in validation) or "(training cases)",
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "code_version": __version__, "training_steps": step, "evaluation": metrics, "training_processes": processes,
        "training_config": {k: v for k, v in asdict(config).items() if k != "extra"},
        "intended_use": config.extra.get("intended_use", "Research; validate on your own data before any use."),
        **({"mean_model": mean_card} if mean_card else {}),
        **({"envelope": envelope} if envelope is not None else {}),
    }
    train_state = {"config": asdict(config), "network": network.state_dict(), "ema": ema.state_dict(),
                   "optimiser": optimiser.state_dict(), "generator": generator.get_state(), "step": step,
                   "metrics": metrics, "mean_card": mean_card, "recent_losses": list(recent_losses),
                   "discriminator": discriminator.state_dict() if discriminator is not None else None,
                   "optimiser_d": optimiser_d.state_dict() if optimiser_d is not None else None}
    save_checkpoint(output, model_state=ema.state_dict(), config=config.network_config(), card=card,
                    train_state=train_state, half=config.half_weights)


def _progress(total: int, done: int, enabled: bool) -> tqdm | None:
    """A progress bar at ``done`` of ``total`` steps, or None when not ``enabled``."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="step", dynamic_ncols=True)

