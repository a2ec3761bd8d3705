"""The Optuna study: search space, sampler, pruners, one trial, and the worker loop.

Study-wide limits hold across any number of workers:
- the trial count: ``tune`` enqueues one WAITING trial per requested trial (a *slot*); workers
  only pop slots, never create trials, so N requested trials are exactly N trials even with
  many workers. Without a count, workers create trials until the deadline.
- the deadline: a study user attribute every worker reads; a trial running past it is cut off
  and recorded as ``budget`` (state FAIL: not a result).
A trial whose worker died is failed by the heartbeat and its configuration re-queued.
"""

from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from . import records as R
from .errors import AutobatchError
from .records import TrialConfig, TrialResult
from .spec import SearchSpace, StudySpec

PRUNERS = ("median", "halving", "hyperband", "none")
MAX_RETRIES = 2          # a configuration whose worker dies this often is not re-queued again
POLL_SECONDS = 2.0       # how often an idle worker looks for work or stale trials
LEGACY_CONSTRAINTS = "constraints"  # the list attribute optuna-dashboard 0.21 reads


def make_pruner(name: str, checkpoints: tuple[int, ...]) -> optuna.pruners.BasePruner:
    """Pruners on the samples-seen axis: every trial reports at the same ``checkpoints``."""
    first, last = checkpoints[0], checkpoints[-1]
    if name == "median":
        # Checkpoints are identical for every trial, so the median pruner compares like with
        # like; 4 finished trials before it judges anyone.
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=last, reduction_factor=2)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise AutobatchError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")


def make_sampler(seed: int) -> optuna.samplers.TPESampler:
    """Seeded multivariate TPE; ``constant_liar`` keeps parallel workers from proposing the
    configuration another worker is already training."""
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                      n_startup_trials=8)


def distributions(space: SearchSpace) -> dict[str, optuna.distributions.BaseDistribution]:
    acc = sorted(space.accumulation_steps)
    return {
        R.PARAM_BATCH_LOG2: IntDistribution(int(math.log2(space.batch_size_min)),
                                            int(math.log2(space.batch_size_max))),
        R.PARAM_LR_MULTIPLIER: FloatDistribution(space.lr_multiplier_min, space.lr_multiplier_max, log=True),
        R.PARAM_ACCUM_LOG2: IntDistribution(int(math.log2(acc[0])), int(math.log2(acc[-1]))),
    }


def params_for(space: SearchSpace, *, batch_size: int, accumulation_steps: int, multiplier: float) -> dict:
    """Optuna params for a configuration (for enqueued baselines)."""
    return {R.PARAM_BATCH_LOG2: int(math.log2(batch_size)),
            R.PARAM_ACCUM_LOG2: int(math.log2(accumulation_steps)),
            R.PARAM_LR_MULTIPLIER: float(multiplier)}


def suggest(trial: optuna.Trial, space: SearchSpace) -> tuple[TrialConfig, float]:
    """The trial's configuration; the lr is searched as a multiplier of the scaling rule."""
    dists = distributions(space)
    batch_d, accum_d = dists[R.PARAM_BATCH_LOG2], dists[R.PARAM_ACCUM_LOG2]
    batch = 2 ** trial.suggest_int(R.PARAM_BATCH_LOG2, batch_d.low, batch_d.high)
    multiplier = trial.suggest_float(R.PARAM_LR_MULTIPLIER, space.lr_multiplier_min,
                                     space.lr_multiplier_max, log=True)
    accum = 2 ** trial.suggest_int(R.PARAM_ACCUM_LOG2, accum_d.low, accum_d.high)
    lr = space.learning_rate(multiplier, batch * accum)
    return TrialConfig(batch_size=batch, accumulation_steps=accum, learning_rate=lr), multiplier


def set_memory_constraint(trial: optuna.Trial, value: float) -> None:
    """Feasibility for the sampler (<= 0 fits). Written in Optuna 5's per-key form, which
    the samplers read, and in the legacy list form, which optuna-dashboard 0.21 reads."""
    trial.set_constraint("memory", value)
    trial.storage.set_trial_system_attr(trial._trial_id, LEGACY_CONSTRAINTS, [value])


def result_attrs(result: TrialResult, *, train_size: int) -> dict:
    """The trial user attributes for a measured result."""
    milestones = {}
    for target in (0.5, 0.8, 0.9, 0.95):
        hit = next((p for p in result.curve if p.accuracy >= target), None)
        if hit is not None:
            milestones[f"{target:.2f}"] = [hit.samples_seen, round(hit.train_time_s, 3)]
    throughput = result.throughput
    return {
        R.THROUGHPUT: throughput,
        R.TRAIN_TIME_S: result.train_time_s,
        R.EVAL_TIME_S: result.eval_time_s,
        R.WALL_TIME_S: result.wall_time_s,
        R.EPOCH_TIME_S: train_size / throughput if throughput > 0 else None,
        R.SAMPLES_SEEN: result.samples_seen,
        R.MEASURED_PEAK_BYTES: result.measured_peak_bytes,
        R.VAL_ACCURACY: result.final_accuracy if result.curve else None,
        R.BEST_VAL_ACCURACY: result.best_accuracy if result.curve else None,
        R.VAL_LOSS: result.curve[-1].loss if result.curve else None,
        R.CURVE: [[p.samples_seen, p.accuracy, p.loss] for p in result.curve],
        R.MILESTONES: milestones,
        R.STOP_REASON: result.stop_reason,
        R.STOP_DETAIL: result.stop_detail,
    }


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue the configuration of a trial that did not finish (dead worker, Ctrl-C) again.

    Unlike Optuna's ``RetryHeartbeatStaleTrialCallback`` this drops the dead trial's
    constraints and measurements, so the retry records its own."""
    history = list(trial.system_attrs.get("retry_history", [])) + [trial.number]
    if len(history) > MAX_RETRIES:
        return
    # What it was asked to run: its parameters, or, if it died before suggesting any, its
    # slot with the enqueued ``fixed_params`` (a baseline's). The retry history goes along
    # either way, so a configuration that keeps killing workers stops coming back.
    system = {k: v for k, v in trial.system_attrs.items() if not k.startswith(LEGACY_CONSTRAINTS)}
    system.update(failed_trial=history[0], retry_history=history)
    user = {k: v for k, v in trial.user_attrs.items() if k == R.BASELINE}
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs=user, system_attrs=system))


@dataclass(frozen=True, kw_only=True)
class TrialContext:
    """What a worker needs to run trials of one study."""

    spec: StudySpec
    train: Callable[[TrialConfig, optuna.Trial, Callable], TrialResult]  # trains one config
    predict_peak: Optional[Callable[[int], float]] = None  # bytes at a micro-batch size
    cap_bytes: Optional[int] = None
    deadline: Optional[float] = None
    device: str = "cpu"


def run_trial(study: optuna.Study, trial: optuna.Trial, ctx: TrialContext) -> FrozenTrial:
    """Suggest, check memory, train, report on the samples-seen axis, tell."""
    config, _ = suggest(trial, ctx.spec.space)
    attrs = {R.BATCH_SIZE: config.batch_size, R.ACCUMULATION_STEPS: config.accumulation_steps,
             R.EFFECTIVE_BATCH_SIZE: config.effective_batch_size,
             R.LEARNING_RATE: config.learning_rate, R.DEVICE: ctx.device}
    predicted = ctx.predict_peak(config.batch_size) if ctx.predict_peak else None
    attrs[R.PREDICTED_PEAK_BYTES] = int(predicted) if predicted is not None else None
    if predicted is not None and ctx.cap_bytes:
        over = (predicted - ctx.cap_bytes) / ctx.cap_bytes
        set_memory_constraint(trial, over)
        if over > 0:  # never trained: pruned before its first step, the sampler told why
            attrs.update({R.MEMORY_ACTION: "pruned", R.STOP_REASON: R.STOP_OVER_MEMORY,
                          R.STOP_DETAIL: f"micro-batch {config.batch_size} predicted at "
                          f"{predicted / 2**20:.1f} MiB > cap {ctx.cap_bytes / 2**20:.1f} MiB",
                          R.SAMPLES_SEEN: 0})
            _set_attrs(trial, attrs)
            return study.tell(trial, state=TrialState.PRUNED)
    else:
        set_memory_constraint(trial, 0.0)
    attrs[R.MEMORY_ACTION] = "none"
    _set_attrs(trial, attrs)

    final = ctx.spec.eval_points[-1]

    def on_eval(point) -> bool:
        trial.report(point.accuracy, step=point.samples_seen)
        # At the last checkpoint the trial is done: a result, never a pruning decision.
        return point.samples_seen < final and trial.should_prune()

    result = ctx.train(config, trial, on_eval)
    _set_attrs(trial, result_attrs(result, train_size=ctx.spec.train_size))
    if result.stop_reason == R.STOP_COMPLETED:
        return study.tell(trial, result.final_accuracy)
    if result.stop_reason == R.STOP_BUDGET:
        return study.tell(trial, state=TrialState.FAIL)
    if result.stop_reason == R.STOP_OUT_OF_MEMORY:
        trial.storage.set_trial_system_attr(trial._trial_id, "constraints:oom", 1.0)
    return study.tell(trial, state=TrialState.PRUNED)


def _set_attrs(trial: optuna.Trial, attrs: dict) -> None:
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


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
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # a database restart: keep beating, the pool reconnects
                pass
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
    storage = study._storage
    for trial in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        _beat(storage, trial._trial_id)
        try:
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                return trial._trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def next_trial_id(study: optuna.Study, *, counted: bool, deadline: Optional[float]) -> Optional[int]:
    """The next trial to run: a queued slot; a new trial when the study has no count; None
    when the study is done. Waits while other workers' trials may still die and come back,
    past the deadline too (so no dead worker's trial is left RUNNING): live trials stop at
    the deadline by themselves, a dead one goes stale within the heartbeat's grace period."""
    from .storage import fail_stale_trials

    storage = study._storage
    while True:
        fail_stale_trials(study)  # re-queues dead workers' configurations
        if deadline is None or time.time() < deadline:
            trial_id = _pop_waiting(study)
            if trial_id is not None:
                return trial_id
            if not counted:
                trial_id = storage.create_new_trial(study._study_id)
                _beat(storage, trial_id)
                return trial_id
        running = storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return None
        time.sleep(POLL_SECONDS)
