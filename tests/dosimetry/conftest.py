"""Fixtures of the dosimetry tests."""

from __future__ import annotations

import pytest

from models.phantoms import generate_phantom


@pytest.fixture(scope="module")
def pelvis():
    """A small pelvis phantom (16 slices of 64 x 64), shared by the HU statistics and outline tests."""
    return generate_phantom("pelvis", 3, shape_zyx=(16, 64, 64), spacing_mm=(6.5, 6.5, 12))
