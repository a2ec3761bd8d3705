"""The scale benchmark's pure helpers (scripts/bench_scale.py): summaries, the line through
the sizes and where it reaches a goal. Fast: no benchmark runs here."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from bench_scale import crossing, line_fit, per_trial, summary  # noqa: E402


def test_summary_median_and_p90_interpolate():
    s = summary([10.0, 1.0, 2.0, 3.0, 4.0])
    assert s["median"] == 3.0
    assert s["p90"] == pytest.approx(4.0 + 0.6 * (10.0 - 4.0))  # rank 3.6 between 4 and 10
    assert s["n"] == 5


def test_summary_of_nothing_is_nan():
    s = summary([])
    assert math.isnan(s["median"]) and math.isnan(s["p90"]) and s["n"] == 0


def test_line_fit_recovers_a_line_and_needs_two_xs():
    a, b = line_fit([10, 100, 1000], [2.0 + 0.03 * x for x in (10, 100, 1000)])
    assert a == pytest.approx(2.0) and b == pytest.approx(0.03)
    with pytest.raises(ValueError):
        line_fit([5, 5], [1.0, 2.0])


def test_crossing_of_a_goal():
    assert crossing(2.0, 0.03, 20.0) == pytest.approx(600.0)
    assert crossing(25.0, 0.03, 20.0) == 0.0   # over the goal from the start
    assert crossing(2.0, 0.0, 20.0) is None    # flat: never
    assert crossing(2.0, -0.1, 20.0) is None


def test_per_trial_leaves_out_the_cold_first():
    assert per_trial([{"n": 0}, {"n": 1}, {"n": 2}]) == [{"n": 1}, {"n": 2}]
    assert per_trial([{"n": 0}], skip_first=False) == [{"n": 0}]
