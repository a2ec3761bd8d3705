"""A trial's record: the names, the immutable records, the writing and the reading.

Optuna stores what autobatch measures as trial and study *user attributes*, so that vanilla
``optuna.load_study``, pandas and optuna-dashboard read the same facts autobatch does. This
module is the one owner of that layout: the attribute names, the records that cross module
boundaries (``TrialConfig``, ``EvalPoint``, ``TrialResult``), how a result is written to a trial
(``configuration_attrs``, ``result_attrs``, ``write_attrs`` in one transaction, ``finish_in_rdb``) and how
trials are read back (``trial_row``, ``read_trials``). Torch-free.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import optuna
from optuna.trial import TrialState

from ._optuna_internals import (cached_frozen, rdb_backend, rdb_models, rdb_session, set_attrs_in_session,
                                set_value_in_session, trial_id)

if TYPE_CHECKING:  # pandas is imported when a table is made, not with this module
    import pandas as pd

# --- Optuna parameter names (the search space) -------------------------------------------
PARAM_BATCH_SIZE = "batch_size"               # categorical powers of two: the micro-batch itself
PARAM_LR_MULTIPLIER = "lr_multiplier"         # float, log scale, relative to the scaling rule
PARAM_ACCUM = "accumulation_steps"            # categorical powers of two: the accumulation steps
# Studies made before 0.2 searched the exponents; their trials stay readable (``batch_and_accumulation``).
PARAM_BATCH_LOG2 = "batch_size_log2"          # int, micro-batch = 2 ** value
PARAM_ACCUM_LOG2 = "accumulation_steps_log2"  # int, accumulation steps = 2 ** value


def batch_and_accumulation(params: dict[str, Any]) -> tuple[Optional[int], int]:
    """(micro-batch, accumulation steps) of a trial's Optuna params, in either encoding (the
    micro-batch None when the params have none)."""
    if PARAM_BATCH_SIZE in params:
        batch: Optional[int] = int(params[PARAM_BATCH_SIZE])
    elif PARAM_BATCH_LOG2 in params:
        batch = 2 ** int(params[PARAM_BATCH_LOG2])
    else:
        batch = None
    if PARAM_ACCUM in params:
        return batch, int(params[PARAM_ACCUM])
    return batch, 2 ** int(params.get(PARAM_ACCUM_LOG2, 0))

# --- Trial user attributes ---------------------------------------------------------------
BATCH_SIZE = "batch_size"                     # micro-batch actually trained
ACCUMULATION_STEPS = "accumulation_steps"     # accumulation actually used
EFFECTIVE_BATCH_SIZE = "effective_batch_size"
LEARNING_RATE = "learning_rate"               # absolute lr used by the optimizer
REQUESTED_BATCH_SIZE = "requested_batch_size"
REQUESTED_ACCUMULATION_STEPS = "requested_accumulation_steps"
MEMORY_ACTION = "memory_action"               # "none" | "reaccumulated" | "pruned"
PREDICTED_PEAK_BYTES = "predicted_peak_bytes"
MEASURED_PEAK_BYTES = "measured_peak_bytes"          # the trial's peak: max of the phases below
MEASURED_TRAIN_PEAK_BYTES = "measured_train_peak_bytes"  # its measured training steps
MEASURED_EVAL_PEAK_BYTES = "measured_eval_peak_bytes"    # its first evaluation
EVAL_BATCH_SIZE = "eval_batch_size"                      # evaluation batch used
PEAK_RSS_BYTES = "peak_rss_bytes"                        # CPU: the process's peak resident set
MEMORY_FAILED_PHASE = "memory_failed_phase"              # "train" | "eval": ran out of / over the cap
MEMORY_MEASURED_IN = "memory_measured_in_trial"          # CPU: the trial whose exact peaks these are (reused)
MEMORY_PREDICTION_ERROR = "memory_prediction_error"      # (predicted - measured) / measured
THROUGHPUT = "throughput"                     # training samples / s, evaluation excluded
TRAIN_TIME_S = "train_time_s"                 # training time, evaluation excluded
EVAL_TIME_S = "eval_time_s"
WALL_TIME_S = "wall_time_s"
EPOCH_TIME_S = "epoch_time_s"                 # train-split size / throughput
SAMPLES_SEEN = "samples_seen"
METRIC = "metric"                             # the recipe's metric name: "accuracy", "val_loss", ...
VAL_METRIC = "val_metric"                     # the metric at the last evaluation (the trial's value)
BEST_VAL_METRIC = "best_val_metric"           # its best over the curve, in the metric's direction
VAL_ACCURACY = "val_accuracy"                 # = val_metric when the metric is "accuracy", else unset
BEST_VAL_ACCURACY = "best_val_accuracy"       # = best_val_metric when the metric is "accuracy"
VAL_LOSS = "val_loss"                         # the recipe's loss on the validation split
CURVE = "curve"                               # [[samples_seen, metric, loss], ...]
MILESTONES = "milestones"                     # {"0.90": [samples, seconds], ...}; accuracy metrics only
STOP_REASON = "stop_reason"                   # see STOP_* below
STOP_DETAIL = "stop_detail"                   # human sentence for the reason
BASELINE = "baseline"                         # label of an enqueued reference configuration
REPEAT = "repeat_of"                          # label of a configuration deliberately run twice (seed noise)
USER_ERROR = "user_error"                     # the line the user's code raised, when it did
DEVICE = "device"
NOISE_SCALE = "noise_scale"                   # {"b_small", "b_big", "steps", "series": [[samples_seen,
                                              # b_simple, low, high], ...]}: trials that accumulate

# Readable copies for optuna-dashboard's attribute table (the numbers above stay the record);
# capitalised labels, so they sort first there, ahead of the snake_case keys programs read:
READABLE_THROUGHPUT = "Throughput"          # "4271 samples/s"
READABLE_EPOCH_TIME = "Epoch time"          # "0.683 s"
READABLE_PEAK = "Peak memory"               # "1.3 MiB measured, 1.4 MiB predicted"
READABLE_LR = "Learning rate"               # "0.0125 (multiplier 1 of the scaling rule)"
READABLE_STOP = "Stop"                      # "completed" / "over_memory: micro-batch 256 predicted ..."

STOP_COMPLETED = "completed"
STOP_PRUNED = "pruned"            # pruner stopped it on its validation curve
STOP_DIVERGED = "diverged"        # NaN/inf loss or loss far above its start
STOP_BUDGET = "budget"            # cut off by the study deadline: not a result
STOP_OVER_MEMORY = "over_memory"  # predicted over the cap, never trained
STOP_OUT_OF_MEMORY = "out_of_memory"  # a real OOM while training
STOP_INFEASIBLE = "infeasible"    # this configuration cannot train: its first step raised (e.g.
                                  # BatchNorm at micro-batch 1), or its effective batch exceeds the data
STOP_ERROR = "error"              # the user's code raised while training or evaluating: failed,
                                  # never re-queued
STOP_OVER_CAP = "over_cap"        # trained, but its measured peak went over the memory cap
STOP_INTERRUPTED = "interrupted"  # Ctrl-C or an error in the worker: its configuration re-queued
STOP_WORKER_LOST = "worker_lost"  # its worker stopped beating (killed): failed, configuration re-queued

# --- Study user attributes ---------------------------------------------------------------
STUDY_SPEC = "autobatch_spec"           # dict: what the study searches (identity on resume)
STUDY_DEADLINE = "deadline_unix"        # float: study-wide end of budget
STUDY_MAX_TRIALS = "max_trials"         # int | None: study-wide trial count
STUDY_MEMORY_MODEL = "memory_model"     # dict: fixed_bytes, per_sample_bytes, cap_bytes, ...
STUDY_RECOMMENDATION = "recommendation" # dict: the latest Recommendation, as JSON
STUDY_RECOMMENDATION_KEY = "recommendation_key"  # dict | None: what it was fitted to (recommender._stored)
STUDY_THROUGHPUT = "probe_throughput"   # [[micro-batch, training samples/s], ...]: the probe's
STUDY_NOISE_SCALE = "noise_scale"       # dict: the noise-scale probe (b_simple, interval, b_small,
                                        # b_big, measurements, samples, seconds, critical_batch)
STUDY_VERIFICATION = "verification"     # dict: the answer re-trained with fresh seeds (tuning.verify_answer)


@dataclass(frozen=True, kw_only=True)
class TrialConfig:
    """One configuration to train."""

    batch_size: int
    learning_rate: float
    accumulation_steps: int = 1

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.accumulation_steps


@dataclass(frozen=True, kw_only=True)
class EvalPoint:
    samples_seen: int
    metric: float        # the recipe's validation metric (accuracy by default)
    loss: float          # the recipe's mean validation loss
    train_time_s: float  # training time so far, evaluation excluded


@dataclass(frozen=True, kw_only=True)
class PeakReadings:
    """A trial's memory by phase (bytes; None where not measured): the peak of its measured
    training steps and of its first evaluation (at ``eval_batch_size``), the process's peak
    resident set (CPU), and the phase that ran out of memory or went over the cap, if any."""

    train_bytes: Optional[int] = None
    eval_bytes: Optional[int] = None
    eval_batch_size: Optional[int] = None
    rss_bytes: Optional[int] = None
    failed_phase: Optional[str] = None


@dataclass(frozen=True, kw_only=True)
class TrialResult:
    """What one trial measured. Immutable; ``to_attrs`` gives the trial user attributes."""

    config: TrialConfig
    curve: tuple[EvalPoint, ...]
    samples_seen: int
    train_time_s: float
    eval_time_s: float
    wall_time_s: float
    measured_peak_bytes: Optional[int]
    stop_reason: str
    stop_detail: str = ""
    metric: str = "accuracy"       # the name of what ``EvalPoint.metric`` measures
    direction: str = "maximize"    # "maximize" | "minimize": which way the metric is better
    peaks: PeakReadings = PeakReadings()
    noise_scale: Optional[dict] = None  # NOISE_SCALE's value: the gradient noise scale over training

    @property
    def throughput(self) -> float:
        return self.samples_seen / self.train_time_s if self.train_time_s > 0 else 0.0

    @property
    def final_metric(self) -> Optional[float]:
        """The metric at the last evaluation (the trial's value); None before any."""
        return self.curve[-1].metric if self.curve else None

    @property
    def best_metric(self) -> Optional[float]:
        """The best metric over the curve in the metric's direction; None before any."""
        values = [p.metric for p in self.curve]
        if not values:
            return None
        return max(values) if self.direction == "maximize" else min(values)

    @property
    def metric_is_fraction(self) -> bool:
        """Accuracy or top-k accuracy: a fraction in [0, 1] (the accuracy milestones apply)."""
        return _FRACTION_METRIC.fullmatch(self.metric) is not None


# --- writing ---------------------------------------------------------------------------------

LEGACY_CONSTRAINTS = "constraints"      # the system attribute list optuna-dashboard 0.21 reads
MEMORY_CONSTRAINT = "constraints:memory"  # system attribute: Optuna 5's per-key constraint
OOM_CONSTRAINT = "constraints:oom"      # system attribute: the trial ran out of memory
MILESTONE_TARGETS = (0.5, 0.8, 0.9, 0.95)
_FRACTION_METRIC = re.compile(r"accuracy|top[1-9][0-9]*_accuracy")  # as recipe.topk reads them


def configuration_attrs(config: TrialConfig, *, device: str,
                        predicted_peak_bytes: Optional[float]) -> dict[str, Any]:
    """The attributes a trial gets before it trains: what it runs, where, and the memory the
    model predicts for it."""
    return {BATCH_SIZE: config.batch_size, ACCUMULATION_STEPS: config.accumulation_steps,
            EFFECTIVE_BATCH_SIZE: config.effective_batch_size,
            LEARNING_RATE: config.learning_rate, DEVICE: device,
            PREDICTED_PEAK_BYTES: None if predicted_peak_bytes is None else int(predicted_peak_bytes)}


def result_attrs(result: TrialResult, *, train_size: int) -> dict[str, Any]:
    """The trial user attributes for a measured result: the metric under its neutral names
    (``metric``, ``val_metric``, ``best_val_metric``) and, when it is top-1 accuracy, under the
    names autobatch 0.1 used too (``val_accuracy``, ``best_val_accuracy``)."""
    milestones = {}
    for target in MILESTONE_TARGETS if result.metric_is_fraction else ():
        hit = next((p for p in result.curve if p.metric >= target), None)
        if hit is not None:
            milestones[f"{target:.2f}"] = [hit.samples_seen, round(hit.train_time_s, 3)]
    throughput = result.throughput
    accuracy = {VAL_ACCURACY: result.final_metric, BEST_VAL_ACCURACY: result.best_metric} \
        if result.metric == "accuracy" else {}
    return {
        THROUGHPUT: throughput,
        TRAIN_TIME_S: result.train_time_s,
        EVAL_TIME_S: result.eval_time_s,
        WALL_TIME_S: result.wall_time_s,
        EPOCH_TIME_S: train_size / throughput if throughput > 0 else None,
        SAMPLES_SEEN: result.samples_seen,
        MEASURED_PEAK_BYTES: result.measured_peak_bytes,
        MEASURED_TRAIN_PEAK_BYTES: result.peaks.train_bytes,
        MEASURED_EVAL_PEAK_BYTES: result.peaks.eval_bytes,
        EVAL_BATCH_SIZE: result.peaks.eval_batch_size,
        PEAK_RSS_BYTES: result.peaks.rss_bytes,
        MEMORY_FAILED_PHASE: result.peaks.failed_phase,
        METRIC: result.metric,
        VAL_METRIC: result.final_metric,
        BEST_VAL_METRIC: result.best_metric,
        **accuracy,
        VAL_LOSS: result.curve[-1].loss if result.curve else None,
        CURVE: [[p.samples_seen, p.metric, p.loss] for p in result.curve],
        MILESTONES: milestones,
        STOP_REASON: result.stop_reason,
        STOP_DETAIL: result.stop_detail,
        **({NOISE_SCALE: result.noise_scale} if result.noise_scale else {}),
    }


def write_attrs(trial: optuna.Trial, attrs: dict[str, Any],
                system_attrs: Optional[dict[str, Any]] = None) -> None:
    """Store ``attrs`` as the trial's user attributes (and ``system_attrs`` as system ones): one
    transaction on an RDB storage (Optuna commits each attribute on its own), one call each on
    any other storage; held for the trial's next write where its writes are held
    (``storage.TrialWrites``, which has ``hold_attrs``)."""
    hold = getattr(trial.storage, "hold_attrs", None)
    rdb = None if hold is not None else rdb_backend(trial.storage)
    if hold is not None:
        hold(attrs, system_attrs)
    elif rdb is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        for key, value in (system_attrs or {}).items():
            trial.storage.set_trial_system_attr(trial_id(trial), key, value)
        return
    else:
        write = getattr(rdb, "write_trial_attrs", None) or (lambda *a, **k: write_in_rdb(rdb, *a, **k))
        write(trial_id(trial), user_attrs=attrs, system_attrs=system_attrs)
    own = cached_frozen(trial)  # what Trial.set_user_attr would keep, so the trial reads it back
    own.user_attrs.update(attrs)
    own.system_attrs.update(system_attrs or {})


def own_record(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """What the live ``trial`` has written so far (params, attributes), without a storage read."""
    return cached_frozen(trial)


def write_in_rdb(rdb: optuna.storages.RDBStorage, trial_id_: int, *, user_attrs: dict[str, Any],
                 system_attrs: Optional[dict[str, Any]] = None) -> None:
    """User and system attributes of a running trial, as one transaction (one upsert each)."""
    models = rdb_models()
    with rdb_session(rdb) as session:
        row = models.TrialModel.find_or_raise_by_id(trial_id_, session)
        rdb.check_trial_is_updatable(trial_id_, row.state)
        set_attrs_in_session(rdb, session, trial_id_, user_attrs)
        set_attrs_in_session(rdb, session, trial_id_, system_attrs or {}, system=True)


def finish_in_rdb(rdb: optuna.storages.RDBStorage, trial_id_: int, *, state: TrialState,
                  values: Optional[list[float]], user_attrs: dict[str, Any],
                  system_attrs: dict[str, Any]) -> bool:
    """A trial's end as one transaction: attributes, value, state and end time (how a trial is
    failed with its reason: ``storage.fail_trial``)."""
    models = rdb_models()
    with rdb_session(rdb) as session:
        row = models.TrialModel.find_or_raise_by_id(trial_id_, session, for_update=True)
        rdb.check_trial_is_updatable(trial_id_, row.state)
        set_attrs_in_session(rdb, session, trial_id_, user_attrs)
        set_attrs_in_session(rdb, session, trial_id_, system_attrs, system=True)
        for value in values or ():
            set_value_in_session(rdb, session, row, value)
        row.state = state
        row.datetime_complete = datetime.datetime.now()
    return True


def memory_constraint_attrs(value: float) -> dict[str, Any]:
    """The memory constraint's system attributes, for a trial that has none yet: Optuna 5's
    per-key form (what ``Trial.set_constraint("memory", value)`` writes, which the samplers
    read) and the legacy list form (which optuna-dashboard 0.21 reads)."""
    return {MEMORY_CONSTRAINT: float(value), LEGACY_CONSTRAINTS: [float(value)]}


def set_memory_constraint(trial: optuna.Trial, value: float) -> None:
    """Feasibility for the sampler (<= 0 fits). Written in Optuna 5's per-key form, which
    the samplers read, and in the legacy list form, which optuna-dashboard 0.21 reads."""
    trial.set_constraint("memory", value)
    trial.storage.set_trial_system_attr(trial_id(trial), LEGACY_CONSTRAINTS, [value])


def set_infeasible(trial: optuna.Trial) -> None:
    """Record that the configuration cannot train at all (a violated constraint for the sampler,
    under its own key; the memory constraint is kept as it was)."""
    trial.set_constraint("trainable", 1.0)
    current = trial.storage.get_trial_system_attrs(trial_id(trial)).get(LEGACY_CONSTRAINTS) or []
    trial.storage.set_trial_system_attr(trial_id(trial), LEGACY_CONSTRAINTS, [*current, 1.0])


# --- reading ---------------------------------------------------------------------------------

COLUMNS = ("number", "state", "value", "batch_size", "accumulation_steps", "effective_batch_size",
           "learning_rate", "lr_multiplier", "throughput", "epoch_time_s", "measured_peak_bytes",
           "predicted_peak_bytes", "val_metric", "best_val_metric", "val_accuracy", "best_val_accuracy",
           "stop_reason", "baseline", "samples_seen", "device", "curve")
_INTS = ("batch_size", "accumulation_steps", "effective_batch_size", "samples_seen")
_FLOATS = ("value", "learning_rate", "lr_multiplier", "throughput", "epoch_time_s",
           "measured_peak_bytes", "predicted_peak_bytes", "val_metric", "best_val_metric", "val_accuracy",
           "best_val_accuracy")

MultiplierFor = Callable[[float, int], float]  # (learning rate, effective batch) -> multiplier


def trial_row(trial: optuna.trial.FrozenTrial,
              multiplier_for: Optional[MultiplierFor] = None) -> dict[str, Any]:
    """One trial as a flat row of ``COLUMNS``. Missing attributes are derived from the
    parameters where they can be (``multiplier_for`` inverts the study's lr scaling rule).
    ``val_metric`` is the study's metric whatever it is; a trial stored before metrics had
    names (no ``metric`` attribute) measured accuracy, so its accuracy is its metric."""
    attrs, params = trial.user_attrs, trial.params
    from_params = batch_and_accumulation(params)
    batch = attrs.get(BATCH_SIZE, from_params[0])
    accumulation = attrs.get(ACCUMULATION_STEPS, from_params[1])
    effective = attrs.get(EFFECTIVE_BATCH_SIZE)
    if effective is None and batch is not None:
        effective = batch * accumulation
    lr, multiplier = attrs.get(LEARNING_RATE), params.get(PARAM_LR_MULTIPLIER)
    if multiplier is None and lr is not None and multiplier_for is not None and effective:
        multiplier = multiplier_for(lr, effective)
    curve = attrs.get(CURVE) or []
    samples = attrs.get(SAMPLES_SEEN, curve[-1][0] if curve else None)
    state = trial.state.name
    value = trial.value if trial.values else None
    reason = attrs.get(STOP_REASON) or (STOP_COMPLETED if state == "COMPLETE" else STOP_PRUNED)
    return {"number": trial.number, "state": state, "value": value, "batch_size": batch,
            "accumulation_steps": accumulation, "effective_batch_size": effective,
            "learning_rate": lr, "lr_multiplier": multiplier,
            "throughput": attrs.get(THROUGHPUT), "epoch_time_s": attrs.get(EPOCH_TIME_S),
            "measured_peak_bytes": attrs.get(MEASURED_PEAK_BYTES),
            "predicted_peak_bytes": attrs.get(PREDICTED_PEAK_BYTES),
            "val_metric": attrs.get(VAL_METRIC, attrs.get(VAL_ACCURACY, value)),
            "best_val_metric": attrs.get(BEST_VAL_METRIC, attrs.get(BEST_VAL_ACCURACY)),
            "val_accuracy": attrs.get(VAL_ACCURACY, None if METRIC in attrs else value),
            "best_val_accuracy": attrs.get(BEST_VAL_ACCURACY), "stop_reason": reason,
            "baseline": attrs.get(BASELINE), "samples_seen": samples, "device": attrs.get(DEVICE),
            "curve": curve}


def read_trials(study: optuna.Study, multiplier_for: Optional[MultiplierFor] = None) -> "pd.DataFrame":
    """One row per finished (COMPLETE or PRUNED) trial, the autobatch attributes as columns
    (``COLUMNS``). ``multiplier_for`` fills in lr multipliers a trial did not record."""
    import pandas as pd

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    rows = [trial_row(t, multiplier_for) for t in study.get_trials(deepcopy=False, states=states)]
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for name in _INTS:
        df[name] = df[name].astype("Int64")
    for name in _FLOATS:
        df[name] = pd.to_numeric(df[name], errors="coerce").astype(float)
    return df.sort_values("number", ignore_index=True)
