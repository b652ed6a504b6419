"""Find a model by name (built in) or by path (a checkpoint folder)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from models.base import TranslationModel
from models.bulk import BulkDensityModel
from models.errors import ModelError

__all__ = ["available_models", "load_model"]

_BUILT_IN: dict[str, Callable[[], TranslationModel]] = {
    "bulk": BulkDensityModel,
}


def available_models() -> list[str]:
    """Names of the built-in models."""
    return sorted(_BUILT_IN)


def load_model(name_or_path: str) -> TranslationModel:
    """Load a built-in model by name.

    Parameters
    ----------
    name_or_path : str
        A built-in model name (see :func:`available_models`). Checkpoint
        folders written by ``sct-node train`` will be accepted here when the
        learned models land.

    Raises
    ------
    ModelError
        If the name is unknown or the path holds no loadable model.
    """
    if name_or_path in _BUILT_IN:
        return _BUILT_IN[name_or_path]()
    if Path(name_or_path).exists():
        raise ModelError(f"{name_or_path}: loading checkpoints is not supported yet; "
                         f"use a built-in model ({', '.join(available_models())})")
    raise ModelError(f"unknown model {name_or_path!r}; built-in models: {', '.join(available_models())}")
