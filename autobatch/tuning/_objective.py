"""One trial of a study: suggest, check memory and data, train, report on the samples-seen
axis, tell.

Infeasible is a result, not a crash: a configuration whose effective batch exceeds the training
set, or whose micro-batch the user's code refused in the probe (it raised there after smaller
sizes trained), is refused before it trains, and one whose first step raised (a micro-batch the
model cannot train, e.g. BatchNorm at 1) is recorded as ``infeasible`` with the exception's line;
all are told to the sampler as a violated constraint and the study goes on. The user's code raising
later fails the trial with its reason (never re-queued). When every trial so far failed through
the user's code (``FAILURES_TO_STOP`` in a row, none completed), the study stops with that line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from .. import records as R
from .._optuna_internals import backend, cached_frozen, storage_routed, study_id, tell, trial_id, trials_from_cache
from ..errors import AutobatchError, UserCodeError
from ..memory import EVAL_BATCH_FACTOR, MemoryEstimate
from ..records import EvalPoint, TrialConfig
from ..search import VALUES, StudySpec, suggest
from ..storage import TrialWrites, hold_writes
from ..train import check_device, train_trial
from ..workloads import Workload, build_model
from ._events import TrialProgress, TrialStarted, TuneRun
from ._memcheck import (current_estimate, fixed_shapes, known_peaks, measured_memory, over_memory,
                        refit_study_memory, with_known_peaks)
from ._readable import readable_attrs

FAILURES_TO_STOP = 3  # trials failed by the user's code in a row, none completed: stop the study


class StudyFailedError(AutobatchError):
    """Every configuration tried failed through the user's code: the one line says why."""


@dataclass(frozen=True, kw_only=True)
class TrialContext:
    """What a worker needs to run trials of one study: values, passed down."""

    spec: StudySpec
    workload: Workload
    device: torch.device
    memory_model: Optional[MemoryEstimate] = None
    deadline: Optional[float] = None
    num_workers: Optional[int] = None  # data loader workers (None: what fits the machine)
    trial_seconds: Optional[Callable[[TrialConfig], float]] = None  # predicted wall time of a trial
    param_encoding: str = VALUES       # how the study's trials name their parameters (search.param_encoding)
    # The study as the worker read it when this trial started (None: read afresh): its user
    # attributes (the claim's) and its trials (the sampler's and the pruner's snapshot).
    study_attrs: Optional[dict] = None
    trials: Optional[tuple[FrozenTrial, ...]] = None

    def __post_init__(self) -> None:
        check_device(self.spec.recipe, self.device)  # e.g. an fp16 study joined on a CPU: refused up front


def run_trial(study: optuna.Study, trial: optuna.Trial, ctx: TrialContext,
              run: Optional[TuneRun] = None, timings: Optional[dict[str, float]] = None) -> FrozenTrial:
    """Suggest a configuration, refuse it before training if it is predicted over the memory cap
    or its effective batch exceeds the training set, else train it and tell the study its result.
    Raises ``StudyFailedError`` when the study should stop (see the module docstring).

    On SQLite and PostgreSQL the trial's writes are held and made together (``storage.TrialWrites``):
    its parameters with its configuration before it trains, each report on its own, and its
    results with its end (and the refit memory estimate) as one transaction. If the trial raises,
    what it held is written before the error goes on, so that a re-queue finds its parameters."""
    writes = hold_writes(backend(study), study_id(study), trial_id(trial))
    if writes is None:
        return _run_trial(study, trial, ctx, run, timings, flush=lambda: None)
    with storage_routed(study, trial, writes):
        try:
            frozen = _run_trial(study, trial, ctx, run, timings, flush=writes.flush)
        except BaseException:
            _flush_quietly(writes)
            raise
        writes.flush()
    return frozen


def _flush_quietly(writes: TrialWrites) -> None:
    try:
        writes.flush()
    except Exception:  # e.g. the database is gone, or another worker failed the trial: the caller's error goes on
        pass


def _run_trial(study: optuna.Study, trial: optuna.Trial, ctx: TrialContext, run: Optional[TuneRun],
               timings: Optional[dict[str, float]], flush: Callable[[], None]) -> FrozenTrial:
    timings = {} if timings is None else timings  # seconds by stage, see ``TrialFinished.timings``
    clock = time.perf_counter
    spec = ctx.spec
    started = clock()
    with trials_from_cache(study):  # the sampler reads the trials the worker has just read
        config, _ = suggest(trial, spec.space, ctx.param_encoding)
    timings["sample"] = clock() - started
    # memory: the study's latest (refit) estimate; prune before training what will not fit
    estimate = current_estimate(study, ctx.memory_model, ctx.study_attrs)
    predicted = estimate.predict(config.batch_size) if estimate else None
    attrs = R.configuration_attrs(config, device=str(ctx.device), predicted_peak_bytes=predicted)
    cap = spec.max_memory_bytes
    refusal = estimate.refusal(config.batch_size) if estimate else None
    if refusal is not None:  # the user's code raised at this size in the probe: it cannot train
        return _refuse(timings, study, trial, attrs, predicted, cap,
                       f"micro-batch {config.batch_size} cannot train this model: {refusal}; refused before training")
    why = over_memory(estimate, config.batch_size, cap)
    if why is not None:  # never trained: pruned before its first step, the sampler told why
        R.set_memory_constraint(trial, why.over)
        attrs.update({R.MEMORY_ACTION: "pruned", R.STOP_REASON: R.STOP_OVER_MEMORY,
                      R.STOP_DETAIL: why.detail, R.SAMPLES_SEEN: 0})
        R.write_attrs(trial, _readable(trial, attrs))
        return _tell(timings, study, trial, state=TrialState.PRUNED)
    attrs[R.MEMORY_ACTION] = "none"
    if spec.train_size and config.effective_batch_size > spec.train_size:
        return _refuse(timings, study, trial, attrs, predicted, cap,
                       f"effective batch {config.effective_batch_size} ({config.batch_size} x "
                       f"{config.accumulation_steps}) exceeds the {spec.train_size} training samples: "
                       "refused before training")
    if ctx.deadline is not None and ctx.trial_seconds is not None:
        needed, left = ctx.trial_seconds(config), ctx.deadline - time.time()
        if needed > left:  # it would be cut off: no result, and the time is better left unused
            attrs.update({R.STOP_REASON: R.STOP_BUDGET, R.SAMPLES_SEEN: 0,
                          R.STOP_DETAIL: f"not started: predicted {needed:.0f}s, {max(left, 0):.0f}s left"})
            R.write_attrs(trial, _readable(trial, attrs))
            return _tell(timings, study, trial, state=TrialState.FAIL)
    started = clock()
    R.write_attrs(trial, attrs)
    flush()  # the configuration is in the database before training: other workers and a re-queue see it
    timings["write"] = clock() - started
    if run is not None:
        run.emit(TrialStarted(number=trial.number, config=config,
                              baseline=trial.user_attrs.get(R.BASELINE)))

    final = spec.eval_points[-1]

    timings["report"] = 0.0

    def on_eval(point: EvalPoint) -> bool:
        begun = clock()
        trial.report(point.metric, step=point.samples_seen)
        # At the last checkpoint the trial is done: a result, never a pruning decision.
        prune = point.samples_seen < final and trial.should_prune()
        timings["report"] += clock() - begun  # storage round trips, which the trainer books as evaluation
        if run is not None:  # progress from what the trial holds: no storage round trip
            run.emit(TrialProgress(number=trial.number, samples_seen=point.samples_seen, planned_samples=final,
                                   metric=spec.recipe.metric, value=point.metric, elapsed_s=clock() - trained,
                                   deadline=ctx.deadline))
        return prune

    seed = spec.seed + trial.number
    trained = clock()
    torch.manual_seed(seed)
    try:
        model = build_model(spec.model, num_classes=spec.num_classes, input_shape=spec.input_shape,
                            vocab_size=ctx.workload.vocab_size)
    except UserCodeError as exc:
        R.write_attrs(trial, _readable(trial, {R.STOP_REASON: R.STOP_ERROR, R.STOP_DETAIL: str(exc),
                                               R.USER_ERROR: str(exc), R.SAMPLES_SEEN: 0}))
        return _failed(study, _tell(timings, study, trial, state=TrialState.FAIL))
    eval_batch = estimate.eval_batch(config.batch_size) if estimate else config.batch_size * EVAL_BATCH_FACTOR
    # CPU peaks are exact and the same at the same shapes: measured once per micro-batch setting
    known = (known_peaks(ctx.trials, config, eval_batch, cap, spec.train_samples)
             if ctx.device.type == "cpu" and ctx.trials is not None
             and fixed_shapes(ctx.workload.train, ctx.workload.val) else None)
    result = train_trial(model, ctx.workload, config, train_samples=spec.train_samples,
                         checkpoints=spec.eval_points, device=ctx.device, recipe=spec.recipe,
                         seed=seed, on_eval=on_eval, deadline=ctx.deadline, step=spec.step,
                         step_eval=spec.step_eval, num_workers=ctx.num_workers,
                         eval_batch_size=eval_batch, memory_cap=cap, measure_memory=known is None)
    if known is not None:
        result = with_known_peaks(result, known, eval_batch)
    measured = R.result_attrs(result, train_size=spec.train_size)
    if known is not None:
        measured[R.MEMORY_MEASURED_IN] = known.number
    measured[R.EVAL_TIME_S] = max(0.0, result.eval_time_s - timings["report"])  # evaluation, not storage
    # memory: the measured peak against the cap and the prediction, in the same one write
    memory_attrs, system_attrs, over_cap = measured_memory(result, predicted, cap)
    measured.update(memory_attrs)
    if result.stop_reason in (R.STOP_INFEASIBLE, R.STOP_ERROR):
        measured[R.USER_ERROR] = result.stop_detail
    if result.stop_reason == R.STOP_OUT_OF_MEMORY:
        system_attrs[R.OOM_CONSTRAINT] = 1.0  # a violated constraint for the sampler
    started = clock()
    R.write_attrs(trial, _readable(trial, measured), system_attrs)
    # the estimate refit from every trial's measured peaks, this one's included
    others = None if ctx.trials is None else [t for t in ctx.trials if t.number != trial.number]
    refit_study_memory(study, ctx.study_attrs, None if others is None else [*others, cached_frozen(trial)])
    timings["write"] += clock() - started
    if over_cap or result.stop_reason == R.STOP_OVER_CAP:
        return _tell(timings, study, trial, state=TrialState.PRUNED)
    if result.stop_reason == R.STOP_COMPLETED:
        return _tell(timings, study, trial, result.final_metric)
    if result.stop_reason == R.STOP_BUDGET:
        return _tell(timings, study, trial, state=TrialState.FAIL)
    if result.stop_reason == R.STOP_INFEASIBLE:
        R.set_infeasible(trial)
        return _failed(study, _tell(timings, study, trial, state=TrialState.PRUNED))
    if result.stop_reason == R.STOP_ERROR:
        return _failed(study, _tell(timings, study, trial, state=TrialState.FAIL))
    return _tell(timings, study, trial, state=TrialState.PRUNED)


def _refuse(timings: dict[str, float], study: optuna.Study, trial: optuna.Trial, attrs: dict,
            predicted: Optional[float], cap: Optional[int], detail: str) -> FrozenTrial:
    """End ``trial`` before training as ``infeasible`` with ``detail`` (a violated constraint for
    the sampler); not a failure of the user's code, so it never stops the study."""
    R.set_memory_constraint(trial, (predicted - cap) / cap if predicted and cap else 0.0)
    attrs.setdefault(R.MEMORY_ACTION, "none")
    attrs.update({R.STOP_REASON: R.STOP_INFEASIBLE, R.SAMPLES_SEEN: 0, R.STOP_DETAIL: detail})
    R.write_attrs(trial, _readable(trial, attrs))
    R.set_infeasible(trial)
    return _tell(timings, study, trial, state=TrialState.PRUNED)


def _tell(timings: dict[str, float], study: optuna.Study, trial: optuna.Trial, value: Optional[float] = None,
          state: Optional[TrialState] = None) -> FrozenTrial:
    """``study.tell`` without its reads of the trial (``_optuna_internals.tell``), its storage
    time added to the ``write`` stage."""
    started = time.perf_counter()
    frozen = tell(study, trial, value, state=state)
    timings["write"] = timings.get("write", 0.0) + time.perf_counter() - started
    return frozen


def _readable(trial: optuna.Trial, attrs: dict) -> dict:
    """``attrs`` with the readable copies of the trial's measurements (``readable_attrs``), so they go
    in the same write as the trial's last attributes."""
    own = R.own_record(trial)
    return {**attrs, **readable_attrs({**own.user_attrs, **attrs}, own.params.get(R.PARAM_LR_MULTIPLIER))}


def _failed(study: optuna.Study, frozen: FrozenTrial) -> FrozenTrial:
    """``frozen`` failed through the user's code: raise ``StudyFailedError`` when no trial has
    completed and the last ``FAILURES_TO_STOP`` finished trials all failed that way."""
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    if any(t.state == TrialState.COMPLETE for t in finished):
        return frozen
    last = sorted(finished, key=lambda t: t.number)[-FAILURES_TO_STOP:]
    if len(last) == FAILURES_TO_STOP and all(R.USER_ERROR in t.user_attrs for t in last):
        raise StudyFailedError(f"{frozen.user_attrs[R.USER_ERROR]} (the last {FAILURES_TO_STOP} trials all "
                               "failed through the model's or data's code; none completed)")
    return frozen


def user_failure(study: optuna.Study) -> Optional[str]:
    """The last user-code failure's line when the study has failed trials of that kind and no
    completed trial (the study's one line to stop with), else None."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.COMPLETE for t in trials):
        return None
    failed = sorted((t for t in trials if R.USER_ERROR in t.user_attrs), key=lambda t: t.number)
    return failed[-1].user_attrs[R.USER_ERROR] if failed else None
