"""``Recommendation``: one recommended setting, the training recipe and trial length it was tuned
for, its predicted metrics with intervals, and the evidence. Immutable; ``to_dict``/``from_dict``
are its JSON form (the study attribute).

It also builds, one line each, what a training script needs to train exactly what the trials
measured (torch is imported when one of these is called, not with this module)::

    optimizer = rec.build_optimizer(model.parameters())   # the recipe's optimizer at the tuned lr
    scheduler = rec.build_scheduler(optimizer)             # its lr schedule over rec.optimizer_steps
    loss_fn = rec.build_loss()                             # its loss: loss_fn(outputs, targets)
    scaler = rec.build_grad_scaler(device)                 # enabled for fp16 only
    loader = rec.dataloader(train_set)                     # micro-batches of rec.batch_size
    with rec.autocast(device): ...                         # fp32 / bf16 / fp16, as the trials ran
    rec.clip_gradients(model.parameters(), optimizer=optimizer, scaler=scaler)

and exports the setting for the trainers people use: ``rec.export("json" | "toml" | "hf" |
"lightning")``, ``rec.hf_training_arguments()``, ``rec.lightning_export()``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import numpy as np

from ..errors import AutobatchError
from ..recipe import TrainRecipe, metric_label
from ..units import format_bytes
from ._exports import TrainingSetup, export_text, hf_training_arguments, lightning_export
from ._intervals import COVERAGE
from ._text import short_repr, summary

_DERIVED = ("metric", "metric_name", "metric_direction", "optimizer_steps", "epochs",
            "verification")  # in to_dict only


@dataclass(frozen=True, kw_only=True, repr=False)
class Recommendation:
    """One recommended setting, its recipe and trial length, predicted metrics, the evidence.

    ``predicted_metric``/``metric_interval``: the study's metric (``recipe.metric``; accuracy by
    default) at this setting, in its own units. ``predicted_accuracy``/``accuracy_interval``:
    the same numbers when the metric is an accuracy (top-1 or top-k), else None.
    ``train_samples``: the training samples per trial the setting was tuned at (the lr
    schedule's length); ``optimizer_steps`` and ``epochs`` follow from it. ``device``: the
    device type the trials ran on (``"cpu"``, ``"cuda"``).
    """

    study_name: str
    batch_size: int
    learning_rate: float
    accumulation_steps: int
    effective_batch_size: int
    lr_multiplier: float
    priority: str
    predicted_metric: Optional[float] = None
    metric_interval: Optional[tuple[float, float]] = None
    predicted_accuracy: Optional[float] = None
    accuracy_interval: Optional[tuple[float, float]] = None
    predicted_epoch_time_s: float
    epoch_time_interval: tuple[float, float]
    predicted_peak_bytes: Optional[int]
    peak_bytes_interval: Optional[tuple[float, float]]
    pareto_front: tuple[dict, ...]
    trials: tuple[int, ...]
    best_trial: Optional[int]
    rationale: str
    constraints: dict
    time_to_target: Optional[dict] = None  # {"target", "samples", "seconds", "trial"}
    diagnostics: dict = field(default_factory=dict)  # fit quality of each model
    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    train_samples: Optional[int] = None
    train_size: Optional[int] = None
    device: Optional[str] = None
    # the gradient noise scale B_simple (McCandlish et al. 2018) in samples, its interval and where
    # it comes from (``recommender._critical``); the Pollux-style goodput pick (Qiao et al. 2021)
    critical_batch: Optional[float] = None
    critical_batch_interval: Optional[tuple[float, Optional[float]]] = None  # top None: unbounded
    critical_batch_source: Optional[str] = None
    goodput_pick: Optional[dict] = None
    # verification (``autobatch.tuning.verify_answer``): the setting re-trained with fresh seeds
    verified_metric: Optional[float] = None       # mean of the measurements, the metric's units
    verified_values: tuple[float, ...] = ()
    verified_seeds: tuple[int, ...] = ()
    verification_verdict: Optional[str] = None    # "inside", "below", "above", "outside" the interval
    verification_note: Optional[str] = None       # why it was not (fully) verified
    verified_holdout_metric: Optional[float] = None  # the same runs on validation samples no trial saw
    verified_holdout_samples: Optional[int] = None
    confidence_note: Optional[str] = None         # why to trust it less and what would fix it
    batchnorm_note: Optional[str] = None          # BatchNorm sees the micro-batch (accumulating answers)
    # settings recommended before this one whose verification measured them worse than their
    # interval; the re-rank fitted those runs and chose this one (``tuning.verify_answer``):
    # {"batch_size", "accumulation_steps", "lr_multiplier", "learning_rate", "predicted_metric",
    #  "metric_interval", "values", "verdict"} each, in order
    reranked_from: tuple[dict, ...] = ()

    def __post_init__(self) -> None:
        if self.predicted_metric is None and self.predicted_accuracy is not None:  # stored before metrics
            object.__setattr__(self, "predicted_metric", self.predicted_accuracy)
            object.__setattr__(self, "metric_interval", self.accuracy_interval)
        # an epoch time, a peak and a critical batch are never below zero, nor is any interval's
        # low end above its high end: every interval is clipped here, whoever built it (records
        # stored before issue 18 held a memory interval of [-81.6 MiB, 190 MiB])
        for name in ("epoch_time_interval", "peak_bytes_interval"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _nonnegative(*getattr(self, name)))
        critical = self.critical_batch_interval
        if critical is not None and critical[0] is not None:
            object.__setattr__(self, "critical_batch_interval", _nonnegative(*critical) if critical[1] is not None
                               else (max(0.0, float(critical[0])), None))

    def __str__(self) -> str:
        """The short block ``autobatch recommend`` prints: setting, predictions with intervals,
        recipe, why."""
        return summary(self)

    def __repr__(self) -> str:
        """The setting and its predictions in under 400 characters (``to_dict`` has it all)."""
        return short_repr(self)

    # --- what it was tuned for ----------------------------------------------------------------

    @property
    def metric(self) -> str:
        return self.recipe.metric

    @property
    def metric_name(self) -> str:
        return self.recipe.metric_name

    @property
    def metric_direction(self) -> str:
        return self.recipe.direction

    @property
    def optimizer_steps(self) -> Optional[int]:
        """Optimizer steps of a tuned trial: ``ceil(train_samples / effective_batch_size)``."""
        return None if self.train_samples is None else self.optimizer_steps_for(self.train_samples)

    @property
    def epochs(self) -> Optional[float]:
        """Epochs of a tuned trial: ``train_samples / train_size``."""
        if self.train_samples is None or not self.train_size:
            return None
        return self.train_samples / self.train_size

    def optimizer_steps_for(self, samples: int) -> int:
        """Optimizer steps that train ``samples`` samples at this effective batch (rounded up)."""
        return max(1, math.ceil(samples / self.effective_batch_size))

    # --- building the training script's objects (torch imported on call) -----------------------

    def build_optimizer(self, params: Iterable[Any]) -> Any:
        """The recipe's ``torch.optim.Optimizer`` over ``params`` at ``learning_rate``."""
        from ..train import make_optimizer

        return make_optimizer(params, self.learning_rate, self.recipe)

    def build_scheduler(self, optimizer: Any, total_steps: Optional[int] = None) -> Any:
        """The recipe's ``torch.optim.lr_scheduler`` over ``total_steps`` optimizer steps
        (default: ``optimizer_steps``, the tuned trial's length; for a longer run pass
        ``optimizer_steps_for(samples)``); call ``.step()`` after each ``optimizer.step()``."""
        from ..train import make_scheduler

        steps = total_steps if total_steps is not None else self.optimizer_steps
        if steps is None:
            raise AutobatchError("this recommendation does not record its trial length; pass total_steps")
        return make_scheduler(optimizer, steps, self.recipe)

    def build_loss(self) -> Any:
        """The recipe's loss, ``loss(outputs, targets) -> batch-mean tensor``."""
        from ..train import make_loss

        return make_loss(self.recipe)

    def build_metric(self) -> Any:
        """The recipe's validation metric (``autobatch.train.Metric``: per-batch sums, ``reduce``)."""
        from ..train import make_metric

        return make_metric(self.recipe)

    def autocast(self, device: Any) -> Any:
        """The recipe's precision context for the forward pass and the loss on ``device``
        (nothing for fp32, ``torch.autocast`` for bf16/fp16); fp16 off CUDA is an error."""
        from ..train import autocast

        return autocast(self.recipe, device)

    def build_grad_scaler(self, device: Any) -> Any:
        """A ``torch.amp.GradScaler``, enabled for fp16 only (a pass-through otherwise)."""
        from ..train import make_grad_scaler

        return make_grad_scaler(self.recipe, device)

    def clip_gradients(self, parameters: Iterable[Any], *, optimizer: Any = None, scaler: Any = None) -> Any:
        """Clip to the recipe's max gradient norm (a no-op without one); once per optimizer
        step before ``scaler.step``/``optimizer.step`` (pass both under fp16)."""
        from ..train import clip_gradients

        return clip_gradients(self.recipe, parameters, optimizer=optimizer, scaler=scaler)

    def dataloader(self, dataset: Any, *, samples: Optional[int] = None, seed: Optional[int] = None,
                   **kwargs: Any) -> Any:
        """A ``DataLoader`` of micro-batches of ``batch_size`` drawn as the trials drew them:
        reshuffled epochs one after the other, ``samples`` samples in all (default: the tuned
        trial's ``optimizer_steps * effective_batch_size``), so one pass over it is
        ``accumulation_steps`` micro-batches per optimizer step, ``optimizer_steps`` steps.
        ``seed`` fixes the order; other keywords go to ``DataLoader`` (``num_workers``, ...)."""
        import torch
        from torch.utils.data import DataLoader, RandomSampler

        if samples is None:
            steps = self.optimizer_steps or self.optimizer_steps_for(len(dataset))
            samples = steps * self.effective_batch_size
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        sampler = RandomSampler(dataset, replacement=False, num_samples=samples, generator=generator)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, **kwargs)

    # --- exports ------------------------------------------------------------------------------

    def training_setup(self, train_samples: Optional[int] = None) -> TrainingSetup:
        """The setting and recipe as a ``TrainingSetup`` (what the exports take), over
        ``train_samples`` (default: the tuned trial length)."""
        samples = train_samples if train_samples is not None else self.train_samples
        if samples is None:
            raise AutobatchError("this recommendation does not record its trial length; pass train_samples")
        return TrainingSetup(recipe=self.recipe, micro_batch_size=self.batch_size,
                             accumulation_steps=self.accumulation_steps, learning_rate=self.learning_rate,
                             train_samples=int(samples), device=(self.device or "cuda").split(":")[0],
                             dataset_size=self.train_size or None)

    def export(self, fmt: str) -> str:
        """Text for ``fmt``: ``json`` (this recommendation, ``to_dict``), ``toml`` (the setting,
        trial length and ``[recipe]`` table), ``hf`` (``transformers.TrainingArguments``
        keywords), ``lightning`` (``lightning.Trainer`` keywords, DataLoader batch size,
        optimizer and scheduler). Raises ``AutobatchError`` when the format cannot express
        the recipe (e.g. ``hf`` and ``onecycle``), saying what to do instead."""
        if fmt == "json":
            import json

            return json.dumps(self.to_dict(), indent=2)
        return export_text(self.training_setup(), fmt)

    def hf_training_arguments(self) -> dict[str, Any]:
        """Keywords for ``transformers.TrainingArguments(output_dir=..., **kwargs)``."""
        return hf_training_arguments(self.training_setup())

    def lightning_export(self) -> dict[str, Any]:
        """``{"trainer": lightning.Trainer keywords, "dataloader": {"batch_size"}, "optimizer",
        "scheduler"}``; ``configure_optimizers`` can return ``{"optimizer":
        rec.build_optimizer(self.parameters()), "lr_scheduler": {"scheduler":
        rec.build_scheduler(optimizer), "interval": "step"}}``."""
        return lightning_export(self.training_setup())

    # --- stored form ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = _plain(dataclasses.asdict(self))
        data["recipe"] = self.recipe.to_dict()
        data.update({name: _plain(getattr(self, name)) for name in _DERIVED})
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recommendation":
        data = {k: v for k, v in data.items() if k not in _DERIVED}
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise AutobatchError(f"unknown recommendation fields: {', '.join(sorted(unknown))}")
        for name in ("metric_interval", "accuracy_interval", "epoch_time_interval", "peak_bytes_interval",
                     "trials", "critical_batch_interval", "verified_values", "verified_seeds"):
            if data.get(name) is not None:
                data[name] = tuple(data[name])
        data["reranked_from"] = tuple(dict(r) for r in data.get("reranked_from") or ())
        data["pareto_front"] = tuple(dict(p) for p in data.get("pareto_front", ()))
        data["recipe"] = TrainRecipe.from_dict(data.get("recipe"))  # stored before recipes: 0.1's
        return cls(**data)

    @property
    def verification(self) -> Optional[str]:
        """``verification_line()``: stored in ``to_dict`` for the CLI and the report."""
        return self.verification_line()

    def verification_line(self) -> Optional[str]:
        """One line: measured beside predicted, ``verified: 95.2% (seed 7), predicted 96.2% [95.9%,
        96.4%]``, and plainly when the measurement fell outside the interval; the reason when
        it was not verified; None when verification was not attempted."""
        fmt = (lambda x: f"{x:.1%}") if self.recipe.metric_is_fraction else (lambda x: f"{x:.4g}")  # noqa: E731
        if not self.verified_values:
            return self.verification_note
        seeds = ", ".join(str(s) for s in self.verified_seeds)
        runs = (f"{fmt(self.verified_values[0])} (seed {seeds})" if len(self.verified_values) == 1 else
                f"{fmt(self.verified_metric)} (mean of {', '.join(fmt(v) for v in self.verified_values)}; seeds {seeds})")
        line = f"verified: {runs}, predicted {fmt(self.predicted_metric)}"
        line += f" [{fmt(self.metric_interval[0])}, {fmt(self.metric_interval[1])}]" if self.metric_interval else ""
        if self.verified_holdout_metric is not None:
            held, (lo, hi) = self.verified_holdout_metric, self.metric_interval or (-math.inf, math.inf)
            worse = held < lo if self.recipe.direction == "maximize" else held > hi
            line += (f"; {fmt(held)} on {self.verified_holdout_samples} held-out validation samples the study "
                     "did not select on" + (" (worse than the interval, which is fitted to the samples the study "
                                            "selected on: the held-out figure is the fairer guess for new data)"
                                            if worse else ""))
        if self.verification_verdict in ("below", "above", "outside"):
            where = {"below": "below", "above": "above", "outside": "partly outside"}[self.verification_verdict]
            line += (f"; the re-training came out {where} the predicted interval: the prediction did not hold, "
                     "trust the measurement")
        if self.verification_note:
            line += f"; {self.verification_note}"
        return line

    def rerank_line(self) -> Optional[str]:
        """One line per setting a verification contradicted before this answer was chosen:
        ``re-ranked: batch 64 x 1, lr 0.2 was recommended first (predicted 96.2% [95.9%, 96.4%])
        and re-trained at 93.1%, below its interval; refitted with that measurement, this setting
        now wins``; None when the answer was not re-ranked."""
        if not self.reranked_from:
            return None
        fmt = (lambda x: f"{x:.1%}") if self.recipe.metric_is_fraction else (lambda x: f"{x:.4g}")  # noqa: E731
        parts = []
        for r in self.reranked_from:
            lo, hi = r.get("metric_interval") or (math.nan, math.nan)
            values = r.get("values") or ()
            parts.append(f"batch {r['batch_size']} x {r['accumulation_steps']}, lr {r['learning_rate']:.3g} was "
                         f"recommended (predicted {fmt(r['predicted_metric'])} [{fmt(lo)}, {fmt(hi)}]) and "
                         f"re-trained at {', '.join(fmt(v) for v in values)}, {r.get('verdict') or 'outside'} "
                         "its interval")
        return ("re-ranked: " + "; then ".join(parts) + "; refitted with those measurements, this setting "
                "now wins" + ("" if self.verified_values else " (not verified)"))

    def markdown(self) -> str:
        fraction = self.recipe.metric_is_fraction
        fmt = (lambda x: f"{100 * x:.1f} %") if fraction else (lambda x: f"{x:.4g}")  # noqa: E731
        t_lo, t_hi = self.epoch_time_interval
        rows = [("micro-batch size", str(self.batch_size), ""),
                ("accumulation steps", str(self.accumulation_steps), ""),
                ("effective batch size", str(self.effective_batch_size), ""),
                ("learning rate", f"{self.learning_rate:.4g}", f"multiplier {self.lr_multiplier:.3g}")]
        if self.predicted_metric is not None and self.metric_interval is not None:
            lo, hi = self.metric_interval
            name = metric_label(self.metric)
            rows.append((name, fmt(self.predicted_metric), f"{fmt(lo)} – {fmt(hi)}"))
        rows.append(("epoch time", f"{self.predicted_epoch_time_s:.3g} s", f"{t_lo:.3g} – {t_hi:.3g} s"))
        if self.predicted_peak_bytes is not None and self.peak_bytes_interval is not None:
            p_lo, p_hi = self.peak_bytes_interval
            rows.append(("peak memory", format_bytes(self.predicted_peak_bytes),
                         f"{format_bytes(p_lo)} – {format_bytes(p_hi)}"))
        coverage = self.diagnostics.get("coverage", COVERAGE)
        lines = [f"### autobatch recommendation ({self.priority})", "",
                 f"| | predicted | {coverage:.0%} interval |", "| --- | --- | --- |"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
        best = f"; best observed trial #{self.best_trial}" if self.best_trial is not None else ""
        lines += ["", self.rationale, "", f"Fitted to {len(self.trials)} trials{best}."]
        lines += self._critical_lines()
        for note in (self.verification_line(), self.rerank_line(), self.confidence_note, self.batchnorm_note):
            if note:
                lines += ["", note[0].upper() + note[1:] + ("" if note.endswith(".") else ".")]
        r = self.recipe
        length = (f", tuned over {self.optimizer_steps} optimizer steps ({self.train_samples} samples)"
                  if self.train_samples else "")
        lines += ["", f"Recipe: {r.optimizer}, {r.schedule} schedule ({r.warmup_fraction:g} warm-up), "
                      f"{r.precision}, {r.loss}{length}."]
        return "\n".join(lines) + "\n"

    def _critical_lines(self) -> list[str]:
        """The critical batch and the goodput pick, for ``markdown``."""
        if self.critical_batch is None:
            return []
        span = ""
        if self.critical_batch_interval is not None:
            lo, hi = self.critical_batch_interval
            span = f" (interval {lo:.0f}–{hi:.0f})" if hi is not None and math.isfinite(hi) else f" (at least {lo:.0f})"
        lines = ["", f"Critical batch ≈ {self.critical_batch:.0f}{span}: beyond it, larger batches buy little "
                     f"speed-up per sample (gradient noise scale, McCandlish et al. 2018; {self.critical_batch_source})."]
        if self.goodput_pick:
            g = self.goodput_pick
            lines.append(f"Highest predicted goodput (throughput x statistical efficiency, Pollux): batch "
                         f"{g['batch_size']} x {g['accumulation_steps']} accumulation (effective "
                         f"{g['effective_batch_size']}, efficiency {g['efficiency']:.2f}).")
        return lines


def _nonnegative(low: float, high: float) -> tuple[float, float]:
    """``(low, high)`` in order with the low end at zero or above."""
    lo, hi = sorted((float(low), float(high)))
    return max(0.0, lo), max(0.0, hi)


def _plain(value: Any) -> Any:
    """JSON-able copy: tuples to lists, numpy scalars to Python, NaN to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
