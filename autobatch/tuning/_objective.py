"""One trial of a study: suggest, check memory, train, report on the samples-seen axis, tell."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from .. import records as R
from ..memory import MemoryModel
from ..records import EvalPoint
from ..search import StudySpec, suggest
from ..train import check_device, train_trial
from ..workloads import Workload, build_model
from ._events import TrialStarted, TuneRun


@dataclass(frozen=True, kw_only=True)
class TrialContext:
    """What a worker needs to run trials of one study: values, passed down."""

    spec: StudySpec
    workload: Workload
    device: torch.device
    memory_model: Optional[MemoryModel] = None
    deadline: Optional[float] = None

    def __post_init__(self) -> None:
        check_device(self.spec.recipe, self.device)  # e.g. an fp16 study joined on a CPU: refused up front


def run_trial(study: optuna.Study, trial: optuna.Trial, ctx: TrialContext,
              run: Optional[TuneRun] = None) -> FrozenTrial:
    """Suggest a configuration, prune it before training if it is predicted over the memory cap,
    else train it and tell the study its result."""
    spec = ctx.spec
    config, _ = suggest(trial, spec.space)
    predicted = ctx.memory_model.predict(config.batch_size) if ctx.memory_model else None
    attrs = R.configuration_attrs(config, device=str(ctx.device), predicted_peak_bytes=predicted)
    cap = spec.max_memory_bytes
    if predicted is not None and cap:
        over = (predicted - cap) / cap
        R.set_memory_constraint(trial, over)
        if over > 0:  # never trained: pruned before its first step, the sampler told why
            attrs.update({R.MEMORY_ACTION: "pruned", R.STOP_REASON: R.STOP_OVER_MEMORY,
                          R.STOP_DETAIL: f"micro-batch {config.batch_size} predicted at "
                          f"{predicted / 2**20:.1f} MiB > cap {cap / 2**20:.1f} MiB",
                          R.SAMPLES_SEEN: 0})
            R.write_attrs(trial, attrs)
            return study.tell(trial, state=TrialState.PRUNED)
    else:
        R.set_memory_constraint(trial, 0.0)
    attrs[R.MEMORY_ACTION] = "none"
    R.write_attrs(trial, attrs)
    if run is not None:
        run.emit(TrialStarted(number=trial.number, config=config,
                              baseline=trial.user_attrs.get(R.BASELINE)))

    final = spec.eval_points[-1]

    def on_eval(point: EvalPoint) -> bool:
        trial.report(point.metric, step=point.samples_seen)
        # At the last checkpoint the trial is done: a result, never a pruning decision.
        return point.samples_seen < final and trial.should_prune()

    seed = spec.seed + trial.number
    torch.manual_seed(seed)
    model = build_model(spec.model, num_classes=spec.num_classes, input_shape=spec.input_shape)
    result = train_trial(model, ctx.workload, config, train_samples=spec.train_samples,
                         checkpoints=spec.eval_points, device=ctx.device, recipe=spec.recipe,
                         seed=seed, on_eval=on_eval, deadline=ctx.deadline)
    R.write_attrs(trial, R.result_attrs(result, train_size=spec.train_size))
    if result.stop_reason == R.STOP_COMPLETED:
        return study.tell(trial, result.final_metric)
    if result.stop_reason == R.STOP_BUDGET:
        return study.tell(trial, state=TrialState.FAIL)
    if result.stop_reason == R.STOP_OUT_OF_MEMORY:
        R.mark_out_of_memory(trial)
    return study.tell(trial, state=TrialState.PRUNED)
