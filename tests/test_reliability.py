"""Reliability under real use (issue 15): the trial count is the study's, concurrent starts are
safe, every bad input is one line with exit 2, read-only commands stay read-only, and workers run
only code they were given. Real CLI processes on real SQLite files (and PostgreSQL)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState
from torch import nn

from autobatch import records as R
from autobatch.errors import AutobatchError
from autobatch.storage import resolve_url
from tests.conftest import LEAN, LEAN_SETTINGS, REPO, run_cli

FAST = ("--model", "small_cnn", "--dataset", "digits", "--epochs", "0.5", "--device", "cpu", *LEAN)
RESULTS = (TrialState.COMPLETE, TrialState.PRUNED)


def _tiny_model(num_classes, input_shape):
    """A user model by import path (``tests.test_reliability:_tiny_model``)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


def one_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, one line on stderr starting ``autobatch: error:``, no traceback, with ``words``."""
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("autobatch: error:"), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def last_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2 and, after any progress lines, one error line with ``words``; no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    errors = [line for line in lines if line.startswith("autobatch: error:")]
    assert errors == [lines[-1]], proc.stderr
    for word in words:
        assert word in lines[-1], lines[-1]
    return lines[-1]


def _results(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=resolve_url(url))
    return [t for t in study.get_trials(deepcopy=False) if t.state in RESULTS]


# --- the bad-input battery ---------------------------------------------------------------------

@pytest.mark.parametrize("toml,words", [
    ('[space]\nbatch_size_min = "8"\n', ('[space] batch_size_min = "8"', "valid integer", "batch_size_min = 8")),
    ("[space]\naccumulation_steps = 4\n", ("[space] accumulation_steps = 4", "valid list", "[1, 2, 4]")),
    ('baselines = "no"\n', ('baselines = "no"', "valid boolean", "baselines = false")),
    ("workers = 1.9\n", ("workers = 1.9", "valid integer", "workers = 2")),
    ("epochs = true\n", ("epochs = true", "valid number", "epochs = 2.5")),
    ('budget = "5 parsecs"\n', ('budget = "5 parsecs"', "malformed duration", 'budget = "10m"')),
    ('[space]\nbatch_size_mn = 8\n', ("unknown key '[space] batch_size_mn'", "batch_size_min")),
    ('modle = "mlp"\n', ("unknown key 'modle'", "model")),
])
def test_study_file_values_of_the_wrong_type_are_one_line(tmp_path, toml, words):
    config = tmp_path / "study.toml"
    config.write_text(toml)
    proc = run_cli("tune", *FAST, "--n-trials", "1", "--config", str(config),
                   "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}", cwd=tmp_path)
    one_line(proc, str(config), *words)
    assert not (tmp_path / "db.sqlite").exists()  # refused before anything was stored


@pytest.mark.parametrize("command", ["tune", "recommend", "worker", "report"])
def test_a_corrupt_sqlite_file_is_one_line(tmp_path, command):
    bad = tmp_path / "studies.db"
    bad.write_bytes(b"this is not a database, it is a shopping list\n" * 100)
    before = bad.read_bytes()
    args = ("tune", *FAST, "--n-trials", "1") if command == "tune" else (command, "--study-name", "s")
    proc = run_cli(*args, "--storage", f"sqlite:///{bad}", cwd=tmp_path)
    one_line(proc, str(bad), "not an SQLite database")
    assert bad.read_bytes() == before


@pytest.mark.parametrize("url,driver,package", [
    ("mysql://u@127.0.0.1/db", "MySQLdb", "mysqlclient"),
    ("postgresql+pg8000://u@127.0.0.1/db", "pg8000", "pg8000"),
])
def test_a_storage_url_whose_driver_is_missing_is_one_line(tmp_path, url, driver, package):
    for args in (("tune", *FAST, "--n-trials", "1"), ("recommend", "--study-name", "s")):
        proc = run_cli(*args, "--storage", url, cwd=tmp_path)
        one_line(proc, driver, f"pip install {package}")


def test_resume_refusal_names_the_stored_value_first(tmp_path, sqlite_url):
    first = run_cli("tune", *FAST[:1], "mlp", *FAST[2:], "--n-trials", "1", "--no-baselines",
                    "--storage", sqlite_url, "--study-name", "same", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    other = run_cli("tune", *FAST, "--n-trials", "2", "--storage", sqlite_url, "--study-name", "same", cwd=tmp_path)
    one_line(other, "model is 'mlp' there, 'small_cnn' here", "--study-name same-2",
             "resume it as stored: autobatch tune --study-name same --storage")


def test_a_budget_that_fits_too_few_trials_is_refused_up_front_with_one_that_fits(tmp_path, sqlite_url):
    proc = run_cli("tune", "--model", "small_cnn", "--dataset", "digits", "--device", "cpu", "--epochs", "300",
                   "--budget", "30s", "--storage", sqlite_url, "--study-name", "short", cwd=tmp_path)
    line = last_line(proc, "budget 30s is too short", "4 trials", "300 epochs", "pass --budget")
    assert "timed before probing" in line and "training step at" not in proc.stderr  # before the memory probe
    suggested = line.split("pass --budget ")[1].split()[0]
    assert suggested.endswith(("m", "h"))
    study = optuna.load_study(study_name="short", storage=sqlite_url) if optuna.get_all_study_names(sqlite_url) else None
    assert study is None  # nothing stored: the refusal comes before the study is created


# --- read-only commands stay read-only ----------------------------------------------------------

def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("command", ["recommend", "report", "worker"])
def test_read_only_commands_create_nothing_and_say_where_they_looked(tmp_path, command):
    proc = run_cli(command, "--study-name", "ghost", cwd=tmp_path)
    default = tmp_path / "autobatch-studies" / "autobatch.db"
    one_line(proc, "ghost", str(default), "no such file", "autobatch tune")
    assert list(tmp_path.iterdir()) == []  # no file, no folder
    elsewhere = tmp_path / "nested" / "x.db"
    proc = run_cli(command, "--study-name", "ghost", "--storage", f"sqlite:///{elsewhere}", cwd=tmp_path)
    one_line(proc, str(elsewhere))
    assert list(tmp_path.iterdir()) == []


def test_reading_a_study_writes_nothing_and_the_api_neither(tmp_path):
    from autobatch import recommend

    made = run_cli("tune", *FAST, "--n-trials", "4", "--study-name", "ro", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    before = _tree(tmp_path)
    assert sorted(before) == ["autobatch-studies", "autobatch-studies/autobatch.db"]  # WAL files gone
    for args in (("recommend", "--json"), ("report", "--out", str(tmp_path.parent / f"{tmp_path.name}-report"))):
        proc = run_cli(*args, "--study-name", "ro", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert _tree(tmp_path) == before  # same files, same times, same sizes: nothing written
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert recommend("ro").batch_size > 0  # storage=None: the default file, read-only
        empty = tmp_path / "empty"
        empty.mkdir()
        os.chdir(empty)
        with pytest.raises(AutobatchError, match="no such file"):
            recommend("ro", storage=None)
        assert list(empty.iterdir()) == []
    finally:
        os.chdir(cwd)
    assert _tree(tmp_path) == {**before, "empty": _tree(tmp_path)["empty"]}


def test_read_only_opening_cannot_write(tmp_path):
    from autobatch.storage import open_study, open_storage

    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="s", storage=open_storage(url))
    study = open_study(url, "s", read_only=True)
    with pytest.raises(Exception) as refused:  # at once: a read-only file is no outage to wait out
        study.set_user_attr("x", 1)
    assert "readonly" in str(refused.value.__cause__ or refused.value)
    assert "x" not in optuna.load_study(study_name="s", storage=url).user_attrs


# --- the trial count is the study's -----------------------------------------------------------------

def test_n_trials_is_the_total_after_an_interrupt_and_a_finished_study_is_answered(tmp_path, sqlite_url):
    cmd = [sys.executable, "-m", "autobatch", "tune", *FAST[:4], "--epochs", "2", "--device", "cpu", *LEAN,
           "--n-trials", "1000000", "--storage", sqlite_url, "--study-name", "count"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("AUTOBATCH_STORAGE", None)
    proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:
        if line.startswith("trial 1:"):  # two results
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest
    study = optuna.load_study(study_name="count", storage=sqlite_url)
    interrupted = len(_results(sqlite_url, "count"))
    assert interrupted >= 2
    assert len(study.get_trials(states=(TrialState.WAITING,))) <= 3  # no queue of a million slots
    target = interrupted + 2
    resumed = run_cli("tune", "--n-trials", str(target), "--storage", sqlite_url, "--study-name", "count",
                      "--device", "cpu", "--no-verify", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming study 'count'" in resumed.stderr
    assert len(_results(sqlite_url, "count")) == target  # exactly the total asked for
    again = run_cli("tune", "--n-trials", str(target), "--storage", sqlite_url, "--study-name", "count",
                    "--device", "cpu", "--no-verify", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "is complete" in again.stderr and "recommended for count" in again.stdout
    more = again.stderr.split("to run more: ")[1].splitlines()[0]
    assert more.startswith("autobatch tune --study-name count --storage ")
    assert len(_results(sqlite_url, "count")) == target  # nothing more ran
    smaller = run_cli("tune", "--n-trials", "3", "--storage", sqlite_url, "--study-name", "count", "--device",
                      "cpu", "--no-verify", cwd=tmp_path)
    assert smaller.returncode == 0 and "is complete" in smaller.stderr
    extended = run_cli(*more.split()[1:], "--device", "cpu", "--no-verify", cwd=tmp_path)  # the printed remedy
    assert extended.returncode == 0, extended.stderr
    assert len(_results(sqlite_url, "count")) == int(more.split("--n-trials ")[1])


def test_two_tunes_started_at_once_on_a_fresh_file_share_one_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh' / 'studies.db'}"
    cmd = [sys.executable, "-m", "autobatch", "tune", *FAST, "--n-trials", "6", "--storage", url,
           "--study-name", "both"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("AUTOBATCH_STORAGE", None)
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    trials = optuna.load_study(study_name="both", storage=url).trials
    assert len([t for t in trials if t.state in RESULTS]) == 6 and len(trials) == 6
    baselines = [t.user_attrs.get(R.BASELINE) for t in trials if R.BASELINE in t.user_attrs]
    assert len(baselines) == len(set(baselines))  # queued once, not twice
    assert {"folk-default-32", "largest-fit-linear-lr"} <= set(baselines)
    configs = [tuple(sorted(t.params.items())) for t in trials if R.REPEAT not in t.user_attrs]  # a repeat is meant
    assert len(set(configs)) == len(configs)  # each process seeds its sampler apart
    assert sum("resuming study 'both'" in err for _, err in outs) == 1  # one created it, one joined


# --- workers run only the code they were given ------------------------------------------------

def test_a_worker_refuses_code_the_study_names_but_it_was_not_given(tmp_path, sqlite_url):
    model = "tests.test_reliability:_tiny_model"
    made = run_cli("tune", "--model", model, "--dataset", "digits", "--epochs", "0.2", "--device", "cpu", *LEAN,
                   "--n-trials", "1", "--no-baselines", "--create-only", "--storage", sqlite_url,
                   "--study-name", "trust", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    refused = run_cli("worker", "--study-name", "trust", "--storage", sqlite_url, cwd=tmp_path)
    one_line(refused, model, "--allow-import", "AUTOBATCH_ALLOW_IMPORTS")
    # whoever can write to the database rewrites the study to run something else
    study = optuna.load_study(study_name="trust", storage=sqlite_url)
    spec = dict(study.user_attrs[R.STUDY_SPEC], model="os:abort")
    study.set_user_attr(R.STUDY_SPEC, spec)
    attacked = run_cli("worker", "--study-name", "trust", "--storage", sqlite_url, "--allow-import", model,
                       cwd=tmp_path)
    one_line(attacked, "'os:abort'", "was not given")
    spec["model"], spec["dataset"] = model, "imagefolder:/etc"
    study.set_user_attr(R.STUDY_SPEC, spec)
    one_line(run_cli("worker", "--study-name", "trust", "--storage", sqlite_url, "--allow-import", model,
                     cwd=tmp_path), "imagefolder:/etc")
    spec["dataset"] = "digits"
    study.set_user_attr(R.STUDY_SPEC, spec)
    allowed = run_cli("worker", "--study-name", "trust", "--storage", sqlite_url, cwd=tmp_path,
                      env={"AUTOBATCH_ALLOW_IMPORTS": "tests.test_reliability:*"})
    assert allowed.returncode == 0 and "worker done: 1 trials run" in allowed.stderr, allowed.stderr


# --- budgets ------------------------------------------------------------------------------------

def test_no_trial_is_started_that_is_predicted_not_to_finish(tmp_path, sqlite_url):
    from autobatch.search import TuneSettings
    from autobatch.storage import open_study
    from autobatch.tuning import run_worker, set_limits, tune

    tune(TuneSettings(model="small_cnn", dataset="digits", device="cpu", epochs=400, n_trials=3,
                      storage=sqlite_url, study_name="late", baselines=False, create_only=True, **LEAN_SETTINGS))
    study = open_study(sqlite_url, "late", read_only=False)
    set_limits(study, deadline=time.time() + 4, n_trials=3)  # trials of 400 epochs take minutes
    started = time.time()
    assert run_worker(study, device_name="cpu") == 0
    assert time.time() - started < 30
    assert study.get_trials(deepcopy=False) == []  # none started, so none cut off


def test_a_study_in_which_every_trial_diverged_says_so_and_what_to_change(tmp_path, sqlite_url):
    """More trials of the same would diverge too: the one line says every trial diverged and to
    lower the learning rate or check the loss, never to resume with more trials (exit 2)."""
    proc = run_cli("tune", "--model", "mlp", "--dataset", "digits", "--base-lr", "1e4", "--n-trials", "3",
                   "--epochs", "0.3", "--no-baselines", "--no-noise-probe", "--no-verify", "--storage", sqlite_url,
                   "--study-name", "nan", cwd=tmp_path)
    line = last_line(proc, "every trial diverged (3 of 3", "lower the learning-rate range", "--base-lr 1000",
                     "check the loss function", "--study-name (e.g. nan-2)")
    assert "more trials" not in proc.stderr and "--n-trials" not in line


def test_a_run_with_no_completed_trial_is_an_error_naming_the_command_that_resumes_it(tmp_path, sqlite_url):
    from autobatch.search import TuneSettings
    from autobatch.storage import open_study
    from autobatch.tuning import TuneRun
    from autobatch.tuning._tune import _answer

    settings = TuneSettings(model="small_cnn", dataset="digits", budget_s=60, storage=sqlite_url, study_name="empty")
    made = run_cli("tune", *FAST, "--n-trials", "1", "--no-baselines", "--create-only", "--storage", sqlite_url,
                   "--study-name", "empty", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    with pytest.raises(AutobatchError) as caught:
        _answer(open_study(sqlite_url, "empty"), settings, "empty", sqlite_url, time.time(), TuneRun())
    message = str(caught.value)
    assert "no trial of study 'empty' completed" in message
    assert f"autobatch tune --study-name empty --storage {sqlite_url} --budget" in message


# --- storage -------------------------------------------------------------------------------------

def test_sqlite_is_in_wal_mode_with_synchronous_normal(tmp_path):
    from autobatch.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    with storage.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_a_trials_storage_transactions_are_few_and_timed(tmp_path):
    """What a trial costs the storage, counted with SQLAlchemy's own events: a claim, the
    sampler's parameters, the configuration, one report per checkpoint and the result with its
    state, plus a few reads; before this work a trial took ~46 commits. The event carries the
    time of each stage, storage round trips included."""
    from autobatch.search import TuneSettings
    from autobatch.tuning import TrialFinished, tune

    url = f"sqlite:///{tmp_path / 's.db'}"
    commits: list[int] = []
    at_finish: list[int] = []
    events: list[TrialFinished] = []

    def count(_connection) -> None:
        commits.append(1)

    def on_event(run, event) -> None:
        if isinstance(event, TrialFinished):
            events.append(event)
            at_finish.append(len(commits))

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "commit", count)
    try:
        tune(TuneSettings(model="small_cnn", dataset="digits", device="cpu", epochs=0.3, n_trials=4, storage=url,
                          study_name="cost", baselines=False, pruner="median", **LEAN_SETTINGS), callbacks=[on_event])
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "commit", count)
    assert len(events) == 4
    per_trial = [b - a for a, b in zip(at_finish, at_finish[1:])]
    assert max(per_trial) <= 30, per_trial  # main before this work: 56
    for event in events:
        assert set(event.timings) >= {"claim", "sample", "write", "report", "state"}
        storage_s = event.timings["claim"] + event.timings["write"] + event.timings["state"]
        assert event.overhead_seconds >= storage_s * 0.9  # storage is overhead, not evaluation
        assert event.trial.user_attrs[R.EVAL_TIME_S] <= event.eval_seconds + 1e-9


def test_vanilla_optuna_reads_a_postgresql_study_by_its_plain_url(postgres_url, unique_name, tmp_path):
    proc = run_cli("tune", *FAST, "--n-trials", "1", "--no-baselines", "--storage", postgres_url,
                   "--study-name", unique_name, cwd=tmp_path)
    try:
        assert proc.returncode == 0, proc.stderr
        plain = postgres_url.replace("postgresql+psycopg2://", "postgresql://")
        assert plain.startswith("postgresql://")
        study = optuna.load_study(study_name=unique_name, storage=plain)  # SQLAlchemy's own driver choice
        assert len(study.trials) == 1 and study.trials[0].user_attrs[R.BATCH_SIZE] > 0
    finally:
        optuna.delete_study(study_name=unique_name, storage=resolve_url(postgres_url))


def test_a_reader_opened_before_a_writer_attached_sees_the_writers_trials(tmp_path):
    """A read-only SQLite open made while no writer is attached (read ``immutable``: no log, no
    locks) must not keep reading the file as it was once a writer attaches and commits."""
    from autobatch.storage import open_study, open_storage

    path = tmp_path / "s.db"
    url = f"sqlite:///{path}"
    first = open_storage(url)
    study = optuna.create_study(study_name="s", storage=first)
    study.add_trial(optuna.trial.create_trial(value=1.0))
    first.engine.dispose()  # the last writer leaves: its log is checkpointed and removed
    assert not Path(f"{path}-wal").exists()
    reader = open_study(url, "s", read_only=True)
    assert len(reader.get_trials()) == 1
    writer = open_storage(url)
    other = optuna.load_study(study_name="s", storage=writer)
    for value in (2.0, 3.0, 4.0):
        other.add_trial(optuna.trial.create_trial(value=value))
    assert Path(f"{path}-wal").exists()  # the writer is attached: its commits are in the log
    assert sorted(t.value for t in reader.get_trials()) == [1.0, 2.0, 3.0, 4.0]
    writer.engine.dispose()  # its log checkpointed into the file while the reader is open
    assert sorted(t.value for t in reader.get_trials()) == [1.0, 2.0, 3.0, 4.0]
    assert sorted(reader.user_attrs) == []
