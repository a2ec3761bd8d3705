import pytest

from autobatch.units import format_bytes, format_duration, parse_bytes, parse_duration
from autobatch.errors import AutobatchError


@pytest.mark.parametrize("text,seconds", [
    ("90s", 90), ("10m", 600), ("4h", 14400), ("1h30m", 5400), ("1h30m15s", 5415),
    ("120", 120), ("1.5h", 5400), (" 5m ", 300), ("5 m", 300), ("2 hours", 7200), ("1d", 86400),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5x", "m5", "1h1h", "1h60m1h", "-5m", "0s", "0", "5 parsecs"])
def test_parse_duration_rejects(text):
    with pytest.raises(AutobatchError):
        parse_duration(text)


@pytest.mark.parametrize("text,n", [
    ("512MiB", 512 * 2**20), ("8GiB", 8 * 2**30), ("1.5GB", 1_500_000_000), ("2000", 2000),
    ("4g", 4 * 2**30), (1024, 1024), ("10 MiB", 10 * 2**20), ("512m", 512 * 2**20), ("2 GB", 2 * 10**9),
])
def test_parse_bytes(text, n):
    assert parse_bytes(text) == n


@pytest.mark.parametrize("text", ["", "MiB", "5XB", "-1GiB", "0", "0MiB", "12parsecs", "3 gigs", "8GiBs"])
def test_parse_bytes_rejects(text):
    with pytest.raises(AutobatchError):
        parse_bytes(text)


def test_formatting():
    assert format_bytes(3 * 2**30) == "3.0 GiB"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(None) == "-"
    assert format_duration(5415) == "1h30m"
    assert format_duration(75) == "1m15s"


def test_a_budget_that_cannot_hold_the_minimum_plan_is_refused_before_probing_with_one_that_does():
    from autobatch.search import BudgetTooShortError, check_budget_early
    from autobatch.search._plan import EARLY_MARGIN, FIT_RESERVE_MIN_S, PROBE_BATCHES, SAFETY

    plan = dict(elapsed_s=2.0, seconds_per_sample=0.05, least_samples=640, batch_size=32, largest_batch=256,
                n_trials=None, noise_probe_s=5.0, what="0.45 epochs of digits")
    need = 4 * 640 * 0.05 * SAFETY + 5.0 + PROBE_BATCHES * 256 * 0.05     # 160 s of trials, 107 s of probes
    with pytest.raises(BudgetTooShortError) as caught:
        check_budget_early(budget_s=120, **plan)
    line = str(caught.value)
    assert "budget 2m00s is too short" in line and "4 trials of at least 640 samples (0.45 epochs of digits)" in line
    assert "50 ms per sample (micro-batch 32, timed before probing)" in line
    suggested = parse_duration(line.split("pass --budget ")[1].split()[0])
    assert suggested >= need + 2.0 + FIT_RESERVE_MIN_S
    # one step timed before probing is a lower bound on what the later check counts: the budget
    # named has EARLY_MARGIN to spare, so the later check does not refuse it in turn
    assert suggested >= EARLY_MARGIN * (need + 2.0)
    check_budget_early(budget_s=suggested, **plan)                       # the budget it names holds
    # a step timed once can be off: only a budget short by more than EARLY_MARGIN is refused here
    check_budget_early(budget_s=2.0 + FIT_RESERVE_MIN_S + need / EARLY_MARGIN + 5, **plan)
    # fewer trials asked for: fewer must fit
    check_budget_early(budget_s=120, **{**plan, "n_trials": 1})
