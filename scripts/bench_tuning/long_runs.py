"""Longer than a trial: the 4x-length re-training (does the ranking hold?) and time to accuracy.

Both train on the pool and score on the test split, with the long-run seeds (no tuner, grid
point or fresh re-training used them)."""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable

import torch
from torch.utils.data import Subset

from autobatch.records import TrialConfig
from autobatch.train import EVAL_BATCH_FACTOR, evaluate, train_trial
from autobatch.workloads import Workload, build_model

from .ground_truth import GroundTruth
from .protocol import first_reaching, kendall_tau
from .tasks import CPU, Config, Task

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
    Time = CPU seconds of the training thread (``time.thread_time``; one torch thread, no loader
    workers, so the thread does all the training work) up to that checkpoint, evaluation
    excluded: the trainer evaluates a one-sample split (``trainer_view``) and the test split is
    evaluated here, in ``on_eval``, its CPU seconds subtracted. CPU time, not wall time: other
    work on a shared machine stretches wall time, not the thread's own CPU seconds. No memory
    profiling (``measure_memory=False``). Per pick: the median over seeds (inf when a seed never
    reached the target)."""
    step = max(1, task.tta_samples // TTA_CHECKPOINTS)
    checkpoints = tuple(range(step, task.tta_samples + 1, step))
    trainer_view = Workload(workload.name, workload.train, Subset(workload.val, [0]), workload.num_classes,
                            workload.input_shape)
    out = {}
    for name, config in picks.items():
        runs = []
        for seed in seeds:
            curve: list[tuple[float, float, int]] = []
            torch.manual_seed(seed)
            model = build_model(task.model, num_classes=workload.num_classes, input_shape=workload.input_shape)
            clock = {"start": time.thread_time(), "eval": 0.0}

            def on_eval(point, curve=curve, model=model, clock=clock) -> bool:
                entered = time.thread_time()
                accuracy, _ = evaluate(model, workload.val, config.batch_size * EVAL_BATCH_FACTOR, CPU,
                                       task.recipe, num_workers=0)
                curve.append((entered - clock["start"] - clock["eval"], accuracy, point.samples_seen))
                clock["eval"] += time.thread_time() - entered
                return accuracy >= task.target

            trial = TrialConfig(batch_size=config.batch_size, accumulation_steps=config.accumulation_steps,
                                learning_rate=task.learning_rate(config))
            train_trial(model, trainer_view, trial, train_samples=task.tta_samples, checkpoints=checkpoints,
                        device=CPU, recipe=task.recipe, seed=seed, on_eval=on_eval, num_workers=0,
                        measure_memory=False)
            reached = first_reaching([(t, a) for t, a, _ in curve], task.target)
            samples = next((s for t, a, s in curve if a >= task.target), None)
            runs.append({"seconds": reached, "samples": samples, "best": max(a for _, a, _ in curve),
                         "curve": curve})
        seconds = statistics.median(r["seconds"] for r in runs)
        out[name] = {"config": config.label(), "seconds": seconds, "runs": runs,
                     "reached": sum(math.isfinite(r["seconds"]) for r in runs)}
        progress(f"time to {100 * task.target:.0f}%: {name} {seconds:.1f} CPU s")
    return out
