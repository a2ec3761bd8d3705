"""The ground truth: every grid configuration trained with the grid's seeds; answers re-trained the same way."""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from autobatch import records as R
from autobatch.records import TrialConfig
from autobatch.train import EVAL_BATCH_FACTOR, evaluate, train_trial
from autobatch.workloads import Workload, build_model

from .tasks import CPU, THREADS, Config, Task


def train_run(task: Task, workload: Workload, config: Config, *, seed: int, train_samples: int,
              checkpoints: tuple[int, ...]) -> tuple[R.TrialResult, float]:
    """One training run with autobatch's trainer; returns the result and the final validation
    accuracy (for a run the trainer stopped as diverged: the model where it stopped)."""
    torch.manual_seed(seed)
    model = build_model(task.model, num_classes=workload.num_classes, input_shape=workload.input_shape)
    trial_config = TrialConfig(batch_size=config.batch_size, accumulation_steps=config.accumulation_steps,
                               learning_rate=task.learning_rate(config))
    result = train_trial(model, workload, trial_config, train_samples=train_samples,
                         checkpoints=checkpoints, device=CPU, seed=seed)
    if result.stop_reason == R.STOP_COMPLETED:
        return result, result.final_metric
    accuracy, _ = evaluate(model, workload.val, config.batch_size * EVAL_BATCH_FACTOR, CPU)
    return result, accuracy


@dataclass
class Measured:
    """A configuration under the ground-truth protocol, one entry per grid seed."""

    config: Config
    accuracies: list[float]
    epoch_times: list[float]   # train-split size / throughput (evaluation excluded)
    stops: list[str]
    on_grid: bool = True

    @property
    def accuracy(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def epoch_time(self) -> float:
        return statistics.fmean(self.epoch_times)


class GroundTruth:
    """The grid, and every other configuration re-trained the same way (cached)."""

    def __init__(self, task: Task, workload: Workload, train_samples: int) -> None:
        self.task, self.workload, self.train_samples = task, workload, train_samples
        self.grid: dict[tuple, Measured] = {}
        self.extra: dict[tuple, Measured] = {}
        self.seconds = 0.0
        self.retrain_seconds = 0.0

    def train(self, config: Config, on_grid: bool) -> Measured:
        measured = Measured(config, [], [], [], on_grid)
        for seed in self.task.grid_seeds:
            result, accuracy = train_run(self.task, self.workload, config, seed=seed,
                                         train_samples=self.train_samples,
                                         checkpoints=(self.train_samples,))
            measured.accuracies.append(accuracy)
            measured.epoch_times.append(len(self.workload.train) / result.throughput
                                        if result.throughput > 0 else math.nan)
            measured.stops.append(result.stop_reason)
        return measured

    def run_grid(self, progress: Callable[[str], None]) -> None:
        started = time.perf_counter()
        configs = self.task.configs()
        for i, config in enumerate(configs, 1):
            self.grid[config.key] = self.train(config, on_grid=True)
            if i % 15 == 0 or i == len(configs):
                progress(f"grid {i}/{len(configs)} ({time.perf_counter() - started:.0f}s)")
        self.seconds = time.perf_counter() - started

    def measure(self, config: Config) -> Measured:
        if config.key in self.grid:
            return self.grid[config.key]
        if config.key not in self.extra:
            started = time.perf_counter()
            self.extra[config.key] = self.train(config, on_grid=False)
            self.retrain_seconds += time.perf_counter() - started
        return self.extra[config.key]

    @property
    def best(self) -> Measured:
        return max(self.grid.values(), key=lambda m: m.accuracy)

    def regret(self, config: Config) -> float:
        """Accuracy points below the grid's best."""
        return 100 * (self.best.accuracy - self.measure(config).accuracy)

    def to_json(self) -> list[dict]:
        return [dict(asdict(m), accuracy=m.accuracy, epoch_time=m.epoch_time)
                for m in [*self.grid.values(), *self.extra.values()]]

    def load_grid(self, rows: list[dict]) -> None:
        for row in rows:
            measured = Measured(Config(**row["config"]), row["accuracies"], row["epoch_times"],
                                row["stops"], row["on_grid"])
            if measured.on_grid:
                self.grid[measured.config.key] = measured


def grid_fingerprint(task: Task) -> dict:
    return {"model": task.model, "dataset": task.dataset, "space": repr(task.space),
            "multipliers": task.multipliers, "epochs": task.epochs, "seeds": task.grid_seeds,
            "torch": torch.__version__, "threads": THREADS}
