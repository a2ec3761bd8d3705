"""``tune``: probe, plan, create or resume the study, run the workers, answer."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import optuna
from optuna.trial import TrialState

from .. import records as R
from ..errors import AutobatchError
from ..recommender import publish, recommend_study
from ..search import TuneSettings
from ..storage import ENV_STORAGE, fail_stale_trials, mask_url, open_storage, resolve_url
from ..train import resolve_device
from ..workloads import check_model_name, load_workload
from ._events import Callback, Note, RecommendationMade, StudyReady, TuneRun
from ._objective import StudyFailedError, user_failure
from ._prepare import deadline_of, prepare_study
from ._worker import counts, run_worker


@dataclass(frozen=True)
class TuneOutcome:
    study_name: str
    storage: str          # masked
    counts: dict
    wall_time_s: float
    answer: dict          # the recommendation (or the best trial when too few trials)


def default_study_name(model: str, dataset: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{model}-{dataset}").strip("-")


def set_limits(study: optuna.Study, *, deadline: Optional[float], n_trials: Optional[int]) -> None:
    """Study-wide limits every worker obeys: the deadline, and ``n_trials`` queued slots."""
    study.set_user_attr(R.STUDY_DEADLINE, deadline)
    study.set_user_attr(R.STUDY_MAX_TRIALS, n_trials)
    if n_trials:
        waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        for _ in range(max(0, n_trials - waiting)):
            study.enqueue_trial({}, skip_if_exists=False)


def tune(settings: TuneSettings, *, callbacks: Sequence[Callback] = ()) -> TuneOutcome:
    """Probe, plan, create or resume the study, run its trials (this process is worker 0, plus
    ``settings.workers - 1`` local worker processes), and answer. Each callback is called as
    ``callback(run, event)`` with the events of ``autobatch.tuning``; ``run.stop()`` ends the run
    after the trial in flight. Raises ``AutobatchError`` for what the user can fix."""
    run = TuneRun(callbacks)
    started = time.time()
    check_model_name(settings.model)
    device = resolve_device(settings.device)
    name = settings.study_name or default_study_name(settings.model, settings.dataset)
    url = resolve_url(settings.storage)
    storage = open_storage(url)
    workload = load_workload(settings.dataset, data_dir=settings.data_dir, seed=settings.seed)
    for text in workload.notes:
        run.emit(Note(text=text))
    study, _ = prepare_study(settings, storage, name, workload, device, started, run)
    deadline = deadline_of(settings, started)
    set_limits(study, deadline=deadline, n_trials=settings.n_trials)
    run.emit(StudyReady(study_name=name, storage=mask_url(url), deadline=deadline, n_trials=settings.n_trials))
    if settings.create_only:
        return TuneOutcome(name, mask_url(url), counts(study), time.time() - started, {})
    helpers = [_spawn_worker(name, url, settings, i) for i in range(1, settings.workers)]
    try:
        run_worker(study, device_name=settings.device, data_dir=settings.data_dir,
                   worker_seed=settings.seed, run=run, workload=workload, num_workers=settings.num_workers)
    except BaseException:
        # Ctrl-C (or an error) here stops the local helpers too: a SIGINT lets each of them
        # fail and re-queue its trial in flight, as this process did.
        for proc in helpers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        raise
    finally:
        _wait_for_helpers(helpers, run)
    fail_stale_trials(study)
    failure = user_failure(study)
    if failure is not None:  # trials ran, none completed, the user's code is why: say that line
        raise StudyFailedError(f"{failure} (no trial completed)")
    answer = final_answer(study, run)
    run.emit(RecommendationMade(answer=answer))
    return TuneOutcome(name, mask_url(url), counts(study), time.time() - started, answer)


def _wait_for_helpers(helpers: list[subprocess.Popen], run: TuneRun) -> None:
    for index, proc in enumerate(helpers, start=1):
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # a second Ctrl-C: stop now; heartbeats fail what is left
            for other in helpers:
                other.terminate()
            raise
        if code not in (0, 130, -signal.SIGINT):
            run.emit(Note(text=f"worker {index} (pid {proc.pid}) exited with code {code}"))


def _spawn_worker(study_name: str, url: str, settings: TuneSettings, index: int) -> subprocess.Popen:
    """A local worker process; the storage URL goes by environment, not argv (no password
    in the process list). In its own session: a terminal's Ctrl-C reaches only ``tune``,
    which passes exactly one SIGINT on (a second one would cut a worker's clean-up short)."""
    cmd = [sys.executable, "-m", "autobatch", "worker", "--study-name", study_name,
           "--device", settings.device, "--seed", str(settings.seed + 1000 * index)]
    if settings.data_dir:
        cmd += ["--data-dir", str(settings.data_dir)]
    if settings.num_workers is not None:
        cmd += ["--num-workers", str(settings.num_workers)]
    return subprocess.Popen(cmd, env={**os.environ, ENV_STORAGE: url}, start_new_session=True)


def final_answer(study: optuna.Study, run: Optional[TuneRun] = None) -> dict:
    """The trade-off model's recommendation, stored with the study (user attribute and
    dashboard note); the best completed trial while there are too few trials to fit."""
    try:
        rec = recommend_study(study)
    except AutobatchError as exc:
        if run is not None:
            run.emit(Note(text=f"trade-off model not fitted: {exc}"))
    else:
        publish(study, rec)
        return rec.to_dict()
    try:
        best = study.best_trial
    except ValueError:
        return {}
    a = best.user_attrs
    return {
        "study_name": study.study_name, "batch_size": a[R.BATCH_SIZE],
        "learning_rate": a[R.LEARNING_RATE], "accumulation_steps": a[R.ACCUMULATION_STEPS],
        "effective_batch_size": a[R.EFFECTIVE_BATCH_SIZE], "predicted_accuracy": best.value,
        "metric": a.get(R.METRIC, "accuracy"), "predicted_metric": best.value,
        "predicted_epoch_time_s": a.get(R.EPOCH_TIME_S), "predicted_peak_bytes": a.get(R.PREDICTED_PEAK_BYTES),
        "best_trial": best.number, "trials": [best.number],
        "rationale": f"best completed trial (#{best.number}) by measured validation accuracy; "
                     "too few trials for the trade-off model",
    }
