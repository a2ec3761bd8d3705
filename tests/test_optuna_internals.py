"""The Optuna private attributes autobatch relies on (``autobatch._optuna_internals``): this fails
loudly when an Optuna upgrade moves them."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from autobatch import _optuna_internals as I


def test_the_private_attributes_are_where_autobatch_looks(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    cached = I.backend(study)
    assert I.rdb_backend(cached) is storage and I.rdb_backend(optuna.storages.InMemoryStorage()) is None
    sid = I.study_id(study)
    models = I.rdb_models()
    with I.rdb_session(storage) as session:
        models.StudyModel.find_or_raise_by_id(sid, session, for_update=True)
        row = models.TrialModel(study_id=sid, number=0, state=TrialState.RUNNING)
        session.add(row)
        session.flush()
        I.set_attrs_in_session(storage, session, row.trial_id, {"a": [1, 2], "b": None})
        I.set_attrs_in_session(storage, session, row.trial_id, {"a": {"x": 1}})  # an upsert
        I.set_attrs_in_session(storage, session, row.trial_id, {"constraints:memory": -1.0}, system=True)
        I.set_value_in_session(storage, session, row, 0.5)
        row.state = TrialState.COMPLETE
        row_id = row.trial_id
    trial = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}").trials[0]
    assert trial.user_attrs == {"a": {"x": 1}, "b": None} and trial.value == 0.5
    assert trial.system_attrs["constraints:memory"] == -1.0 and I.trial_id(trial) == row_id
    assert I.cached_frozen(optuna.Trial(study, study._storage.create_new_trial(sid))).number == 1
    I.fill_trial_cache(study, [])
    assert study._get_trials(use_cache=True) == []  # the samplers read the list handed to them


def test_quick_schema_check_agrees_with_alembic(tmp_path):
    """``install_quick_schema_check``: the head revision read from Optuna's migration scripts is
    alembic's; a schema autobatch creates is stamped as alembic stamps it, so Optuna's own
    version manager (and with it vanilla ``optuna.load_study``) accepts it; and a schema at an
    older revision still gets Optuna's upgrade message."""
    import sqlalchemy
    import sqlalchemy.orm
    from alembic.migration import MigrationContext
    from optuna.storages._rdb import storage as rdb_storage

    from autobatch._optuna_internals import _QuickVersions, schema_head_revision
    from autobatch.storage import open_storage

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    storage = open_storage(url)
    assert isinstance(storage._version_manager, _QuickVersions)
    plain = rdb_storage._VersionManager.__mro__[1]  # Optuna's own class under the installed one
    engine = sqlalchemy.create_engine(url)
    manager = plain(url, engine, sqlalchemy.orm.scoped_session(sqlalchemy.orm.sessionmaker(bind=engine)))
    assert schema_head_revision() == manager.get_head_version()
    with engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == manager.get_head_version()
    manager.check_table_schema_compatibility()  # Optuna's check: passes
    optuna.create_study(study_name="s", storage=url)
    assert optuna.load_study(study_name="s", storage=url).study_name == "s"

    with engine.begin() as connection:  # an older schema: Optuna's message, not a silent pass
        connection.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = 'v3.0.0.d'"))
    with pytest.raises(RuntimeError, match="optuna storage upgrade"):
        open_storage(url)


def test_trial_of_is_the_trial_optuna_would_make(tmp_path):
    """``trial_of`` (a live trial from a record just read, no second read) sets what
    ``optuna.Trial(study, trial_id)`` sets: the same record, fixed parameters and state, and
    what is written through it reaches the storage."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    study.enqueue_trial({"x": 0.25})
    trial_id = study.ask()._trial_id  # RUNNING, with its fixed parameters
    frozen = next(t for t in study.get_trials(deepcopy=False) if I.trial_id(t) == trial_id)
    ours, theirs = I.trial_of(study, frozen), optuna.Trial(study, trial_id)
    assert set(vars(ours)) == set(vars(theirs))
    assert ours._cached_frozen_trial == theirs._cached_frozen_trial
    assert ours._cached_frozen_trial is not frozen  # a copy: the read list is left as it was
    assert ours._fixed_params == theirs._fixed_params == {"x": 0.25}
    assert ours.suggest_float("x", 0, 1) == 0.25
    ours.report(0.5, step=1)
    study.tell(ours, 1.0)
    assert study.trials[0].intermediate_values == {1: 0.5} and study.trials[0].value == 1.0


@pytest.mark.parametrize("value, state", [(0.75, None), (None, TrialState.PRUNED), (None, TrialState.FAIL),
                                          (float("nan"), None)])
def test_tell_writes_what_study_tell_writes_with_fewer_statements(tmp_path, value, state):
    """``tell`` against Optuna's ``study.tell`` on twin trials: vanilla ``optuna.load_study``
    reads the same state, values, params, attributes and reports; fewer SQL statements."""
    import sqlalchemy

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    statements: dict[str, int] = {}
    counting: list[str] = []

    def count(*_args, **_kwargs) -> None:
        if counting:
            statements[counting[-1]] = statements.get(counting[-1], 0) + 1

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", count)
    try:
        returned = {}
        for way in ("optuna", "ours"):
            study.enqueue_trial({"lr": 0.5, "batch": 16})  # twins: the same parameters
            trial = study.ask()
            trial.suggest_float("lr", 0.1, 1.0, log=True)
            trial.suggest_categorical("batch", [16, 32])
            trial.set_user_attr("note", {"a": [1, 2]})
            trial.set_constraint("memory", -1.0)
            for step, v in ((10, 0.3), (20, 0.4)):
                trial.report(v, step=step)
            counting.append(way)
            with pytest.warns(Warning) if value != value else _nothing():
                returned[way] = (study.tell(trial, value, state=state) if way == "optuna"
                                 else I.tell(study, trial, value, state=state))
            counting.pop()
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", count)
    assert statements["ours"] < statements["optuna"]
    a, b = optuna.load_study(study_name="s", storage=url).trials

    def fields(t):
        return (t.state, t.values, t.params, t.distributions, t.user_attrs, t.system_attrs,
                t.intermediate_values, t.datetime_complete is not None)
    assert fields(a) == fields(b)
    assert fields(returned["ours"])[:-1] == fields(b)[:-1] and returned["ours"].number == b.number
    assert returned["ours"].state == returned["optuna"].state


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_routing_and_the_cache_of_stored_distributions(tmp_path):
    """``storage_routed`` sends the study's and the trial's storage calls through another object
    for the block and puts them back; ``known_distribution``/``remember_distribution`` read and
    fill the cache Optuna's ``_CachedStorage.set_trial_param`` keeps; ``trials_from_cache``
    answers a sampler's fresh read from the list handed over; ``trial_end_assignment`` stores a
    time as Optuna's own ``TrialModel.datetime_complete`` does."""
    import datetime

    from optuna.distributions import FloatDistribution, IntDistribution

    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")
    sid, cached = I.study_id(study), I.backend(study)
    trial = study.ask()
    assert I.known_distribution(cached, sid, "x") is None
    trial.suggest_float("x", 0.0, 1.0)  # Optuna's own write notes it
    assert I.known_distribution(cached, sid, "x") == FloatDistribution(0.0, 1.0)
    I.remember_distribution(cached, sid, "n", IntDistribution(0, 3))
    I.remember_distribution(cached, sid, "x", IntDistribution(0, 3))  # what is known stays
    assert I.known_distribution(cached, sid, "n") == IntDistribution(0, 3)
    assert I.known_distribution(cached, sid, "x") == FloatDistribution(0.0, 1.0)
    assert I.known_distribution(I.rdb_backend(cached), sid, "x") is None  # no cache: read it

    seen = []

    class Spy:
        def __getattr__(self, name):
            seen.append(name)
            return getattr(cached, name)
    with I.storage_routed(study, trial, Spy()):
        trial.set_user_attr("a", 1)
        study.set_user_attr("b", 2)
    assert seen == ["set_trial_user_attr", "set_study_user_attr"]
    assert study._storage is cached and trial.storage is cached

    handed = study.get_trials(deepcopy=False)
    I.fill_trial_cache(study, handed)
    with I.trials_from_cache(study):
        assert study._get_trials(deepcopy=False, use_cache=False) is handed
    assert "_get_trials" not in vars(study) and study._get_trials(deepcopy=False) is not handed

    when = datetime.datetime(2026, 6, 1, 12, 30)
    models = I.rdb_models()
    (column, stored), = I.trial_end_assignment(when).items()
    assert column.name == "datetime_complete" and column.table.name == "trials" and stored.tzinfo is None
    row = models.TrialModel()
    setattr(row, "_datetime_complete_utc", stored)  # the column as stored, read back by Optuna's own getter
    assert row.datetime_complete == when
