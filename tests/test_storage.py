"""The storage contract, run alike on the embedded SQLite file and on PostgreSQL: what autobatch
writes reads back identically with vanilla Optuna, queued slots are taken once, dead trials
come back, and a password never shows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from autobatch import records as R
from autobatch.errors import AutobatchError
from autobatch.storage import MAX_RETRIES, requeue
from autobatch.storage import claim_trial
from autobatch.tuning import next_trial_id
from autobatch.storage import ENV_HEARTBEAT, fail_stale_trials, mask_url, open_storage, resolve_url
from autobatch.storage._urls import _encode_password
from tests.conftest import LEAN, REPO, run_cli

FAST = ("--model", "small_cnn", "--dataset", "digits", "--epochs", "0.5", "--device", "cpu", *LEAN)
# study.ask() on a storage with heartbeats warns that they are meant for optimize(): expected here
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    """Each contract test runs on both backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'studies.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def study_name(url, unique_name):
    yield unique_name
    try:
        optuna.delete_study(study_name=unique_name, storage=resolve_url(url))
    except KeyError:
        pass


def _vanilla(url: str, name: str) -> optuna.Study:
    """What a user gets from plain Optuna (``postgresql+psycopg2://`` spelled out)."""
    return optuna.load_study(study_name=name, storage=resolve_url(url))


def _same_trials(ours: optuna.Study, theirs: optuna.Study) -> None:
    a, b = ours.get_trials(deepcopy=False), theirs.get_trials(deepcopy=False)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        for field in ("number", "state", "values", "params", "distributions", "user_attrs",
                      "system_attrs", "intermediate_values", "datetime_start", "datetime_complete"):
            assert getattr(x, field) == getattr(y, field), (x.number, field)
    assert ours.user_attrs == theirs.user_attrs
    assert _system_attrs(ours) == _system_attrs(theirs)


def _system_attrs(study: optuna.Study) -> dict:
    return study._storage.get_study_system_attrs(study._study_id)  # Optuna 5 has no public accessor


# --- what is written reads back ------------------------------------------------------------------

def test_cli_study_reads_back_identically_with_vanilla_optuna_and_resumes(url, study_name, tmp_path):
    proc = run_cli("tune", *FAST, "--n-trials", "3", "--storage", url, "--study-name", study_name,
                   "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    vanilla = _vanilla(url, study_name)
    _same_trials(optuna.load_study(study_name=study_name, storage=open_storage(url)), vanilla)
    spec = vanilla.user_attrs[R.STUDY_SPEC]
    assert vanilla.user_attrs[R.STUDY_MAX_TRIALS] == 3
    for t in vanilla.trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert t.user_attrs[R.BATCH_SIZE] == t.params[R.PARAM_BATCH_SIZE]  # params in real units
        assert t.user_attrs[R.ACCUMULATION_STEPS] == t.params[R.PARAM_ACCUM]
        assert set(t.intermediate_values) <= set(spec["eval_points"])
        if t.state == TrialState.COMPLETE:
            assert t.value == t.user_attrs[R.VAL_ACCURACY]
            assert sorted(t.intermediate_values) == spec["eval_points"]
    assert json.loads(proc.stdout)["study_name"] == study_name

    again = run_cli("tune", *FAST, "--n-trials", "5", "--storage", url, "--study-name", study_name, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"resuming study '{study_name}'" in again.stderr
    assert len(_vanilla(url, study_name).trials) == 5  # --n-trials is the study's total


def test_every_field_round_trips_exactly(url, study_name):
    study = optuna.create_study(study_name=study_name, storage=open_storage(url), direction="maximize")
    trial = study.ask()
    trial.suggest_categorical(R.PARAM_BATCH_SIZE, (8, 16, 32, 64, 128, 256))
    trial.suggest_float(R.PARAM_LR_MULTIPLIER, 0.1, 10.0, log=True)
    trial.set_user_attr(R.CURVE, [[180, 0.5, 1.2], [360, 0.75, 0.6]])
    trial.set_user_attr(R.MILESTONES, {"0.50": [180, 0.12]})
    trial.set_user_attr(R.STOP_DETAIL, "naïve — unicode ✓")
    trial.set_user_attr(R.VAL_LOSS, None)
    trial.set_constraint("memory", -0.25)
    for step, value in ((180, 0.5), (360, 0.75)):
        trial.report(value, step)
    study.tell(trial, 0.75)
    pruned = study.ask()
    pruned.report(0.1, 180)
    study.tell(pruned, state=TrialState.PRUNED)
    study.tell(study.ask(), state=TrialState.FAIL)
    study.enqueue_trial({R.PARAM_BATCH_SIZE: 32}, user_attrs={R.BASELINE: "folk-default-32"})
    study.set_user_attr(R.STUDY_SPEC, {"eval_points": [180, 360], "model": "small_cnn"})
    _same_trials(study, _vanilla(url, study_name))
    assert _vanilla(url, study_name).trials[0].constraints == {"memory": -0.25}


# --- slots, heartbeats, retries ------------------------------------------------------------------

_CONTENDER = """
import sys, optuna
from autobatch import records as R
from autobatch.storage import claim_trial, open_storage
url, name, mode = sys.argv[1:4]
study = optuna.load_study(study_name=name, storage=open_storage(url, create_tables=False))
got = []
while len(got) < 30:
    claim = claim_trial(study._storage, study._study_id, limit_key=R.STUDY_MAX_TRIALS, deadline_key=R.STUDY_DEADLINE)
    if claim.trial_id is None:
        break
    got.append(claim.trial_id)
    if mode == "finish":  # half of them finish at once: finished trials count too
        study.tell(claim.number, 0.5)
print(",".join(map(str, got)))
"""


@pytest.mark.parametrize("mode", ["run", "finish"])
def test_concurrent_workers_take_exactly_the_count_never_a_trial_twice(url, study_name, mode):
    """Four processes claim trials of one study at once: queued ones first, then new ones, and
    together exactly the study's count, each trial once, numbered once; no slot queue written."""
    study = optuna.create_study(study_name=study_name, storage=open_storage(url))
    for _ in range(5):  # what a start queues: baselines (and re-queued configurations)
        study.enqueue_trial({}, skip_if_exists=False)
    study.set_user_attr(R.STUDY_MAX_TRIALS, 40)
    procs = [subprocess.Popen([sys.executable, "-c", _CONTENDER, url, study_name, mode], cwd=REPO,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
             for _ in range(4)]
    taken = []
    for proc in procs:
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0
        taken += [int(x) for x in out.strip().split(",") if x]
    assert len(taken) == 40 and len(set(taken)) == 40  # the count exactly, every trial taken once
    trials = _vanilla(url, study_name).trials
    assert sorted(t.number for t in trials) == list(range(40))
    expected = TrialState.COMPLETE if mode == "finish" else TrialState.RUNNING
    assert all(t.state == expected for t in trials)


def test_a_claim_is_refused_at_the_count_and_near_the_deadline(url, study_name):
    study = optuna.create_study(study_name=study_name, storage=open_storage(url))
    claim = lambda **kw: claim_trial(study._storage, study._study_id, limit_key=R.STUDY_MAX_TRIALS,  # noqa: E731
                                     deadline_key=R.STUDY_DEADLINE, **kw)
    study.set_user_attr(R.STUDY_MAX_TRIALS, 2)
    first = claim()
    assert first.trial_id is not None and first.counts["running"] == 0
    study.tell(first.number, state=TrialState.FAIL)  # a failure is no result: it does not count
    second, third = claim(), claim()
    assert second.trial_id is not None and third.trial_id is not None
    assert claim().why == "count"
    study.set_user_attr(R.STUDY_MAX_TRIALS, None)
    study.set_user_attr(R.STUDY_DEADLINE, time.time() + 60)
    assert claim(seconds_needed=120).why == "deadline"  # a trial that would not finish is not started
    assert claim(seconds_needed=10).trial_id is not None
    beats = study._storage._backend._get_stale_trial_ids  # each claimed trial got its first heartbeat
    assert beats(study._study_id) == []


def test_a_dead_workers_trial_is_failed_and_its_configuration_queued_again(url, study_name, monkeypatch):
    monkeypatch.setenv(ENV_HEARTBEAT, "1")  # grace: 3 s
    study = optuna.create_study(study_name=study_name, storage=open_storage(url))
    study.set_user_attr(R.STUDY_MAX_TRIALS, 2)
    claim = lambda: claim_trial(study._storage, study._study_id, limit_key=R.STUDY_MAX_TRIALS,  # noqa: E731
                                deadline_key=R.STUDY_DEADLINE).trial_id
    dead, alive = claim(), claim()
    storage = study._storage
    storage.set_trial_param(dead, "x", 3, IntDistribution(0, 5))
    end = time.monotonic() + 5.5  # SQLite's clock has whole seconds: > 3 s means 5 to be sure
    while time.monotonic() < end:  # only `alive` keeps beating
        storage.record_heartbeat(alive)
        fail_stale_trials(study)
        time.sleep(0.5)
    trials = study.get_trials(deepcopy=False)
    assert storage.get_trial(dead).state == TrialState.FAIL
    assert storage.get_trial(dead).user_attrs[R.STOP_REASON] == R.STOP_WORKER_LOST  # never "completed"
    assert storage.get_trial(alive).state == TrialState.RUNNING
    (retry,) = [t for t in trials if t.state == TrialState.WAITING]
    assert retry.params == {"x": 3} and retry.system_attrs["failed_trial"] == storage.get_trial(dead).number
    # the live trial finishes: the next worker runs the re-queued configuration, then the study is done
    study.tell(storage.get_trial(alive).number, 1.0)
    assert next_trial_id(study) == retry._trial_id
    study.tell(retry.number, 1.0)
    assert next_trial_id(study) is None


def test_requeue_keeps_the_configuration_and_drops_what_the_dead_trial_measured(url, study_name):
    study = optuna.create_study(study_name=study_name, storage=open_storage(url), direction="maximize")
    dists = {"b": IntDistribution(3, 8), "lr": FloatDistribution(0.1, 10.0, log=True)}
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.FAIL, params={"b": 5, "lr": 2.0}, distributions=dists,
        user_attrs={R.BASELINE: "folk-default-32", R.VAL_ACCURACY: 0.3, R.STOP_REASON: "interrupted"},
        system_attrs={"constraints:memory": 0.5, "constraints": [0.5], "fixed_params": {"b": 5}},
        intermediate_values={180: 0.3}))
    requeue(study, study.trials[-1])
    retry = study.trials[-1]
    assert retry.state == TrialState.WAITING and retry.params == {"b": 5, "lr": 2.0}
    assert retry.distributions == dists
    assert retry.user_attrs == {R.BASELINE: "folk-default-32"}  # no inherited measurements
    assert retry.intermediate_values == {} and retry.constraints == {}  # no inherited reports or constraints
    assert retry.system_attrs["failed_trial"] == 0 and retry.system_attrs["retry_history"] == [0]
    # the retry dies too, and again: after MAX_RETRIES the configuration is not queued once more
    for attempt in range(1, MAX_RETRIES + 1):
        last = study.trials[-1]
        study._storage.set_trial_state_values(last._trial_id, TrialState.RUNNING)
        study._storage.set_trial_state_values(last._trial_id, TrialState.FAIL)
        requeue(study, study._storage.get_trial(last._trial_id))
    assert len(study.trials) == 1 + MAX_RETRIES
    assert study.trials[-1].system_attrs["retry_history"] == list(range(MAX_RETRIES))

    # died before suggesting anything: the slot (with a baseline's fixed parameters) comes back
    study.enqueue_trial({"b": 6}, user_attrs={R.BASELINE: "largest-fit-linear-lr"})
    slot = study.trials[-1]
    study._storage.set_trial_state_values(slot._trial_id, TrialState.RUNNING)
    study._storage.set_trial_state_values(slot._trial_id, TrialState.FAIL)
    requeue(study, study._storage.get_trial(slot._trial_id))
    back = study.trials[-1]
    assert back.state == TrialState.WAITING and back.system_attrs["fixed_params"] == {"b": 6}
    assert back.system_attrs["failed_trial"] == slot.number and not back.params
    assert back.user_attrs == {R.BASELINE: "largest-fit-linear-lr"}



def test_pooled_connections_the_server_dropped_are_replaced_by_the_retry(postgres_url, unique_name):
    """Connections are not pinged at checkout: when PostgreSQL has dropped the pooled ones
    (an idle timeout, a restart, ``pg_terminate_backend``), the next call fails on its first
    statement and is run again on a fresh connection, a write as well as a read, each once."""
    import sqlalchemy

    storage = open_storage(postgres_url)
    try:
        study = optuna.create_study(study_name=unique_name, storage=storage)
        study.set_user_attr("before", 1)

        def pid() -> int:  # the server process of the pooled connection
            with storage.engine.connect() as conn:
                return conn.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar()
        pooled = {pid() for _ in range(2 * storage.engine.pool.checkedin())}  # the pool's connections (FIFO)
        assert pooled and pid() in pooled  # reused, not new ones
        killer = sqlalchemy.create_engine(resolve_url(postgres_url))
        with killer.connect() as conn:  # only this test's connections: other tests' stay up
            for dead in pooled:
                assert conn.execute(sqlalchemy.text("SELECT pg_terminate_backend(:pid)"), {"pid": dead}).scalar()
        killer.dispose()
        study.set_user_attr("after", 2)  # a write on a dead pooled connection: retried
        trial = study.ask()
        study.tell(trial, 0.5)
        assert _vanilla(postgres_url, unique_name).user_attrs == {"before": 1, "after": 2}
        assert [t.value for t in _vanilla(postgres_url, unique_name).trials] == [0.5]  # written once
        assert pid() not in pooled  # the dead ones were replaced
    finally:
        try:
            optuna.delete_study(study_name=unique_name, storage=resolve_url(postgres_url))
        except KeyError:
            pass

# --- secrets ---------------------------------------------------------------------------------

PASSWORD = "S3cr{e}t-pw"


def test_mask_url_hides_passwords():
    assert mask_url("postgresql+psycopg2://bob:hunter2@db.example:6543/studies") == \
        "postgresql+psycopg2://bob:***@db.example:6543/studies"
    assert "p{a}ss" not in mask_url("postgresql://u:p{a}ss@h/db")
    assert "hunter2" not in mask_url("not a url://bob:hunter2@")
    assert mask_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    # an unencoded "@" in the password: SQLAlchemy would show the rest of it as the host
    assert "ret" not in mask_url("postgresql://bob:sec@ret@db.example/db")
    assert mask_url("notaurl") == "notaurl"  # not a URL: shown as typed, there is no password in it


@pytest.mark.parametrize("given,says", [
    ("", "--storage is empty"),
    ("  ", "--storage is empty"),
    ("notaurl", "malformed storage URL 'notaurl': use sqlite:///PATH"),
    ("sqlite:/relative.db", "malformed storage URL 'sqlite:/relative.db'"),
    ("sqlite://", "sqlite:// is an in-memory database"),
    ("sqlite:///:memory:", "in-memory database"),
    ("postgresql://", "storage URL postgresql:// names no database"),
    ("postgresql://bob:hunter2@db.example", "postgresql://bob:***@db.example names no database"),
])
def test_a_storage_url_naming_no_lasting_storage_is_refused_as_typed(given, says, tmp_path, monkeypatch):
    """Refused, not run somewhere else: an empty --storage would write to the default file,
    sqlite:// to memory that ends with the command, a URL without a database to libpq's
    default one. The message shows the URL as typed, less its password, and nothing is made."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AUTOBATCH_STORAGE", raising=False)
    for kwargs in ({}, {"create_tables": False}, {"read_only": True}):
        with pytest.raises(AutobatchError) as caught:
            open_storage(given, **kwargs)
        assert says in str(caught.value) and "hunter2" not in str(caught.value), caught.value
    assert not list(tmp_path.iterdir())


def test_an_unset_or_empty_environment_storage_means_the_default(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for value in (None, ""):
        if value is None:
            monkeypatch.delenv("AUTOBATCH_STORAGE", raising=False)
        else:
            monkeypatch.setenv("AUTOBATCH_STORAGE", value)
        assert resolve_url(None) == f"sqlite:///{tmp_path / 'autobatch-studies' / 'autobatch.db'}"
    monkeypatch.setenv("AUTOBATCH_STORAGE", "postgresql://u@h/db")
    assert resolve_url(None) == "postgresql://u@h/db"  # as given: messages show what the user wrote


def test_a_tune_stopped_by_a_user_error_leaves_no_study_file(tmp_path):
    """Nothing made is left behind when tune stops before its study exists; a file that holds
    a study is kept."""
    proc = run_cli("tune", *FAST, "--model", "no_such_model", "--n-trials", "1", cwd=tmp_path)
    nested = run_cli("tune", *FAST, "--model", "no_such_model", "--storage", f"sqlite:///{tmp_path / 'a/b/s.db'}",
                     cwd=tmp_path)
    for done in (proc, nested):
        assert done.returncode == 2 and "unknown model 'no_such_model'" in done.stderr, done.stderr
    assert not list(tmp_path.iterdir())

    from autobatch.storage import discard_if_unused, parts_to_create

    url = f"sqlite:///{tmp_path / 'kept' / 's.db'}"
    parts = parts_to_create(url)
    assert parts == [tmp_path / "kept" / "s.db", tmp_path / "kept"]
    storage = open_storage(url)
    optuna.create_study(storage=storage, study_name="someone's")
    assert not discard_if_unused(storage, parts) and (tmp_path / "kept" / "s.db").is_file()
    optuna.delete_study(study_name="someone's", storage=storage)
    assert discard_if_unused(storage, parts) and not list(tmp_path.iterdir())


def test_braces_in_a_password_are_encoded_for_optuna_and_decoded_for_the_driver(postgres_url, unique_name):
    raw = resolve_url(postgres_url).replace("postgres@", f"postgres:{PASSWORD}@", 1)
    from sqlalchemy.engine import make_url

    assert make_url(_encode_password(raw).format(SCHEMA_VERSION=1)).password == PASSWORD
    with pytest.raises((KeyError, IndexError, ValueError)):
        raw.format(SCHEMA_VERSION=1)  # what Optuna would do with it unencoded
    storage = open_storage(raw)  # trust auth accepts any password: enough to see it arrive intact
    assert storage.engine.url.password == PASSWORD
    try:
        optuna.create_study(study_name=unique_name, storage=storage)
    finally:
        optuna.delete_study(study_name=unique_name, storage=storage)
    encoded = raw.replace(PASSWORD, "p%40ss%7Bx%7D")  # already percent-encoded by the user
    assert open_storage(encoded).engine.url.password == "p@ss{x}"


def test_password_never_printed_nor_stored(postgres_url, unique_name, tmp_path):
    secret_url = postgres_url.replace("postgres@", f"postgres:{PASSWORD}@", 1)
    assert PASSWORD in secret_url
    try:
        proc = run_cli("tune", *FAST, "--n-trials", "2", "--workers", "2", "--storage", secret_url,
                       "--study-name", unique_name, cwd=tmp_path, timeout=180)
        assert proc.returncode == 0, proc.stderr
        assert "***" in proc.stdout  # the storage is named, masked
        study = _vanilla(postgres_url, unique_name)
        stored = json.dumps([study.user_attrs, _system_attrs(study)]
                            + [[t.user_attrs, t.system_attrs] for t in study.trials], default=str)
        for text in (proc.stdout, proc.stderr, stored):
            assert PASSWORD not in text and "S3cr" not in text
        worker = run_cli("worker", "--study-name", unique_name, cwd=tmp_path, timeout=120,
                         env={"AUTOBATCH_STORAGE": secret_url})
        assert worker.returncode == 0 and PASSWORD not in worker.stdout + worker.stderr
    finally:
        try:
            optuna.delete_study(study_name=unique_name, storage=resolve_url(postgres_url))
        except KeyError:
            pass


def test_local_workers_get_the_url_by_environment_not_argv(monkeypatch):
    from autobatch.search import TuneSettings
    from autobatch.tuning import _tune

    seen = {}
    monkeypatch.setattr(_tune.subprocess, "Popen", lambda cmd, **kw: seen.update(cmd=cmd, **kw))
    url = f"postgresql+psycopg2://u:{PASSWORD}@h:5432/db"
    _tune._spawn_worker("s", url, TuneSettings(storage=url, seed=7, model="mypkg.nets:build"), 2)
    assert PASSWORD not in " ".join(seen["cmd"]) and seen["env"]["AUTOBATCH_STORAGE"] == url
    # allowed the code this run was given, no other; its sampler seeds come from trial numbers
    assert seen["cmd"][seen["cmd"].index("--allow-import") + 1] == "mypkg.nets:build"
    assert "--seed" not in seen["cmd"]


@pytest.mark.parametrize("command", ["tune", "worker"])
@pytest.mark.parametrize("where,database,says", [
    ("127.0.0.1:1", "db", "127.0.0.1:1"),                    # nothing listening: refused
    ("127.0.0.1:5432", "no_such_db_ab", "does not exist"),  # the server refuses this database
])
def test_unreachable_or_refusing_database_is_one_line_exit_2(postgres_url, tmp_path, command, where,
                                                              database, says):
    if where.endswith(":5432"):
        where = postgres_url.split("@", 1)[1].split("/", 1)[0]
    url = f"postgresql://postgres:{PASSWORD}@{where}/{database}"
    args = (("tune", "--model", "small_cnn", "--n-trials", "1") if command == "tune"
            else ("worker", "--study-name", "s"))
    proc = run_cli(*args, "--storage", url, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autobatch: error:"), proc.stderr
    assert where in lines[0] and says in lines[0], lines[0]
    assert PASSWORD not in proc.stderr + proc.stdout and "S3cr" not in proc.stderr


def test_bad_heartbeat_setting_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_HEARTBEAT, "soon")
    with pytest.raises(AutobatchError, match="AUTOBATCH_HEARTBEAT_S"):
        open_storage(f"sqlite:///{tmp_path / 'x.db'}")
