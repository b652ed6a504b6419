"""MR appearance randomisation during training: a pool of re-rendered MR volumes per case.

With probability ``probability`` a training patch's MR comes not from the case's stored MR but from its tissue
label map rendered with a random sequence family, bias field, noise and resolution
(:mod:`models.phantoms.appearance`), then normalised like any MR (:func:`normalise_mr`) and perturbed the way
real normalisation goes wrong: the reference percentile taken over part of the body only (a field of view that
misses fat or bone), scaled by 0.85-1.15, and a gamma of 0.8-1.25 on the normalised intensities. The CT target
does not change: the model has to read anatomy, not intensity order. Idea and evidence: SynthSeg/SynthSR
(Billot et al. 2023, see :mod:`models.phantoms.appearance`).

Rendering a whole 32 x 256 x 256 volume costs about 0.1 s on a 2-core CPU (a sixth of a training step), so
each case keeps ``slots`` rendered volumes and one of them, chosen at random, is re-rendered every
``refresh_every`` batches: over a 4000-step run about 4000 appearances. Every draw comes from the training ``torch.Generator``, so a run is reproducible from
its seed; a resumed run re-renders its pool from the generator's state at the resume (reproducible too, but not
bit-identical to an uninterrupted run).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from models.errors import ModelError
from models.learned.normalisation import BACKGROUND, MR_CLIP, MR_PERCENTILE
from models.phantoms.appearance import (
    FAMILIES,
    TRAINING_FAMILIES,
    draw_appearance,
    render_appearance,
)

__all__ = ["AppearancePool", "RandomisationConfig", "perturbed_normalise"]


@dataclass(frozen=True)
class RandomisationConfig:
    """Settings of appearance randomisation (saved in the checkpoint and the model card)."""

    probability: float = 0.7
    families: tuple[str, ...] = TRAINING_FAMILIES
    #: Randomise the imaging too (point spread function, bias field, noise); False renders every appearance
    #: with the realistic phantoms' imaging (PSF 0.5 mm, bias 0.2, noise 1 %): the ablation's "families only".
    imaging: bool = True
    slots: int = 4
    refresh_every: int = 1
    partial_fov_probability: float = 0.3
    scale_range: tuple[float, float] = (0.85, 1.15)
    gamma_range: tuple[float, float] = (0.8, 1.25)

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ModelError(f"appearance randomisation probability must lie in [0, 1]; found {self.probability}")
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise ModelError(f"unknown or no sequence families {unknown or list(self.families)}; expected some of "
                             f"{', '.join(FAMILIES)}")
        if self.slots < 1 or self.refresh_every < 1:
            raise ModelError(f"slots and refresh_every must be >= 1; found {self.slots}, {self.refresh_every}")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples as lists); :meth:`from_json` reads it back."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> RandomisationConfig | None:
        """The settings :meth:`to_json` wrote; None for no (or empty) settings: randomisation off."""
        if not data:
            return None
        settings: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**settings)


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((1,), generator=g).item())


def perturbed_normalise(mr: np.ndarray, body: np.ndarray, config: RandomisationConfig,
                        g: torch.Generator) -> np.ndarray:
    """:func:`~models.learned.normalisation.normalise_mr` with a perturbed reference and a gamma."""
    reference_body = body
    if _uniform(g, 0.0, 1.0) < config.partial_fov_probability:
        slices = np.flatnonzero(body.reshape(body.shape[0], -1).any(axis=1))
        keep = max(1, round(len(slices) * _uniform(g, 0.5, 1.0)))
        start = int(slices[0]) + int(torch.randint(len(slices) - keep + 1, (1,), generator=g).item())
        reference_body = np.zeros_like(body)
        reference_body[start:start + keep] = body[start:start + keep]
    inside = mr[reference_body]
    reference = float(np.percentile(inside, MR_PERCENTILE)) if inside.size else 0.0
    if not reference > 0:
        reference = float(np.percentile(mr[body], MR_PERCENTILE)) or 1.0
    reference *= _uniform(g, *config.scale_range)
    unit = np.clip(mr.astype(np.float32) / np.float32(reference), *MR_CLIP) / MR_CLIP[1]  # [0, 1]
    unit = unit ** np.float32(_uniform(g, *config.gamma_range))
    return np.where(body, unit * MR_CLIP[1] - 1.0, BACKGROUND).astype(np.float32)


class AppearancePool:
    """``slots`` randomly rendered, normalised MR volumes per case, refreshed one at a time."""

    def __init__(self, labels: list[np.ndarray], spacings: list[tuple[float, float, float]],
                 bodies: list[np.ndarray], config: RandomisationConfig, g: torch.Generator) -> None:
        self.config = config
        self._labels, self._spacings, self._bodies = labels, spacings, bodies
        self._volumes = [[self._render(i, g) for _ in range(config.slots)] for i in range(len(labels))]
        self._batches = 0
        self.rendered = len(labels) * config.slots

    def _render(self, index: int, g: torch.Generator) -> np.ndarray:
        rng = np.random.default_rng(int(torch.randint(2**31 - 1, (1,), generator=g).item()))
        draw = draw_appearance(rng, self.config.families)
        if not self.config.imaging:
            draw = replace(draw, psf_sigma_mm=(0.5, 0.5, 0.5), bias_amplitude=0.2, noise_fraction=0.01)
        mr = render_appearance(self._labels[index], self._spacings[index], draw, rng)
        return perturbed_normalise(mr, self._bodies[index], self.config, g)

    def after_batch(self, g: torch.Generator) -> None:
        """Count a batch; every ``refresh_every`` batches re-render one random slot."""
        self._batches += 1
        if self._batches % self.config.refresh_every == 0:
            case = int(torch.randint(len(self._volumes), (1,), generator=g).item())
            slot = int(torch.randint(self.config.slots, (1,), generator=g).item())
            self._volumes[case][slot] = self._render(case, g)
            self.rendered += 1

    def volume(self, index: int, g: torch.Generator) -> np.ndarray:
        return self._volumes[index][int(torch.randint(self.config.slots, (1,), generator=g).item())]
