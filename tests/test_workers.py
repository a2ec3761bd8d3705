"""Several worker processes on one PostgreSQL study, as users run them: started together,
killed, interrupted, and with the database restarted (or gone) under them.

The heartbeat runs every second here (grace: 3 s), so a dead worker's trial is found fast.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from autobatch import records as R
from autobatch.search import TuneSettings
from autobatch.storage import resolve_url
from autobatch.tuning import tune
from tests.conftest import LEAN, LEAN_SETTINGS, REPO, REQUIRE_ALL, run_cli

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
BEAT_S = "1"


def _env(url: str, **extra: str) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "AUTOBATCH_STORAGE": url, "AUTOBATCH_HEARTBEAT_S": BEAT_S}
    env.update(extra)
    return env


def _vanilla(url: str) -> optuna.storages.RDBStorage:
    """Vanilla Optuna's storage (psycopg2 spelled out, as a user would)."""
    return optuna.storages.RDBStorage(resolve_url(url), engine_kwargs={"pool_pre_ping": True})


def _wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


class Workers:
    """Worker processes of one study, each logging to its own file; killed at teardown."""

    def __init__(self, url: str, name: str, tmp_path: Path) -> None:
        self.url, self.name, self.tmp_path = url, name, tmp_path
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        self._storage: optuna.storages.RDBStorage | None = None

    def create(self, *, n_trials: int, epochs: float, baselines: bool = True) -> None:
        settings = TuneSettings(model="small_cnn", dataset="digits", device="cpu", epochs=epochs,
                                n_trials=n_trials, storage=self.url, study_name=self.name,
                                baselines=baselines, create_only=True, **LEAN_SETTINGS)
        tune(settings)

    def start(self, *args: str, **env: str) -> subprocess.Popen:
        log = self.tmp_path / f"worker{len(self.procs)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "autobatch", "worker", "--study-name", self.name, "--device", "cpu", *args],
            cwd=self.tmp_path, env=_env(self.url, **env), stdout=subprocess.DEVNULL,
            stderr=log.open("w"))
        self.procs.append((proc, log))
        return proc

    def wait(self, proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
        log = next(log for p, log in self.procs if p is proc)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"worker {proc.pid} still running after {timeout}s:\n{log.read_text()[-3000:]}")
        return code, log.read_text()

    def study(self) -> optuna.Study:
        self._storage = self._storage or _vanilla(self.url)
        return optuna.load_study(study_name=self.name, storage=self._storage)

    def running_trial_mid_training(self) -> optuna.trial.FrozenTrial | None:
        """A RUNNING trial that has suggested its configuration and reported once or twice of
        its four evaluations: well inside its training, not about to finish."""
        for t in self.study().get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.params and 1 <= len(t.intermediate_values) <= 2:
                return t
        return None

    def close(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        storage = self._storage or _vanilla(self.url)
        try:
            optuna.delete_study(study_name=self.name, storage=storage)
        except KeyError:
            pass
        storage.engine.dispose()


@pytest.fixture
def workers(postgres_url, unique_name, tmp_path):
    w = Workers(postgres_url, unique_name, tmp_path)
    yield w
    w.close()


def assert_study_done(study: optuna.Study, n_trials: int) -> list[optuna.trial.FrozenTrial]:
    """Exactly ``n_trials`` finished results, nothing RUNNING or queued, numbers unique, and
    every FAIL trial's configuration run again."""
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials))), f"duplicated or missing trial numbers: {numbers}"
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states, states
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == n_trials, [(t.number, t.state.name) for t in trials]
    for dead in (t for t in trials if t.state == TrialState.FAIL):
        retries = [t for t in trials if t.system_attrs.get("failed_trial") is not None
                   and dead.number in t.system_attrs.get("retry_history", [])]
        assert retries, f"trial {dead.number} failed and was not queued again"
    return trials


# --- the tests ----------------------------------------------------------------------------------

def test_four_workers_started_together_finish_the_exact_count(workers):
    workers.create(n_trials=12, epochs=0.5)
    procs = [workers.start() for _ in range(4)]  # no --seed: each derives its own
    runs = 0
    for proc in procs:
        code, log = workers.wait(proc, timeout=150)
        assert code == 0 and "Traceback" not in log, log
        runs += int(log.strip().splitlines()[-1].split("worker done: ")[1].split()[0])
    trials = assert_study_done(workers.study(), 12)
    assert runs == 12 and len(trials) == 12  # no failures, no retries: every slot once
    # Per-worker sampler seeds: no configuration proposed twice (the lr multiplier is
    # continuous, so equal configurations only come from equal seeds).
    proposed = [tuple(sorted(t.params.items())) for t in trials if R.BASELINE not in t.user_attrs]
    assert len(set(proposed)) == len(proposed), proposed


def test_study_deadline_holds_for_all_workers_together(workers):
    """No trial count, a budget: workers create trials until the study's own deadline (one
    end time for all of them, not a budget each), then leave nothing RUNNING."""
    from autobatch.tuning import set_limits

    workers.create(n_trials=1, epochs=2, baselines=False)
    study = workers.study()
    deadline = time.time() + 40  # the workers' start included (imports take 10-20 s on a busy machine)
    set_limits(study, deadline=deadline, n_trials=None)  # the one queued slot runs first, then new trials
    procs = [workers.start(), workers.start()]
    for proc in procs:
        code, log = workers.wait(proc, timeout=90)
        assert code == 0 and "Traceback" not in log, log
    assert time.time() < deadline + 15  # trials end by the deadline, not after it
    trials = workers.study().get_trials(deepcopy=False)
    assert len(trials) >= 3
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # created concurrently, numbered once
    for t in trials:
        assert t.state in FINISHED or t.user_attrs.get(R.STOP_REASON) == R.STOP_BUDGET, (t.number, t.state)
        assert t.datetime_start.timestamp() < deadline
        assert t.datetime_complete.timestamp() < deadline + 5  # none started that could not finish


def test_worker_killed_mid_trial_is_failed_by_heartbeat_and_its_configuration_rerun(workers):
    workers.create(n_trials=5, epochs=6, baselines=False)
    first = workers.start()
    victim = _wait_for(workers.running_trial_mid_training, 60, "a trial in training")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert workers.study().trials[victim.number].state == TrialState.RUNNING  # nobody said it died

    others = [workers.start(), workers.start()]
    for proc in others:
        code, log = workers.wait(proc, timeout=150)
        assert code == 0 and "Traceback" not in log, log
    trials = assert_study_done(workers.study(), 5)
    dead = trials[victim.number]
    assert dead.state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state in FINISHED
    assert retry[0].params == victim.params  # the configuration asked for, run again
    assert retry[0].user_attrs.get(R.STOP_REASON) != "interrupted"  # its own result, not the dead one's


def test_ctrl_c_in_a_worker_requeues_its_trial(workers):
    workers.create(n_trials=3, epochs=6, baselines=False)
    proc = workers.start()
    victim = _wait_for(workers.running_trial_mid_training, 60, "a trial in training")
    proc.send_signal(signal.SIGINT)
    code, log = workers.wait(proc, timeout=30)
    assert code == 130 and "Traceback" not in log, log
    trials = workers.study().trials
    assert trials[victim.number].state == TrialState.FAIL
    assert trials[victim.number].user_attrs[R.STOP_REASON] == "interrupted"
    again = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(again) == 1 and again[0].state == TrialState.WAITING and again[0].params == victim.params


def test_live_trial_failed_by_another_worker_does_not_kill_its_worker(workers):
    """What a too-short grace period or a long database outage does: another worker judges a
    live trial stale, fails it and queues its configuration again. Optuna then refuses every
    write to the trial; its own worker must carry on, not crash."""
    from autobatch.storage import requeue
    from autobatch.storage import open_storage

    workers.create(n_trials=3, epochs=6, baselines=False)
    proc = workers.start()
    victim = _wait_for(workers.running_trial_mid_training, 60, "a trial in training")
    study = optuna.load_study(study_name=workers.name, storage=open_storage(workers.url))
    assert study._storage.set_trial_state_values(victim._trial_id, state=TrialState.FAIL)
    requeue(study, study._storage.get_trial(victim._trial_id))
    code, log = workers.wait(proc, timeout=120)
    assert code == 0 and "Traceback" not in log, log
    assert f"trial {victim.number} was failed and re-queued by another worker" in log
    assert_study_done(workers.study(), 3)


def test_worker_without_a_free_slot_waits_for_running_trials_then_exits(workers):
    from autobatch.storage import claim_trial

    workers.create(n_trials=1, epochs=0.5, baselines=False)
    study = workers.study()
    storage = study._storage
    # This test process plays a live worker holding the study's only trial, beating every half second.
    claim = claim_trial(storage, study._study_id, limit_key=R.STUDY_MAX_TRIALS, deadline_key=R.STUDY_DEADLINE)
    slot = storage.get_trial(claim.trial_id)
    assert slot.state == TrialState.RUNNING
    proc = workers.start()
    end = time.monotonic() + 12  # the worker's start, then well past the 3 s grace period
    while time.monotonic() < end:
        storage.record_heartbeat(slot._trial_id)
        time.sleep(0.5)
    assert proc.poll() is None, "the worker left while another worker's trial was running"
    study.tell(slot.number, 0.5)  # the other worker finishes: the study is done
    code, log = workers.wait(proc, timeout=30)
    assert code == 0 and "worker done: 0 trials run" in log, log
    assert_study_done(workers.study(), 1)


def test_tune_with_two_workers_end_to_end(postgres_url, unique_name, tmp_path):
    try:
        proc = run_cli("tune", "--model", "small_cnn", "--dataset", "digits", "--device", "cpu",
                       "--epochs", "0.5", "--n-trials", "6", "--workers", "2", *LEAN, "--storage", postgres_url,
                       "--study-name", unique_name, "--json", cwd=tmp_path,
                       env={"AUTOBATCH_HEARTBEAT_S": BEAT_S}, timeout=180)
        assert proc.returncode == 0, proc.stderr
        assert "worker done:" in proc.stderr  # the helper process ran and finished
        assert "Traceback" not in proc.stderr
        assert_study_done(optuna.load_study(study_name=unique_name, storage=resolve_url(postgres_url)), 6)
    finally:
        try:
            optuna.delete_study(study_name=unique_name, storage=resolve_url(postgres_url))
        except KeyError:
            pass


# --- the database restarted, or gone -------------------------------------------------------------

def _pg_ctl(action: str) -> None:
    """Stop/start/restart the local test cluster (Debian's cluster tools, as .ci/run uses)."""
    tool = shutil.which("pg_ctlcluster")
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not tool or not versions:
        message = "restarting PostgreSQL needs Debian's pg_ctlcluster and a local cluster"
        if REQUIRE_ALL:
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run([tool, "--skip-systemctl-redirect", versions[-1], "main", action],
                          timeout=60, capture_output=True, text=True)
    if done.returncode != 0 and not (action == "status" and done.returncode == 3):  # 3: stopped
        pytest.fail(f"pg_ctlcluster {action} failed ({done.returncode}): {done.stderr.strip()}")


def _pg_up(url: str) -> bool:
    engine = sqlalchemy.create_engine(resolve_url(url))
    try:
        with engine.connect():
            return True
    except Exception:  # noqa: BLE001 - still starting
        return False
    finally:
        engine.dispose()


@pytest.fixture
def restartable_postgres(postgres_url):
    _pg_ctl("status")  # fails or skips early if the cluster cannot be controlled from here
    yield postgres_url
    if not _pg_up(postgres_url):
        _pg_ctl("start")
    _wait_for(lambda: _pg_up(postgres_url), 60, "PostgreSQL to accept connections", poll=0.5)


def _finished(study: optuna.Study) -> dict[int, tuple]:
    return {t.number: (t.state, t.value, t.params) for t in study.get_trials(deepcopy=False)
            if t.state in FINISHED}


def test_postgres_restart_mid_study_workers_carry_on(restartable_postgres, workers):
    workers.create(n_trials=8, epochs=8)  # trials of seconds: the outage lands mid-trial
    procs = [workers.start(AUTOBATCH_HEARTBEAT_S="2") for _ in range(2)]
    _wait_for(lambda: len(_finished(workers.study())) >= 2, 120, "two finished trials")
    before = _finished(workers.study())
    assert len(before) < 8  # not done yet
    _pg_ctl("stop")  # a restart with a real outage: several seconds without a database
    time.sleep(3)
    _pg_ctl("start")
    logs = []
    for proc in procs:
        code, log = workers.wait(proc, timeout=150)
        assert code == 0 and "Traceback" not in log, log
        logs.append(log)
    assert any("unreachable" in log and "retrying" in log for log in logs), logs  # they did see it go
    try:
        trials = assert_study_done(workers.study(), 8)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- worker logs:\n" + "\n---\n".join(logs)) from None
    after = {t.number: (t.state, t.value, t.params) for t in trials}
    for number, record in before.items():  # no completed trial lost
        assert after[number] == record


def test_postgres_gone_for_good_worker_exits_2_naming_host_and_nothing_is_lost(restartable_postgres, workers):
    workers.create(n_trials=4, epochs=6, baselines=False)
    proc = workers.start(AUTOBATCH_DB_RETRY_S="4")
    victim = _wait_for(workers.running_trial_mid_training, 60, "a trial in training")
    _pg_ctl("stop")
    try:
        code, log = workers.wait(proc, timeout=60)
    finally:
        _pg_ctl("start")
    lines = [line for line in log.strip().splitlines() if line.startswith("autobatch: error:")]
    assert code == 2 and "Traceback" not in log, log
    assert len(lines) == 1 and "127.0.0.1:5432" in lines[0] and log.strip().endswith(lines[0]), log
    _wait_for(lambda: _pg_up(workers.url), 60, "PostgreSQL to accept connections", poll=0.5)

    again = workers.start()  # once it is back, the study resumes: the cut-off trial is run again
    code, log = workers.wait(again, timeout=150)
    assert code == 0, log
    trials = assert_study_done(workers.study(), 4)
    assert trials[victim.number].state == TrialState.FAIL
    assert any(t.system_attrs.get("failed_trial") == victim.number and t.state in FINISHED for t in trials)
