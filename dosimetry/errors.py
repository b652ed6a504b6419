"""Exceptions raised by the ``dosimetry`` package."""

from __future__ import annotations

from models.errors import SctError


class DosimetryError(SctError):
    """Base class of every error the ``dosimetry`` package raises on bad input."""


class GammaInputError(DosimetryError):
    """The grids, doses or options given to a gamma comparison are unusable."""
