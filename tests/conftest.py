"""Shared fixtures. Test data is generated here; nothing comes from real patients."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.factories.mr_series import make_volume, write_mr_series


@pytest.fixture
def mr_volume():
    """A small anisotropic MR-like volume with distinct values."""
    return make_volume()


@pytest.fixture
def mr_series_dir(tmp_path: Path, mr_volume) -> Path:
    """That volume written as an Explicit VR Little Endian MR series."""
    folder = tmp_path / "mr"
    write_mr_series(mr_volume, folder)
    return folder
