"""Verdicts: thresholds in both directions, the worst check wins, reasons say why."""

from __future__ import annotations

import math

import pytest

from dosimetry.errors import DosimetryError
from dosimetry.verdict import Limit, QaThresholds, Verdict, judge, overall


def test_higher_is_better_limits():
    limit = Limit(95.0, 90.0, True, "%", "test")
    assert judge("gamma", 97.0, limit, "gamma pass rate").verdict == Verdict.PASS
    warn = judge("gamma", 92.5, limit, "gamma pass rate")
    assert warn.verdict == Verdict.WARN and "92.5 %" in warn.reason and "pass limit 95" in warn.reason
    fail = judge("gamma", 80.0, limit, "gamma pass rate")
    assert fail.verdict == Verdict.FAIL and "fail limit 90" in fail.reason
    assert judge("gamma", 95.0, limit, "x").verdict == Verdict.PASS  # at the limit passes


def test_lower_is_better_limits_and_nan():
    limit = Limit(2.0, 3.0, False, "%", "test")
    assert judge("d98", 1.0, limit, "D98").verdict == Verdict.PASS
    assert judge("d98", 2.5, limit, "D98").verdict == Verdict.WARN
    assert judge("d98", 3.5, limit, "D98").verdict == Verdict.FAIL
    nan = judge("d98", math.nan, limit, "D98")
    assert nan.verdict == Verdict.FAIL and "could not be measured" in nan.reason
    assert math.isnan(nan.value)


def test_overall_is_the_worst_with_its_reasons():
    limit = Limit(2.0, 3.0, False, "%", "test")
    checks = [judge("a", 1.0, limit, "A"), judge("b", 2.5, limit, "B"), judge("c", 2.8, limit, "C")]
    verdict, reasons = overall(checks)
    assert verdict == Verdict.WARN and len(reasons) == 2 and reasons[0].startswith("B")
    assert overall([checks[0]]) == (Verdict.PASS, ())
    with pytest.raises(DosimetryError, match="at least one"):
        overall([])


def test_inconsistent_limits_are_refused_and_defaults_cite_sources():
    with pytest.raises(DosimetryError, match="beyond its fail limit"):
        Limit(90.0, 95.0, True, "%", "bad")
    defaults = QaThresholds()
    for name in QaThresholds.__dataclass_fields__:
        assert getattr(defaults, name).source, name
    assert defaults.gamma_pass_rate_percent.pass_limit == 95.0


def test_thresholds_can_be_overridden_with_clear_errors():
    from dosimetry.verdict import thresholds_from_mapping

    custom = thresholds_from_mapping({"gamma_pass_rate_percent": {"pass_limit": 97.0}})
    assert custom.gamma_pass_rate_percent.pass_limit == 97.0 and custom.gamma_pass_rate_percent.fail_limit == 90.0
    assert "overridden" in custom.gamma_pass_rate_percent.source
    assert custom.mae_body_hu == QaThresholds().mae_body_hu
    with pytest.raises(DosimetryError, match="unknown QA threshold 'gama'"):
        thresholds_from_mapping({"gama": {"pass_limit": 1}})
    with pytest.raises(DosimetryError, match="takes pass_limit and/or fail_limit"):
        thresholds_from_mapping({"mae_body_hu": {"warn": 1}})
    with pytest.raises(DosimetryError, match="beyond its fail limit"):
        thresholds_from_mapping({"mae_body_hu": {"pass_limit": 200}})
