"""Names and records that cross module boundaries.

Optuna stores what autobatch measures as trial and study *user attributes*, so that vanilla
``optuna.load_study``, pandas and optuna-dashboard read the same facts autobatch does. The
attribute names live here, once; every writer and reader imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

# --- Optuna parameter names (the search space) -------------------------------------------
PARAM_BATCH_LOG2 = "batch_size_log2"          # int, micro-batch = 2 ** value
PARAM_LR_MULTIPLIER = "lr_multiplier"         # float, log scale, relative to the scaling rule
PARAM_ACCUM_LOG2 = "accumulation_steps_log2"  # int, accumulation steps = 2 ** value

# --- Trial user attributes ---------------------------------------------------------------
BATCH_SIZE = "batch_size"                     # micro-batch actually trained
ACCUMULATION_STEPS = "accumulation_steps"     # accumulation actually used
EFFECTIVE_BATCH_SIZE = "effective_batch_size"
LEARNING_RATE = "learning_rate"               # absolute lr used by the optimizer
REQUESTED_BATCH_SIZE = "requested_batch_size"
REQUESTED_ACCUMULATION_STEPS = "requested_accumulation_steps"
MEMORY_ACTION = "memory_action"               # "none" | "reaccumulated" | "pruned"
PREDICTED_PEAK_BYTES = "predicted_peak_bytes"
MEASURED_PEAK_BYTES = "measured_peak_bytes"
THROUGHPUT = "throughput"                     # training samples / s, evaluation excluded
TRAIN_TIME_S = "train_time_s"                 # training time, evaluation excluded
EVAL_TIME_S = "eval_time_s"
WALL_TIME_S = "wall_time_s"
EPOCH_TIME_S = "epoch_time_s"                 # train-split size / throughput
SAMPLES_SEEN = "samples_seen"
VAL_ACCURACY = "val_accuracy"                 # at the last evaluation
VAL_LOSS = "val_loss"
BEST_VAL_ACCURACY = "best_val_accuracy"
CURVE = "curve"                               # [[samples_seen, accuracy, loss], ...]
MILESTONES = "milestones"                     # {"0.90": [samples, seconds], ...}
STOP_REASON = "stop_reason"                   # see STOP_* below
STOP_DETAIL = "stop_detail"                   # human sentence for the reason
BASELINE = "baseline"                         # label of an enqueued reference configuration
DEVICE = "device"

STOP_COMPLETED = "completed"
STOP_PRUNED = "pruned"            # pruner stopped it on its validation curve
STOP_DIVERGED = "diverged"        # NaN/inf loss or loss far above its start
STOP_BUDGET = "budget"            # cut off by the study deadline: not a result
STOP_OVER_MEMORY = "over_memory"  # predicted over the cap, never trained
STOP_OUT_OF_MEMORY = "out_of_memory"  # a real OOM while training

# --- Study user attributes ---------------------------------------------------------------
STUDY_SPEC = "autobatch_spec"           # dict: what the study searches (identity on resume)
STUDY_DEADLINE = "deadline_unix"        # float: study-wide end of budget
STUDY_MAX_TRIALS = "max_trials"         # int | None: study-wide trial count
STUDY_MEMORY_MODEL = "memory_model"     # dict: fixed_bytes, per_sample_bytes, cap_bytes, ...
STUDY_RECOMMENDATION = "recommendation" # dict: the latest Recommendation, as JSON


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
    accuracy: float
    loss: float
    train_time_s: float  # training time so far, evaluation excluded


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

    @property
    def throughput(self) -> float:
        return self.samples_seen / self.train_time_s if self.train_time_s > 0 else 0.0

    @property
    def final_accuracy(self) -> float:
        return self.curve[-1].accuracy if self.curve else 0.0

    @property
    def best_accuracy(self) -> float:
        return max((p.accuracy for p in self.curve), default=0.0)
