"""The memory probe: peaks measured at micro-batch sizes chosen adaptively (``plan_probe``), the
forms fitted to them, and the largest micro-batch under a cap; then the same for evaluation at
the evaluation batch.

The probe measures *runners*: ``run_steps(b)`` runs complete training steps at micro-batch ``b``
on a copy of the model (``autobatch.train.step_runner`` makes one from the study's recipe),
``run_eval(e)`` an evaluation forward pass at batch ``e`` beside the training state
(``autobatch.train.eval_runner``), so memory knows nothing of how training is done. The user's
weights, optimizer, RNG state and the allocator's peak statistics are left as they were.
"""

from __future__ import annotations

import dataclasses
import gc
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..errors import AutobatchError, UserCodeError
from ..units import format_bytes
from ._cap import peak_resident_bytes, reset_peak_resident
from ._estimate import EVAL_BATCH_FACTOR, MemoryEstimate, store_models
from ._forms import Affine, MemoryModel, relative_error
from ._measure import _release_cuda, measure_cpu, measure_cuda
from ._oom import is_out_of_memory
from ._plan import ProbeStep, plan_probe

StepRunner = Callable[[int], None]  # runs complete training steps (or an evaluation) at a batch size


@dataclass(frozen=True, kw_only=True)
class ProbePoint:
    """One measured batch size. Bytes are the growth over what was live before."""

    batch_size: int
    peak_bytes: Optional[int]       # tensor bytes; None when it did not fit (out of memory) or was refused
    reserved_bytes: Optional[int]   # CUDA allocator's reserved growth; None on CPU
    fits: bool
    seconds: float
    rss_bytes: Optional[int] = None  # CPU: the process's peak resident set during it (all of it)
    phase: str = "train"            # "train" (training steps) or "eval" (evaluation batch)
    refused: Optional[str] = None   # the user's code raised at this size: its line
    too_small: bool = False         # refused before any smaller size of the phase ran: a lower bound
                                    # (too small for the model, as BatchNorm at 1), the plan moves up

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def smallest_refused(points: Sequence[ProbePoint]) -> Optional[ProbePoint]:
    """The smallest size the user's code refused (``ProbePoint.refused``) after smaller ones ran
    (an upper bound; not one ``too_small``), or None."""
    return min((p for p in points if p.refused and not p.too_small), key=lambda p: p.batch_size, default=None)


OnPoint = Callable[[ProbePoint, ProbeStep], None]  # progress: the point and the plan after it


def measure_step_peak(run_steps: StepRunner, *, batch_size: int, device: torch.device,
                      phase: str = "train") -> ProbePoint:
    """Peak memory of ``run_steps(batch_size)``: the growth over what was live before.

    An allocation failure on any device (``is_out_of_memory``: CUDA's ``OutOfMemoryError``,
    CPU's ``DefaultCPUAllocator``, MPS/XPU) gives ``fits=False``; other exceptions propagate.
    On CUDA the allocator's cache and peak statistics are cleared afterwards so the next user
    starts clean. On CPU the process's peak resident set during the run (``VmHWM``, reset at its
    start: the interpreter, libraries and allocator caches included) is reported beside the
    tensor bytes.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    is_cuda = device.type == "cuda"
    if is_cuda and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())

    def run() -> None:
        run_steps(batch_size)

    start = time.perf_counter()
    peak = reserved = rss = None
    rss_window = not is_cuda and reset_peak_resident()
    # Dropout in the copy draws from the global RNG: restore it so the probe is invisible.
    with torch.random.fork_rng(devices=[device] if is_cuda else [],
                               device_type="cuda" if is_cuda else None):
        try:
            peak, reserved = measure_cuda(run, device) if is_cuda else measure_cpu(run)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            del exc  # its traceback holds the frames holding the copy
        finally:
            gc.collect()
            if is_cuda:
                _release_cuda(device)
                torch.cuda.reset_peak_memory_stats(device)
    if rss_window and peak is not None:
        rss = peak_resident_bytes()
    return ProbePoint(batch_size=batch_size, peak_bytes=peak, reserved_bytes=reserved, fits=peak is not None,
                      seconds=time.perf_counter() - start, rss_bytes=rss, phase=phase)


@dataclass(frozen=True, kw_only=True)
class ProbeResult:
    """What ``probe`` measured and fitted. Immutable; ``to_dict`` is its JSON form, stored as the
    study attribute ``memory_model`` (``MemoryEstimate.from_dict`` reads it back)."""

    estimate: MemoryEstimate            # training and evaluation models, limits, cap
    points: tuple[ProbePoint, ...]      # training-step measurements in the order taken
    eval_points: tuple[ProbePoint, ...]  # evaluation measurements in the order taken
    boundary: int                       # largest micro-batch the study will try (see plan_probe)
    boundary_error: Optional[float]     # final fit vs the measurement at the boundary, if measured
    validation_error: Optional[float]   # the newest point vs the fit of the points before it
    converged: bool
    reason: str
    space_max: int
    eval_space_max: Optional[int]
    seconds: float
    device: str
    eval_note: Optional[str] = None     # why evaluation was not measured, when it was not

    @property
    def model(self) -> MemoryModel:
        return self.estimate.train

    @property
    def cap_bytes(self) -> Optional[int]:
        return self.estimate.cap_bytes

    @property
    def max_batch_size(self) -> Optional[int]:
        return self.estimate.max_batch_size()

    @property
    def refused(self) -> Optional[ProbePoint]:
        """The smallest micro-batch the user's code refused (raised at, after smaller ones
        trained), or None."""
        return smallest_refused(self.points)

    @property
    def too_small(self) -> Optional[ProbePoint]:
        """The largest micro-batch the user's code refused before any smaller one ran (too small
        for the model: the probe measured above it), or None."""
        return max((p for p in self.points if p.too_small), key=lambda p: p.batch_size, default=None)

    @property
    def eval_refused(self) -> Optional[ProbePoint]:
        """The smallest evaluation batch the user's code refused, or None."""
        return smallest_refused(self.eval_points)

    @property
    def per_sample_bytes(self) -> float:
        """Bytes one more sample adds at the boundary (the figure to compare at large batch)."""
        return self.model.per_sample_at(max(1, self.boundary))

    def to_dict(self) -> dict[str, Any]:
        e = self.estimate
        base = {
            "probe": {"train": e.train.to_dict(), "eval": e.eval.to_dict() if e.eval else None,
                      "eval_max_batch_size": e.eval_max_batch_size, "too_big": e.too_big},
            "boundary": self.boundary, "boundary_error": self.boundary_error,
            "validation_error": self.validation_error, "converged": self.converged,
            "reason": self.reason, "per_sample_bytes_at_boundary": self.per_sample_bytes,
            "sizes": [p.batch_size for p in self.points], "points": [p.to_dict() for p in self.points],
            "eval_sizes": [p.batch_size for p in self.eval_points],
            "eval_points": [p.to_dict() for p in self.eval_points],
            "space_max": self.space_max, "eval_space_max": self.eval_space_max, "eval_note": self.eval_note,
            "seconds": self.seconds, "device": self.device,
        }
        return store_models(base, e)


@dataclass(frozen=True)
class _Phase:
    model: MemoryModel
    points: tuple[ProbePoint, ...]
    step: ProbeStep
    too_big: Optional[int]       # smallest size not to use: measured out of memory or over the
                                 # cap, or above the largest fitting size when the fit misses that
    floor: int                   # largest size refused as too small for the model (0: none)


def _run_plan(measure: Callable[[int], ProbePoint], on_point: Optional[OnPoint], cap: Optional[int],
              **plan: Any) -> _Phase:
    """Measure what ``plan_probe`` asks until it is done; a model even from fewer than 2 sizes. A
    point ``too_small`` raises the plan's floor instead of bounding it from above."""
    points: list[ProbePoint] = []
    measured: list[tuple[int, Optional[float]]] = []
    floor = 0
    step = plan_probe(measured, cap_bytes=cap, floor=floor, **plan)
    while not step.done:
        point = measure(step.next_size)
        points.append(point)
        if point.too_small:
            floor = max(floor, point.batch_size)
        else:
            measured.append((point.batch_size, point.peak_bytes))
        step = plan_probe(measured, cap_bytes=cap, floor=floor, **plan)
        if on_point is not None:
            on_point(point, step)
    fitted = [p for p in points if p.fits]
    model = step.model
    if model is None and fitted:  # one size measured (a one-size space): proportional, safe side
        p = max(fitted, key=lambda q: q.batch_size)
        model = Affine(fixed_bytes=float(p.peak_bytes), per_sample_bytes=p.peak_bytes / p.batch_size)
    failed = [p.batch_size for p in points
              if not p.too_small and (not p.fits or (cap is not None and p.peak_bytes > cap))]
    too_big = min(failed, default=None)
    if too_big is not None and model is not None and (cap is None or model.max_batch_size(cap) >= too_big):
        # The model cannot see this failure: nothing above the largest size measured to fit
        # (the plan's boundary) is known to fit.
        too_big = min(too_big, step.boundary + 1)
    return _Phase(model=model, points=tuple(points), step=step, too_big=too_big, floor=floor)


def _nothing_fits(phase: _Phase, cap: Optional[int], device: torch.device, what: str) -> AutobatchError:
    one = next((p for p in phase.points if p.batch_size == 1), None)
    needs = ("out of memory" if one is None or not one.fits else f"measured {format_bytes(one.peak_bytes)}")
    if cap is None:
        return AutobatchError(f"{what} 1 does not fit in {device} memory ({needs}); "
                              "use a smaller model or input")
    return AutobatchError(f"memory cap {format_bytes(cap)} is below what {what} 1 needs ({needs});"
                          " raise --max-memory or use a smaller model or input")


def _too_small(phase: _Phase, refusals: Sequence[UserCodeError], cap: Optional[int], device: torch.device,
               what: str) -> Optional[AutobatchError]:
    """Why nothing of the phase can run, when sizes were refused as too small and no size ran
    under the cap: the first refusal itself when no larger size failed otherwise (the model
    fails at every size: its own line), else both bounds in one line. None otherwise."""
    if not refusals or any(p.fits and (cap is None or p.peak_bytes <= cap) for p in phase.points):
        return None
    if phase.too_big is None:
        return refusals[0]
    over_cap = cap is not None and any(p.fits and p.peak_bytes > cap for p in phase.points)
    where = f"under the memory cap {format_bytes(cap)}" if over_cap else f"in {device} memory"
    return AutobatchError(f"{what} {phase.floor} is too small for this model ({refusals[-1]}) and "
                          f"{phase.too_big} does not fit {where}; raise --max-memory or use a smaller model or input")


def _drop_frames(exc: BaseException) -> None:
    """Release what the frames of a kept exception (and its causes) hold (on the probe's path,
    the model's copy and its activations); its traceback still shows where it was raised."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


def probe(run_steps: StepRunner, *, device: torch.device, cap_bytes: Optional[int] = None,
          space_max: int = 256, dataset_max: Optional[int] = None, space_min: int = 1,
          run_eval: Optional[StepRunner] = None, eval_space_max: Optional[int] = None,
          on_point: Optional[OnPoint] = None, max_sizes: int = 5) -> ProbeResult:
    """Measure the training step where the study will use it, fit, and invert under the cap;
    then the same for evaluation.

    Training: ``plan_probe`` picks the sizes (from ``max(2, space_min)``, the searched range's
    smallest micro-batch, growing x4 until the activations dominate, then the boundary
    ``min(space_max, dataset_max, predicted limit under the cap)``, bisecting on out-of-memory;
    at most ``max_sizes``). Evaluation (when ``run_eval`` is given): the same plan from batch
    ``2 * EVAL_BATCH_FACTOR`` (a validation set's last batch can be small) up to
    ``EVAL_BATCH_FACTOR * boundary`` (at most ``eval_space_max``, the validation set); the
    evaluation batch of a micro-batch ``b`` is then ``min(EVAL_BATCH_FACTOR * b, the largest
    evaluation batch under the cap)``. ``on_point`` sees every measurement with the plan after it.

    The user's code raising (``UserCodeError``) at a size is a bound, never the end of the probe:
    after smaller sizes of the phase ran it is refused like one out of memory (the point has
    ``refused``, the error's line; the plan bisects below it, and the estimate keeps the smallest
    refused micro-batch and why: ``refused_batch_size``, ``refused_reason``); before any smaller
    size ran it is too small for the model (BatchNorm at 1, a kernel's minimum batch: the point
    has ``refused`` and ``too_small``) and the plan moves up to twice it, not counting it in
    ``max_sizes`` (the trials at such sizes record them infeasible). When no size of a phase
    runs, the phase's first refusal is raised (a model that fails at every size: its line), or
    an ``AutobatchError`` naming both bounds when a larger size did not fit; evaluation's is the
    probe's ``eval_note``. ``AutobatchError`` when not even batch 1 fits.
    """
    start = time.perf_counter()
    device = torch.device(device)

    def measure(runner: StepRunner, phase: str, refusals: list[UserCodeError]) -> Callable[[int], ProbePoint]:
        ran: list[int] = []  # sizes of this phase that ran

        def one(size: int) -> ProbePoint:
            begun = time.perf_counter()
            try:
                point = measure_step_peak(runner, batch_size=size, device=device, phase=phase)
            except Exception as exc:
                if not isinstance(exc, UserCodeError):
                    if size > 1:
                        raise
                    # the cap leaves nothing measurable
                    raise AutobatchError(f"batch 2 does not fit under the cap and batch 1 cannot run "
                                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from exc
                # After smaller sizes ran: the user's code refuses this size (a kernel's or an
                # assertion's limit), a bound like an out-of-memory, which the caller tells once.
                # Before any smaller one ran: too small for the model (BatchNorm at 1, a minimum
                # batch), a lower bound; kept to raise should no size run at all.
                refused, too_small = str(exc), not any(b < size for b in ran)
                if too_small:
                    _drop_frames(exc)
                    refusals.append(exc)
            else:
                if point.fits:
                    ran.append(size)
                return point
            gc.collect()  # the exception's frames held the copy (the next measurement releases CUDA's cache)
            return ProbePoint(batch_size=size, peak_bytes=None, reserved_bytes=None, fits=False,
                              seconds=time.perf_counter() - begun, phase=phase, refused=refused,
                              too_small=too_small)
        return one

    first = max(2, space_min)  # the searched range's smallest micro-batch
    train_refusals: list[UserCodeError] = []
    train = _run_plan(measure(run_steps, "train", train_refusals), on_point, cap_bytes, space_max=space_max,
                      dataset_max=dataset_max, max_sizes=max_sizes, start=first)
    error = _too_small(train, train_refusals, cap_bytes, device, "micro-batch")
    if error is not None:
        raise error
    if train.step.boundary == 0 or train.model is None:
        raise _nothing_fits(train, cap_bytes, device, "micro-batch")
    boundary = train.step.boundary
    at_boundary = next((p for p in train.points if p.batch_size == boundary and p.fits), None)
    refused = smallest_refused(train.points)
    estimate = MemoryEstimate(train=train.model, cap_bytes=cap_bytes, too_big=train.too_big,
                              refused_batch_size=refused.batch_size if refused else None,
                              refused_reason=refused.refused if refused else None)
    evaluation = None
    eval_note = None
    eval_refusals: list[UserCodeError] = []
    try:
        if run_eval is not None:
            evaluated = _run_plan(measure(run_eval, "eval", eval_refusals), on_point, cap_bytes,
                                  space_max=EVAL_BATCH_FACTOR * boundary, dataset_max=eval_space_max,
                                  start=2 * EVAL_BATCH_FACTOR, max_sizes=max_sizes)
            if eval_refusals and not any(p.fits for p in evaluated.points):
                raise eval_refusals[0]  # no evaluation batch ran
            evaluation = evaluated
    except UserCodeError as exc:  # the user's evaluation code raised: the trials record it, per trial
        eval_note = f"evaluation memory not measured: {exc}"
    if evaluation is not None:
        if evaluation.step.boundary == 0 or evaluation.model is None:
            raise _nothing_fits(evaluation, cap_bytes, device, "evaluation batch")
        # The plan's boundary: the largest evaluation batch needed (4x the largest micro-batch,
        # at most the validation set) or, below it, the largest under the cap / out of memory.
        estimate = dataclasses.replace(estimate, eval=evaluation.model,
                                       eval_max_batch_size=evaluation.step.boundary)
    return ProbeResult(
        estimate=estimate, points=train.points, eval_points=evaluation.points if evaluation else (),
        boundary=boundary,
        boundary_error=relative_error(train.model.predict(boundary), at_boundary.peak_bytes) if at_boundary else None,
        validation_error=train.step.validation_error, converged=train.step.converged, reason=train.step.reason,
        eval_note=eval_note,
        space_max=space_max, eval_space_max=eval_space_max, seconds=time.perf_counter() - start,
        device=str(device))
