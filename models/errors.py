"""The project's exception root, and the exceptions of the ``models`` package.

:class:`SctError` is the one root: each package's root is under it (``models.errors.ModelsError``,
``dosimetry.errors.DosimetryError``, ``sct_node.errors.SctNodeError``), so a caller that must not let any
of the project's own errors through catches one class. It lives here because ``models`` is the lowest package.
"""

from __future__ import annotations


class SctError(Exception):
    """Root of every error sct-node's packages raise on bad input or a failed operation (not of bugs)."""


class ModelsError(SctError):
    """Base class of every error the ``models`` package raises on bad input."""


class GeometryError(ModelsError):
    """An image grid is malformed or two grids do not match."""


class ModelError(ModelsError):
    """A translation model cannot be loaded or cannot process its input."""


class PhantomError(ModelsError):
    """A phantom cannot be generated, written or read with the given arguments."""
