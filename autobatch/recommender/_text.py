"""A recommendation as people read it: ``str(rec)`` (the short block the CLI prints) and a
bounded ``repr``. Accuracies are in percent, as the rationale writes them; other metrics in
their own units."""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..recipe import TrainRecipe, metric_label
from ..units import format_bytes
from ._intervals import COVERAGE

REPR_LIMIT = 400  # characters


def metric_formatter(recipe: TrainRecipe) -> Callable[[float], str]:
    """``91.3%`` for an accuracy, ``0.4213`` for any other metric."""
    if recipe.metric_is_fraction:
        return lambda v: f"{v:.1%}"
    return lambda v: f"{v:.4g}"


def _interval(lo_hi: Optional[tuple[float, float]], fmt: Callable[[Any], str]) -> str:
    return f"  [{fmt(lo_hi[0])} .. {fmt(lo_hi[1])}]" if lo_hi is not None else ""


def recipe_line(recipe: TrainRecipe) -> str:
    """The recipe in one line: optimizer and its settings, schedule, precision, loss, metric."""
    opt = recipe.optimizer
    if opt == "sgd":
        opt += f"(momentum {recipe.momentum:g}{', nesterov' if recipe.nesterov else ''}, wd {recipe.weight_decay:g})"
    elif opt in ("adam", "adamw"):
        opt += f"(betas {recipe.betas[0]:g},{recipe.betas[1]:g}, wd {recipe.weight_decay:g})"
    parts = [opt, f"{recipe.schedule} schedule, {recipe.warmup_fraction:g} warm-up", recipe.precision,
             recipe.loss + (f" (smoothing {recipe.label_smoothing:g})" if recipe.label_smoothing else ""),
             f"metric {recipe.metric}"]
    if recipe.grad_clip_norm:
        parts.append(f"clip {recipe.grad_clip_norm:g}")
    return ", ".join(parts)


def summary(rec: Any) -> str:
    """``rec``: a ``Recommendation``. The setting, its predicted metric, epoch time and peak memory with their intervals, the
    recipe and trial length in one line each, and why."""
    fmt = metric_formatter(rec.recipe)
    coverage = rec.diagnostics.get("coverage", COVERAGE)
    lines = [f"recommended for {rec.study_name} ({rec.priority}; intervals {coverage:.0%}):",
             f"  setting      micro-batch {rec.batch_size} x {rec.accumulation_steps} accumulation steps "
             f"= effective batch {rec.effective_batch_size}, learning rate {rec.learning_rate:.4g}"]
    if rec.predicted_metric is not None:
        name = metric_label(rec.metric, "val")
        lines.append(f"  {name:<12} {fmt(rec.predicted_metric)}{_interval(rec.metric_interval, fmt)}")
    lines.append(f"  epoch time   {rec.predicted_epoch_time_s:.3g} s"
                 f"{_interval(rec.epoch_time_interval, lambda v: f'{v:.3g} s')}")
    if rec.predicted_peak_bytes is not None:
        lines.append(f"  peak memory  {format_bytes(rec.predicted_peak_bytes)}"
                     f"{_interval(rec.peak_bytes_interval, format_bytes)}")
    length = ""
    if rec.optimizer_steps is not None:
        epochs = f", {rec.epochs:.3g} epochs" if rec.epochs else ""
        length = f"; tuned over {rec.optimizer_steps} optimizer steps ({rec.train_samples} samples{epochs})"
    lines.append(f"  recipe       {recipe_line(rec.recipe)}{length}")
    lines.append(f"  why          {rec.rationale}")
    # issue 18: the verification beside the prediction, low confidence, BatchNorm with accumulation
    verified = rec.verification_line() or ""
    verified = verified.removeprefix("verified: ").replace("not verified: ", "no: ", 1)
    critical = ""
    if rec.critical_batch is not None:
        lo, hi = rec.critical_batch_interval or (None, None)
        span = f" [{lo:.0f}, {'more' if hi is None else f'{hi:.0f}'}]" if lo is not None else ""
        critical = (f"≈ {rec.critical_batch:.0f}{span} ({rec.critical_batch_source}): beyond it, larger "
                    "batches buy little speed-up per sample")
    labels = (("critical", critical), ("verified", verified),
              ("re-ranked", (rec.rerank_line() or "").removeprefix("re-ranked: ")), ("confidence", (rec.confidence_note or "").removeprefix("low confidence: ")
                                       and "low: " + rec.confidence_note.removeprefix("low confidence: ")),
              ("batchnorm", rec.batchnorm_note))
    lines += [f"  {label:<12} {text}" for label, text in labels if text]
    return "\n".join(lines)


def short_repr(rec: Any) -> str:
    """``Recommendation(study_name=..., batch_size=..., ...)``: the setting and its predictions,
    at most ``REPR_LIMIT`` characters (the Pareto front, diagnostics and trials are counted,
    not listed)."""
    metric = "" if rec.predicted_metric is None else f", predicted_{rec.metric}={rec.predicted_metric:.4g}"
    peak = "" if rec.predicted_peak_bytes is None else f", predicted_peak={format_bytes(rec.predicted_peak_bytes)!r}"
    text = (f"Recommendation(study_name={rec.study_name!r}, batch_size={rec.batch_size}, "
            f"accumulation_steps={rec.accumulation_steps}, learning_rate={rec.learning_rate:.4g}, "
            f"priority={rec.priority!r}{metric}, predicted_epoch_time_s={rec.predicted_epoch_time_s:.3g}{peak}, "
            f"trials={len(rec.trials)}, pareto_front={len(rec.pareto_front)} points)")
    return text if len(text) <= REPR_LIMIT else text[:REPR_LIMIT - 4] + "...)"
