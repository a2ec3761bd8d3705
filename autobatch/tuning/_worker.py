"""The worker loop: take a trial, run it, repeat until the study's limits are reached.

Study-wide limits hold across any number of workers:
- the trial count: ``tune`` enqueues one WAITING trial per requested trial (a *slot*); workers
  only pop slots, never create trials, so N requested trials are exactly N trials even with
  many workers. Without a count, workers create trials until the deadline.
- the deadline: a study user attribute every worker reads; a trial running past it is cut off
  and recorded as ``budget`` (state FAIL: not a result).
A trial whose worker died is failed by the heartbeat and its configuration re-queued.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import optuna
from optuna.trial import TrialState

from .. import records as R
from .._optuna_internals import backend, study_id
from .._optuna_internals import trial_id as trial_id_of
from ..errors import AutobatchError
from ..memory import MemoryEstimate
from ..search import StudySpec, make_pruner, make_sampler
from ..storage import StorageLostError, fail_stale_trials, requeue
from ..train import resolve_device
from ..workloads import Workload, load_workload
from ._events import Note, TrialFinished, TuneRun
from ._objective import StudyFailedError, TrialContext, run_trial

POLL_SECONDS = 2.0  # how often an idle worker looks for work or stale trials


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state name (lower case), every state present."""
    trials = study.get_trials(deepcopy=False)
    return {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}


def run_worker(study: optuna.Study, *, device_name: str = "auto", data_dir: Optional[Path] = None,
               worker_seed: Optional[int] = None, run: Optional[TuneRun] = None,
               workload: Optional[Workload] = None, num_workers: Optional[int] = None) -> int:
    """Run trials of an open ``study`` until its limits are reached (or ``run.stop()``);
    returns the number of trials run. ``workload`` is the study's data when the caller has
    loaded it already (``tune``); a joining worker loads it. ``num_workers``: data loader worker
    processes per trial (None: what fits the machine)."""
    run = run or TuneRun()
    if R.STUDY_SPEC not in study.user_attrs:
        raise AutobatchError(f"study {study.study_name!r} was not created by autobatch tune")
    spec = StudySpec.from_dict(study.user_attrs[R.STUDY_SPEC])
    deadline = study.user_attrs.get(R.STUDY_DEADLINE)
    counted = bool(study.user_attrs.get(R.STUDY_MAX_TRIALS))
    memory = study.user_attrs.get(R.STUDY_MEMORY_MODEL) or {}
    workload = workload or load_workload(spec.dataset, data_dir=data_dir, seed=spec.seed)
    ctx = TrialContext(spec=spec, workload=workload,
                       device=resolve_device(device_name),
                       memory_model=MemoryEstimate.from_dict(memory) if memory else None, deadline=deadline,
                       num_workers=num_workers)
    # The sampler's seed moves on with the study: a resumed study must not replay the
    # configurations of its first start-up trials.
    finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
    seed = (spec.seed if worker_seed is None else worker_seed) + finished
    study = optuna.load_study(study_name=study.study_name, storage=backend(study),
                              sampler=make_sampler(seed), pruner=make_pruner(spec.pruner, spec.eval_points))
    done = 0
    while not run.stopped and (trial_id := next_trial_id(study, counted=counted, deadline=deadline)) is not None:
        started = time.perf_counter()
        try:
            with heartbeat(backend(study), trial_id):
                frozen = run_trial(study, optuna.Trial(study, trial_id), ctx, run)
        except KeyboardInterrupt:
            _abandon(study, trial_id, "interrupted (Ctrl-C)")
            raise
        except StorageLostError:
            raise  # the database is gone: once it is back, the heartbeat fails and re-queues the trial
        except StudyFailedError:
            raise  # the trial is told already: every configuration fails through the user's code
        except Exception as exc:
            # Another worker failed this trial (its heartbeat looked stale, e.g. after a long
            # database outage) and queued its configuration again: Optuna then refuses every
            # write to it. Not this worker's error: carry on with the next trial.
            number = _finished_elsewhere(study, trial_id)
            if number is not None:
                run.emit(Note(text=f"trial {number} was failed and re-queued by another worker "
                                   "(stale heartbeat); carrying on"))
                continue
            _abandon(study, trial_id, f"worker error: {type(exc).__name__}: {exc}")
            raise
        done += 1
        run.emit(_finished(study, frozen, deadline, time.perf_counter() - started))
    return done


def _finished(study: optuna.Study, frozen, deadline: Optional[float], seconds: float) -> TrialFinished:
    try:
        best = study.best_trial
        best_value, best_number = best.value, best.number
    except ValueError:
        best_value = best_number = None
    return TrialFinished(trial=frozen, counts=counts(study), best_value=best_value,
                         best_number=best_number, deadline=deadline, seconds=seconds)


def _finished_elsewhere(study: optuna.Study, trial_id: int) -> Optional[int]:
    """The trial's number if it is already finished in the storage, else None."""
    try:
        frozen = backend(study).get_trial(trial_id)
    except Exception:
        return None
    return frozen.number if frozen.state.is_finished() else None


def _abandon(study: optuna.Study, trial_id: int, why: str) -> None:
    """Mark an unfinished trial FAIL and queue its configuration again: nothing asked is lost."""
    storage = backend(study)
    try:
        storage.set_trial_user_attr(trial_id, R.STOP_REASON, "interrupted")
        storage.set_trial_user_attr(trial_id, R.STOP_DETAIL, why[:500])
        if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            requeue(study, storage.get_trial(trial_id))
    except Exception:  # the database may be gone too, or another worker failed it: the heartbeat copes
        pass


@contextmanager
def heartbeat(storage: optuna.storages.BaseStorage, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat in the background while it runs (as Study.optimize does)."""
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            _beat(storage, trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _beat(storage: optuna.storages.BaseStorage, trial_id: int) -> None:
    try:
        storage.record_heartbeat(trial_id)
    except Exception:  # a database restart: the heartbeat thread beats again shortly
        pass


def _pop_waiting(study: optuna.Study) -> Optional[int]:
    """Take a queued slot. Its heartbeat is recorded *before* it turns RUNNING: Optuna never
    fails a RUNNING trial that has no heartbeat at all, so a worker killed between the two
    would otherwise leave a trial RUNNING for ever (and every other worker waiting on it)."""
    storage = backend(study)
    for trial in storage.get_all_trials(study_id(study), deepcopy=False, states=(TrialState.WAITING,)):
        tid = trial_id_of(trial)
        _beat(storage, tid)
        try:
            if storage.set_trial_state_values(tid, state=TrialState.RUNNING):
                return tid
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def next_trial_id(study: optuna.Study, *, counted: bool, deadline: Optional[float]) -> Optional[int]:
    """The next trial to run: a queued slot; a new trial when the study has no count; None
    when the study is done. Waits while other workers' trials may still die and come back,
    past the deadline too (so no dead worker's trial is left RUNNING): live trials stop at
    the deadline by themselves, a dead one goes stale within the heartbeat's grace period."""
    storage = backend(study)
    while True:
        fail_stale_trials(study)  # re-queues dead workers' configurations
        if deadline is None or time.time() < deadline:
            trial_id = _pop_waiting(study)
            if trial_id is not None:
                return trial_id
            if not counted:
                trial_id = storage.create_new_trial(study_id(study))
                _beat(storage, trial_id)
                return trial_id
        running = storage.get_all_trials(study_id(study), deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return None
        time.sleep(POLL_SECONDS)
