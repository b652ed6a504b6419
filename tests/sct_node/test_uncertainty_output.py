"""``translate --ensemble`` keeps its uncertainty map (MHA and a DICOM Parametric Map) and ``qa`` takes it."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import SimpleITK as sitk

from dosimetry.qa_result import read_qa
from models.phantoms import generate_phantom
from models.volume import Volume
from sct_node.cli import EXIT_OK, EXIT_QA_FAIL, main
from sct_node.dicom.reader import read_series
from sct_node.dicom.uids import CT_IMAGE_STORAGE
from sct_node.dicom.uncertainty_writer import read_uncertainty_map
from sct_node.tools.phantom_writer import write_phantom_dicom
from tests.factories.validation import dciodvfy_findings


def test_translate_ensemble_writes_the_map_and_qa_checks_it(tmp_path, capsys):
    phantom = generate_phantom("pelvis", 31, shape_zyx=(12, 64, 64), spacing_mm=(6.0, 6.0, 9.0))
    written = write_phantom_dicom(phantom, "ensemble", tmp_path / "dicom")
    sct_dir = tmp_path / "sct"
    assert main(["translate", "--input", str(written.mr_t1_dir), "--output", str(sct_dir), "--ensemble", "2",
                 "--json", "--quiet"]) == EXIT_OK
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    folder = tmp_path / "sct-uncertainty"
    assert summary["uncertainty"] == str(folder)
    sct = read_series([sct_dir], sop_classes=[CT_IMAGE_STORAGE]).volume
    mha = Volume.from_sitk(sitk.ReadImage(str(folder / "uncertainty.mha")))
    assert mha.same_grid(sct) and mha.array.max() > 0 and mha.array.min() >= 0
    # The Parametric Map: valid, in the sCT's frame and study, and the same numbers.
    errors, _ = dciodvfy_findings(folder / "PM.uncertainty.dcm")
    assert errors == []
    dataset = pydicom.dcmread(folder / "PM.uncertainty.dcm")
    header = pydicom.dcmread(next(sct_dir.glob("*.dcm")), stop_before_pixels=True)
    assert dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30" and dataset.FrameOfReferenceUID == header.FrameOfReferenceUID
    assert dataset.StudyInstanceUID == header.StudyInstanceUID and dataset.SyntheticData == "YES"
    unit = dataset.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0].MeasurementUnitsCodeSequence[0]
    assert unit.CodeValue == "[hnsf'U]"
    np.testing.assert_allclose(read_uncertainty_map(folder / "PM.uncertainty.dcm", sct).array, mha.array, atol=1e-4)
    # qa takes the folder; a level below the map's maximum flags voxels and adds the structure.
    level = float(np.percentile(mha.array[mha.array > 0], 50))
    code = main(["qa", "--sct", str(sct_dir), "--mr", str(written.mr_t1_dir), "--uncertainty", str(folder),
                 "--uncertainty-level-hu", f"{level:.3f}", "--no-dose",
                 "--output", str(tmp_path / "qa")])
    assert code in (EXIT_OK, EXIT_QA_FAIL, 1)
    qa = read_qa(tmp_path / "qa", maps=False).result
    assert qa.uncertainty.level_hu == round(level, 3)
    assert 0 < qa.uncertainty.percent_above < 100
    assert qa.check("uncertainty") is not None
