"""``tune``: probe, plan, create or resume the study, run the workers, answer."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import optuna

from .. import records as R
from ..errors import AutobatchError
from ..memory import MemoryEstimate
from ..recipe import metric_label
from ..recommender import Recommendation, answer_key, confirmed_key, publish, recommend_study
from ..search import (StudySpec, TuneSettings, dashboard_command, fit_reserve, password_note, resume_command,
                      search_deadline, worker_command)
from ..storage import (ENV_STORAGE, discard_if_unused, fail_stale_trials, find_study, mask_url, open_storage,
                       parts_to_create, resolve_url)
from ..train import resolve_device
from ..workloads import check_model_name, load_workload, split_holdout
from ._events import Callback, Note, RecommendationMade, StudyReady, TuneRun
from ._noise import NOISE_PROBE_OFF, critical_batch_sentence
from ._objective import StudyFailedError, TrialContext, user_failure
from ._prepare import deadline_of, prepare_study, stored_spec
from ._verify import verification_reserve, verify_answer
from ._worker import counts, run_worker


@dataclass(frozen=True)
class TuneOutcome:
    study_name: str
    storage: str          # masked
    counts: dict
    wall_time_s: float
    answer: dict          # the recommendation (or the best trial when too few trials); {} with --create-only
    dashboard: str = ""   # the command that opens the dashboard on the study (no password)
    worker: Optional[str] = None  # --create-only: the command that runs a worker on the study (no password)
    password_note: Optional[str] = None  # where the password the commands leave out comes from


def default_study_name(model: str, dataset: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{model}-{dataset}").strip("-")


def set_limits(study: optuna.Study, *, deadline: Optional[float], n_trials: Optional[int]) -> None:
    """Study-wide limits every worker obeys (read with each claim): the deadline and the trial
    count, the study's total. Setting them is idempotent: several ``tune`` starting together
    with the same values leave them as one would; the latest start's values hold."""
    study.set_user_attr(R.STUDY_DEADLINE, deadline)
    study.set_user_attr(R.STUDY_MAX_TRIALS, n_trials)


def tune(settings: TuneSettings, *, callbacks: Sequence[Callback] = ()) -> TuneOutcome:
    """Probe, plan, create or resume the study, run its trials (this process is worker 0, plus
    ``settings.workers - 1`` local worker processes), and answer. Each callback is called as
    ``callback(run, event)`` with the events of ``autobatch.tuning``; ``run.stop()`` ends the run
    after the trial in flight.

    ``settings.n_trials`` is the study's total across resumes and workers: a study that has that
    many results already is answered at once, and said to be complete. Raises
    ``AutobatchError`` for what the user can fix, including a run that ends with no trial
    finished (the message gives the command that resumes it)."""
    run = TuneRun(callbacks)
    started = time.time()
    url = resolve_url(settings.storage)
    made = parts_to_create(url)
    storage = open_storage(url)
    try:
        return _tune(settings, storage, url, run, started)
    except BaseException:
        discard_if_unused(storage, made)  # a file this run made and stored no study in
        raise


def _tune(settings: TuneSettings, storage: optuna.storages.BaseStorage, url: str, run: TuneRun,
          started: float) -> TuneOutcome:
    name = settings.study_name or default_study_name(settings.model, settings.dataset)
    existing = stored_spec(find_study(storage, name))
    if existing is not None:  # resuming: what was not given is the study's own
        settings = settings.resumed_from(existing)
    check_model_name(settings.model)
    device = resolve_device(settings.device)
    workload = load_workload(settings.dataset, data_dir=settings.data_dir, seed=settings.seed)
    for text in workload.notes:
        run.emit(Note(text=text))
    study, spec = prepare_study(settings, storage, name, workload, device, started, run)
    if settings.verify_runs is not None:  # this run's choice, over the plan stored with the study
        spec = dataclasses.replace(spec, verify_runs=settings.verify_runs)
    verify = _verifier(study, spec, workload, device, settings, started)
    results = _results(study)
    if settings.n_trials and results >= settings.n_trials and not settings.create_only:
        more = resume_command(name, settings.storage, "--n-trials", str(results + settings.n_trials))
        have = "trial has" if results == 1 else "trials have"
        run.emit(Note(text=f"study {name!r} is complete: {results} {have} results, --n-trials is "
                           f"{settings.n_trials}; to run more: {more}"))
        return _answer(study, settings, name, url, started, run, verify)
    deadline = deadline_of(settings, started)
    if deadline is not None:  # the search ends early enough for the verification runs
        deadline = search_deadline(deadline, time.time(), verification_reserve(study, spec))
    set_limits(study, deadline=deadline, n_trials=settings.n_trials)
    run.emit(StudyReady(study_name=name, storage=mask_url(url), deadline=deadline, n_trials=settings.n_trials))
    if settings.create_only:
        return TuneOutcome(name, mask_url(url), counts(study), time.time() - started, {},
                           dashboard_command(settings.storage),
                           worker_command(name, settings.storage, spec, settings.data_dir),
                           password_note(settings.storage))
    helpers = [_spawn_worker(name, url, settings, i) for i in range(1, settings.workers)]
    try:
        run_worker(study, device_name=settings.device, data_dir=settings.data_dir,
                   worker_seed=None, run=run, workload=workload, num_workers=settings.num_workers)
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
    return _answer(study, settings, name, url, started, run, verify)


def _results(study: optuna.Study) -> int:
    """What counts towards ``--n-trials``: results, and failures of the user's code (final)."""
    c = counts(study)
    return c["complete"] + c["pruned"] + c.get("fail_final", 0)


def _verifier(study: optuna.Study, spec: StudySpec, workload, device, settings: TuneSettings,
              started: float):
    """The function that verifies an answer within what is left of the budget."""
    memory = study.user_attrs.get(R.STUDY_MEMORY_MODEL)
    select, held_out = split_holdout(workload, spec.verify_holdout, spec.seed)
    ctx = TrialContext(spec=spec, workload=select, device=device, num_workers=settings.num_workers,
                       memory_model=MemoryEstimate.from_dict(memory) if memory else None)
    end = started + settings.budget_s - fit_reserve(settings.budget_s) if settings.budget_s else None
    return lambda rec: verify_answer(study, rec, ctx, end=end, held_out=held_out)


def _answer(study: optuna.Study, settings: TuneSettings, name: str, url: str, started: float,
            run: TuneRun, verify=None) -> TuneOutcome:
    """The study's answer; a run with no completed trial is an error whose message is the
    command that gives the study what it lacked."""
    failure = user_failure(study)
    if failure is not None:  # trials ran, none completed, the user's code is why: say that line
        raise StudyFailedError(f"{failure} (no trial completed)")
    diverged = all_diverged(study)
    if diverged is not None:  # more of the same trials would not help: say what would
        raise AutobatchError(f"study {name!r}: {diverged}; then run again with another --study-name "
                             f"(e.g. {name}-2), since the recipe and space are part of a study")
    answer = final_answer(study, run, settings.storage, verify=verify)
    c = counts(study)
    if not answer:
        if settings.budget_s and not settings.n_trials:
            fix = resume_command(name, settings.storage, "--budget", _more_time(settings.budget_s))
            why = f"within the budget ({c['fail']} cut off or failed, {c['pruned']} pruned)"
        else:
            more = max(settings.n_trials or 0, c["complete"] + c["pruned"]) + 4
            fix = resume_command(name, settings.storage, "--n-trials", str(more))
            why = f"({c['pruned']} pruned, {c['fail']} failed)"
        raise AutobatchError(f"no trial of study {name!r} completed {why}; "
                             f"to resume it with more: {fix}")
    if answer.get("critical_batch"):
        interval = answer.get("critical_batch_interval")
        run.emit(Note(text=f"{critical_batch_sentence(answer['critical_batch'], interval)} "
                           f"({answer.get('critical_batch_source')})"))
    elif not settings.noise_probe:
        run.emit(Note(text=NOISE_PROBE_OFF))
    run.emit(RecommendationMade(answer=answer))
    return TuneOutcome(name, mask_url(url), c, time.time() - started, answer, dashboard_command(settings.storage),
                       password_note=password_note(settings.storage))


def all_diverged(study: optuna.Study) -> Optional[str]:
    """What to do when every trial that trained diverged (a NaN or exploding loss: ``records.STOP_DIVERGED``)
    and none completed; None otherwise. Trials cut off by the budget, interrupted, lost or never
    trained (over the memory cap) are not counted either way."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == optuna.trial.TrialState.COMPLETE for t in trials):
        return None
    reasons = [t.user_attrs.get(R.STOP_REASON) for t in trials]
    trained = [t for t, r in zip(trials, reasons) if r in (R.STOP_DIVERGED, R.STOP_PRUNED, R.STOP_OVER_CAP,
                                                          R.STOP_OUT_OF_MEMORY, R.STOP_ERROR)]
    if not trained or any(t.user_attrs.get(R.STOP_REASON) != R.STOP_DIVERGED for t in trained):
        return None
    rates = sorted(float(t.user_attrs[R.LEARNING_RATE]) for t in trained if R.LEARNING_RATE in t.user_attrs)
    at = f", at learning rates {rates[0]:.3g} to {rates[-1]:.3g}" if rates else ""
    detail = trained[-1].user_attrs.get(R.STOP_DETAIL)
    spec = study.user_attrs.get(R.STUDY_SPEC) or {}
    base = (spec.get("space") or {}).get("base_lr")
    lower = f"e.g. --base-lr {base / 10:g} (the study's is {base:g})" if base else "e.g. a smaller --base-lr"
    return (f"every trial diverged ({len(trained)} of {len(trained)}{at}; last: {detail}): lower the "
            f"learning-rate range, {lower}, or check the loss function and the data (labels in range, "
            "no NaN in the inputs)")


def _more_time(budget_s: float) -> str:
    minutes = max(2, int(budget_s * 3 // 60) + 1)
    return f"{minutes}m" if minutes < 120 else f"{minutes // 60 + 1}h"


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
    which passes exactly one SIGINT on (a second one would cut a worker's clean-up short).
    It is allowed the code paths this run was given (``--allow-import``), no others."""
    cmd = [sys.executable, "-m", "autobatch", "worker", "--study-name", study_name,
           "--device", settings.device]
    if settings.data_dir:
        cmd += ["--data-dir", str(settings.data_dir)]
    if settings.num_workers is not None:
        cmd += ["--num-workers", str(settings.num_workers)]
    spec = StudySpec(model=settings.model, dataset=settings.dataset, space=settings.space, recipe=settings.recipe,
                     step=settings.step, step_eval=settings.step_eval)
    for _, path in spec.code_paths():
        cmd += ["--allow-import", path]
    return subprocess.Popen(cmd, env={**os.environ, ENV_STORAGE: url}, start_new_session=True)


def final_answer(study: optuna.Study, run: Optional[TuneRun] = None, storage: Optional[str] = None,
                 verify: Optional[Callable[[Recommendation], Recommendation]] = None) -> dict:
    """The trade-off model's recommendation, verified by ``verify`` (``verify_answer``: fresh
    seeds) when given, stored with the study (user attribute and dashboard note); the best
    completed trial while there are too few trials to fit, saying why it was not verified.
    ``storage``: the URL as the user gave it, for the command a note prints."""
    key = answer_key(study)  # before the fit: what the stored answer answers
    try:
        rec = fitted = recommend_study(study, storage=storage)
    except AutobatchError as exc:
        if run is not None:
            run.emit(Note(text=f"trade-off model not fitted: {exc}"))
            if verify is not None:
                run.emit(Note(text="not verified: too few completed trials for a recommendation to verify"))
    else:
        if verify is not None:
            rec = verify(rec)
        publish(study, rec, confirmed_key(study, rec, fitted, key))
        return rec.to_dict()
    try:
        best = study.best_trial
    except ValueError:
        return {}
    a = best.user_attrs
    metric = a.get(R.METRIC, "accuracy")
    return {
        "study_name": study.study_name, "batch_size": a[R.BATCH_SIZE],
        "learning_rate": a[R.LEARNING_RATE], "accumulation_steps": a[R.ACCUMULATION_STEPS],
        "effective_batch_size": a[R.EFFECTIVE_BATCH_SIZE], "predicted_accuracy": best.value,
        "metric": metric, "predicted_metric": best.value,
        "predicted_epoch_time_s": a.get(R.EPOCH_TIME_S), "predicted_peak_bytes": a.get(R.PREDICTED_PEAK_BYTES),
        "best_trial": best.number, "trials": [best.number],
        "rationale": f"best completed trial (#{best.number}) by measured {metric_label(metric)}; "
                     "too few trials for the trade-off model",
    }
