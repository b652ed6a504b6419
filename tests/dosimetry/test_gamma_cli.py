"""`sct-node gamma` on two RT Dose files, and RT Dose reading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dosimetry.rtdose import RtDoseError, read_rt_dose
from sct_node.cli import EXIT_INPUT, EXIT_OK, main

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _rt_dose(path: Path, dose_gy: np.ndarray, frame: str = "1.2.3", offsets_absolute: bool = False,
             position=(-50.0, -40.0, 100.0)) -> Path:
    """An RT Dose (Gy) on a 2.5 mm grid, frames along +z."""
    dataset = pydicom.dcmread(TEST_FILES / "rtdose.dcm")
    nz, ny, nx = dose_gy.shape
    scaling = float(dose_gy.max()) / 60000
    dataset.Rows, dataset.Columns, dataset.NumberOfFrames = ny, nx, nz
    dataset.PixelSpacing = [2.5, 2.5]
    dataset.ImagePositionPatient = list(position)
    dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    offsets = np.arange(nz) * 2.5
    dataset.GridFrameOffsetVector = list(offsets + (position[2] if offsets_absolute else 0.0))
    dataset.DoseUnits, dataset.DoseGridScaling, dataset.FrameOfReferenceUID = "GY", scaling, frame
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelData = np.rint(dose_gy / scaling).astype("<u2").tobytes()
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dataset.save_as(path, enforce_file_format=True)
    return path


def _field(shift_mm: float = 0.0) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.arange(n) * 2.5 for n in (12, 16, 20)), indexing="ij")
    return 2.0 * np.exp(-(((x - 25 - shift_mm) / 12) ** 2 + ((y - 20) / 10) ** 2 + ((z - 14) / 9) ** 2))


def test_rt_dose_geometry_and_values(tmp_path):
    dose = _field()
    for absolute in (False, True):
        grid = read_rt_dose(_rt_dose(tmp_path / f"d{absolute}.dcm", dose, offsets_absolute=absolute))
        assert grid.dose_gy.spacing_mm == (2.5, 2.5, 2.5) and grid.dose_gy.origin_mm == (-50.0, -40.0, 100.0)
        np.testing.assert_allclose(grid.dose_gy.array, dose, atol=float(dose.max()) / 60000)
    with pytest.raises(RtDoseError, match="RELATIVE; only absolute dose"):
        read_rt_dose(TEST_FILES / "rtdose.dcm")


def test_gamma_of_identical_doses_passes_everywhere(tmp_path, capsys):
    reference = _rt_dose(tmp_path / "ref.dcm", _field())
    assert main(["gamma", str(reference), str(reference), "--dose-percent", "2", "--distance-mm", "2",
                 "--json"]) == EXIT_OK
    result = json.loads(capsys.readouterr().out)
    assert result["pass_rate_percent"] == 100.0 and result["evaluated_points"] > 100


def test_gamma_detects_a_shift_larger_than_the_distance_criterion(tmp_path, capsys):
    reference = _rt_dose(tmp_path / "ref.dcm", _field())
    shifted = _rt_dose(tmp_path / "shifted.dcm", _field(shift_mm=5.0))
    main(["gamma", str(reference), str(shifted), "--dose-percent", "2", "--distance-mm", "2", "--json"])
    strict = json.loads(capsys.readouterr().out)["pass_rate_percent"]
    main(["gamma", str(reference), str(shifted), "--dose-percent", "3", "--distance-mm", "6", "--json"])
    lenient = json.loads(capsys.readouterr().out)["pass_rate_percent"]
    assert strict < 80.0 and lenient == 100.0


def test_gamma_refuses_different_frames_of_reference(tmp_path, capsys):
    reference = _rt_dose(tmp_path / "ref.dcm", _field())
    other = _rt_dose(tmp_path / "other.dcm", _field(), frame="9.9.9")
    assert main(["gamma", str(reference), str(other), "--dose-percent", "2", "--distance-mm", "2"]) == EXIT_INPUT
    assert "frame of reference 9.9.9" in capsys.readouterr().err


def test_gamma_refuses_dose_grids_that_do_not_overlap(tmp_path, capsys):
    reference = _rt_dose(tmp_path / "ref.dcm", _field())
    # Same frame, but the second grid lies 500 mm further along z (e.g. exported for another isocentre).
    elsewhere = _rt_dose(tmp_path / "elsewhere.dcm", _field(), position=(-50.0, -40.0, 600.0))
    assert main(["gamma", str(reference), str(elsewhere), "--dose-percent", "2", "--distance-mm", "2"]) == EXIT_INPUT
    error = capsys.readouterr().err
    assert "does not overlap the reference grid" in error and "along z" in error


def test_an_rt_dose_with_unusable_geometry_is_an_rt_dose_error(tmp_path):
    """A grid the image model refuses (zero pixel spacing) is reported as the RT Dose's problem, not as a
    model error (the CLI's exit code 3, input, not 5)."""
    path = _rt_dose(tmp_path / "d.dcm", _field())
    dataset = pydicom.dcmread(path)
    dataset.PixelSpacing = [0.0, 0.0]
    dataset.save_as(path)
    with pytest.raises(RtDoseError, match="the dose grid's geometry is not usable"):
        read_rt_dose(path)
    assert main(["gamma", str(path), str(path), "--dose-percent", "2", "--distance-mm", "2"]) == EXIT_INPUT


def test_every_package_error_has_the_one_root():
    from dosimetry.errors import DosimetryError
    from models.errors import ModelsError, SctError
    from sct_node.errors import SctNodeError
    from sct_node.node.dispatch import DeliveryError

    assert all(issubclass(error, SctError) for error in (ModelsError, DosimetryError, SctNodeError, DeliveryError))
