"""The protocol's pure pieces: seeds no two roles share, grid lr points off every tuner's
candidates, distinct configurations, CPU-second budgets, the noise floor and ties.

Torch-free and tested (``tests/test_bench_protocol.py``)."""
from __future__ import annotations

import math
import resource
import statistics
import time
from functools import lru_cache
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

# The recommender's lr candidates: np.geomspace(min, max, 25) (autobatch.recommender._choice).
RECOMMENDER_CANDIDATES = 25


@dataclass(frozen=True)
class SeedPlan:
    """Seeds by role. ``grid``: the grid's training seeds; ``tuners``: one per tuner repeat (the
    tuner's split seed and its trials' seeds start there); ``fresh``: the re-training of every
    answer (and of the grid's best, the reference); ``long``: the 4x-length re-training and the
    time-to-accuracy runs. No seed serves two roles (``check``)."""

    grid: tuple[int, ...]
    tuners: tuple[int, ...]
    fresh: tuple[int, ...]
    long: tuple[int, ...]

    TUNER_SPAN = 1000  # a tuner's trials use seeds tuner, tuner + 1, ... below tuner + TUNER_SPAN

    @classmethod
    def make(cls, *, grid: int, tuners: int, fresh: int, long: int = 1) -> "SeedPlan":
        """``long``: seeds of the longer runs (0: none are run)."""
        plan = cls(grid=tuple(range(grid)),
                   tuners=tuple(10_000 + cls.TUNER_SPAN * i for i in range(tuners)),
                   fresh=tuple(900_000 + i for i in range(fresh)),
                   long=tuple(950_000 + i for i in range(long)))
        plan.check()
        return plan

    def tuner_trial_seeds(self, tuner: int, trials: int) -> range:
        return range(tuner, tuner + min(trials, self.TUNER_SPAN))

    def check(self) -> None:
        """Raises ``ValueError`` when two roles share a seed (tuner trials included)."""
        tuner_seeds = {s for t in self.tuners for s in self.tuner_trial_seeds(t, self.TUNER_SPAN)}
        roles = {"grid": set(self.grid), "tuners": tuner_seeds, "fresh": set(self.fresh), "long": set(self.long)}
        names = list(roles)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                if roles[a] & roles[b]:
                    raise ValueError(f"seed roles {a} and {b} share {sorted(roles[a] & roles[b])[:3]}")


@lru_cache(maxsize=None)
def offset_multipliers(low: float, high: float, n: int, avoid: int = RECOMMENDER_CANDIDATES) -> tuple[float, ...]:
    """``n`` log-evenly spaced lr multipliers in ``[low, high]`` placed as far as possible (in log
    space) from the ``avoid`` candidates ``np.geomspace(low, high, avoid)`` the recommender scores
    and from multiplier 1 (the rules' choice): a tuner cannot return a grid point by construction.
    In candidate steps (``avoid - 1`` across the range) the points are ``start + i * step``; the
    search covers steps that keep at least 60% of the range, and among those at least 0.4 of a
    step from every mark prefers the widest span."""
    if n < 1 or not 0 < low < high:
        raise ValueError("need n >= 1 and 0 < low < high")
    steps = avoid - 1
    one = math.log(1 / low) / math.log(high / low) * steps
    marks = np.array([*range(avoid), one])
    best, best_key = None, None
    for step in (np.arange(0.6 * steps / max(n - 1, 1), steps / max(n - 1, 1) + 1e-9, 0.05) if n > 1 else [0.0]):
        for start in np.arange(0.0, steps - (n - 1) * step + 1e-9, 0.05):
            points = start + step * np.arange(n)
            gap = float(np.min(np.abs(points[:, None] - marks[None, :])))
            key = (min(round(gap, 3), 0.4), (n - 1) * step, gap)
            if best_key is None or key > best_key:
                best, best_key = points, key
    return tuple(float(low * (high / low) ** (p / steps)) for p in best)


def candidate_gap(multipliers: Iterable[float], low: float, high: float,
                  avoid: int = RECOMMENDER_CANDIDATES) -> float:
    """Smallest distance, in candidate steps (log space), from any multiplier to a candidate."""
    span = math.log(high / low)
    return min(abs(math.log(m / low) / span * (avoid - 1) - k) for m in multipliers for k in range(avoid))


def canonical_key(batch_size: int, accumulation_steps: int, multiplier: float, *, has_batchnorm: bool) -> tuple:
    """What decides the run. Without BatchNorm, micro-batch b x accumulation a and micro-batch
    b*a x 1 are the same run (the mean gradient over the same samples, the same lr): keyed by the
    effective batch. With BatchNorm the micro-batch changes the statistics: keyed by both."""
    mult = round(math.log(multiplier), 6)
    if has_batchnorm:
        return (batch_size, accumulation_steps, mult)
    return (batch_size * accumulation_steps, mult)


def distinct(configs: Sequence, *, has_batchnorm: bool, max_effective: int) -> list:
    """Configs (objects with ``batch_size``, ``accumulation_steps``, ``multiplier``) with one per
    distinct run, the largest micro-batch kept (the fastest of equals), and no effective batch
    above ``max_effective`` (the training set)."""
    keep: dict[tuple, object] = {}
    for c in configs:
        if c.batch_size * c.accumulation_steps > max_effective:
            continue
        key = canonical_key(c.batch_size, c.accumulation_steps, c.multiplier, has_batchnorm=has_batchnorm)
        if key not in keep or c.batch_size > keep[key].batch_size:
            keep[key] = c
    return list(keep.values())


def cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and its waited-for children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class Meter:
    """A method's compute, end to end: CPU seconds (``cpu_seconds``) and wall seconds from
    ``start`` on, everything included (data loading, probes, training, evaluation, sampler,
    storage, the answer's fit)."""

    def __init__(self) -> None:
        self.cpu0, self.wall0 = cpu_seconds(), time.perf_counter()

    @property
    def cpu(self) -> float:
        return cpu_seconds() - self.cpu0

    @property
    def wall(self) -> float:
        return time.perf_counter() - self.wall0


def should_stop(used: float, budget: float, trial_costs: Sequence[float]) -> bool:
    """Stop after the trial that brings compute within half a typical trial (the median of
    ``trial_costs``, CPU seconds of the trials alone) of the budget."""
    typical = statistics.median(trial_costs) if trial_costs else 0.0
    return budget - used < typical / 2


def noise_floor(per_config_accuracies: Sequence[Sequence[float]], top: int) -> float:
    """Median over the ``top`` best configurations (by mean) of their seed-to-seed standard
    deviation of accuracy, in points. Needs at least two seeds per configuration."""
    rows = [list(a) for a in per_config_accuracies if len(a) >= 2]
    if not rows:
        raise ValueError("the noise floor needs at least two seeds per configuration")
    rows.sort(key=statistics.fmean, reverse=True)
    return statistics.median(100 * statistics.stdev(a) for a in rows[:top])


def compare(ours: float, theirs: float, floor: float) -> str:
    """``"better"``/``"worse"`` for regrets (lower is better) further apart than ``floor``
    points, else ``"tie"``."""
    if abs(ours - theirs) <= floor:
        return "tie"
    return "better" if ours < theirs else "worse"


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-a between two scorings of the same items (1: same order; ties count 0)."""
    n = len(a)
    if n != len(b) or n < 2:
        raise ValueError("need two scorings of the same >= 2 items")
    s = sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i in range(n) for j in range(i + 1, n))
    return float(s / (n * (n - 1) / 2))


def first_reaching(curve: Sequence[tuple[float, float]], target: float) -> float:
    """The first time (s) of ``(time, accuracy)`` points with accuracy >= target; inf if none."""
    return next((t for t, acc in curve if acc >= target), math.inf)
