"""Tasks, configurations and the benchmark's fixed settings."""
from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass

import numpy as np
import torch

from autobatch.search import SearchSpace

CPU = torch.device("cpu")


THREADS = 1           # torch threads for everything: steadier timings on a shared machine


SPLIT_SEED = 0        # the grid's (and every re-training's) train/validation split


THROUGHPUT_REPEATS = 3


TPE_SEED_OFFSET = 100


TOP_FOR_NOISE = 10


ROOT = pathlib.Path(__file__).resolve().parents[2]
PLOT = ROOT / "docs" / "regret_vs_compute.png"


AUTOBATCH, RANDOM, TPE, LARGEST, FOLK = ("autobatch", "random search", "Optuna TPE",
                                         "largest batch + linear lr", "folk default (32)")


METHODS = (AUTOBATCH, RANDOM, TPE, LARGEST, FOLK)


@dataclass(frozen=True)
class Config:
    batch_size: int
    accumulation_steps: int
    multiplier: float  # lr = multiplier * base_lr * effective / reference (linear rule)

    @property
    def key(self) -> tuple:
        return (self.batch_size, self.accumulation_steps, round(math.log(self.multiplier), 6))

    def label(self) -> str:
        return f"{self.batch_size}x{self.accumulation_steps}, m={self.multiplier:.3g}"


@dataclass(frozen=True, kw_only=True)
class Task:
    name: str
    model: str
    dataset: str
    space: SearchSpace
    n_multipliers: int              # log-spaced over the space's multiplier range
    epochs: float                   # trial length for the grid, every tuner and re-training
    grid_seeds: tuple[int, ...]
    repeats: int                    # tuner seeds per method
    budgets: tuple[float, ...]      # fractions of the grid's compute
    throughput_batches: tuple[int, ...]

    @property
    def multipliers(self) -> tuple[float, ...]:
        # np.geomspace as the recommender's candidates use, so its answers can hit grid points.
        return tuple(float(m) for m in np.geomspace(self.space.lr_multiplier_min,
                                                     self.space.lr_multiplier_max, self.n_multipliers))

    def configs(self) -> list[Config]:
        return [Config(b, a, m) for b in self.space.batch_sizes
                for a in self.space.accumulation_steps for m in self.multipliers]

    def learning_rate(self, config: Config) -> float:
        return self.space.learning_rate(config.multiplier, config.batch_size * config.accumulation_steps)


def tasks(quick: bool) -> list[Task]:
    if quick:
        return [
            Task(name="small_cnn / digits", model="small_cnn", dataset="digits",
                 space=SearchSpace(batch_size_min=8, batch_size_max=256, accumulation_steps=(1, 2, 4)),
                 n_multipliers=5, epochs=2.0, grid_seeds=(0, 1), repeats=2, budgets=(0.1, 0.2),
                 throughput_batches=(8, 128)),
            Task(name="resnet18 / digits", model="resnet18", dataset="digits",
                 space=SearchSpace(batch_size_min=16, batch_size_max=128, accumulation_steps=(1, 2, 4)),
                 n_multipliers=5, epochs=0.5, grid_seeds=(0,), repeats=2, budgets=(0.1, 0.2),
                 throughput_batches=(32,)),
        ]
    return [
        Task(name="small_cnn / digits", model="small_cnn", dataset="digits",
             space=SearchSpace(batch_size_min=8, batch_size_max=256, accumulation_steps=(1, 2, 4)),
             n_multipliers=5, epochs=3.0, grid_seeds=(0, 1, 2), repeats=5, budgets=(0.1, 0.2, 0.4),
             throughput_batches=(8, 128)),
        Task(name="resnet18 / digits", model="resnet18", dataset="digits",
             space=SearchSpace(batch_size_min=16, batch_size_max=256, accumulation_steps=(1, 2, 4)),
             n_multipliers=5, epochs=1.0, grid_seeds=(0, 1), repeats=3, budgets=(0.1, 0.2),
             throughput_batches=(32, 128)),
    ]
