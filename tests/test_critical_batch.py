"""The critical batch in ``tune``: measured and stored at the start, said in a note, used to
centre the search when no batch range is given, and seeded as the first proposal."""

import math

import optuna
import pytest

from autobatch import records as R
from autobatch.search import (CRITICAL_BASELINE, SearchSpace, StudySpec, TuneSettings, centre_on_critical_batch,
                              range_given)
from autobatch.tuning import Note, tune


@pytest.mark.parametrize("critical, train_size, largest, expected", [
    (180, 1438, None, (16, 512, (1, 2))),          # effective 16-1024: B/8 to 4B (rounded to powers of 2)
    (180, 1438, 16, (16, 16, (1, 2, 4, 8, 16, 32, 64))),  # memory: the top reached by accumulating
    (12, 50_000, None, (2, 32, (1, 2))),          # never below micro-batch 2 (BatchNorm)
    (5000, 1438, None, (512, 512, (1, 2))),       # never beyond the training set
])
def test_centred_space(critical, train_size, largest, expected):
    space = centre_on_critical_batch(SearchSpace(), critical, train_size=train_size, largest_micro=largest)
    assert (space.batch_size_min, space.batch_size_max, space.accumulation_steps) == expected
    assert space.batch_size_max * max(space.accumulation_steps) <= 2 ** math.ceil(math.log2(4 * critical))


def test_range_given_means_flags_or_bounds_other_than_the_defaults():
    assert not range_given(SearchSpace())
    assert range_given(SearchSpace(), frozenset({"space.batch_size_max"}))
    assert range_given(SearchSpace(batch_size_max=64))
    assert not range_given(SearchSpace(lr_multiplier_max=5.0), frozenset({"space.lr_multiplier_max"}))
    with pytest.raises(Exception):
        centre_on_critical_batch(SearchSpace(), math.inf, train_size=100)


def _create(sqlite_url, name, **space):
    notes = []
    settings = TuneSettings(model="small_cnn", dataset="digits", device="cpu", epochs=1, n_trials=4,
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
    assert noise["centred"] and noise["samples"] == 1536 and (noise["b_small"], noise["b_big"]) == (8, 128)
    assert any(n.startswith(f"critical batch ≈ {critical:.0f}") and "little speed-up per sample" in n for n in notes)
    assert any("centred on the critical batch" in n for n in notes)
    centred = centre_on_critical_batch(SearchSpace(), critical, train_size=spec.train_size)
    assert spec.space.batch_size_min == centred.batch_size_min
    assert spec.space.accumulation_steps[:2] == (1, 2)
    queued = [t for t in study.trials if t.user_attrs.get(R.BASELINE) == CRITICAL_BASELINE]
    assert len(queued) == 1
    params = queued[0].system_attrs["fixed_params"]  # a waiting trial's enqueued parameters
    effective = 2 ** (params[R.PARAM_BATCH_LOG2] + params[R.PARAM_ACCUM_LOG2])
    assert params[R.PARAM_ACCUM_LOG2] >= 1  # it accumulates, so it measures the noise scale as it trains
    assert abs(math.log2(effective) - math.log2(critical)) <= 1


def test_a_given_range_is_kept(sqlite_url):
    study, spec, notes = _create(sqlite_url, "given", batch_size_min=16, batch_size_max=64)
    assert (spec.space.batch_size_min, spec.space.batch_size_max) == (16, 64)
    assert spec.space.accumulation_steps == (1, 2, 4, 8)
    assert study.user_attrs[R.STUDY_NOISE_SCALE]["centred"] is False
    assert not any("centred" in n for n in notes)
