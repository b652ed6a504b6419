"""Find a model by name (built in, with bundled weights) or by path (a checkpoint folder).

Built-in models:

* ``bulk`` — bulk-density assignment (no weights);
* ``diffusion`` — the default: the conditional diffusion model with the
  bundled phantom-trained weights (``models/weights/diffusion``);
* ``unet`` — the U-Net baseline with bundled phantom-trained weights.

Any folder written by ``sct-node train`` loads by its path. The bundled
weights are trained on phantoms only (see their model cards): they make
``translate``, ``serve`` and ``demo`` work out of the box and are not for
clinical use.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.base import TranslationModel
from models.bulk import BulkDensityModel
from models.errors import ModelError

__all__ = ["BUNDLED_WEIGHTS", "DEFAULT_MODEL", "available_models", "load_model"]

#: Folder of the bundled checkpoints (package data).
BUNDLED_WEIGHTS = Path(__file__).resolve().parent / "weights"
#: The node's and the CLI's default model.
DEFAULT_MODEL = "diffusion"


def _bundled(name: str) -> Callable[..., TranslationModel]:
    def load(**options: Any) -> TranslationModel:
        from models.learned.model import LearnedModel

        folder = BUNDLED_WEIGHTS / name
        if not (folder / "model.pt").exists():
            raise ModelError(f"the bundled {name} weights are missing ({folder}); reinstall sct-node or train "
                             f"them with scripts/train_bundled_weights.py")
        return LearnedModel(folder, **options)

    return load


_BUILT_IN: dict[str, Callable[..., TranslationModel]] = {
    "bulk": lambda **options: BulkDensityModel(),
    "diffusion": _bundled("diffusion"),
    "unet": _bundled("unet"),
}


def available_models() -> list[str]:
    """Names of the built-in models."""
    return sorted(_BUILT_IN)


def load_model(name_or_path: str, **options: Any) -> TranslationModel:
    """Load a built-in model by name, or a checkpoint folder by path.

    Parameters
    ----------
    name_or_path : str
        A built-in model name (see :func:`available_models`) or a folder written by ``sct-node train``.
    **options
        For learned models: ``steps``, ``ensemble``, ``seed``, ``device``, ``batch_size``
        (:class:`models.learned.model.LearnedModel`); ignored by ``bulk``.

    Raises
    ------
    ModelError
        If the name is unknown or the path holds no loadable model.
    """
    if name_or_path in _BUILT_IN:
        return _BUILT_IN[name_or_path](**options)
    path = Path(name_or_path)
    if path.is_dir():
        from models.learned.model import LearnedModel

        return LearnedModel(path, **options)
    if path.exists():
        raise ModelError(f"{name_or_path}: a model is a checkpoint folder (model.pt, card.json), not a file")
    raise ModelError(f"unknown model {name_or_path!r}; built-in models: {', '.join(available_models())}, "
                     "or the path of a folder written by `sct-node train`")
