"""Reading a study's trials from Optuna's tables with SQLAlchemy Core, the rows Optuna's own
``RDBStorage._get_trials`` reads, without building its ORM objects.

Optuna reads trials through ORM models with five ``selectinload`` relationships: on SQLite that
costs 4-5 ms for no trial and 10-20 ms for two (a 2-core machine, ``scripts/bench_speed.py``),
most of it object construction and the session's identity map, paid at every claim by every
worker (its ``_CachedStorage`` re-reads the unfinished trials and the new ones). Here each table
is one plain ``SELECT`` filtered by the same condition as the trials, and the ``FrozenTrial`` is
built exactly as Optuna builds it (``_build_frozen_trial_from_trial_model``: the same
conversions of stored values, infinities and NaN, parameters in their insertion order).
``tests/test_storage_reads.py`` checks the result equals Optuna's on every state and value kind.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from typing import Any, Container, Iterable, Optional

import optuna
import sqlalchemy
from optuna.distributions import json_to_distribution
from optuna.trial import FrozenTrial

from .._optuna_internals import rdb_models, rdb_session


_CHILDREN = (  # (model name, columns): each read as (trial_id, *columns), in insertion order
    ("TrialParamModel", ("param_name", "param_value", "distribution_json")),
    ("TrialValueModel", ("objective", "value", "value_type")),
    ("TrialUserAttributeModel", ("key", "value_json")),
    ("TrialSystemAttributeModel", ("key", "value_json")),
    ("TrialIntermediateValueModel", ("step", "intermediate_value", "intermediate_value_type")),
)


@functools.lru_cache(maxsize=None)
def _statements(by_state: bool, by_id: bool, included: bool) -> tuple[Any, ...]:
    """The six SELECTs for one shape of filter, built once (building and caching a statement
    costs more than running it on a small study); bound parameters: ``study_id``, ``states``
    (expanding), ``greater`` and ``included`` (expanding)."""
    m = rdb_models()
    trials = m.TrialModel.__table__
    where = [trials.c.study_id == sqlalchemy.bindparam("study_id")]
    if by_state:
        where.append(trials.c.state.in_(sqlalchemy.bindparam("states", expanding=True)))
    if by_id and included:
        where.append(sqlalchemy.or_(trials.c.trial_id.in_(sqlalchemy.bindparam("included", expanding=True)),
                                    trials.c.trial_id > sqlalchemy.bindparam("greater")))
    elif by_id:
        where.append(trials.c.trial_id > sqlalchemy.bindparam("greater"))
    chosen = sqlalchemy.select(trials.c.trial_id).where(*where).scalar_subquery()
    out = [sqlalchemy.select(trials.c.trial_id, trials.c.number, trials.c.state, trials.c.datetime_start,
                             trials.c.datetime_complete).where(*where).order_by(trials.c.trial_id)]
    for name, columns in _CHILDREN:
        table = getattr(m, name).__table__
        key = table.primary_key.columns.values()[0]
        out.append(sqlalchemy.select(table.c.trial_id, *(table.c[c] for c in columns))
                   .where(table.c.trial_id.in_(chosen)).order_by(key))
    return tuple(out)


def read_trials_in_rdb(rdb: optuna.storages.RDBStorage, study_id: int, states: Optional[Container[Any]],
                       included_trial_ids: Iterable[int], trial_id_greater_than: int) -> list[FrozenTrial]:
    """The trials of study ``study_id`` Optuna's ``RDBStorage._get_trials`` returns for the same
    arguments, ordered by trial id: those in ``states`` (None: all) whose id is in
    ``included_trial_ids`` or above ``trial_id_greater_than`` (-1: every trial). One
    transaction, six statements (the trials and each of their five tables). Raises ``KeyError``
    when the study does not exist, as Optuna does."""
    m = rdb_models()
    included = sorted(i for i in included_trial_ids if i <= trial_id_greater_than)
    by_id = trial_id_greater_than > -1
    statements = _statements(states is not None, by_id, bool(included) and by_id)
    bound: dict[str, Any] = {"study_id": study_id, "greater": trial_id_greater_than, "included": included}
    if states is not None:
        bound["states"] = list(states)  # type: ignore[call-overload]
    with rdb_session(rdb) as session:
        rows = session.execute(statements[0], bound).all()
        if not rows:
            m.StudyModel.find_or_raise_by_id(study_id, session)  # KeyError for a missing study
            return []
        children = []
        for statement in statements[1:]:
            out: dict[int, list[Any]] = defaultdict(list)
            for row in session.execute(statement, bound):
                out[row[0]].append(row[1:])
            children.append(out)
    params, values, user, system, steps = children
    to_value = m.TrialValueModel.stored_repr_to_value
    to_step_value = m.TrialIntermediateValueModel.stored_repr_to_intermediate_value
    out_trials = []
    for trial_id, number, state, start, complete in rows:
        vals: Optional[list[float]] = None
        if values.get(trial_id):
            vals = [0.0] * len(values[trial_id])
            for objective, value, kind in values[trial_id]:
                vals[objective] = to_value(value, kind)
        dists = {name: json_to_distribution(text) for name, _, text in params.get(trial_id, ())}
        out_trials.append(FrozenTrial(
            number=number, state=state, value=None, values=vals, datetime_start=start,
            datetime_complete=complete,
            params={name: dists[name].to_external_repr(value) for name, value, _ in params.get(trial_id, ())},
            distributions=dists,
            user_attrs={key: json.loads(text) for key, text in user.get(trial_id, ())},
            system_attrs={key: json.loads(text) for key, text in system.get(trial_id, ())},
            intermediate_values={step: to_step_value(value, kind) for step, value, kind in steps.get(trial_id, ())},
            trial_id=trial_id))
    return out_trials
