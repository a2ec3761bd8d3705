"""The ground truth: the grid of distinct configurations, and every answer re-trained with fresh seeds.

Everything here trains on the pool and is scored on the test split (``data.scoring``)."""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from autobatch import records as R
from autobatch.records import TrialConfig
from autobatch.train import EVAL_BATCH_FACTOR, evaluate, train_trial
from autobatch.workloads import Workload, build_model

from .protocol import canonical_key, cpu_seconds, distinct
from .tasks import CPU, Config, Task


def has_batchnorm(task: Task, workload: Workload) -> bool:
    model = build_model(task.model, num_classes=workload.num_classes, input_shape=workload.input_shape)
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def train_run(task: Task, workload: Workload, config: Config, *, seed: int, train_samples: int,
              checkpoints: Sequence[int], on_eval=None) -> tuple[R.TrialResult, float]:
    """One training run with autobatch's trainer and the task's recipe; returns the result and the
    final validation accuracy (a run the trainer stopped as diverged: the model where it stopped;
    a run ``on_eval`` stopped: its last evaluation)."""
    torch.manual_seed(seed)
    model = build_model(task.model, num_classes=workload.num_classes, input_shape=workload.input_shape)
    trial_config = TrialConfig(batch_size=config.batch_size, accumulation_steps=config.accumulation_steps,
                               learning_rate=task.learning_rate(config))
    result = train_trial(model, workload, trial_config, train_samples=train_samples, checkpoints=checkpoints,
                         device=CPU, recipe=task.recipe, seed=seed, on_eval=on_eval, num_workers=0)
    if result.stop_reason in (R.STOP_COMPLETED, R.STOP_PRUNED) and result.curve:
        return result, result.final_metric
    accuracy, _ = evaluate(model, workload.val, config.batch_size * EVAL_BATCH_FACTOR, CPU)
    return result, accuracy


@dataclass
class Measured:
    """A configuration trained with several seeds: accuracies, epoch times, stop reasons."""

    config: Config
    seeds: tuple[int, ...]
    accuracies: list[float] = field(default_factory=list)
    epoch_times: list[float] = field(default_factory=list)   # pool size / throughput (evaluation excluded)
    cpu_s: list[float] = field(default_factory=list)         # per run, everything included
    stops: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def epoch_time(self) -> float:
        return statistics.fmean(self.epoch_times)


class GroundTruth:
    """The grid (distinct configurations x grid seeds) and re-trainings (fresh seeds), cached by
    the run's canonical key, length and seeds."""

    def __init__(self, task: Task, workload: Workload, train_samples: int, tuner_train_size: int) -> None:
        self.task, self.workload, self.train_samples = task, workload, train_samples
        self.batchnorm = has_batchnorm(task, workload)
        configs = [Config(b, a, m) for b in task.space.batch_sizes for a in task.space.accumulation_steps
                   for m in task.multipliers]
        self.all_configs = len(configs)
        self.configs: list[Config] = distinct(configs, has_batchnorm=self.batchnorm, max_effective=tuner_train_size)
        self.grid: dict[tuple, Measured] = {}
        self.runs: dict[tuple, Measured] = {}
        self.seconds = 0.0
        self.cpu_one_seed = 0.0     # the grid's compute: one seed of every distinct configuration
        self.retrain_seconds = 0.0

    def key(self, config: Config) -> tuple:
        return canonical_key(config.batch_size, config.accumulation_steps, config.multiplier,
                             has_batchnorm=self.batchnorm)

    def train(self, config: Config, seeds: Sequence[int], samples: Optional[int] = None) -> Measured:
        samples = samples or self.train_samples
        cache = (self.key(config), samples, tuple(seeds))
        if cache in self.runs:
            return self.runs[cache]
        measured = Measured(config, tuple(seeds))
        for seed in seeds:
            started = cpu_seconds()
            result, accuracy = train_run(self.task, self.workload, config, seed=seed, train_samples=samples,
                                         checkpoints=(samples,))
            measured.cpu_s.append(cpu_seconds() - started)
            measured.accuracies.append(accuracy)
            measured.epoch_times.append(len(self.workload.train) / result.throughput
                                        if result.throughput > 0 else math.nan)
            measured.stops.append(result.stop_reason)
        self.runs[cache] = measured
        return measured

    def run_grid(self, progress: Callable[[str], None]) -> None:
        started = time.perf_counter()
        for i, config in enumerate(self.configs, 1):
            measured = self.train(config, self.task.seeds.grid)
            self.grid[self.key(config)] = measured
            self.cpu_one_seed += measured.cpu_s[0]
            if i % 10 == 0 or i == len(self.configs):
                progress(f"grid {i}/{len(self.configs)} ({time.perf_counter() - started:.0f}s)")
        self.seconds = time.perf_counter() - started

    @property
    def best(self) -> Measured:
        return max(self.grid.values(), key=lambda m: m.accuracy)

    def fresh(self, config: Config, samples: Optional[int] = None, long: bool = False) -> Measured:
        """``config`` re-trained with the fresh seeds (``long``: the long-run seeds)."""
        started = time.perf_counter()
        seeds = self.task.seeds.long if long else self.task.seeds.fresh
        measured = self.train(config, seeds, samples)
        self.retrain_seconds += time.perf_counter() - started
        return measured

    @property
    def reference(self) -> Measured:
        """The grid's best re-trained with the fresh seeds: the regret's reference (no winner's curse)."""
        return self.fresh(self.best.config)

    def regret(self, config: Config) -> float:
        """Accuracy points below the re-trained grid best (both with the fresh seeds)."""
        return 100 * (self.reference.accuracy - self.fresh(config).accuracy)
