"""Longer than a trial: the 4x-length re-training (does the ranking hold?) and time to accuracy.

Both train on the pool and score on the test split, with the long-run seeds (no tuner, grid
point or fresh re-training used them)."""
from __future__ import annotations

import math
import statistics
from typing import Callable

from .ground_truth import GroundTruth, train_run
from .protocol import first_reaching, kendall_tau
from .tasks import Config, Task

LONG_FACTOR = 4
TTA_CHECKPOINTS = 40  # evaluations over the time-to-accuracy horizon


def longer_training(truth: GroundTruth, picks: dict[str, Config]) -> dict:
    """Each named pick at 1x (fresh seeds) and ``LONG_FACTOR`` x (long seeds) the trial length:
    mean accuracies, and Kendall's tau between the two orderings."""
    samples = LONG_FACTOR * truth.train_samples
    rows = {}
    for name, config in picks.items():
        short, long = truth.fresh(config), truth.fresh(config, samples=samples, long=True)
        rows[name] = {"config": config.label(), "short": short.accuracy, "long": long.accuracy,
                      "long_accuracies": long.accuracies}
    names = list(rows)
    tau = kendall_tau([rows[n]["short"] for n in names], [rows[n]["long"] for n in names]) if len(names) > 1 else math.nan
    return {"factor": LONG_FACTOR, "samples": samples, "rows": rows, "kendall_tau": tau}


def time_to_accuracy(task: Task, workload, picks: dict[str, Config], seeds: tuple[int, ...],
                     progress: Callable[[str], None]) -> dict:
    """Train each pick up to ``task.tta_samples`` samples, evaluating the test split at
    ``TTA_CHECKPOINTS`` even checkpoints, and stop at the first one at or above ``task.target``.
    Time = the trainer's training time to that checkpoint (``EvalPoint.train_time_s``: wall
    clock, evaluation excluded), one thread. Per pick: the median over seeds (inf when a seed
    never reached the target)."""
    step = max(1, task.tta_samples // TTA_CHECKPOINTS)
    checkpoints = tuple(range(step, task.tta_samples + 1, step))
    out = {}
    for name, config in picks.items():
        runs = []
        for seed in seeds:
            curve: list[tuple[float, float, int]] = []

            def on_eval(point, curve=curve) -> bool:
                curve.append((point.train_time_s, point.metric, point.samples_seen))
                return point.metric >= task.target

            train_run(task, workload, config, seed=seed, train_samples=task.tta_samples,
                      checkpoints=checkpoints, on_eval=on_eval)
            reached = first_reaching([(t, a) for t, a, _ in curve], task.target)
            samples = next((s for t, a, s in curve if a >= task.target), None)
            runs.append({"seconds": reached, "samples": samples, "best": max(a for _, a, _ in curve),
                         "curve": curve})
        seconds = statistics.median(r["seconds"] for r in runs)
        out[name] = {"config": config.label(), "seconds": seconds, "runs": runs,
                     "reached": sum(math.isfinite(r["seconds"]) for r in runs)}
        progress(f"time to {100 * task.target:.0f}%: {name} {seconds:.1f}s")
    return out
