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
from autobatch.train import make_optimizer, make_scheduler, train_trial
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

PLAIN, PLAIN_AGAIN, TRAINER, TRAINER_MEASURED = "plain", "plain again", "autobatch", "autobatch + memory"


def plain_loop_cpu(model: nn.Module, workload: Workload, *, batch_size: int, learning_rate: float,
                   steps: int, seed: int) -> float:
    """This thread's CPU seconds for the loop everyone writes, set-up included: the recipe's
    optimizer and lr schedule (``make_optimizer``, ``make_scheduler``), shuffled index batches
    from the same in-memory tensors, forward, ``cross_entropy``, backward, step, zero_grad,
    schedule step. No evaluation, no checks."""
    start = time.thread_time()
    x, y = workload.train.tensors
    optimizer = make_optimizer(model.parameters(), learning_rate)
    scheduler = make_scheduler(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    order, position = torch.randperm(len(x), generator=generator), 0
    for _ in range(steps):
        if position + batch_size > len(order):
            order, position = torch.randperm(len(x), generator=generator), 0
        index = order[position:position + batch_size]
        position += batch_size
        loss = nn.functional.cross_entropy(model(x[index]), y[index])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    return time.thread_time() - start


def trainer_cpu(model: nn.Module, workload: Workload, *, batch_size: int, learning_rate: float,
                steps: int, seed: int, measure_memory: bool = False) -> float:
    """This thread's CPU seconds for autobatch's ``train_trial`` over the same steps (accumulation
    1, no evaluation checkpoints), the whole call: set-up, loader, steps, divergence checks;
    ``measure_memory`` as ``tune`` runs it (the profiled first steps included)."""
    config = TrialConfig(batch_size=batch_size, learning_rate=learning_rate, accumulation_steps=1)
    start = time.thread_time()
    train_trial(model, workload, config, train_samples=steps * batch_size, checkpoints=(),
                device=torch.device("cpu"), seed=seed, measure_memory=measure_memory)
    return time.thread_time() - start


def compare_throughput(model_name: str, workload: Workload, *, batch_size: int, learning_rate: float,
                       steps: int, rounds: int) -> dict[str, list[float]]:
    """Training samples per CPU-second (``time.thread_time``: this thread's CPU, so waiting for
    a core on a shared machine does not count; run with one torch thread) of the plain loop, of
    the plain loop again (the noise floor: the same code twice), of ``train_trial`` and of
    ``train_trial`` with the memory measurement ``tune`` runs, over ``rounds`` interleaved rounds
    (the order rotates each round) after one untimed warm-up of each, on freshly initialised
    models (the same initialisation for all). Returns the raw samples/CPU-s by loop."""
    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return build_model(model_name, num_classes=workload.num_classes, input_shape=workload.input_shape)

    loops = {PLAIN: plain_loop_cpu, PLAIN_AGAIN: plain_loop_cpu, TRAINER: trainer_cpu,
             TRAINER_MEASURED: lambda *a, **k: trainer_cpu(*a, **k, measure_memory=True)}
    kwargs = dict(batch_size=batch_size, learning_rate=learning_rate, seed=0)
    for loop in loops.values():  # warm-up: allocator, kernels and caches of this shape
        loop(fresh(), workload, steps=max(2, steps // 4), **kwargs)
    measured: dict[str, list[float]] = {name: [] for name in loops}
    names = list(loops)
    for rep in range(rounds):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            seconds = loops[name](fresh(), workload, steps=steps, **kwargs)
            measured[name].append(steps * batch_size / seconds)
    return measured


def ratios(measured: dict[str, list[float]], name: str, reference: str = PLAIN) -> list[float]:
    """Per-round ratios ``name / reference`` of interleaved measurements (same round, same load)."""
    return [a / b for a, b in zip(measured[name], measured[reference])]


def bench_main(run, doc: str) -> None:
    """The command line every ``scripts/bench_<name>.py`` shares: ``[--quick] [--out DIR]``."""
    import argparse
    import pathlib

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out/bench"))
    args = parser.parse_args()
    print(run(args.quick, args.out))
