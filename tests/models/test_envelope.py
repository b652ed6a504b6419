"""The training envelope and the input guard (models/envelope.py) on generated phantoms and hand-made headers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from models.envelope import (
    HISTOGRAM_BINS,
    INTENSITY_FLOOR,
    INTENSITY_MARGIN,
    Acquisition,
    Envelope,
    acquisition_from_header,
    acquisition_from_sidecar,
    body_site,
    envelope_from_cases,
    guard,
    infer_weighting,
    intensity_distance,
    read_sidecar,
    refuses,
)
from models.errors import ModelError
from models.phantoms import generate_phantom, write_synthrad_case
from models.phantoms.synthrad import phantom_acquisition
from models.registry import BUNDLED_WEIGHTS

#: The bundled weights' training grid (scripts/train_bundled_weights.py); seeds from 2000 were never trained on.
TRAIN_SHAPE = (32, 256, 256)
HELD_OUT = 2000


def _header(site: str = "pelvis", tr: str = "500", te: str = "15", **extra) -> dict:
    """The MR header fields ``sct-node phantom`` writes (sct_node/tools/phantom_writer.py), as a mapping."""
    return {"ScanningSequence": "SE", "SequenceVariant": "NONE", "ScanOptions": "", "RepetitionTime": tr,
            "EchoTime": te, "MagneticFieldStrength": "1.5", "BodyPartExamined": site.upper(),
            "ImageType": ["ORIGINAL", "PRIMARY", "OTHER"], **extra}


@pytest.fixture(scope="module")
def bundled() -> Envelope:
    card = json.loads((BUNDLED_WEIGHTS / "unet" / "card.json").read_text())
    return Envelope.from_json(card["envelope"])


@pytest.fixture(scope="module")
def pelvis_only() -> Envelope:
    cases = [(f"pelvis-{seed}", generate_phantom("pelvis", seed, shape_zyx=TRAIN_SHAPE).mr_t1,
              acquisition_from_sidecar(phantom_acquisition("pelvis", "t1"))) for seed in range(3)]
    return envelope_from_cases(cases)


@pytest.fixture(scope="module")
def held_out():
    return {site: generate_phantom(site, HELD_OUT, shape_zyx=TRAIN_SHAPE) for site in ("head", "pelvis")}


@pytest.mark.parametrize(("family", "tr", "te", "ti", "flip", "expected"), [
    ("SE", 500, 15, None, None, "T1"), ("SE", 4000, 100, None, None, "T2"), ("SE", 3000, 20, None, None, "PD"),
    ("SE", 1200, 50, None, None, "mixed"), ("GR+IR", 2300, 3, 900, 9, "T1"), ("IR+SE", 9000, 120, 2500, None, "FLAIR"),
    ("IR+SE", 4000, 40, 150, None, "STIR"), ("GR", 30, 20, None, 15, "T2*"), ("GR", 10, 4, None, 8, "PD"),
    ("SE", None, 15, None, None, None),
])
def test_weighting_follows_the_radiographers_rules(family, tr, te, ti, flip, expected):
    assert infer_weighting(family, tr, te, ti, flip) == expected


def test_body_part_synonyms_map_onto_the_sites():
    assert body_site("BRAIN") == "head" and body_site("Prostate") == "pelvis" and body_site("KNEE") == "knee"
    assert body_site("  ") is None and body_site(None) is None


def test_the_phantom_sidecar_says_what_the_phantom_dicom_header_says(tmp_path):
    from sct_node.dicom.reader import read_series
    from sct_node.tools.phantom_writer import write_phantom_dicom

    phantom = generate_phantom("head", 3, shape_zyx=(16, 64, 64))
    case = write_synthrad_case(phantom, tmp_path / "case", mr="t2")
    written = write_phantom_dicom(phantom, "head-0003", tmp_path / "dicom")
    from_header, missing = acquisition_from_header(read_series([written.mr_t2_dir]).header)
    assert read_sidecar(case.case_dir) == from_header == acquisition_from_sidecar(phantom_acquisition("head", "t2"))
    assert from_header.weighting == "T2" and from_header.body_site == "head" and from_header.fat_suppressed is False
    assert missing == ()


def test_a_sidecar_with_an_unknown_key_or_a_bad_value_is_refused_by_name():
    with pytest.raises(ModelError, match="unknown key.*echo_time"):
        acquisition_from_sidecar({"echo_time": 15})
    with pytest.raises(ModelError, match="repetition_time_ms must be a positive number"):
        acquisition_from_sidecar({"repetition_time_ms": "500"})
    with pytest.raises(ModelError, match="fat_suppressed must be true, false or null"):
        acquisition_from_sidecar({"fat_suppressed": "no"})


def test_the_envelope_survives_a_json_round_trip(pelvis_only):
    text = json.dumps(pelvis_only.to_json(), allow_nan=False)
    again = Envelope.from_json(json.loads(text))
    assert again.to_json() == pelvis_only.to_json()
    assert again.body_sites == ("pelvis",) and again.weightings == ("T1",) and again.sequence_families == ("SE",)
    assert again.echo_time_ms.low == again.echo_time_ms.high == 15.0
    assert len(again.intensity.histograms) == 3 and all(len(h) == HISTOGRAM_BINS for h in again.intensity.histograms)
    assert again.intensity.threshold == pytest.approx(
        max(INTENSITY_MARGIN * max(again.intensity.leave_one_out), INTENSITY_FLOOR), abs=1e-5)


@pytest.mark.parametrize(("change", "message"), [
    (lambda e: e.pop("cases"), "cases"),
    (lambda e: e.update(schema=99), "schema 99"),
    (lambda e: e.update(colour="blue"), "unknown field"),
    (lambda e: e["intensity"]["histograms"][0].pop(), "histograms must hold"),
    (lambda e: e["intensity"].update(threshold=0.0), "positive threshold"),
    (lambda e: e.update(dixon=["no"]), "booleans"),
    (lambda e: e["fov_mm"].pop(), "fov_mm must hold one range"),
])
def test_a_malformed_envelope_is_refused_with_the_field_named(pelvis_only, change, message):
    data = json.loads(json.dumps(pelvis_only.to_json()))
    change(data)
    with pytest.raises(ModelError, match=message):
        Envelope.from_json(data)


def test_the_intensity_distance_is_a_metric_on_histograms():
    rng = np.random.default_rng(0)
    a, b, c = (h / h.sum() for h in rng.random((3, HISTOGRAM_BINS)))
    assert intensity_distance(a, a) == 0.0
    assert intensity_distance(a, b) == pytest.approx(intensity_distance(b, a))
    assert intensity_distance(a, c) <= intensity_distance(a, b) + intensity_distance(b, c) + 1e-12
    # All mass at one end against all at the other: W1 over [-1, 1] is (nearly) the whole range.
    low, high = np.zeros(HISTOGRAM_BINS), np.zeros(HISTOGRAM_BINS)
    low[0], high[-1] = 1.0, 1.0
    assert intensity_distance(low, high) == pytest.approx(2.0 * (HISTOGRAM_BINS - 1) / HISTOGRAM_BINS)


def test_the_bundled_models_carry_the_envelope_of_their_training_phantoms(bundled):
    assert bundled.cases == 7 and bundled.cases_with_acquisition == 7
    assert bundled.weightings == ("T1",) and bundled.body_sites == ("head", "pelvis")
    assert bundled.repetition_time_ms.text("ms") == "500 ms" and bundled.fat_suppressed == (False,)
    assert bundled.intensity.threshold < 0.1 and "sidecar" in bundled.source


@pytest.mark.parametrize("site", ["head", "pelvis"])
def test_held_out_phantoms_of_the_training_kind_pass(bundled, held_out, site):
    for seed in (HELD_OUT, HELD_OUT + 1):
        phantom = held_out[site] if seed == HELD_OUT else generate_phantom(site, seed, shape_zyx=TRAIN_SHAPE)
        result = guard(_header(site), phantom.mr_t1, bundled)
        assert result.verdict == "ok", result.summary()
        assert result.score < 1 and result.fields_missing == () and result.nearest_case.startswith(site)


def test_a_t2_weighted_series_is_a_hard_mismatch_for_a_t1_only_model(bundled, held_out):
    result = guard(_header("pelvis", tr="4000", te="100"), held_out["pelvis"].mr_t2, bundled)
    assert result.verdict == "hard" and refuses(result, "refuse-hard") and not refuses(result, "mark")
    assert "T2-weighted (from TR/TE) but the model was trained on T1 only" in result.reasons[0]
    assert any("echo time 100 ms outside the training range 15 ms" in r for r in result.reasons)
    assert any("intensity distribution distance" in r for r in result.reasons)


def test_an_anonymised_t2_series_is_caught_by_its_intensities_alone(bundled, held_out):
    result = guard({}, held_out["head"].mr_t2, bundled)
    assert result.verdict in ("soft", "hard") and result.score > 1
    assert [f.check for f in result.findings] == ["intensity"]
    assert {"RepetitionTime", "EchoTime", "ScanningSequence", "BodyPartExamined"} <= set(result.fields_missing)
    assert "judged without" in result.summary()


@pytest.mark.parametrize(("name", "transform"), [
    ("gamma 0.5", lambda a, body, ref: ref * (np.clip(a, 0, None) / ref) ** 0.5),
    ("gamma 2", lambda a, body, ref: ref * (np.clip(a, 0, None) / ref) ** 2.0),
    ("inverted", lambda a, body, ref: np.where(body, np.clip(ref - a, 0, None) + 0.05 * ref, a)),
])
def test_contrast_changes_behind_a_t1_header_are_caught_by_the_intensity_distance(bundled, held_out, name,
                                                                                    transform):
    phantom = held_out["pelvis"]
    a, body = phantom.mr_t1.array, phantom.body_mask
    changed = phantom.mr_t1.with_array(transform(a, body, float(np.percentile(a[body], 99.5))).astype(np.float32))
    result = guard(_header("pelvis"), changed, bundled)
    assert result.verdict in ("soft", "hard") and result.intensity_distance > result.intensity_threshold, name
    assert "contrast unlike the training data" in result.summary()


def test_a_head_series_is_a_hard_mismatch_for_a_pelvis_model(pelvis_only, held_out):
    result = guard(_header("head"), held_out["head"].mr_t1, pelvis_only)
    assert result.verdict == "hard"
    assert "body part head not among the training's pelvis" in result.reasons
    assert any(f.check == "fov_mm" for f in result.findings)


def test_a_crop_is_a_soft_mismatch_of_the_field_of_view(bundled, held_out):
    cropped = held_out["pelvis"].mr_t1.slab(12, 20)
    result = guard(_header("pelvis"), cropped, bundled)
    assert result.verdict in ("soft", "hard")
    assert "field of view along z 62 mm outside the training range 250 mm" in result.reasons


def test_missing_fields_are_named_and_the_rest_is_still_judged(bundled, held_out):
    header = _header("pelvis", te="60")
    del header["RepetitionTime"], header["BodyPartExamined"]
    result = guard(header, held_out["pelvis"].mr_t1, bundled)
    assert set(result.fields_missing) == {"RepetitionTime", "BodyPartExamined", "RepetitionTime/EchoTime"}
    assert result.verdict == "soft" and "echo time 60 ms outside the training range 15 ms" in result.reasons


def test_fat_suppression_and_contrast_are_read_from_the_header(bundled, held_out):
    header = _header("pelvis", ScanOptions="FS", ContrastBolusAgent="Gadobutrol")
    result = guard(header, held_out["pelvis"].mr_t1, bundled)
    checks = {f.check: f.severity for f in result.findings}
    assert checks == {"fat_suppressed": "hard", "contrast_agent": "soft"}


def test_without_an_envelope_the_guard_says_it_cannot_judge(held_out):
    result = guard(_header(), held_out["pelvis"].mr_t1, None, model_name="model old")
    assert result.verdict == "unjudged" and result.score is None
    assert "no envelope: cannot judge" in result.summary() and not refuses(result, "refuse")


def test_refusal_policies():
    soft = guard.__globals__["GuardResult"](verdict="soft", score=1.2)
    assert not refuses(soft, "refuse-hard") and refuses(soft, "refuse") and not refuses(soft, "mark")
    with pytest.raises(ModelError, match="refuse-hard, refuse, mark"):
        refuses(soft, "ignore")


def test_a_checkpoint_without_an_envelope_still_loads(tmp_path):
    from models.learned.model import LearnedModel

    folder = tmp_path / "old"
    shutil.copytree(BUNDLED_WEIGHTS / "unet", folder)
    card = json.loads((folder / "card.json").read_text())
    del card["envelope"]
    (folder / "card.json").write_text(json.dumps(card))
    assert LearnedModel(folder).envelope is None
    assert LearnedModel(BUNDLED_WEIGHTS / "unet").envelope.weightings == ("T1",)


def test_training_records_the_envelope_of_its_cases(tmp_path):
    from models.learned.checkpoint import load_checkpoint
    from models.learned.train import TrainConfig, train

    for site in ("head", "pelvis"):
        write_synthrad_case(generate_phantom(site, 5, shape_zyx=(16, 64, 64)), tmp_path / "data" / f"{site}-5")
    config = TrainConfig(architecture="unet", steps=1, batch_size=1, patch_size=32, base_channels=8,
                         validate_every=1, checkpoint_every=1, validation_cases=1)
    train(tmp_path / "data", tmp_path / "ckpt", config, device="cpu", show_progress=False)
    envelope = Envelope.from_json(load_checkpoint(tmp_path / "ckpt")[2]["envelope"])
    # The last case is held out for validation: the envelope is the training case's.
    assert envelope.cases == 1 and envelope.body_sites == ("head",) and envelope.intensity.case_ids == ("head-5",)
    assert envelope.intensity.threshold == INTENSITY_FLOOR and envelope.weightings == ("T1",)
    assert isinstance(acquisition_from_sidecar({}), Acquisition)


def test_an_enhanced_mr_header_is_read_from_its_functional_groups():
    from tests.factories.enhanced_mr import make_enhanced_mr

    volume = generate_phantom("pelvis", 1, shape_zyx=(16, 64, 64)).mr_t1
    acquisition, missing = acquisition_from_header(make_enhanced_mr(volume, echo_times_ms=(15.0,)))
    assert acquisition.sequence_family == "SE" and acquisition.repetition_time_ms == 500.0
    assert acquisition.echo_time_ms == 15.0 and acquisition.weighting == "T1" and acquisition.field_strength_t == 1.5
    assert "EchoTime" not in missing and "ScanningSequence" not in missing and "BodyPartExamined" in missing
