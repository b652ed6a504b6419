"""The contract between the node and an MR -> synthetic CT model.

A model is any object with a :class:`ModelCard` and a ``translate`` method
(:class:`TranslationModel`); the node, the CLI and the QA never depend on a
concrete class, so learned models plug in through :mod:`models.registry`
without touching them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from models.volume import Volume

__all__ = ["HU_MAX", "HU_MIN", "ModelCard", "ProgressCallback", "SyntheticCT", "TranslationModel"]

#: Range of CT numbers a synthetic CT may hold; the writer stores exactly this range.
HU_MIN = -1024
HU_MAX = 3071
#: Fewest DDIM steps an ensemble of a diffusion model may use. One step from t = 1 returns the network's
#: estimate of the clean image given the MR, whatever the starting noise: members would agree to a
#: fraction of an HU and the uncertainty map would say "sure" everywhere. Checkpoints made by the
#: bundled-weights script carry ``ensemble_steps``, the fewest steps at which the sampler has converged.
MIN_ENSEMBLE_STEPS = 2

#: ``progress(done, total)``; models call it as they finish slices or steps.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class ModelCard:
    """What a model is, copied into every output so each sCT names the model that made it.

    Attributes
    ----------
    name : str
        Short model name (``bulk``, ``diffusion``, ...).
    version : str
        Version of the model (code version for non-learned models).
    description : str
        One sentence a physicist can read: method and intended use.
    content_hash : str
        Hash of the weights and configuration (``"none"`` for non-learned models);
        part of the model identity so retrained weights give new output UIDs.
    intended_use : str
        What it may and may not be used for.
    """

    name: str
    version: str
    description: str
    content_hash: str = "none"
    intended_use: str = "Research and commissioning; not a medical device."

    @property
    def identity(self) -> str:
        """A string that changes whenever the model's output could change."""
        return f"{self.name}:{self.version}:{self.content_hash}"


@dataclass(frozen=True)
class SyntheticCT:
    """What a model returns.

    Attributes
    ----------
    hu : Volume
        CT numbers in HU on the MR's grid, within [HU_MIN, HU_MAX].
    body_mask : numpy.ndarray
        Boolean (z, y, x) mask of the patient body the model used.
    uncertainty_hu : Volume or None
        Per-voxel standard deviation in HU (ensembles), else None.
    """

    hu: Volume
    body_mask: np.ndarray
    uncertainty_hu: Volume | None = None


@runtime_checkable
class TranslationModel(Protocol):
    """An MR -> synthetic CT model."""

    card: ModelCard

    def translate(self, mr: Volume, *, progress: ProgressCallback | None = None,
                  body_mask: np.ndarray | None = None) -> SyntheticCT:
        """Translate an MR volume into a synthetic CT on the same grid.

        Parameters
        ----------
        mr : Volume
            MR intensities (any scale) with patient geometry.
        progress : callable or None
            Progress callback ``(done, total)``.
        body_mask : numpy.ndarray or None
            :func:`models.body_mask.body_mask_from_mr` of ``mr`` when the caller has it already (the node's
            input guard computes it first); None: the model computes it. Nothing else may be passed.

        Returns
        -------
        SyntheticCT
            The sCT on ``mr``'s grid.

        Raises
        ------
        ModelError
            If the input cannot be processed (e.g. empty image).
        """
        ...
