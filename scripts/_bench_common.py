"""Helpers shared by benchmark sections: spreads, machine load, and the trainer-versus-plain-loop
throughput comparison.

Kept free of any one benchmark's settings: a section passes in what it measures.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from autobatch.records import TrialConfig
from autobatch.train import make_optimizer, train_trial
from autobatch.workloads import Workload, build_model


@dataclass(frozen=True)
class Spread:
    """Median and range of a few repeated measurements."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Optional["Spread"]:
        values = [v for v in values if v is not None and math.isfinite(v)]
        if not values:
            return None
        return cls(statistics.median(values), min(values), max(values), len(values))

    def show(self, fmt: str = "{:.2f}", unit: str = "") -> str:
        """``median [low, high]``; just the median when all repeats agree or there is one."""
        mid = fmt.format(self.median) + unit
        if self.n == 1 or self.low == self.high:
            return mid
        return f"{mid} [{fmt.format(self.low)}, {fmt.format(self.high)}]"


def show(spread: Optional[Spread], fmt: str = "{:.2f}", unit: str = "") -> str:
    return "–" if spread is None else spread.show(fmt, unit)


def load_average() -> str:
    """The 1-minute load average over the core count: other work on the machine skews timings."""
    try:
        one, _, _ = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} on {os.cpu_count()} cores"


# --- trainer throughput against a plain PyTorch loop -------------------------------------

def plain_loop_throughput(model: nn.Module, workload: Workload, *, batch_size: int,
                          learning_rate: float, samples: int, seed: int) -> float:
    """Samples/s of the loop everyone writes: shuffled index batches from the same in-memory
    tensors, forward, backward, step, zero_grad; the same optimizer as autobatch's trainer.
    No evaluation, no schedule, no checks."""
    x, y = workload.train.tensors
    optimizer = make_optimizer(model.parameters(), learning_rate)
    generator = torch.Generator().manual_seed(seed)
    steps = max(1, math.ceil(samples / batch_size))
    model.train()
    order, position = torch.randperm(len(x), generator=generator), 0
    start = time.perf_counter()
    for _ in range(steps):
        if position + batch_size > len(order):
            order, position = torch.randperm(len(x), generator=generator), 0
        index = order[position:position + batch_size]
        position += batch_size
        loss = nn.functional.cross_entropy(model(x[index]), y[index])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * batch_size / (time.perf_counter() - start)


def trainer_throughput(model: nn.Module, workload: Workload, *, batch_size: int,
                       learning_rate: float, samples: int, seed: int) -> float:
    """Samples/s as autobatch's ``train_trial`` records it (evaluation excluded; here there is
    none), for the same samples, accumulation 1."""
    config = TrialConfig(batch_size=batch_size, learning_rate=learning_rate, accumulation_steps=1)
    result = train_trial(model, workload, config, train_samples=samples, checkpoints=(),
                         device=torch.device("cpu"), seed=seed)
    return result.throughput


def compare_throughput(model_name: str, workload: Workload, *, batch_size: int,
                       learning_rate: float, samples: int, repeats: int) -> dict:
    """Interleaved runs of both loops on freshly initialised models (same init for both), after
    one untimed warm-up of each; alternating which goes first. Returns the raw samples/s."""
    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return build_model(model_name, num_classes=workload.num_classes,
                           input_shape=workload.input_shape)

    loops = {"autobatch": trainer_throughput, "plain": plain_loop_throughput}
    kwargs = dict(batch_size=batch_size, learning_rate=learning_rate, seed=0)
    for loop in loops.values():  # warm-up: allocator, kernels and caches of this shape
        loop(fresh(), workload, samples=max(batch_size, samples // 4), **kwargs)
    measured: dict[str, list[float]] = {name: [] for name in loops}
    for rep in range(repeats):
        order = list(loops) if rep % 2 == 0 else list(reversed(loops))
        for name in order:
            measured[name].append(loops[name](fresh(), workload, samples=samples, **kwargs))
    return measured


def bench_main(run, doc: str) -> None:
    """The command line every ``scripts/bench_<name>.py`` shares: ``[--quick] [--out DIR]``."""
    import argparse
    import pathlib

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out/bench"))
    args = parser.parse_args()
    print(run(args.quick, args.out))
