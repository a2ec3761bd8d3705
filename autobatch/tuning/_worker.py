"""The worker loop: take a trial, run it, repeat until the study's limits are reached.

Study-wide limits hold across any number of workers and resumes:
- the trial count (``--n-trials``, the study's total): a worker takes a trial only while the
  study's results (COMPLETE, PRUNED) plus its RUNNING trials are fewer than the count, checked
  and taken in one transaction (``storage.claim_trial``); queued trials (baselines, the
  configurations of trials whose worker died) go first. Without a count, trials are taken
  until the deadline.
- the deadline: a study user attribute every worker reads with each claim; a trial is started
  only if it is predicted to finish before it (``search.TrialTimes``, refitted from the
  trials' measured times), and one running past it is cut off and recorded as ``budget``
  (state FAIL: not a result).
A trial whose worker died is failed by the heartbeat and its configuration re-queued.

A worker imports and runs only the code it was given (``allowed``): a study that names another
``pkg.module:function`` (or an ``imagefolder:PATH``) is refused, since whoever can write to a
shared database could otherwise choose code that runs on every worker joining it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Collection, Iterator, Optional

import optuna
from optuna.trial import TrialState

from .. import records as R
from .._optuna_internals import backend, fill_trial_cache, study_id, trial_of, trial_id as trial_id_of
from ..errors import AutobatchError
from ..interrupts import check as check_interrupt
from ..interrupts import deferred as deferred_interrupt
from ..memory import MemoryEstimate
from ..search import SAFETY, StudySpec, TrialTimes, make_sampler, param_encoding
from ..storage import StorageLostError, claim_trial, fail_stale_trials, fail_trial, requeue, study_state

from ..train import resolve_device
from ..workloads import Workload, load_workload, split_holdout
from ._events import Note, TrialFinished, TuneRun
from ._objective import StudyFailedError, TrialContext, run_trial
from ._pruning import SnapshotPruner

POLL_SECONDS = 2.0  # how often an idle worker looks for work or stale trials
ENV_ALLOW = "AUTOBATCH_ALLOW_IMPORTS"  # comma-separated paths a worker may run ("pkg.mod:*" too)


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state name (lower case), every state present, and ``fail_final``: FAIL trials
    the user's code failed (final, never re-queued; they count towards ``--n-trials``). One
    aggregate read."""
    return study_state(backend(study), study_id(study), final_fail_key=R.USER_ERROR).counts


def allowed_imports(given: Collection[str] = ()) -> frozenset[str]:
    """The code paths a worker may run: those ``given`` (flags, a study file) and those in
    ``$AUTOBATCH_ALLOW_IMPORTS``."""
    env = os.environ.get(ENV_ALLOW, "")
    return frozenset(given) | {p.strip() for p in env.replace(";", ",").split(",") if p.strip()}


def check_imports(spec: StudySpec, study_name: str, allowed: Collection[str]) -> None:
    """Raise ``AutobatchError`` naming the first code path of the study this worker was not
    given, and how to allow it."""
    for what, path in spec.code_paths():
        module = path.split(":", 1)[0]
        if path in allowed or f"{module}:*" in allowed:
            continue
        raise AutobatchError(
            f"study {study_name!r} names {what} {path!r}, which this worker was not given: a worker "
            f"runs only code and data it is given; if you trust it, pass --allow-import {path} (or set "
            f"{ENV_ALLOW}={path}, or --config with the study file)")


def run_worker(study: optuna.Study, *, device_name: str = "auto", data_dir: Optional[Path] = None,
               worker_seed: Optional[int] = None, run: Optional[TuneRun] = None,
               workload: Optional[Workload] = None, num_workers: Optional[int] = None,
               allowed: Optional[Collection[str]] = None) -> int:
    """Run trials of an open ``study`` until its limits are reached (or ``run.stop()``);
    returns the number of trials run. ``workload`` is the study's data when the caller has
    loaded it already (``tune``); a joining worker loads it. ``num_workers``: data loader worker
    processes per trial (None: what fits the machine). ``allowed``: the code paths this worker
    may run (None: every path, for a caller that gave them itself, e.g. ``tune``).

    Each trial's sampler is seeded with ``seed + trial number`` (``worker_seed`` or the study's
    seed): trial numbers are unique, so no two processes, and no resumed run, propose alike."""
    run = run or TuneRun()
    attrs = study.user_attrs
    if R.STUDY_SPEC not in attrs:
        raise AutobatchError(f"study {study.study_name!r} was not created by autobatch tune")
    spec = StudySpec.from_dict(attrs[R.STUDY_SPEC])
    if allowed is not None:
        check_imports(spec, study.study_name, allowed)
    memory = attrs.get(R.STUDY_MEMORY_MODEL) or {}
    memory_model = MemoryEstimate.from_dict(memory) if memory else None
    workload = workload or load_workload(spec.dataset, data_dir=data_dir, seed=spec.seed)
    workload, _ = split_holdout(workload, spec.verify_holdout, spec.seed)  # verification's slice: never seen here
    clock = _TrialClock(spec, attrs.get(R.STUDY_THROUGHPUT), memory_model, study)
    base_seed = spec.seed if worker_seed is None else worker_seed
    pruner = SnapshotPruner(spec.pruner, spec.eval_points)
    study = optuna.load_study(study_name=study.study_name, storage=backend(study), pruner=pruner)
    base = TrialContext(spec=spec, workload=workload, device=resolve_device(device_name), memory_model=memory_model,
                        num_workers=num_workers, trial_seconds=clock.seconds,  # checks the device first
                        param_encoding=param_encoding(study.get_trials(deepcopy=False)))
    done, stale_checked = 0, -math.inf
    stale_every = getattr(backend(study), "get_heartbeat_interval", lambda: None)() or 0.0
    while not run.stopped:
        check_interrupt()  # a Ctrl-C a callback swallowed (during the probes, say) ends the run here
        timings: dict[str, float] = {}
        # Dead workers' trials go stale only after the heartbeat's grace period: looking for them
        # once per heartbeat interval finds each as soon as looking at every claim would, near enough.
        check_stale = time.monotonic() - stale_checked >= stale_every
        stale_checked = time.monotonic() if check_stale else stale_checked
        claim = None
        try:  # the trial is RUNNING from its claim on: a Ctrl-C from here on hands it back
            # A Ctrl-C during the claim is held back until ``claim`` names the trial it took.
            with deferred_interrupt():
                claim = next_claim(study, seconds_needed=clock.shortest(), timings=timings, refresh=False,
                                   check_stale=check_stale, keys=(R.STUDY_MEMORY_MODEL,))
            if claim is None:
                break
            check_interrupt()
            deadline = claim.attrs.get(R.STUDY_DEADLINE)
            study.sampler = make_sampler(base_seed + claim.number)
            # One read of the trials per trial (Optuna's cache makes it a read of what changed): the
            # sampler's view and the pruner's snapshot, as Study.ask has the sampler read once.
            trials = study.get_trials(deepcopy=False)
            fill_trial_cache(study, trials)
            pruner.refresh(trials)
            ctx = dataclasses.replace(base, deadline=deadline, study_attrs=claim.attrs, trials=tuple(trials))
        except KeyboardInterrupt:
            if claim is not None:
                _abandon(study, claim.trial_id, "interrupted (Ctrl-C)")
            raise
        started = time.perf_counter() - timings["claim"]
        try:
            with heartbeat(backend(study), claim.trial_id):
                frozen = run_trial(study, _trial(study, claim.trial_id, ctx.trials), ctx, run, timings)
        except KeyboardInterrupt:
            _abandon(study, claim.trial_id, "interrupted (Ctrl-C)")
            raise
        except StorageLostError:
            raise  # the database is gone: once it is back, the heartbeat fails and re-queues the trial
        except StudyFailedError:
            raise  # the trial is told already: every configuration fails through the user's code
        except Exception as exc:
            # Another worker failed this trial (its heartbeat looked stale, e.g. after a long
            # database outage) and queued its configuration again: Optuna then refuses every
            # write to it. Not this worker's error: carry on with the next trial.
            number = _finished_elsewhere(study, claim.trial_id)
            if number is not None:
                run.emit(Note(text=f"trial {number} was failed and re-queued by another worker "
                                   "(stale heartbeat); carrying on"))
                continue
            _abandon(study, claim.trial_id, f"worker error: {type(exc).__name__}: {exc}")
            raise
        done += 1
        clock.add(frozen)
        run.emit(_finished(study, frozen, deadline, started, timings))
        if frozen.user_attrs.get(R.STOP_DETAIL, "").startswith("not started"):
            break  # what is left of the budget fits no trial of this study
    return done


class _TrialClock:
    """How long a trial will take: the probe's first guess, refitted from finished trials."""

    def __init__(self, spec: StudySpec, throughput, memory_model: Optional[MemoryEstimate],
                 study: optuna.Study) -> None:
        self.spec = spec
        self.times = TrialTimes.from_throughput([tuple(m) for m in throughput]) if throughput else None
        cap = spec.max_memory_bytes
        self.sizes = [b for b in spec.space.batch_sizes
                      if not (memory_model and cap) or memory_model.predict(b) <= cap] or [spec.space.batch_size_min]
        self.rows: list[tuple[int, int, float, float, float, int]] = []
        if self.times is not None:
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
                self._row(t)
            self.times = self.times.refit(self.rows)

    def _row(self, frozen: optuna.trial.FrozenTrial) -> None:
        a = frozen.user_attrs
        samples, train_s = a.get(R.SAMPLES_SEEN) or 0, a.get(R.TRAIN_TIME_S) or 0.0
        if samples and train_s and a.get(R.BATCH_SIZE):
            evaluated = len(a.get(R.CURVE) or ()) * self.spec.val_size
            self.rows.append((a[R.BATCH_SIZE], samples, train_s, a.get(R.EVAL_TIME_S) or 0.0,
                              a.get(R.WALL_TIME_S) or train_s, evaluated))

    def add(self, frozen: optuna.trial.FrozenTrial) -> None:
        if self.times is not None and frozen.state in (TrialState.COMPLETE, TrialState.PRUNED):
            self._row(frozen)
            self.times = self.times.refit(self.rows)

    def seconds(self, config: R.TrialConfig) -> float:
        """Predicted wall seconds of a whole trial of ``config``, with the safety margin."""
        if self.times is None:
            return 0.0
        evaluated = len(self.spec.eval_points) * self.spec.val_size
        return SAFETY * self.times.seconds(config.batch_size, self.spec.train_samples, evaluated)

    def shortest(self) -> float:
        """The quickest trial the search may propose: no trial is taken with less time left."""
        if self.times is None:
            return 0.0
        return min(self.seconds(R.TrialConfig(batch_size=b, learning_rate=1.0)) for b in self.sizes)


def next_claim(study: optuna.Study, *, seconds_needed: float = 0.0,
               timings: Optional[dict[str, float]] = None, refresh: bool = True, check_stale: bool = True,
               keys: tuple[str, ...] = ()):
    """The next trial to run (a ``storage.Claim``, with the study user attributes ``keys`` too),
    or None when the study is done. Waits while other workers' trials may still die and come
    back, past the deadline too (so no dead worker's trial is left RUNNING): live trials stop at
    the deadline by themselves, a dead one goes stale within the heartbeat's grace period.
    ``check_stale=False`` skips looking for dead workers' trials before the first try (never
    while waiting)."""
    storage = backend(study)
    while True:
        started = time.perf_counter()
        if check_stale:
            fail_stale_trials(study)  # re-queues dead workers' configurations
        check_stale = True
        claim = claim_trial(storage, study_id(study), limit_key=R.STUDY_MAX_TRIALS,
                            deadline_key=R.STUDY_DEADLINE, seconds_needed=seconds_needed, refresh=refresh,
                            final_fail_key=R.USER_ERROR, keys=keys)
        if timings is not None:
            timings["claim"] = time.perf_counter() - started  # the last try: idle waits excluded
        if claim.trial_id is not None:
            return claim
        if not claim.counts.get("running"):
            return None
        check_interrupt()  # no trial held: a Ctrl-C held back by the caller ends the wait here
        time.sleep(POLL_SECONDS)
        check_interrupt()


def next_trial_id(study: optuna.Study, **_ignored) -> Optional[int]:
    """The id of the next trial to run (see ``next_claim``), or None when the study is done."""
    claim = next_claim(study)
    return None if claim is None else claim.trial_id


def _finished(study: optuna.Study, frozen, deadline: Optional[float], started: float,
              timings: dict[str, float]) -> TrialFinished:
    begun = time.perf_counter()
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    state = study_state(backend(study), study_id(study), maximize=maximize, final_fail_key=R.USER_ERROR)
    timings["state"] = time.perf_counter() - begun
    a = frozen.user_attrs
    return TrialFinished(trial=frozen, counts=state.counts, best_value=state.best_value,
                         best_number=state.best_number, deadline=deadline,
                         seconds=time.perf_counter() - started, train_seconds=a.get(R.TRAIN_TIME_S) or 0.0,
                         eval_seconds=a.get(R.EVAL_TIME_S) or 0.0, timings=dict(timings))


def _trial(study: optuna.Study, trial_id: int, trials) -> optuna.Trial:
    """The live trial ``trial_id``, from its record in ``trials`` (just read) when it is there."""
    mine = next((t for t in trials or () if trial_id_of(t) == trial_id), None)
    return optuna.Trial(study, trial_id) if mine is None else trial_of(study, mine)


def _finished_elsewhere(study: optuna.Study, trial_id: int) -> Optional[int]:
    """The trial's number if it is already finished in the storage, else None."""
    try:
        frozen = backend(study).get_trial(trial_id)
    except Exception:
        return None
    return frozen.number if frozen.state.is_finished() else None


def _abandon(study: optuna.Study, trial_id: int, why: str) -> None:
    """Mark an unfinished trial FAIL (with why, in the same transaction) and queue its
    configuration again: nothing asked is lost."""
    storage = backend(study)
    try:
        if fail_trial(storage, trial_id, {R.STOP_REASON: R.STOP_INTERRUPTED, R.STOP_DETAIL: why[:500]}):
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
        while not stop.wait(interval):  # the claim recorded the first beat
            _beat(storage, trial_id)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()  # not joined: a beat in flight ends on its own (a late one for a finished
        # trial is harmless: only RUNNING trials go stale), and joining costs ~2 ms a trial


def _beat(storage: optuna.storages.BaseStorage, trial_id: int) -> None:
    try:
        storage.record_heartbeat(trial_id)
    except Exception:  # a database restart: the heartbeat thread beats again shortly
        pass
