"""Memory around one trial: the study's current estimate, the check before training (predicted
over the cap, or at a size a trial found not to fit), and the check after it (the measured peak
against the cap and the prediction), then the estimate refit from every trial's measured peaks
so that later proposals use corrected predictions."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional

import optuna
from torch.utils.data import Dataset, Subset, TensorDataset

from .. import records as R
from ..memory import MemoryEstimate, TrialPeaks, refit, relative_error
from ..records import TrialConfig, TrialResult
from ..train import MEASURED_STEPS
from ..units import format_bytes


@dataclass(frozen=True)
class OverMemory:
    """Why a configuration will not fit: ``over`` (> 0) is the constraint value for the sampler."""

    over: float
    detail: str


def current_estimate(study: optuna.Study, fallback: Optional[MemoryEstimate],
                     attrs: Optional[dict] = None) -> Optional[MemoryEstimate]:
    """The estimate as last refit and stored with the study (another worker may have refit it),
    from ``attrs`` (the study's user attributes as just read, e.g. by the claim) or a fresh
    read; ``fallback`` when the study has none."""
    data = (study.user_attrs if attrs is None else attrs).get(R.STUDY_MEMORY_MODEL)
    return MemoryEstimate.from_dict(data) if data else fallback


def over_memory(estimate: Optional[MemoryEstimate], batch_size: int, cap: Optional[int]) -> Optional[OverMemory]:
    """Why micro-batch ``batch_size`` should not train under ``cap``, or None when it should."""
    if estimate is None or not cap:
        return None
    predicted = estimate.predict(batch_size)
    over = (predicted - cap) / cap
    if estimate.too_big is not None and batch_size >= estimate.too_big:
        return OverMemory(max(over, 0.01), f"micro-batch {batch_size}: micro-batch {estimate.too_big} did not "
                                           "fit when measured earlier, by the probe or a trial (out of memory or "
                                           "over the cap)")
    if over > 0:
        return OverMemory(over, f"micro-batch {batch_size} predicted at {format_bytes(predicted)} "
                                f"> cap {format_bytes(cap)}")
    return None


def measured_memory(result: TrialResult, predicted: Optional[float],
                    cap: Optional[int]) -> tuple[dict, dict, bool]:
    """What to store about the trial's measured peak against the cap and the prediction:
    ``(user_attrs, system_attrs, over_cap)``, for the one write of the trial's results. The
    memory constraint (measured over cap, else predicted, else 0) goes in both of its forms
    (``records.memory_constraint_attrs``). ``over_cap``: the trial went over the cap, so it is
    infeasible (violated constraint, reason stored) whatever its training did."""
    measured = result.measured_peak_bytes
    user: dict = {}
    if measured and predicted:
        user[R.MEMORY_PREDICTION_ERROR] = relative_error(predicted, measured)
    peak = measured or predicted
    over = (peak - cap) / cap if peak and cap else 0.0
    system = R.memory_constraint_attrs(over)
    if not measured or over <= 0:
        return user, system, False
    if result.stop_reason != R.STOP_OVER_CAP:  # e.g. a CUDA peak after the measured phases
        detail = (f"measured peak {format_bytes(measured)} > cap {format_bytes(cap)}"
                  + (f" (after: {result.stop_detail})" if result.stop_detail else ""))
        user.update({R.STOP_REASON: R.STOP_OVER_CAP, R.STOP_DETAIL: detail,
                     R.READABLE_STOP: f"{R.STOP_OVER_CAP}: {detail}"})
    return user, system, True


def trial_peaks(trials: Iterable[optuna.trial.FrozenTrial]) -> list[TrialPeaks]:
    """What the stored ``trials`` measured, each distinct measurement once (in the order first
    seen; trials that measured nothing left out): a study repeats micro-batches, and a refit
    needs each point once (``memory.refit``)."""
    seen: dict[tuple, None] = {}
    for trial in trials:
        a = trial.user_attrs
        batch = a.get(R.BATCH_SIZE)
        if batch is not None:
            seen[(int(batch), a.get(R.MEASURED_TRAIN_PEAK_BYTES), a.get(R.EVAL_BATCH_SIZE),
                  a.get(R.MEASURED_EVAL_PEAK_BYTES), a.get(R.MEMORY_FAILED_PHASE))] = None
    return [TrialPeaks(batch_size=b, train_bytes=train, eval_batch_size=eval_b, eval_bytes=evaluation, failed=failed)
            for b, train, eval_b, evaluation, failed in seen if train or evaluation or failed]


def refit_study_memory(study: optuna.Study, attrs: Optional[dict] = None,
                       trials: Optional[list[optuna.trial.FrozenTrial]] = None) -> Optional[MemoryEstimate]:
    """Refit the stored estimate from every trial's measured peaks, store it when it changed,
    return it. ``attrs``/``trials``: the study's user attributes and trials as already read (the
    claim's and the worker's snapshot plus the trial just run: a trial another worker finished
    meanwhile joins at the next refit, which reads every trial again); None reads them."""
    data = (study.user_attrs if attrs is None else attrs).get(R.STUDY_MEMORY_MODEL)
    if not data:
        return None
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    measured = trial_peaks(trials)
    if not measured:
        return MemoryEstimate.from_dict(data)
    updated = refit(data, measured)
    if updated != data:
        study.set_user_attr(R.STUDY_MEMORY_MODEL, updated)
    return MemoryEstimate.from_dict(updated)


@dataclass(frozen=True)
class KnownPeaks:
    """A CPU trial's exact peaks (bytes) at one micro-batch, accumulation and evaluation batch,
    measured by trial ``number``."""

    number: int
    train_bytes: int
    eval_bytes: int


def known_peaks(trials: Sequence[optuna.trial.FrozenTrial], config: TrialConfig, eval_batch_size: int,
                cap: Optional[int], train_samples: int) -> Optional[KnownPeaks]:
    """The peaks an earlier CPU trial measured at exactly this micro-batch, accumulation and
    evaluation batch (the latest such trial, whose own figures were measured, not reused), or
    None. On CPU the peaks are an exact accounting of tensor allocations, the same for the same
    shapes (``memory.TrialMeter``), so measuring them again under the profiler (~6 ms a trial)
    gives the same numbers; a trial whose phase failed, whose peak is over ``cap``, or that
    stopped before its measured steps were done (``measured_train_samples`` of the study's
    ``train_samples``: its peak is not the shape's) is not used (a trial measures again and
    the cap is enforced)."""
    complete = measured_train_samples(config, train_samples)
    for trial in reversed(trials):
        a = trial.user_attrs
        if (a.get(R.BATCH_SIZE) == config.batch_size and a.get(R.ACCUMULATION_STEPS) == config.accumulation_steps
                and (a.get(R.SAMPLES_SEEN) or 0) >= complete
                and a.get(R.EVAL_BATCH_SIZE) == eval_batch_size and a.get(R.DEVICE) == "cpu"
                and a.get(R.MEMORY_MEASURED_IN) is None and not a.get(R.MEMORY_FAILED_PHASE)
                and a.get(R.MEASURED_TRAIN_PEAK_BYTES) and a.get(R.MEASURED_EVAL_PEAK_BYTES)):
            train, evaluation = int(a[R.MEASURED_TRAIN_PEAK_BYTES]), int(a[R.MEASURED_EVAL_PEAK_BYTES])
            if cap is not None and max(train, evaluation) > cap:
                return None
            return KnownPeaks(trial.number, train, evaluation)
    return None


def fixed_shapes(train: Dataset, val: Dataset) -> bool:
    """Whether every batch of the splits has the same shape at a given size: in-memory tensors
    (``TensorDataset``, or subsets of one), where a micro-batch's peak does not depend on which
    samples it holds. A dataset of variable-size items is measured in every trial."""
    def tensors(dataset: Dataset) -> bool:
        while isinstance(dataset, Subset):
            dataset = dataset.dataset
        return isinstance(dataset, TensorDataset)
    return tensors(train) and tensors(val)


def measured_train_samples(config: TrialConfig, train_samples: int) -> int:
    """Samples seen when a measuring trial's training peak is complete (``train.train_trial``
    measures its first ``MEASURED_STEPS`` optimizer steps, an evaluation between them or not):
    those steps, or all of a shorter trial's."""
    step = config.effective_batch_size
    return min(MEASURED_STEPS, max(1, math.ceil(train_samples / step))) * step


def with_known_peaks(result: TrialResult, known: KnownPeaks, eval_batch_size: int) -> TrialResult:
    """``result`` (trained without memory accounting) with ``known``'s peaks for the phases it
    reached: the training peak once it ran an optimizer step (``known``'s covers the measured
    steps, ``measured_train_samples``: a trial stopped after one step stores the peak its shape
    reaches, never less than a measuring trial stopped there, which measured one step), the
    evaluation peak once it evaluated; ``measured_peak_bytes`` the larger of the two."""
    trained = result.samples_seen >= result.config.effective_batch_size
    train = known.train_bytes if trained else None
    evaluation = known.eval_bytes if result.curve else None
    peaks = dataclasses.replace(result.peaks, train_bytes=train, eval_bytes=evaluation,
                                eval_batch_size=eval_batch_size)
    measured = max((v for v in (train, evaluation) if v is not None), default=None)
    return dataclasses.replace(result, peaks=peaks, measured_peak_bytes=measured)
