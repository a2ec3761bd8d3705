"""A study's memory estimate: the training step's model, the evaluation's model and the rule
that picks the evaluation batch, the cap, and the sizes known not to fit; read from and written
to the study attribute ``memory_model``, and refit from the peaks trials measured. Pure."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from ._fit import fit
from ._forms import FORMS, UNBOUNDED_BATCH_SIZE, MemoryModel

EVAL_BATCH_FACTOR = 4  # evaluation keeps no activations for backward: larger batches fit
REFIT_TOLERANCE = 0.01  # a trial peak this far above the prediction corrects the model
_FORM_KEYS = {"form"} | {f.name for cls in FORMS.values() for f in dataclasses.fields(cls)}


@dataclass(frozen=True, kw_only=True)
class TrialPeaks:
    """What one trial measured: micro-batch ``batch_size`` and its training peak, the
    evaluation batch and its peak (bytes; None where not measured), and ``failed``: the phase
    (``"train"`` or ``"eval"``) that ran out of memory or measured over the cap, if any."""

    batch_size: int
    train_bytes: Optional[float] = None
    eval_batch_size: Optional[int] = None
    eval_bytes: Optional[float] = None
    failed: Optional[str] = None


@dataclass(frozen=True, kw_only=True)
class MemoryEstimate:
    """Peak of a trial at micro-batch ``b``: ``max(train(b), eval(eval_batch(b)))``.

    ``eval_batch(b) = min(EVAL_BATCH_FACTOR * b, eval_max_batch_size)``: the evaluation batch
    is chosen to fit under the cap, so the cap binds the training step. ``too_big`` is the
    smallest micro-batch not to train, whatever the model says: one the probe or a trial found
    not to fit (out of memory or over the cap) or that the user's code refused (it raised there
    after smaller sizes trained), or, when the model cannot see such a failure, the one above the
    largest size the probe measured to fit. ``refused_batch_size`` is the smallest micro-batch the
    user's code refused and ``refused_reason`` its one line (``UserCodeError``'s message): a
    micro-batch from there up cannot train, whatever the memory.
    """

    train: MemoryModel
    eval: Optional[MemoryModel] = None
    eval_max_batch_size: Optional[int] = None
    cap_bytes: Optional[int] = None
    too_big: Optional[int] = None
    refused_batch_size: Optional[int] = None
    refused_reason: Optional[str] = None

    def refusal(self, batch_size: int) -> Optional[str]:
        """Why micro-batch ``batch_size`` cannot train this model (the user's code refused it or a
        smaller size), or None."""
        if self.refused_batch_size is None or batch_size < self.refused_batch_size:
            return None
        return f"micro-batch {self.refused_batch_size} raised in the probe: {self.refused_reason}"

    def eval_batch(self, batch_size: int) -> int:
        limit = self.eval_max_batch_size or UNBOUNDED_BATCH_SIZE
        return max(1, min(EVAL_BATCH_FACTOR * batch_size, limit))

    def predict_parts(self, batch_size: int) -> tuple[float, Optional[float]]:
        """(training step peak, evaluation peak or None) at micro-batch ``batch_size``, bytes."""
        evaluation = None if self.eval is None else self.eval.predict(self.eval_batch(batch_size))
        return self.train.predict(batch_size), evaluation

    def predict(self, batch_size: int) -> float:
        train, evaluation = self.predict_parts(batch_size)
        return train if evaluation is None else max(train, evaluation)

    def max_batch_size(self, cap_bytes: Optional[float] = None) -> Optional[int]:
        """Largest micro-batch under ``cap_bytes`` (default: the stored cap) and below
        ``too_big``; None when there is neither a cap nor a failed size."""
        cap = self.cap_bytes if cap_bytes is None else cap_bytes
        limits = [] if cap is None else [self.train.max_batch_size(cap)]
        if self.too_big is not None:
            limits.append(self.too_big - 1)
        return min(limits) if limits else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MemoryEstimate":
        """Reads the study attribute: the training model at the top level (a legacy
        ``{fixed_bytes, per_sample_bytes}`` is ``Affine``), the rest where present."""
        evaluation = data.get("eval_model")
        return cls(train=MemoryModel.from_dict(data),
                   eval=MemoryModel.from_dict(evaluation) if evaluation else None,
                   eval_max_batch_size=data.get("eval_max_batch_size"),
                   cap_bytes=data.get("cap_bytes"), too_big=data.get("too_big"),
                   refused_batch_size=data.get("refused_batch_size"), refused_reason=data.get("refused_reason"))


def store_models(data: dict[str, Any], estimate: MemoryEstimate) -> dict[str, Any]:
    """``data`` with ``estimate``'s models, limits and cap written in (training model at the top
    level, replacing any other form's coefficients)."""
    out = {k: v for k, v in data.items() if k not in _FORM_KEYS}
    out.update(estimate.train.to_dict())
    out.update(eval_model=estimate.eval.to_dict() if estimate.eval else None,
               eval_max_batch_size=estimate.eval_max_batch_size, eval_batch_factor=EVAL_BATCH_FACTOR,
               cap_bytes=estimate.cap_bytes, too_big=estimate.too_big,
               refused_batch_size=estimate.refused_batch_size, refused_reason=estimate.refused_reason,
               max_batch_size=estimate.max_batch_size())
    return out


def _probe_points(points: Optional[Iterable[dict[str, Any]]]) -> list[tuple[int, float]]:
    return [(int(p["batch_size"]), float(p["peak_bytes"])) for p in points or ()
            if p.get("peak_bytes") is not None]


def _corrected(model: MemoryModel, probe: Sequence[tuple[int, float]],
               measured: Sequence[tuple[int, float]]) -> MemoryModel:
    """``model`` refit with the measured peaks it under-predicts (by more than
    ``REFIT_TOLERANCE``) added to the probe's points; unchanged when none is."""
    above = [(b, y) for b, y in measured if y > model.predict(b) * (1 + REFIT_TOLERANCE)]
    if not above:
        return model
    points = list(probe) + above
    if len({b for b, _ in points}) >= 2:
        return fit(points)
    return model.shifted(max(y - model.predict(b) for b, y in above))


def probe_estimate(data: dict[str, Any]) -> MemoryEstimate:
    """The estimate as the probe left it (``data["probe"]``), before any refit; for a study
    stored before refits existed, the stored model itself."""
    probe = data.get("probe")
    if not probe:
        return MemoryEstimate.from_dict(data)
    return MemoryEstimate(train=MemoryModel.from_dict(probe["train"]),
                          eval=MemoryModel.from_dict(probe["eval"]) if probe.get("eval") else None,
                          eval_max_batch_size=probe.get("eval_max_batch_size"),
                          cap_bytes=data.get("cap_bytes"), too_big=probe.get("too_big"),
                          refused_batch_size=data.get("refused_batch_size"),
                          refused_reason=data.get("refused_reason"))


def refit(data: dict[str, Any], trials: Iterable[TrialPeaks]) -> dict[str, Any]:
    """The study attribute ``data`` (as ``ProbeResult.to_dict`` wrote it) refit from the
    probe's points and the trials' measured peaks.

    Starting from the probe's models each time (refits do not compound): a model that
    under-predicts a trial's peak is refit with that peak added to the probe's points; a phase
    that failed (out of memory, over the cap) bounds the micro-batch (``too_big``) or the
    evaluation batch; the evaluation limit is recomputed under the cap. The distinct points the
    trials measured are kept as ``trial_points``, in the order first seen: a study repeats
    micro-batches, and a repeated point changes nothing here (``fit`` keeps a size's largest
    peak, the bounds are minima), so the attribute, and a refit's work, grow with the distinct
    micro-batches tried, not with the trials.
    """
    trials = list(dict.fromkeys(trials))
    base = probe_estimate(data)
    cap = base.cap_bytes
    train = _corrected(base.train, _probe_points(data.get("points")),
                       [(t.batch_size, t.train_bytes) for t in trials if t.train_bytes])
    evaluation, eval_max = base.eval, base.eval_max_batch_size
    if evaluation is not None:
        evaluation = _corrected(evaluation, _probe_points(data.get("eval_points")),
                                [(t.eval_batch_size, t.eval_bytes) for t in trials
                                 if t.eval_bytes and t.eval_batch_size])
        failed = [t.eval_batch_size - 1 for t in trials if t.failed == "eval" and t.eval_batch_size]
        limits = [v for v in (base.eval_max_batch_size, *failed) if v is not None]
        if cap is not None:
            limits.append(evaluation.max_batch_size(cap))
        eval_max = max(1, min(limits)) if limits else None
    too_big = min([t.batch_size for t in trials if t.failed == "train"]
                  + ([base.too_big] if base.too_big else []), default=None)
    estimate = dataclasses.replace(base, train=train, eval=evaluation, eval_max_batch_size=eval_max,
                                   too_big=too_big)
    out = store_models(data, estimate)
    out["trial_points"] = [dataclasses.asdict(t) for t in trials]
    return out
