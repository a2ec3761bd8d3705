"""The critical batch at the start of ``tune``: the noise-scale probe, its note, its record with
the study, and the search centred on it when the user gave no batch range."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Optional

import optuna
import torch

from .. import records as R
from ..errors import AutobatchError
from ..memory import is_out_of_memory
from ..search import (StudySpec, TuneSettings, centre_on_critical_batch, enqueue_critical_batch, plan_train_samples,
                      range_given)
from ..train import (MIN_PROBE_STEPS, PROBE_ACCUMULATION, PROBE_MICRO_BATCH, PROBE_STEPS, check_recipe,
                     probe_noise_scale)
from ..workloads import Workload, build_model
from ._events import Note, TuneRun

PROBE_FRACTION = 0.02  # the noise probe's share of the planned study: of --budget, or of --n-trials' samples
NOISE_PROBE_OFF = ("critical batch not measured: the gradient-noise probe is off (--no-noise-probe or "
                   "noise_probe = false, your choice); the search is not centred on it")


@dataclass(frozen=True)
class ProbeShare:
    """What the noise probe may spend: at most ``steps`` optimizer steps (0: skip it, ``why``
    says why) and, with a budget, at most ``max_seconds`` wall seconds."""

    steps: int
    max_seconds: Optional[float]
    why: str = ""


def probe_share(*, budget_s: Optional[float], n_trials: Optional[int], trial_samples: int,
                samples_per_step: int = PROBE_MICRO_BATCH * PROBE_ACCUMULATION) -> ProbeShare:
    """The noise probe sized to the planned study, ``PROBE_FRACTION`` of it, with no floor that
    would exceed that share. With ``budget_s`` (seconds): that share of the budget, in seconds
    (the probe stops there, and gives up when its first step shows that ``MIN_PROBE_STEPS``
    steps would not fit: ``probe_noise_scale``). With ``n_trials`` trials of ``trial_samples``
    training samples: that share of the study's training samples, i.e. of its estimated time
    with the probe's own seconds per sample standing for a trial's (the probe trains micro-batch
    8, the slow end of a search, so the estimate errs towards a longer study and a longer probe).
    Both given: both bounds. ``steps`` is at most ``PROBE_STEPS``; 0 with a reason when fewer than
    ``MIN_PROBE_STEPS`` steps of ``samples_per_step`` samples fit: too few for an estimate."""
    max_seconds = PROBE_FRACTION * budget_s if budget_s else None
    if not n_trials:
        return ProbeShare(steps=PROBE_STEPS, max_seconds=max_seconds)
    share = PROBE_FRACTION * n_trials * trial_samples
    steps = min(PROBE_STEPS, int(share // samples_per_step))
    if steps >= MIN_PROBE_STEPS:
        return ProbeShare(steps=steps, max_seconds=max_seconds)
    return ProbeShare(steps=0, max_seconds=max_seconds, why=(
        f"{n_trials} trials of {trial_samples} samples leave it {share:.0f} samples "
        f"({PROBE_FRACTION:.0%} of the study), fewer than the {MIN_PROBE_STEPS * samples_per_step} "
        f"({MIN_PROBE_STEPS} steps of {samples_per_step}) an estimate needs"))


def critical_batch_sentence(value: float, interval: Optional[tuple[Optional[float], Optional[float]]]) -> str:
    """"critical batch ≈ 180 (80 % interval 120–260): beyond it, larger batches buy little
    speed-up per sample"; an open interval's top is written as "more"."""
    span = ""
    if interval is not None and interval[0] is not None:
        top = f"{interval[1]:.0f}" if interval[1] is not None and math.isfinite(interval[1]) else "more"
        span = f" (80 % interval {interval[0]:.0f}–{top})"
    return f"critical batch ≈ {value:.0f}{span}: beyond it, larger batches buy little speed-up per sample"


def measure_critical_batch(settings: TuneSettings, workload: Workload, device: torch.device,
                           run: TuneRun) -> Optional[dict]:
    """The noise-scale probe on a fresh model of the study's recipe at the scaling rule's lr, as
    the study stores it (``records.STUDY_NOISE_SCALE``), with ``critical_batch`` (None when
    ``|G|²`` was not resolved: then the critical batch is beyond what the probe can see). Says it
    in a ``Note``. Raises what ``build_model`` and ``check_recipe`` raise (the user's model,
    recipe or code: one error line); None, with a note, when the probe itself could not run."""
    started = time.perf_counter()
    b_big = PROBE_MICRO_BATCH * PROBE_ACCUMULATION
    with torch.random.fork_rng(devices=[]):  # the study's seed, the caller's generator untouched
        torch.manual_seed(settings.seed)
        model = build_model(settings.model, num_classes=workload.num_classes,
                            input_shape=workload.input_shape, vocab_size=workload.vocab_size)
    # the user's model, recipe and code fail here, as one error line, before anything is probed
    check_recipe(model, workload.val, device, settings.recipe, step=settings.step, step_eval=settings.step_eval,
                 targets=workload.targets)
    train_size = len(workload.train)
    share = probe_share(budget_s=settings.budget_s, n_trials=settings.n_trials,
                        trial_samples=plan_train_samples(seconds_left=None, seconds_per_sample=1.0,
                                                         train_size=train_size, epochs=settings.epochs))
    if not share.steps:
        run.emit(Note(text=f"gradient noise scale not measured: {share.why}"))
        return None
    try:
        estimate = probe_noise_scale(model, workload, device, recipe=settings.recipe, step=settings.step,
                                     learning_rate=settings.space.learning_rate(1.0, b_big), seed=settings.seed,
                                     steps=share.steps, max_seconds=share.max_seconds)
    except Exception as exc:  # noqa: BLE001 - the probe is advice: its failure is a note, never the run's end
        known = is_out_of_memory(exc) or isinstance(exc, AutobatchError)
        why = (str(exc).splitlines() or [""])[0][:160]
        run.emit(Note(text=f"gradient noise scale not measured: {why if known else f'{type(exc).__name__}: {why}'}"))
        return None
    record = estimate.to_dict()
    resolved = math.isfinite(estimate.b_simple) and estimate.b_simple > 0
    record.update(critical_batch=estimate.b_simple if resolved else None,
                  samples=estimate.measurements * estimate.b_big, seconds=time.perf_counter() - started)
    how = (f"gradient noise scale B_simple = tr(Σ)/|G|² from {record['samples']} samples at batches "
           f"{estimate.b_small} and {estimate.b_big}, McCandlish et al. 2018")
    if resolved:
        run.emit(Note(text=f"{critical_batch_sentence(estimate.b_simple, estimate.interval)} ({how})"))
    else:
        run.emit(Note(text=f"critical batch not resolved: the gradient is lost in its noise at the start "
                           f"({how}); the batch range is left as it is"))
    return record


def centred_settings(settings: TuneSettings, noise: Optional[dict], train_size: int,
                     largest_micro: Optional[int] = None) -> Optional[TuneSettings]:
    """``settings`` with the search centred on the measured critical batch, or None when the user
    gave a batch range or there is no critical batch to centre on."""
    if noise is None or noise.get("critical_batch") is None or range_given(settings.space, settings.given):
        return None
    space = centre_on_critical_batch(settings.space, noise["critical_batch"], train_size=train_size,
                                     largest_micro=largest_micro, lower_bound=(noise.get("interval") or [None])[0])
    return dataclasses.replace(settings, space=space)


def centred_note(space_min: int, space_max: int, accumulation: tuple[int, ...]) -> Note:
    return Note(text=f"no batch range given: the search is centred on the critical batch, micro-batches "
                     f"{space_min}–{space_max}, accumulation steps {', '.join(map(str, accumulation))} "
                     f"(effective batches {space_min}–{space_max * max(accumulation)})")


def store_critical_batch(study: optuna.Study, spec: StudySpec, sizes: list[int], noise: Optional[dict], *,
                         centred: bool, baselines: bool) -> None:
    """Store the probe's record with the study and, with baselines and a search centred on the
    critical batch (no range given: a given range is the user's, its first trials the usual
    baselines), queue the critical batch."""
    if noise is None:
        return
    study.set_user_attr(R.STUDY_NOISE_SCALE, {**noise, "centred": centred})
    if baselines and centred and noise.get("critical_batch"):
        enqueue_critical_batch(study, spec, sizes, noise["critical_batch"])
