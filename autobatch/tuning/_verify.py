"""Verification: the recommended setting re-trained with fresh seeds, inside the budget.

The plan reserves ``spec.verify_runs`` runs (``search.verification_runs``: one, two when the
budget allows) of the study's recipe and trial length; after the search, ``verify_answer``
trains the answer with seeds no trial used, evaluates it once at the end, stores the
measurements as the study attribute ``records.STUDY_VERIFICATION`` (not as trials: the study's
trial count, report and sampler stay the search's; the recommender reads them as repeats of the
setting for its seed-noise estimate, ``recommender.verification_repeats``), and returns the
recommendation with the measurement beside the prediction. A measurement outside
the predicted interval is said plainly (``Recommendation.verification_line``); one worse than the
interval re-ranks the answer with the measurement (``verify_answer``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

import optuna
import torch
from torch.utils.data import Dataset

from .. import records as R
from ..errors import AutobatchError, UserCodeError
from ..recommender import Recommendation, batchnorm_note, recommend_study, same_setting, with_stored_verification
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


def worse(verdict_: Optional[str], direction: str) -> bool:
    """True when a verification ``verdict`` measured the setting worse than its interval:
    ``"below"`` for a metric the study maximizes, ``"above"`` for one it minimizes."""
    return verdict_ == ("below" if direction == "maximize" else "above")


def verify_answer(study: optuna.Study, rec: Recommendation, ctx: TrialContext, *,
                  end: Optional[float] = None, held_out: Optional[Dataset] = None) -> Recommendation:
    """``rec`` with the verification fields filled: ``ctx.spec.verify_runs`` re-trainings of its
    setting with fresh seeds (fewer when ``end``, unix time, leaves no room for another; none,
    with the reason in ``verification_note``, when it leaves room for none). Each run is scored
    on ``ctx.workload.val`` (the samples the trials were scored on: the same quantity as the
    prediction, so the verdict compares like with like) and on ``held_out`` (validation samples
    no trial saw, ``workloads.split_holdout``) when given.

    When the runs measure the setting worse than its interval (``worse``), the answer is
    re-ranked with the measurement: those runs become observations of their setting in the
    metric model (``recommender.verification_observations``; they stay out of the study's
    trials) and the recommendation is computed again under the same priority and constraints.
    Another setting that now wins is verified in turn while ``end`` leaves room for a run
    (``MAX_RERANKS`` such settings at most); without room it is the answer, said to be unverified.
    The contradicted settings are in the answer's ``reranked_from``."""
    spec = ctx.spec
    rec = with_batchnorm_note(rec, ctx)
    if not spec.verify_runs:
        return dataclasses.replace(rec, verification_note=NOT_VERIFIED_OFF)
    previous = study.user_attrs.get(R.STUDY_VERIFICATION) or {}
    if previous.get("values") and same_setting(rec, previous):  # verified already (a resumed, complete study)
        return with_stored_verification(rec, previous)
    reranked = list(rec.reranked_from)  # a resumed study: the re-ranks that led to this answer
    while True:
        checked = _verify_setting(study, rec, ctx, end, held_out, reranked)
        if not worse(checked.verification_verdict, spec.recipe.direction):
            return checked
        reranked.append(_contradicted(checked))
        try:
            again = recommend_study(study, max_memory=rec.constraints.get("max_memory_bytes"),
                                    max_epoch_time=rec.constraints.get("max_epoch_time_s"),
                                    min_accuracy=rec.constraints.get("min_accuracy"), priority=rec.priority)
        except AutobatchError as exc:  # e.g. the measurement leaves no setting above --min-accuracy
            return dataclasses.replace(checked, verification_note=_join(
                checked.verification_note, f"not re-ranked with the measurement: {exc}"))
        if same_setting(again, reranked[-1]):
            note = ("re-ranked with this measurement (fitted as an observation of the setting): "
                    "the setting still wins")
            _store_answer(study, again, reranked[:-1], note, verified=True)
            return dataclasses.replace(checked, verification_note=_join(checked.verification_note, note))
        rec = with_batchnorm_note(dataclasses.replace(again, reranked_from=tuple(reranked)), ctx)
        needed = _run_seconds(study, spec, rec.batch_size)
        last = reranked[-1]
        why = (f"the verification of batch {last['batch_size']} x {last['accumulation_steps']} came out "
               f"{last['verdict']} its interval")
        if len(reranked) > MAX_RERANKS:
            note = f"not verified: re-ranked after {why}; {len(reranked)} settings missed, no more re-ranks"
        elif end is not None and time.time() + needed > end:
            note = (f"not verified: re-ranked after {why}, and a run of this setting needs about {needed:.0f}s "
                    f"of the {max(0.0, end - time.time()):.0f}s left; give the study more budget")
        else:
            continue
        _store_answer(study, rec, reranked, note, verified=False)
        return dataclasses.replace(rec, verification_note=note)


MAX_RERANKS = 2  # re-ranked settings verified in turn after a contradicting verification, at most


def _join(*notes: Optional[str]) -> Optional[str]:
    text = "; ".join(n for n in notes if n)
    return text or None


def _contradicted(checked: Recommendation) -> dict:
    """A verified recommendation as one ``reranked_from`` entry."""
    return {"batch_size": checked.batch_size, "accumulation_steps": checked.accumulation_steps,
            "lr_multiplier": checked.lr_multiplier, "learning_rate": checked.learning_rate,
            "predicted_metric": checked.predicted_metric,
            "metric_interval": list(checked.metric_interval) if checked.metric_interval else None,
            "values": list(checked.verified_values), "verdict": checked.verification_verdict}


def _store_answer(study: optuna.Study, rec: Recommendation, reranked: list[dict], note: str, *,
                  verified: bool) -> None:
    """Record with the study's verification which setting the re-rank made the answer and why
    it is (not) verified, so ``recommend`` later says the same (``with_stored_verification``)."""
    stored = dict(study.user_attrs.get(R.STUDY_VERIFICATION) or {})
    stored["reranked_from"] = reranked
    if verified:
        stored["note"] = _join(stored.get("note"), note)
        stored.pop("answer", None)
    else:
        stored["answer"] = {"batch_size": rec.batch_size, "accumulation_steps": rec.accumulation_steps,
                            "lr_multiplier": rec.lr_multiplier, "learning_rate": rec.learning_rate, "note": note}
    study.set_user_attr(R.STUDY_VERIFICATION, stored)


def _run_seconds(study: optuna.Study, spec: StudySpec, batch_size: int) -> float:
    """Predicted seconds of one verification run at ``batch_size`` (0 without the probe's timings)."""
    measured = study.user_attrs.get(R.STUDY_THROUGHPUT) or []
    return (TrialTimes.from_throughput([tuple(m) for m in measured]).seconds(
        batch_size, spec.train_samples, spec.val_size) if measured else 0.0)


def _verify_setting(study: optuna.Study, rec: Recommendation, ctx: TrialContext, end: Optional[float],
                    held_out: Optional[Dataset], reranked: list[dict]) -> Recommendation:
    """Up to ``spec.verify_runs`` fresh-seed runs of ``rec``'s setting, stored (``record_verification``)."""
    spec = ctx.spec
    previous = study.user_attrs.get(R.STUDY_VERIFICATION) or {}
    first_seed = spec.seed + VERIFY_SEED_OFFSET + len(previous.get("runs") or previous.get("seeds") or ())
    config = TrialConfig(batch_size=rec.batch_size, learning_rate=rec.learning_rate,
                         accumulation_steps=rec.accumulation_steps)
    estimate = current_estimate(study, ctx.memory_model)
    needed = _run_seconds(study, spec, rec.batch_size)
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
                               len(held_out) if held_out is not None and held else 0, reranked=reranked)


def record_verification(study: optuna.Study, rec: Recommendation, values: list[float], seeds: list[int],
                        seconds: float, note: Optional[str], held: list[float] = (),
                        held_samples: int = 0, reranked: list[dict] = ()) -> Recommendation:
    """Store the measurement with the study (``records.STUDY_VERIFICATION``) and return ``rec``
    with it. Each run is stored with ``"contradicted"``: whether this verification measured the
    setting worse than its interval (the recommender then fits the run as an observation);
    ``seconds`` add up over every verification of the study; ``reranked``: the settings a
    re-rank moved away from before ``rec`` (``verify_answer``)."""
    interval = rec.metric_interval
    result = dataclasses.replace(
        rec, verified_metric=sum(values) / len(values) if values else None, verified_values=tuple(values),
        verified_seeds=tuple(seeds), verification_verdict=verdict(values, interval),
        verification_note=note, verified_holdout_metric=sum(held) / len(held) if held else None,
        verified_holdout_samples=held_samples or None, reranked_from=tuple(reranked))
    contradicted = worse(result.verification_verdict, rec.metric_direction)
    setting = {"batch_size": rec.batch_size, "accumulation_steps": rec.accumulation_steps,
               "lr_multiplier": rec.lr_multiplier}
    previous = study.user_attrs.get(R.STUDY_VERIFICATION) or {}
    runs = [*(previous.get("runs") or ()),
            *({**setting, "value": v, "seed": s, "contradicted": contradicted} for v, s in zip(values, seeds))]
    total = seconds + (float(previous.get("total_seconds") or previous.get("seconds") or 0.0) if reranked else 0.0)
    study.set_user_attr(R.STUDY_VERIFICATION, {"runs": runs,
        "batch_size": rec.batch_size, "accumulation_steps": rec.accumulation_steps,
        "lr_multiplier": rec.lr_multiplier, "learning_rate": rec.learning_rate,
        "predicted_metric": rec.predicted_metric, "metric_interval": list(interval) if interval else None,
        "values": values, "seeds": seeds, "seconds": seconds, "total_seconds": total,
        "verdict": result.verification_verdict, "note": note, "holdout_values": list(held),
        "holdout_samples": held_samples, "reranked_from": list(reranked)})
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
