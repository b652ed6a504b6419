"""`sct-node dose`: an RT Plan's dose on a CT series as RT Dose, and its refusals (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dosimetry.beam import beams_from_plan
from dosimetry.density import relative_electron_density_volume
from dosimetry.engine import compute_dose
from dosimetry.plans import read_rt_plan
from dosimetry.qa import dose_grid_image
from dosimetry.rtdose import read_rt_dose
from models.volume import Volume
from sct_node.cli import EXIT_INPUT, EXIT_OK, main
from sct_node.tools.phantom_writer import phantom_identity, write_image_series
from tests.factories import rt_plans
from tests.factories.validation import assert_valid_dicom


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> tuple[Path, Volume, str]:
    """A water cylinder (radius 60 mm) in air, 64 x 64 x 16 voxels of 3 mm, centred on the origin."""
    n, nz, spacing = 64, 16, 3.0
    axis = (np.arange(n) - (n - 1) / 2) * spacing
    water = (axis[None, :] ** 2 + axis[:, None] ** 2) <= 60.0 ** 2
    hu = np.where(water, 0.0, -1000.0).astype(np.float32)
    volume = Volume(np.repeat(hu[None], nz, axis=0), (spacing, spacing, spacing),
                    (axis[0], axis[0], -(nz - 1) / 2 * spacing))
    identity = phantom_identity("pelvis", 15, "dose-cli")
    folder = write_image_series(volume, tmp_path_factory.mktemp("ct") / "CT", identity, "CT")
    return folder, volume, str(identity.FrameOfReferenceUID)


def _dose(ct_dir: Path, plan: Path, output: Path, *extra: str) -> int:
    return main(["dose", "--ct", str(ct_dir), "--plan", str(plan), "--output", str(output), *extra])


def test_dose_is_a_valid_plan_sum_rt_dose_referencing_the_plan(ct, tmp_path, capsys):
    folder, volume, frame = ct
    dataset = rt_plans.static_fields(frame=frame, gantries=(0.0, 90.0), field_mm=(60.0, 60.0), mu=100.0,
                                     fractions=5)
    plan_path = rt_plans.write_plan(dataset, tmp_path / "RP.dcm")
    output = tmp_path / "RD.dcm"
    assert _dose(folder, plan_path, output) == EXIT_OK
    assert "PLAN: the whole plan (5 fractions)" in capsys.readouterr().out
    assert_valid_dicom(output)
    written = pydicom.dcmread(output)
    assert written.DoseSummationType == "PLAN" and written.DoseType == "PHYSICAL" and written.DoseUnits == "GY"
    (reference,) = written.ReferencedRTPlanSequence
    assert reference.ReferencedSOPInstanceUID == dataset.SOPInstanceUID
    assert written.FrameOfReferenceUID == frame
    # The plan sum: five times the engine's dose per fraction on the 3 mm grid (the CT's, coarser than 2.5 mm).
    per_fraction = compute_dose(relative_electron_density_volume(dose_grid_image(volume)),
                                beams_from_plan(read_rt_plan(dataset)))
    read = read_rt_dose(output).dose_gy
    assert read.shape == per_fraction.shape
    np.testing.assert_allclose(read.array, 5.0 * per_fraction.array, atol=5.0 * per_fraction.array.max() / 60000)
    assert read.array.max() > 5 * 0.5  # 2 x 100 MU per fraction: about 1 Gy per beam near d_max
    assert main(["gamma", str(output), str(output), "--dose-percent", "2", "--distance-mm", "2", "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["pass_rate_percent"] == 100.0


def test_a_plan_without_file_meta_and_a_chosen_fraction_group(ct, tmp_path, capsys):
    folder, _, frame = ct
    plan_path = rt_plans.write_plan(rt_plans.monaco_three_fraction_groups(frame=frame), tmp_path / "RP.raw",
                                    file_meta=False)
    output = tmp_path / "RD.dcm"
    assert _dose(folder, plan_path, output, "--fraction-group", "2") == EXIT_OK
    out = capsys.readouterr().out
    assert "FRACTION: all 5 fraction(s) of fraction group 2 of 3" in out
    assert "fraction group 2 (beam 3; 5 fractions) used" in out
    assert_valid_dicom(output)
    written = pydicom.dcmread(output)
    assert written.DoseSummationType == "FRACTION"
    (reference,) = written.ReferencedRTPlanSequence
    assert reference.ReferencedFractionGroupSequence[0].ReferencedFractionGroupNumber == 2
    assert "fraction group 2 (beam 3; 5 fractions) used" in written.ImageComments


def test_setup_beams_are_skipped_and_said(ct, tmp_path, capsys):
    folder, _, frame = ct
    dataset = rt_plans.eclipse_with_setup_beams(frame=frame)
    output = tmp_path / "RD.dcm"
    assert _dose(folder, rt_plans.write_plan(dataset, tmp_path / "RP.dcm"), output) == EXIT_OK
    out = capsys.readouterr().out
    assert "2 beam(s) as 2 static beam(s)" in out and "beam 4 'CBCT' skipped: 0 MU in fraction group 1" in out


REFUSED = {
    "ten_mv": "beam 1 'G000' is 10 MV: the dose engine's beam data are 6 MV only",
    "fff": "flattening-filter-free beams are not supported",
    "wedge": "wedges are not modelled: beam 1 'G090' has wedge W30",
    "bolus": "bolus is not modelled: beam 1 'G000' references bolus (ROI 7)",
    "electron": "electron beams are not supported: beam 1 'E12' is ELECTRON (12 MeV)",
    "tomotherapy_helical": "helical TomoTherapy plans are not supported",
    "halcyon_private": "private SOP Class UID 1.2.246.352.70.1.70 (UID root of Varian Medical Systems)",
    "gamma_knife": "Gamma Knife plans are not supported",
    "cyberknife": "CyberKnife plans are not supported",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refusals_are_one_line_with_the_input_exit_code(ct, tmp_path, capsys, name):
    folder, _, frame = ct
    dataset = rt_plans.tomotherapy_helical(200) if name == "tomotherapy_helical" else getattr(rt_plans, name)()
    dataset.FrameOfReferenceUID = frame
    output = tmp_path / "RD.dcm"
    assert _dose(folder, rt_plans.write_plan(dataset, tmp_path / "RP.dcm"), output) == EXIT_INPUT
    error = capsys.readouterr().err
    assert error.startswith("sct-node: error: ") and REFUSED[name] in error and error.count("\n") == 1
    assert not output.exists()


def test_a_plan_in_another_frame_or_not_dicom_is_refused(ct, tmp_path, capsys):
    folder, _, _ = ct
    output = tmp_path / "RD.dcm"
    assert _dose(folder, rt_plans.write_plan(rt_plans.static_fields(), tmp_path / "RP.dcm"), output) == EXIT_INPUT
    assert "not the image's" in capsys.readouterr().err
    text = tmp_path / "plan.txt"
    text.write_text("not a plan")
    assert _dose(folder, text, output) == EXIT_INPUT
    assert "not a DICOM file" in capsys.readouterr().err and not output.exists()
