"""Exceptions raised by the ``dosimetry`` package."""

from __future__ import annotations


class DosimetryError(Exception):
    """Base class of every error the ``dosimetry`` package raises on bad input."""


class GammaInputError(DosimetryError):
    """The grids, doses or options given to a gamma comparison are unusable."""
