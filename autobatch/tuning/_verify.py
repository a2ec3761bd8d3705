"""Verification: the recommended setting re-trained with fresh seeds, inside the budget.

The plan reserves ``spec.verify_runs`` runs (``search.verification_runs``: one, two when the
budget allows) of the study's recipe and trial length; after the search, ``verify_answer``
trains the answer with seeds no trial used, evaluates it once at the end, stores the
measurements as the study attribute ``records.STUDY_VERIFICATION`` (not as trials: the study's
trial count, report and sampler stay the search's; the recommender reads them as repeats of the
setting for its seed-noise estimate, ``recommender.verification_repeats``), and returns the
recommendation with the measurement beside the prediction. A measurement outside
the predicted interval is said plainly (``Recommendation.verification_line``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

import optuna
import torch
from torch.utils.data import Dataset

from .. import records as R
from ..errors import UserCodeError
from ..recommender import Recommendation, batchnorm_note, same_setting, with_stored_verification
from ..records import TrialConfig
from ..search import StudySpec, TrialTimes, verification_seconds
from ..train import EVAL_BATCH_FACTOR, evaluate, train_trial
from ..workloads import build_model
from ._memcheck import current_estimate
from ._objective import TrialContext

VERIFY_SEED_OFFSET = 1_000_003  # verification seeds: spec.seed + this + k, never a trial's seed + number
NOT_VERIFIED_OFF = ("not verified: verification is off (--no-verify, --verify-runs 0 or verify_runs = 0, "
                    "your choice); --verify-runs 1 re-trains the answer once with a fresh seed")


def verification_reserve(study: optuna.Study, spec: StudySpec) -> float:
    """Seconds kept at the end of the budget for ``spec.verify_runs`` verification runs, timed
    from the probe's throughput (``search.verification_seconds``); 0 when none are planned."""
    measured = study.user_attrs.get(R.STUDY_THROUGHPUT) or []
    if not spec.verify_runs or not measured or not spec.train_samples:
        return 0.0
    times = TrialTimes.from_throughput([tuple(m) for m in measured])
    sizes = [int(b) for b, _ in measured]
    return spec.verify_runs * verification_seconds(times, sizes, spec.train_samples, spec.val_size)


def verdict(values: list[float], interval: Optional[tuple[float, float]]) -> Optional[str]:
    """``"inside"`` when every measurement lies in ``interval``, else ``"below"``/``"above"``
    by where their mean lies (``"outside"`` when it lies inside but a run does not); None
    without an interval or a measurement."""
    if not values or interval is None:
        return None
    lo, hi = interval
    if all(lo <= v <= hi for v in values):
        return "inside"
    mean = sum(values) / len(values)
    return "below" if mean < lo else "above" if mean > hi else "outside"


def verify_answer(study: optuna.Study, rec: Recommendation, ctx: TrialContext, *,
                  end: Optional[float] = None, held_out: Optional[Dataset] = None) -> Recommendation:
    """``rec`` with the verification fields filled: ``ctx.spec.verify_runs`` re-trainings of its
    setting with fresh seeds (fewer when ``end``, unix time, leaves no room for another; none,
    with the reason in ``verification_note``, when it leaves room for none). Each run is scored
    on ``ctx.workload.val`` (the samples the trials were scored on: the same quantity as the
    prediction, so the verdict compares like with like) and on ``held_out`` (validation samples
    no trial saw, ``workloads.split_holdout``) when given."""
    spec = ctx.spec
    rec = with_batchnorm_note(rec, ctx)
    if not spec.verify_runs:
        return dataclasses.replace(rec, verification_note=NOT_VERIFIED_OFF)
    previous = study.user_attrs.get(R.STUDY_VERIFICATION) or {}
    if previous.get("values") and same_setting(rec, previous):  # verified already (a resumed, complete study)
        return with_stored_verification(rec, previous)
    first_seed = spec.seed + VERIFY_SEED_OFFSET + len(previous.get("seeds") or ())
    config = TrialConfig(batch_size=rec.batch_size, learning_rate=rec.learning_rate,
                         accumulation_steps=rec.accumulation_steps)
    estimate = current_estimate(study, ctx.memory_model)
    measured = study.user_attrs.get(R.STUDY_THROUGHPUT) or []
    needed = (TrialTimes.from_throughput([tuple(m) for m in measured]).seconds(
        rec.batch_size, spec.train_samples, spec.val_size) if measured else 0.0)
    values: list[float] = []
    held: list[float] = []
    seeds: list[int] = []
    seconds = 0.0
    note = None
    for k in range(spec.verify_runs):
        if end is not None and time.time() + needed > end:
            note = (f"not verified: the budget has {max(0.0, end - time.time()):.0f}s left and a run "
                    f"needs about {needed:.0f}s; give the study more budget" if not values else
                    f"verified with {len(values)} of {spec.verify_runs} planned runs: no time left for more")
            break
        seed = first_seed + k
        torch.manual_seed(seed)
        try:
            model = build_model(spec.model, num_classes=spec.num_classes, input_shape=spec.input_shape,
                                vocab_size=ctx.workload.vocab_size)
        except UserCodeError as exc:
            note = f"not verified: the model could not be built ({exc})"
            break
        result = train_trial(model, ctx.workload, config, train_samples=spec.train_samples,
                             checkpoints=(spec.train_samples,), device=ctx.device, recipe=spec.recipe, seed=seed,
                             deadline=end, step=spec.step, step_eval=spec.step_eval, num_workers=ctx.num_workers,
                             eval_batch_size=estimate.eval_batch(config.batch_size) if estimate else None,
                             memory_cap=spec.max_memory_bytes)
        done = result.stop_reason == R.STOP_COMPLETED and result.final_metric is not None
        seconds += result.wall_time_s
        if not done:
            note = f"verification run stopped: {result.stop_reason} ({result.stop_detail})"
            break
        if held_out is not None:
            batch = estimate.eval_batch(config.batch_size) if estimate else config.batch_size * EVAL_BATCH_FACTOR
            metric, _ = evaluate(model, held_out, batch, ctx.device, spec.recipe, step=spec.step,
                                 step_eval=spec.step_eval, num_workers=ctx.num_workers)
            held.append(float(metric))
        values.append(float(result.final_metric))
        seeds.append(seed)
    return record_verification(study, rec, values, seeds, seconds, note, held,
                               len(held_out) if held_out is not None and held else 0)


def record_verification(study: optuna.Study, rec: Recommendation, values: list[float], seeds: list[int],
                        seconds: float, note: Optional[str], held: list[float] = (),
                        held_samples: int = 0) -> Recommendation:
    """Store the measurement with the study (``records.STUDY_VERIFICATION``) and return ``rec``
    with it."""
    interval = rec.metric_interval
    result = dataclasses.replace(
        rec, verified_metric=sum(values) / len(values) if values else None, verified_values=tuple(values),
        verified_seeds=tuple(seeds), verification_verdict=verdict(values, interval),
        verification_note=note, verified_holdout_metric=sum(held) / len(held) if held else None,
        verified_holdout_samples=held_samples or None)
    setting = {"batch_size": rec.batch_size, "accumulation_steps": rec.accumulation_steps,
               "lr_multiplier": rec.lr_multiplier}
    previous = study.user_attrs.get(R.STUDY_VERIFICATION) or {}
    runs = [*(previous.get("runs") or ()), *({**setting, "value": v, "seed": s} for v, s in zip(values, seeds))]
    study.set_user_attr(R.STUDY_VERIFICATION, {"runs": runs,
        "batch_size": rec.batch_size, "accumulation_steps": rec.accumulation_steps,
        "lr_multiplier": rec.lr_multiplier, "learning_rate": rec.learning_rate,
        "predicted_metric": rec.predicted_metric, "metric_interval": list(interval) if interval else None,
        "values": values, "seeds": seeds, "seconds": seconds, "verdict": result.verification_verdict,
        "note": note, "holdout_values": list(held), "holdout_samples": held_samples})
    return result


def has_batchnorm(model: torch.nn.Module) -> bool:
    """True when ``model`` has a BatchNorm layer (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, lazy ones)."""
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def with_batchnorm_note(rec: Recommendation, ctx: TrialContext) -> Recommendation:
    """``rec`` with ``batchnorm_note`` set when it accumulates on a model with BatchNorm layers."""
    if rec.accumulation_steps <= 1:
        return rec
    spec = ctx.spec
    try:
        model = build_model(spec.model, num_classes=spec.num_classes, input_shape=spec.input_shape,
                            vocab_size=ctx.workload.vocab_size)
    except UserCodeError:
        return rec
    if not has_batchnorm(model):
        return rec
    return dataclasses.replace(rec, batchnorm_note=batchnorm_note(rec.batch_size, rec.accumulation_steps))
