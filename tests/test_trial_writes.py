"""A running trial's writes held and made together (``storage.TrialWrites``): the database ends up
exactly as Optuna's own calls leave it, and Optuna's refusals still hold. On SQLite and
PostgreSQL."""

from __future__ import annotations

import math

import optuna
import pytest
import sqlalchemy
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from autobatch import _optuna_internals as I
from autobatch.storage import TrialWrites, fail_trial, hold_writes, open_storage, resolve_url

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")
TABLES = {  # table -> its columns that say what was stored (ids and times aside)
    "trial_params": ("param_name", "param_value", "distribution_json"),
    "trial_values": ("objective", "value", "value_type"),
    "trial_intermediate_values": ("step", "intermediate_value", "intermediate_value_type"),
    "trial_user_attributes": ("key", "value_json"),
    "trial_system_attributes": ("key", "value_json"),
}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'studies.db'}"
    return request.getfixturevalue("postgres_url")


def _sampler() -> optuna.samplers.TPESampler:  # as search.make_sampler: relative params written with constant_liar
    return optuna.samplers.TPESampler(seed=3, multivariate=True, constant_liar=True, n_startup_trials=3)


def _one_trial(study: optuna.Study, trial: optuna.Trial, number: int, tell) -> None:
    """The calls a trial of autobatch makes, the same whichever storage path they take."""
    batch = trial.suggest_categorical("batch_size", (16, 32, 64))
    lr = trial.suggest_float("lr_multiplier", 0.5, 2.0, log=True)
    trial.suggest_categorical("accumulation_steps", (1, 2))
    trial.set_user_attr("config", {"batch": batch, "lr": lr})
    trial.storage.set_trial_system_attr(trial._trial_id, "constraints:memory", -0.5)
    for step in (10, 20, 30):
        trial.report(float("inf") if (number, step) == (1, 20) else step * 0.01 + number, step)
    trial.set_user_attr("curve", [[10, 0.1], [20, None]])
    study.set_user_attr("memory_model", {"points": list(range(number + 1))})
    if number == 2:
        tell(study, trial, state=TrialState.PRUNED)  # keeps its last reported value
    elif number == 3:
        tell(study, trial, state=TrialState.FAIL)
    else:
        tell(study, trial, 0.5 + number)


def _rows(url: str, name: str) -> dict:
    engine = sqlalchemy.create_engine(resolve_url(url))
    out = {}
    with engine.connect() as connection:
        sid = connection.execute(sqlalchemy.text("SELECT study_id FROM studies WHERE study_name = :n"),
                                 {"n": name}).scalar()
        out["trials"] = connection.execute(sqlalchemy.text(
            "SELECT number, state, datetime_start IS NOT NULL, datetime_complete IS NOT NULL FROM trials "
            "WHERE study_id = :s ORDER BY number"), {"s": sid}).all()
        out["study_user_attributes"] = connection.execute(sqlalchemy.text(
            "SELECT key, value_json FROM study_user_attributes WHERE study_id = :s ORDER BY key"), {"s": sid}).all()
        for table, columns in TABLES.items():
            out[table] = connection.execute(sqlalchemy.text(
                f"SELECT t.number, {', '.join('x.' + c for c in columns)} FROM {table} x JOIN trials t "
                f"ON t.trial_id = x.trial_id WHERE t.study_id = :s ORDER BY 1, 2"), {"s": sid}).all()
    engine.dispose()
    return out


def _run(url: str, name: str, held: bool) -> None:
    storage = open_storage(url)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", sampler=_sampler())
    for number in range(6):
        trial = study.ask()
        if not held:
            _one_trial(study, trial, number, lambda s, t, v=None, state=None: s.tell(t, v, state=state))
            continue
        writes = hold_writes(I.backend(study), I.study_id(study), I.trial_id(trial))
        with I.storage_routed(study, trial, writes):
            _one_trial(study, trial, number, I.tell)
            writes.flush()


def test_held_writes_store_what_optunas_own_calls_store(url, unique_name):
    """Parameters, attributes, intermediate values (inf too), values (a pruned trial's last
    report), states and the study's attributes: row for row what Optuna's calls store, and read
    back alike by vanilla ``optuna.load_study``, end times in local time as Optuna's."""
    import datetime

    theirs, ours = f"{unique_name}-optuna", f"{unique_name}-held"
    try:
        _run(url, theirs, held=False)
        _run(url, ours, held=True)
        assert _rows(url, ours) == _rows(url, theirs)
        a = optuna.load_study(study_name=theirs, storage=resolve_url(url)).trials
        b = optuna.load_study(study_name=ours, storage=resolve_url(url)).trials
        keep = ("number", "state", "values", "params", "distributions", "intermediate_values", "user_attrs",
                "system_attrs")
        assert [[getattr(t, k) for k in keep] for t in b] == [[getattr(t, k) for k in keep] for t in a]
        assert b[2].state == TrialState.PRUNED and b[2].value == 30 * 0.01 + 2
        assert math.isinf(b[1].intermediate_values[20])
        now = datetime.datetime.now()
        for t in b:
            assert abs((t.datetime_complete - now).total_seconds()) < 120
    finally:
        for name in (theirs, ours):
            try:
                optuna.delete_study(study_name=name, storage=resolve_url(url))
            except KeyError:
                pass


def test_a_parameter_stored_with_another_distribution_is_still_refused(url, unique_name):
    """Optuna refuses a parameter whose name the study stores with an incompatible distribution:
    so do held writes, at ``suggest_*`` when this process knows the stored distribution and at
    the write when it has to read it, and then nothing of the trial's held writes is stored."""
    try:
        first = optuna.create_study(study_name=unique_name, storage=open_storage(url))
        first.ask().suggest_float("x", 0.0, 1.0)
        for fresh in (True, False):  # a process that never wrote "x" reads it; one that did knows it
            study = optuna.load_study(study_name=unique_name, storage=open_storage(url)) if fresh else first
            trial = study.ask()
            writes = hold_writes(I.backend(study), I.study_id(study), I.trial_id(trial))
            with I.storage_routed(study, trial, writes):
                with pytest.raises(ValueError):
                    trial.suggest_int("x", 0, 10)
                    assert fresh, "known: refused at suggest_int"
                    trial.set_user_attr("seen", True)
                    writes.flush()
            stored = optuna.load_study(study_name=unique_name, storage=resolve_url(url)).trials[-1]
            assert stored.params == {} and stored.user_attrs == {}
        assert I.known_distribution(I.backend(first), I.study_id(first), "x") == FloatDistribution(0.0, 1.0)
    finally:
        optuna.delete_study(study_name=unique_name, storage=resolve_url(url))


def test_a_finished_trial_refuses_held_writes(url, unique_name):
    """A trial another worker failed (a stale heartbeat) refuses a report, the held writes and
    its end, as Optuna refuses every write to a finished trial; nothing of them is stored."""
    try:
        study = optuna.create_study(study_name=unique_name, storage=open_storage(url))
        trial = study.ask()
        writes = hold_writes(I.backend(study), I.study_id(study), I.trial_id(trial))
        assert isinstance(writes, TrialWrites)
        with I.storage_routed(study, trial, writes):
            trial.suggest_float("x", 0.0, 1.0)
            writes.flush()
            assert fail_trial(I.backend(study), I.trial_id(trial), {"stop_reason": "worker_lost"})
            with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
                trial.report(0.5, 1)
            trial.set_user_attr("late", 1)
            with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
                writes.flush()
            with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
                I.backend(study).set_trial_state_values(I.trial_id(trial), TrialState.COMPLETE, [1.0])
        stored = optuna.load_study(study_name=unique_name, storage=resolve_url(url)).trials[0]
        assert stored.state == TrialState.FAIL and stored.intermediate_values == {}
        assert stored.user_attrs == {"stop_reason": "worker_lost"} and stored.params == {"x": trial.params["x"]}
    finally:
        optuna.delete_study(study_name=unique_name, storage=resolve_url(url))


def test_held_writes_are_read_back_before_they_are_stored(tmp_path):
    """What a trial holds is what its reads of itself and of the study's attributes return
    (``Trial.set_constraint`` reads the system attributes first, ``study.user_attrs``)."""
    study = optuna.create_study(study_name="s", storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"))
    trial = study.ask()
    writes = hold_writes(I.backend(study), I.study_id(study), I.trial_id(trial))
    with I.storage_routed(study, trial, writes):
        trial.set_constraint("memory", 0.25)
        with pytest.warns(UserWarning, match="already set"):  # Optuna's own check read what is held
            trial.set_constraint("memory", 0.5)
        study.set_user_attr("model", {"a": 1})
        assert study.user_attrs == {"model": {"a": 1}}
        assert I.backend(study).get_trial_system_attrs(I.trial_id(trial)) == {"constraints:memory": 0.25}
    assert hold_writes(optuna.storages.InMemoryStorage(), 0, 0) is None  # other storages: Optuna's own calls


def test_the_halving_pruners_rungs_go_through_held_writes(tmp_path):
    """Successive halving records each trial's rungs as system attributes while it trains (through
    the storage the trial's writes are held in): they are stored, with the reports they judged,
    and a pruned trial keeps its last report as its value."""
    from autobatch.search import SearchSpace, TuneSettings
    from autobatch.tuning import tune

    url = f"sqlite:///{tmp_path / 's.db'}"
    space = SearchSpace(batch_size_min=16, batch_size_max=64, lr_multiplier_min=0.5, lr_multiplier_max=2.0)
    tune(TuneSettings(model="mlp", dataset="digits", device="cpu", epochs=0.3, n_trials=6, storage=url,
                      study_name="s", baselines=False, space=space, pruner="halving", verify_runs=0,
                      noise_probe=False))
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert len(trials) == 6 and any(t.state == TrialState.PRUNED for t in trials)
    for t in trials:
        assert t.intermediate_values and "completed_rung_0" in t.system_attrs, t.number
        assert t.value == t.intermediate_values[max(t.intermediate_values)]
