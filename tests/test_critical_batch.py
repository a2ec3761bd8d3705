"""The critical batch in ``tune``: measured and stored at the start, said in a note, used to
centre the search when no batch range is given, and seeded as the first proposal."""

import math

import optuna
import pytest

from autobatch import records as R
from autobatch.search import (CRITICAL_BASELINE, SearchSpace, StudySpec, TuneSettings, centre_on_critical_batch,
                              range_given)
from autobatch.tuning import Note, tune
from autobatch.train._noise_probe import probe_overruns, projected_seconds
from autobatch.tuning._noise import PROBE_FRACTION, probe_share


@pytest.mark.parametrize("critical, train_size, largest, expected", [
    (180, 1438, None, (8, 512, (1, 2))),           # up to 4B; never above the default's small end (8)
    (180, 1438, 16, (8, 16, (1, 2, 4, 8, 16, 32, 64))),  # memory: the top reached by accumulating
    (12, 50_000, None, (2, 32, (1, 2))),          # never below micro-batch 2 (BatchNorm)
    (5000, 1438, None, (8, 512, (1, 2))),         # never beyond the training set, small end kept
])
def test_centred_space(critical, train_size, largest, expected):
    space = centre_on_critical_batch(SearchSpace(), critical, train_size=train_size, largest_micro=largest)
    assert (space.batch_size_min, space.batch_size_max, space.accumulation_steps) == expected
    assert space.batch_size_max * max(space.accumulation_steps) <= 2 ** math.ceil(math.log2(4 * critical))


def test_centred_space_keeps_the_small_end_an_overestimate_would_remove():
    # the probe overestimates (bench_noise: ~20x on mnist1d): a range raised to 32 lost the best trial
    space = centre_on_critical_batch(SearchSpace(), 980, train_size=4000, lower_bound=308)
    assert (space.batch_size_min, space.batch_size_max, space.accumulation_steps) == (8, 1024, (1, 2))
    assert centre_on_critical_batch(SearchSpace(batch_size_min=64), 980, train_size=4000,
                                    lower_bound=308).batch_size_min == 32  # an eighth of the low end
    assert centre_on_critical_batch(SearchSpace(), 12, train_size=4000).batch_size_min == 2  # widened down


def test_range_given_means_flags_or_bounds_other_than_the_defaults():
    assert not range_given(SearchSpace())
    assert range_given(SearchSpace(), frozenset({"space.batch_size_max"}))
    assert range_given(SearchSpace(batch_size_max=64))
    assert not range_given(SearchSpace(lr_multiplier_max=5.0), frozenset({"space.lr_multiplier_max"}))
    with pytest.raises(Exception):
        centre_on_critical_batch(SearchSpace(), math.inf, train_size=100)


@pytest.mark.parametrize("budget_s, n_trials, trial_samples, expected", [
    (600, None, 1000, (12, 12.0)),         # 2 % of a 10-minute budget: 12 s, no step cap below the default
    (20, None, 1000, (12, 0.4)),           # no 5 s floor above the share: 0.4 s
    (None, 30, 5000, (12, None)),          # 2 % of 150,000 samples = 3,000: the default 12 steps of 128
    (None, 10, 2000, (3, None)),           # 2 % of 20,000 = 400 samples: 3 steps
    (None, 4, 1150, (0, None)),            # 92 samples: fewer than 3 steps, skipped
    (60, 4, 1150, (0, 1.2)),               # both given: both bounds
])
def test_the_noise_probe_is_a_share_of_the_planned_study(budget_s, n_trials, trial_samples, expected):
    share = probe_share(budget_s=budget_s, n_trials=n_trials, trial_samples=trial_samples)
    assert (share.steps, share.max_seconds and round(share.max_seconds, 6)) == expected
    assert bool(share.why) == (share.steps == 0)
    if n_trials and share.steps:  # never more samples than the share
        assert share.steps * 128 <= PROBE_FRACTION * n_trials * trial_samples


def test_the_probe_gives_up_when_its_minimum_steps_would_overrun_its_share():
    # end times of the steps done, seconds since the start; 3 steps are the minimum
    assert projected_seconds([1.0, 1.2]) == pytest.approx(1.4)   # a slow first step (warm-up) not taken as typical
    assert not probe_overruns([1.0], 1.3)                          # one step: only over if already over
    assert probe_overruns([1.4], 1.3)
    assert not probe_overruns([1.0, 1.2], 1.5)
    assert probe_overruns([1.0, 2.0], 2.5)                          # 2 + 1 more at 1 s = 3 s
    assert not probe_overruns([], 0.1)


def test_a_study_too_small_for_the_probe_skips_it_with_a_note(sqlite_url):
    study, _, notes = _create(sqlite_url, "tiny", n_trials=2, epochs=1)
    assert R.STUDY_NOISE_SCALE not in study.user_attrs
    assert any(n.startswith("gradient noise scale not measured: 2 trials of") for n in notes)


def _create(sqlite_url, name, n_trials=20, epochs=4, **space):
    # 20 trials of 4 epochs: 2 % of the study's samples pays for the probe's 12 steps
    notes = []
    settings = TuneSettings(model="small_cnn", dataset="digits", device="cpu", epochs=epochs, n_trials=n_trials,
                            storage=sqlite_url, study_name=name, create_only=True, space=SearchSpace(**space),
                            given=frozenset(f"space.{k}" for k in space))
    tune(settings, callbacks=[lambda run, e: notes.append(e.text) if isinstance(e, Note) else None])
    study = optuna.load_study(study_name=name, storage=sqlite_url)
    return study, StudySpec.from_dict(study.user_attrs[R.STUDY_SPEC]), notes


def test_tune_measures_stores_and_centres_on_the_critical_batch(sqlite_url):
    study, spec, notes = _create(sqlite_url, "centred")
    noise = study.user_attrs[R.STUDY_NOISE_SCALE]
    critical = noise["critical_batch"]
    lo, hi = noise["interval"]
    assert 10 < critical < 2000 and lo <= critical and (hi is None or critical <= hi)
    assert noise["centred"] and (noise["b_small"], noise["b_big"]) == (8, 128)
    assert noise["samples"] == 128 * noise["measurements"] and 3 <= noise["measurements"] <= 12  # time-capped
    assert any(n.startswith(f"critical batch ≈ {critical:.0f}") and "little speed-up per sample" in n for n in notes)
    assert any("centred on the critical batch" in n for n in notes)
    centred = centre_on_critical_batch(SearchSpace(), critical, train_size=spec.train_size, lower_bound=lo)
    assert spec.space.batch_size_min == centred.batch_size_min
    assert spec.space.accumulation_steps[:2] == (1, 2)
    queued = [t for t in study.trials if t.user_attrs.get(R.BASELINE) == CRITICAL_BASELINE]
    assert len(queued) == 1
    batch, accumulation = R.batch_and_accumulation(queued[0].system_attrs["fixed_params"])  # as enqueued
    effective = batch * accumulation
    assert accumulation >= 2  # it accumulates, so it measures the noise scale as it trains
    assert abs(math.log2(effective) - math.log2(critical)) <= 1


def test_a_given_range_is_kept(sqlite_url):
    study, spec, notes = _create(sqlite_url, "given", batch_size_min=16, batch_size_max=64)
    assert (spec.space.batch_size_min, spec.space.batch_size_max) == (16, 64)
    assert spec.space.accumulation_steps == (1, 2, 4, 8)
    assert study.user_attrs[R.STUDY_NOISE_SCALE]["centred"] is False
    assert not [t for t in study.trials if t.user_attrs.get(R.BASELINE) == CRITICAL_BASELINE]  # the usual baselines
    assert not any("centred" in n for n in notes)


# --- in the answer ------------------------------------------------------------------------------

def test_critical_batch_comes_from_trials_when_enough_accumulated():
    from autobatch.recommender._critical import critical_batch

    probe = {"critical_batch": 90.0, "interval": [70.0, None], "samples": 1536}
    trial = lambda final: {"series": [[100, 10.0, 5.0, 20.0], [200, final, None, None]]}  # noqa: E731
    assert critical_batch(probe, [trial(200.0), None]) == {
        "value": 90.0, "interval": (70.0, None), "source": "probe of 1536 samples at the start"}
    from_trials = critical_batch(probe, [trial(100.0), trial(200.0), trial(400.0), None, trial(None)])
    # each trial's last resolved value (10 for the one whose end is not resolved): median 150
    assert from_trials["value"] == 150.0 and from_trials["interval"][0] < 150 < from_trials["interval"][1]
    assert "4 trials" in from_trials["source"]
    assert critical_batch({"critical_batch": None}, []) is None and critical_batch(None, []) is None


def test_recommendation_states_the_critical_batch_and_the_goodput_pick():
    import json

    from autobatch.noise_scale import statistical_efficiency
    from autobatch.recommender import Recommendation, trials_frame
    from tests.test_recommend import _recommend, make_study

    frame = trials_frame(make_study())
    plain = _recommend(frame)
    rec = _recommend(frame, critical={"value": 150.0, "interval": (100.0, None), "source": "probe"})
    assert plain.critical_batch is None and "Critical batch" not in plain.markdown()
    assert (rec.critical_batch, rec.critical_batch_interval, rec.critical_batch_source) == (150.0, (100.0, None), "probe")
    assert rec.batch_size == plain.batch_size  # stated beside the answer, never changing it
    pick = rec.goodput_pick
    assert pick["efficiency"] == pytest.approx(statistical_efficiency(pick["effective_batch_size"], b_noise=150.0))
    assert pick["goodput"] == pytest.approx(pick["throughput"] * pick["efficiency"])
    assert "Critical batch ≈ 150 (at least 100)" in rec.markdown() and "goodput" in rec.markdown()
    assert Recommendation.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
    # a much smaller noise scale makes smaller effective batches worth more per sample
    small = _recommend(frame, critical={"value": 4.0, "interval": None, "source": "probe"}).goodput_pick
    assert small["effective_batch_size"] <= pick["effective_batch_size"]


# --- in the report ------------------------------------------------------------------------------

def _trial(effective, samples_at_90, noise=None):
    attrs = {R.EFFECTIVE_BATCH_SIZE: effective, R.MILESTONES: {"0.90": [samples_at_90, 1.0]}}
    if noise:
        attrs[R.NOISE_SCALE] = noise
    return optuna.trial.create_trial(value=0.95, params={}, distributions={}, user_attrs=attrs)


def test_report_plots_fit_steps_and_draw_the_series():
    from autobatch.noise_plots import plot_noise_over_training, plot_steps_to_target
    from autobatch.noise_scale import steps_needed

    batches = [16, 32, 64, 128, 256]
    trials = [_trial(b, int(b * steps_needed(b, s_min=30, b_noise=100))) for b in batches]
    trials.append(_trial(64, 10**6))  # a slower trial at the same batch: the fewest steps count
    noise = {"b_small": 16, "b_big": 64, "steps": 20, "series": [[100, 40.0, 30.0, 55.0], [200, 80.0, 60.0, None],
                                                                 [300, None, None, None]]}
    trials.append(_trial(64, 10**6, noise))
    _, data = plot_steps_to_target(trials, critical_batch=90.0)
    assert data["target"] == 0.90 and data["best"][64] == math.ceil(steps_needed(64, s_min=30, b_noise=100))
    assert data["fit"]["b_noise"] == pytest.approx(100, rel=0.05)
    _, series = plot_noise_over_training(trials, {"critical_batch": 70.0})
    assert series["probe"] == 70.0 and [r[0] for r in series["series"][trials[-1].number]] == [100, 200]
    _, nothing = plot_steps_to_target(trials[:2], critical_batch=None)
    assert nothing["target"] is None and nothing["fit"] is None
