"""The QA report PDF: pages, text, footers, metadata, absent parts and write errors, read back with pypdf."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import re
from pathlib import Path

import numpy as np
import pytest
from pypdf import PdfReader

from dosimetry.qa_result import DoseComparison, QaResult
from dosimetry.verdict import QaThresholds
from models.volume import Volume
from sct_node.errors import InputError, OutputError
from sct_node.report.data import DvhCurve, Identifiers, ReportData, StructureOutline
from sct_node.report.pdf import EXPECTED_TISSUE_PEAKS_HU, render_report_pdf
from tests.factories import qa_results as factory

SHAPE = (12, 40, 52)  # (z, y, x)
SPACING_MM = (0.9, 1.3, 3.0)
ORIGIN_MM = (-23.0, -31.5, 104.0)
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-0042-XYZ"
LONG_REASON = ("bone (>= 200 HU) inside the body 0.05 % of body voxels: beyond the fail limit 0.2; the sCT holds "
               "almost no bone, so the dose behind the pelvis is overestimated and the plan cannot be trusted "
               "without a look at the images and a comparison with a real CT of this patient")


#: The QA's default threshold of each check, whose source the table shows (sources of realistic length).
THRESHOLD_OF = {"out_of_range": "out_of_range_fraction_percent", "bone_fraction": "bone_fraction_percent",
                "soft_tissue_peak": "soft_tissue_peak_hu_deviation", "body_dice": "body_dice",
                "body_surface_distance_95": "body_surface_distance_95_mm",
                "slice_coverage": "slice_coverage_missing_slices", "field_of_view": "field_of_view_truncated_percent",
                "uncertainty": "uncertainty_fraction_percent", "mae_body": "mae_body_hu",
                "gamma": "gamma_pass_rate_percent", "dvh_PTV": "target_dvh_difference_percent",
                "dvh_Rectum": "oar_dvh_difference_percent"}


def _check(name, value, verdict, unit="%", higher=False, pass_limit=2.0, fail_limit=3.0):
    field = THRESHOLD_OF.get(name)
    source = getattr(QaThresholds(), field).source if field else ""
    return factory.check(name, value, verdict, unit, higher, pass_limit, fail_limit, source)


def _qa(verdict: str = "FAIL", dose: bool | DoseComparison = False, **measurements) -> QaResult:
    checks = (
        _check("out_of_range", 0.0, "PASS", pass_limit=0.0, fail_limit=0.1),
        _check("bone_fraction", 0.05 if verdict == "FAIL" else 8.0, "FAIL" if verdict == "FAIL" else "PASS",
               higher=True, pass_limit=1.0, fail_limit=0.2),
        _check("soft_tissue_peak", 12.0, "PASS", unit="HU", pass_limit=25.0, fail_limit=50.0),
        _check("body_dice", 0.99, "PASS", unit="", higher=True, pass_limit=0.98, fail_limit=0.95),
        _check("body_surface_distance_95", 1.1, "PASS", unit="mm"),
        _check("slice_coverage", 0.0, "PASS", unit="slices", pass_limit=0.0, fail_limit=1.0),
        _check("field_of_view", 0.0, "PASS", pass_limit=0.0, fail_limit=5.0),
        _check("uncertainty", 6.5 if verdict != "PASS" else 1.0, "WARN" if verdict != "PASS" else "PASS",
               pass_limit=5.0, fail_limit=15.0),
        _check("mae_body", 71.0, "PASS", unit="HU", pass_limit=80.0, fail_limit=120.0),
        _check("gamma", 97.3, "PASS", higher=True, pass_limit=95.0, fail_limit=90.0),
        _check("dvh_PTV", 1.2, "PASS"),
        _check("dvh_Rectum", None, "FAIL" if verdict == "FAIL" else "PASS"),
    )
    reasons = [LONG_REASON, "dvh_Rectum: could not be measured"] if verdict == "FAIL" else []
    if dose:  # True: a default dose comparison; or the DoseComparison given
        measurements["dose"] = factory.dose_comparison() if dose is True else dose
    return factory.qa_result(checks, verdict, tuple(reasons), uncertainty=factory.uncertainty(100.0, 6.5),
                             **measurements)


def _grid(array: np.ndarray, spacing=SPACING_MM, origin=ORIGIN_MM) -> Volume:
    return Volume(array, spacing, origin)


def _phantom():
    """An elliptic body of soft tissue with a bone rod and a fat rim, on the anisotropic grid."""
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in SHAPE), indexing="ij")
    # In mm, so the ellipse is round-ish despite the anisotropic voxels.
    ex, ey = (x - 25.5) * SPACING_MM[0], (y - 19.5) * SPACING_MM[1]
    body = (ex / 21.0) ** 2 + (ey / 22.0) ** 2 <= 1.0
    hu = np.full(SHAPE, -1000.0, dtype=np.float32)
    hu[body] = 40.0
    hu[body & ((ex / 21.0) ** 2 + (ey / 22.0) ** 2 > 0.7)] = -100.0
    hu[body & ((ex - 5.0) ** 2 + ey ** 2 <= 16.0)] = 1200.0
    target = body & ((ex + 6.0) ** 2 + (ey + 3.0) ** 2 <= 36.0) & (z >= 3) & (z <= 8)
    return hu, body, target


def _dose(target: np.ndarray) -> dict:
    # A 4 mm dose grid with another origin, same directions: a Gaussian around the target.
    dose_shape = (10, 14, 14)
    dose_origin = (ORIGIN_MM[0] - 2.0, ORIGIN_MM[1] - 1.5, ORIGIN_MM[2] - 1.0)
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in dose_shape), indexing="ij")
    centre = np.array([ORIGIN_MM[0] + 19.5 * SPACING_MM[0], ORIGIN_MM[1] + 16.5 * SPACING_MM[1],
                       ORIGIN_MM[2] + 5.5 * SPACING_MM[2]])
    px, py, pz = dose_origin[0] + 4.0 * i, dose_origin[1] + 4.0 * j, dose_origin[2] + 4.0 * k
    r2 = (px - centre[0]) ** 2 + (py - centre[1]) ** 2 + (pz - centre[2]) ** 2
    reference = 2.1 * np.exp(-r2 / (2 * 15.0 ** 2))
    sct = reference * (1.0 + 0.03 * np.exp(-r2 / 200.0))
    gamma = np.where(reference > 0.2, np.abs(sct - reference) / 0.04 * 1.5, np.nan)
    on_grid = lambda a: Volume(a.astype(np.float32), (4.0, 4.0, 4.0), dose_origin)
    return {"dose_sct_gy": on_grid(sct), "dose_reference_gy": on_grid(reference),
            "dose_difference_percent": on_grid((sct - reference) / 2.0 * 100.0), "gamma": on_grid(gamma)}


def _dvh_curves() -> tuple[DvhCurve, ...]:
    dose = np.linspace(0.0, 2.4, 50)
    ptv_reference = 100.0 / (1.0 + np.exp((dose - 2.0) / 0.04))
    rectum_reference = 100.0 / (1.0 + np.exp((dose - 1.1) / 0.3))
    return (DvhCurve("PTV", "target", dose, ptv_reference, 100.0 / (1.0 + np.exp((dose - 2.03) / 0.04))),
            DvhCurve("Rectum", "organ", dose, rectum_reference, 100.0 / (1.0 + np.exp((dose - 1.15) / 0.3))))


IDENTIFIERS = Identifiers(
    patient_name=PATIENT_NAME, patient_id=PATIENT_ID, patient_birth_date="19600131",
    study_instance_uid="1.2.826.0.1.3680043.8.498.11111111111111111111111111111111111111",
    study_date="20240501", study_description="Pelvis MR sim", mr_series_instance_uid="1.2.3.4.5.6",
    mr_series_description="T2 TSE ax", sct_series_instance_uid="1.2.3.4.5.7",
    sct_series_description="sCT from T2 TSE ax", frame_of_reference_uid="1.2.3.4.5.8")
MODEL_CARD = {"name": "pelvis-unet", "version": "2.1", "description": "A test model.",
              "content_hash": "c0ffee12", "intended_use": "Research and commissioning; not a medical device.",
              "identity": "pelvis-unet:2.1:c0ffee12"}


def _report(full: bool = True, verdict: str = "FAIL", **changes) -> ReportData:
    hu, body, target = _phantom()
    sct = _grid(hu)
    parts: dict = {}
    if full:
        rng = np.random.default_rng(0)
        parts = dict(mr=_grid(np.where(body, 300.0, 5.0).astype(np.float32) + rng.normal(0, 5, SHAPE)),
                     reference_ct=_grid(hu + rng.normal(0, 20, SHAPE).astype(np.float32)),
                     uncertainty_hu=_grid(np.where(body, 30.0, 0.0) + 80.0 * (hu > 500)),
                     dvh_curves=_dvh_curves(), **_dose(target))
    data = ReportData(qa=_qa(verdict, dose=full), identifiers=IDENTIFIERS, model_card=MODEL_CARD, software_version="0.1.0",
                      created=_dt.datetime(2024, 5, 1, 12, 30), sct=sct, body_mask=body,
                      structures=(StructureOutline("BODY", "body", body), StructureOutline("PTV", "target", target)),
                      **parts)
    return dataclasses.replace(data, **changes)


def _texts(path: Path) -> list[str]:
    """Each page's text with runs of white space (line breaks of wrapped text) as one space."""
    return [re.sub(r"\s+", " ", page.extract_text()) for page in PdfReader(path).pages]


@pytest.fixture(scope="module")
def full_pdf(tmp_path_factory) -> Path:
    return render_report_pdf(_report(full=True), tmp_path_factory.mktemp("full") / "qa" / "report.pdf")


@pytest.fixture(scope="module")
def minimal_pdf(tmp_path_factory) -> Path:
    return render_report_pdf(_report(full=False), tmp_path_factory.mktemp("minimal") / "report.pdf")


def _footers(texts: list[str]) -> list[tuple[int, int]]:
    found = []
    for text in texts:
        hits = re.findall(r"page (\d+) of (\d+)", text)
        assert len(hits) == 1, text[-300:]
        found.append(tuple(int(v) for v in hits[0]))
    return found


def test_page_counts_and_footers(full_pdf, minimal_pdf):
    full, minimal = _texts(full_pdf), _texts(minimal_pdf)
    # Full: summary (the 12-check table flows onto a second page), images, histogram + uncertainty, dose,
    # DVH, limitations. Minimal: the same summary, images, histogram, then the no-dose note and limitations.
    assert len(full) == 7
    assert len(minimal) == 5
    for texts in (full, minimal):
        assert _footers(texts) == [(i, len(texts)) for i in range(1, len(texts) + 1)]
        for text in texts:
            assert "sct-node 0.1.0 — sCT from T2 TSE ax" in text
            assert "Synthetic CT QA, not for diagnosis" in text
            assert "Verdict: FAIL" in text  # the small verdict in every header
    assert any("Dose: 4-field box (template), sCT vs real CT" in t for t in full)
    assert any("Dose-volume histograms" in t for t in full)
    assert not any("Dose-volume histograms" in t for t in minimal)


def test_first_page_content(full_pdf):
    texts = _texts(full_pdf)
    first = texts[0]
    summary = " ".join(texts[:2])
    assert "VERDICT: FAIL" in first
    assert PATIENT_ID in first and PATIENT_NAME in first
    assert MODEL_CARD["identity"] in first
    assert "T2 TSE ax" in first and "1.2.3.4.5.8" in first
    assert "1960-01-31" in first  # the DICOM date shown as a date
    assert LONG_REASON in first  # wrapped, not cut
    for check in _qa().checks:
        assert check.name in summary, check.name
    # Limits carry their direction: gamma passes at >= 95 and fails below 90; DVH passes at <= 2.
    assert "≥ 95 %" in summary and "< 90 %" in summary and "≤ 2 %" in summary
    assert "not measured" in summary  # the None value of dvh_Rectum
    for verdict in ("PASS", "WARN", "FAIL"):
        assert re.search(rf"\b{verdict}\b", summary)
    # The table's header row is repeated where the table continues.
    assert "Source of the limits" in texts[0] and "Source of the limits" in texts[1]


def test_limitations_and_tissue_peaks(full_pdf):
    texts = _texts(full_pdf)
    last = texts[-1]
    assert "Limitations" in last
    assert "Synthetic Data" in last and MODEL_CARD["intended_use"] in last
    assert "relative comparison only" in last and "electron transport" in last
    assert "Template plans are not clinical plans" in last
    assert "bone and soft-tissue assignment" in last
    assert "plausibility, not truth" in last
    # Every distinct check source is cited.
    assert "Hussein et al. 2017" in last and "Korsholm et al. 2014" in last and "Maspero et al. 2018" in last
    histogram = next(t for t in texts if "HU histogram" in t)
    for name, hu in EXPECTED_TISSUE_PEAKS_HU:
        assert f"{name} {hu:g}" in histogram


def test_the_histogram_page_shows_the_judged_tissue_composition(tmp_path):
    qa = _qa("FAIL", hu=factory.hu_statistics({"air": 1.0, "lung": 1.2, "fat": 33.0, "soft_tissue": 48.6,
                                                "bone": 16.2}),
             composition=factory.composition("head", 37.0, -95.0, 42.1, 98.9, (90,)))
    qa = dataclasses.replace(qa, checks=(*[c for c in qa.checks if c.name != "soft_tissue_peak"],
                                         _check("fat_share", 42.1, "FAIL", unit="% of fat and soft-tissue voxels",
                                                pass_limit=30.0, fail_limit=35.0),
                                         _check("soft_tissue_peak", 2.0, "PASS", unit="HU", pass_limit=25.0,
                                                fail_limit=50.0)))
    path = render_report_pdf(_report(full=False, qa=qa), tmp_path / "report.pdf")
    histogram = next(t for t in _texts(path) if "HU histogram" in t)
    assert "Inside the body: air 1.0 %, lung-like 1.2 %, fat 33.0 %, soft tissue 48.6 %, bone 16.2 %." in histogram
    assert "Soft-tissue peak 37 HU (passes within 25 HU of 35 HU); fat peak -95 HU" in histogram
    assert "fat share of fat and soft tissue 42.1 % (site: head)" in histogram
    assert "bone in 99 % of the body slices" in histogram
    assert "sCT soft-tissue peak 37 HU" in histogram  # the legend of the line drawn at the peak
    # A QA without these measurements says so instead of inventing numbers.
    old = render_report_pdf(_report(full=False), tmp_path / "old.pdf")
    assert "No tissue composition was recorded" in next(t for t in _texts(old) if "HU histogram" in t)


def test_metadata_has_no_patient_identity(full_pdf):
    reader = PdfReader(full_pdf)
    metadata = {str(k): str(v) for k, v in (reader.metadata or {}).items()}
    assert metadata["/Title"] == "sCT QA report"
    assert metadata["/Subject"] == "FAIL"
    assert metadata["/Creator"] == "sct-node 0.1.0"
    everything = " ".join(metadata.values())
    assert PATIENT_NAME not in everything and "Doe" not in everything and PATIENT_ID not in everything
    assert full_pdf.stat().st_size < 3_000_000


def test_minimal_report_says_what_is_absent(minimal_pdf):
    text = " ".join(_texts(minimal_pdf))
    assert "no MR volume was given" in text
    assert "no real CT was given" in text
    assert "the model produced no uncertainty map" in text
    assert "No dose was computed — dose comparison not run" in text
    assert "Dose: " not in text


def test_dose_without_dvh_curves_says_so(tmp_path):
    path = render_report_pdf(_report(full=True, dvh_curves=()), tmp_path / "report.pdf")
    texts = _texts(path)
    assert len(texts) == 6  # the DVH page is gone, the sentence is in the closing section
    assert "No DVH curves" in " ".join(texts)


def test_pass_and_fail_reports_differ_on_the_first_page(tmp_path):
    passed = _texts(render_report_pdf(_report(full=False, verdict="PASS"), tmp_path / "pass.pdf"))[0]
    failed = _texts(render_report_pdf(_report(full=False, verdict="FAIL"), tmp_path / "fail.pdf"))[0]
    assert "VERDICT: PASS" in passed and "VERDICT: FAIL" not in passed
    assert "VERDICT: FAIL" in failed and "VERDICT: PASS" not in failed
    assert "every check passed" in passed and LONG_REASON.split()[0] in failed
    assert PdfReader(tmp_path / "pass.pdf").metadata["/Subject"] == "PASS"


def test_long_check_table_flows_onto_further_pages(tmp_path):
    qa = dataclasses.replace(_qa(), checks=tuple(_check(f"check_{n:03d}", float(n), "PASS") for n in range(90)))
    texts = _texts(render_report_pdf(_report(full=False, qa=qa), tmp_path / "long.pdf"))
    images_page = next(i for i, t in enumerate(texts) if "Axial, coronal and sagittal planes" in t)
    summary_pages = texts[:images_page]
    assert len(summary_pages) >= 3
    joined = " ".join(summary_pages)
    for n in range(90):
        assert f"check_{n:03d}" in joined
    assert all("Source of the limits" in t for t in summary_pages)
    assert _footers(texts) == [(i, len(texts)) for i in range(1, len(texts) + 1)]


def test_unwritable_folder_is_an_output_error(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    with pytest.raises(OutputError, match="not-a-folder"):
        render_report_pdf(_report(full=False), blocker / "report.pdf")
    assert not list(tmp_path.glob("**/*.tmp"))


def test_inconsistent_grids_are_refused(tmp_path):
    bad = _report(full=False, body_mask=np.ones((3, 3, 3), dtype=bool))
    with pytest.raises(InputError, match="body_mask"):
        render_report_pdf(bad, tmp_path / "report.pdf")
    assert list(tmp_path.iterdir()) == []


def test_planes_of_both_grids_are_placed_in_millimetres():
    """The sCT and the coarser, shifted dose grid are drawn at their own positions, so overlays align."""
    from sct_node.report.pdf.planes import _PLANES, _slice

    data = _report(full=True)
    dose = data.dose_sct_gy
    point_mm = np.asarray(ORIGIN_MM) + np.array([20.0, 15.0, 5.0]) * np.asarray(SPACING_MM)
    nz, ny, nx = SHAPE
    sct_edges = [(o - s / 2, o + (n - 0.5) * s) for o, s, n in zip(ORIGIN_MM, SPACING_MM, (nx, ny, nz))]
    dose_edges = [(o - 2.0, o + (n - 0.5) * 4.0) for o, n in zip(dose.origin_mm, dose.size_xyz)]
    for plane in _PLANES:
        for part, edges, spacing in ((_slice(data.sct, plane, point_mm), sct_edges, SPACING_MM),
                                     (_slice(dose, plane, point_mm), dose_edges, (4.0, 4.0, 4.0))):
            # The nearest plane of the grid to the point.
            assert abs(part.position_mm - point_mm[plane.fixed_axis]) <= spacing[plane.fixed_axis] / 2 + 1e-9
            left, right, bottom, top = part.extent
            np.testing.assert_allclose((left, right), edges[plane.h_axis])
            vertical = (bottom, top) if plane.v_up else (top, bottom)  # axial: anterior (low y) at the top
            np.testing.assert_allclose(vertical, edges[plane.v_axis])
            # Thick slices keep their size: the coronal image is 12 slices x 3 mm high.
            if plane.name == "coronal" and spacing == SPACING_MM:
                assert top - bottom == pytest.approx(nz * 3.0)


def _signable_qa() -> QaResult:
    """A QA result with every number the report must show."""
    metrics = {"D98%": (1.95, 1.97), "D95%": (1.96, 1.98), "D50%": (2.0, 2.03), "D2%": (2.06, 2.09),
               "Dmean": (2.0, 2.02), "Dmax": (2.1, 2.12)}
    dvh = (factory.structure_dvh("PTV", "target", metrics),
           factory.structure_dvh("Rectum", "organ", {m: (r * 0.5, e * 0.5) for m, (r, e) in metrics.items()}))
    dose = factory.dose_comparison(dvh)
    plan = dataclasses.replace(dose.plan, fraction_group_number=2,
                               notes=("beam 5 'CBCT' delivers no dose (0 MU): skipped",))
    return _qa("WARN", dose=dataclasses.replace(dose, plan=plan),
               image_metrics=factory.image_metrics(61.5, 27.9, 0.912, {"fat": (40.2, -12.3, 1200),
                                                                      "bone": (180.4, -95.1, 300)}),
               composition=factory.composition("pelvis", 47.0))


def test_the_report_shows_every_number_that_decides(tmp_path):
    path = render_report_pdf(_report(qa=_signable_qa()), tmp_path / "signable.pdf")
    text = " ".join(_texts(path))
    # DVH table: every metric per structure, reference, sCT and the difference in % of prescription.
    assert "Dose-volume metrics" in text
    for metric in ("D98%", "D95%", "D50%", "D2%", "Dmean"):
        assert metric in text
    assert "2.030" in text and "+1.50 %" in text  # PTV D50%: sCT value and difference
    # Dose comparison: normalisation, MU, maxima, the largest difference, gamma with its criteria.
    assert "median dose of PTV" in text and "G000 65.2" in text and "2.130 Gy" in text
    assert "-9.80 % of prescription" in text
    assert "2 of the RT Plan" in text and "beam 5 'CBCT' delivers no dose (0 MU): skipped" in text  # plan notes
    assert re.search(r"97\.3 % at 2 %/2 mm, global", text)
    # Image metrics against the real CT: MAE and mean error per tissue class, PSNR, SSIM.
    assert "Image metrics against the real CT" in text and "180.4" in text and "-95.1" in text
    assert "PSNR 27.9 dB" in text and "SSIM 0.912" in text
    # Check rows say what they measured.
    assert "D50% +1.50 % of prescription" in text  # dvh_PTV names its worst metric
    assert "peak 47 HU" in text  # the soft-tissue peak itself, not only its distance from 35 HU
    # A real CT was given: the limitations page does not claim no HU error can be measured.
    assert "no HU error can be measured" not in text and "measured here only because a real CT was given" in text


def test_a_hand_run_report_without_a_model_card_says_so(tmp_path):
    card = {"name": "unknown", "version": "", "description": "", "content_hash": "", "identity": "unknown",
            "intended_use": "not known: no model card and no Contributing Equipment on the sCT", "known": "no"}
    path = render_report_pdf(_report(model_card=card, reference_ct=None), tmp_path / "hand.pdf")
    last = _texts(path)[-1]
    assert "a model this report does not know" in last and "as stated in the model card" not in last
    assert "without a real CT, as here, no HU error can be measured" in last
