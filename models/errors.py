"""Exceptions raised by the ``models`` package."""

from __future__ import annotations


class ModelsError(Exception):
    """Base class of every error the ``models`` package raises on bad input."""


class GeometryError(ModelsError):
    """An image grid is malformed or two grids do not match."""


class ModelError(ModelsError):
    """A translation model cannot be loaded or cannot process its input."""


class PhantomError(ModelsError):
    """A phantom cannot be generated, written or read with the given arguments."""
