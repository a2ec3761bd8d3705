"""Reading trials with SQLAlchemy Core (``storage._reads``) gives exactly what Optuna's own ORM
read gives: every state, infinite and NaN values, every distribution kind, attributes, several
objectives, each filter Optuna's cache uses. On SQLite and PostgreSQL."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from autobatch.storage import open_storage, resolve_url
from autobatch.storage._reads import read_trials_in_rdb
from conftest import drop_study

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")
DISTS = {"lr": FloatDistribution(1e-4, 1.0, log=True), "b": IntDistribution(8, 256, step=8),
         "opt": CategoricalDistribution(["sgd", None, True, 2.5]), "q": FloatDistribution(0.0, 1.0, step=0.25)}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'studies.db'}"
    return request.getfixturevalue("postgres_url")


def _trials(objectives: int) -> list[optuna.trial.FrozenTrial]:
    """Trials of every state and value kind Optuna stores distinctly."""
    def values(v: float) -> list[float]:
        return [v] + [-v] * (objectives - 1)

    done = {"params": {"lr": 0.01, "b": 64, "opt": None, "q": 0.75}, "distributions": DISTS}
    return [
        create_trial(state=TrialState.COMPLETE, values=values(0.5), **done,
                     user_attrs={"curve": [[1, 0.2], [2, float("nan")]], "nested": {"a": [1, {"b": None}]}},
                     system_attrs={"fixed_params": {"b": 64}}, intermediate_values={0: 0.1, 1: float("nan"),
                                                                                    2: float("inf"), 3: float("-inf")}),
        create_trial(state=TrialState.COMPLETE, values=values(float("inf")), params={"opt": True},
                     distributions={"opt": DISTS["opt"]}),
        create_trial(state=TrialState.COMPLETE, values=values(float("-inf")), params={"opt": 2.5, "lr": 1e-4},
                     distributions={"opt": DISTS["opt"], "lr": DISTS["lr"]}, user_attrs={"x": "é ✓"}),
        create_trial(state=TrialState.PRUNED, intermediate_values={5: 0.25}, params={"opt": "sgd"},
                     distributions={"opt": DISTS["opt"]}),
        create_trial(state=TrialState.FAIL, user_attrs={"reason": "oom"}),
        create_trial(state=TrialState.WAITING, system_attrs={"fixed_params": {"lr": 0.1}}),
        create_trial(state=TrialState.RUNNING, params={"b": 8}, distributions={"b": DISTS["b"]}),
    ]


@pytest.mark.parametrize("objectives", [1, 2])
def test_the_core_read_equals_optunas_own_read(url, unique_name, objectives):
    storage = open_storage(url)
    rdb = getattr(storage, "_backend", storage)
    directions = ["maximize"] + ["minimize"] * (objectives - 1)
    study = optuna.create_study(study_name=unique_name, storage=storage, directions=directions)
    other = optuna.create_study(study_name=unique_name + "-other", storage=storage)
    try:
        for trial in _trials(objectives):
            study.add_trial(trial)
            other.add_trial(create_trial(value=1.0))  # ids interleave with another study's
        sid = study._study_id
        ids = [t._trial_id for t in optuna.storages.RDBStorage._get_trials(rdb, sid, None, set(), -1)]
        assert len(ids) == 7
        cases = [(None, set(), -1), (None, {ids[1], ids[5]}, ids[5]), (None, set(), ids[3]),
                 (None, {ids[6]}, ids[3]), ((TrialState.COMPLETE, TrialState.PRUNED), set(), -1),
                 ((TrialState.RUNNING,), {ids[0]}, ids[4]), ((), set(), -1), (None, set(), ids[-1] + 100)]
        for states, included, greater in cases:
            theirs = optuna.storages.RDBStorage._get_trials(rdb, sid, states, included, greater)
            ours = read_trials_in_rdb(rdb, sid, states, included, greater)
            # repr: every field, NaN equal to NaN and 1 told from 1.0 (FrozenTrial's == is neither)
            assert [repr(t) for t in ours] == [repr(t) for t in theirs], (states, included, greater)
            for a, b in zip(ours, theirs):
                assert a._trial_id == b._trial_id and a.distributions == b.distributions
                assert list(a.params) == list(b.params)  # insertion order, as Optuna sorts by param id
        first = read_trials_in_rdb(rdb, sid, None, set(), -1)
        assert math.isnan(first[0].intermediate_values[1]) and first[1].values[0] == float("inf")
        # the storage autobatch opens reads through it, and vanilla Optuna reads the same study alike
        vanilla = optuna.load_study(study_name=unique_name, storage=resolve_url(url)).trials
        assert [repr(t) for t in storage.get_all_trials(sid)] == [repr(t) for t in vanilla]
    finally:
        drop_study(url, unique_name)
        drop_study(url, unique_name + "-other")


def test_a_missing_study_raises_keyerror_as_optuna_does(url):
    storage = open_storage(url)
    rdb = getattr(storage, "_backend", storage)
    with pytest.raises(KeyError):
        optuna.storages.RDBStorage._get_trials(rdb, 987654321, None, set(), -1)
    with pytest.raises(KeyError):
        read_trials_in_rdb(rdb, 987654321, None, set(), -1)
