"""The data each role sees: tuners never see the split the answers are scored on.

Each dataset is a *pool* (what training may use) and a *test* split no tuner ever sees:

- ``mnist1d``: the pool is MNIST-1D's 4,000 training signals, the test split its own 1,000 test
  signals (the split the paper's 94% is measured on);
- ``digits``: scikit-learn's 1,797 digits, a fixed 20% test split (seed ``TEST_SEED``) held out;
- ``digits32``: the same, images upscaled bilinearly to 32x32 (resnet18's CIFAR-size input).

A tuner with seed ``s`` tunes on the pool split 80/20 with seed ``s`` (its validation part is
part of the pool). The grid, every re-training and the time-to-accuracy runs train on the whole
pool and are scored on the test split. Tuners get their data through autobatch's own
``pkg.module:function`` dataset hook: ``bench_tuning.data:tune__<dataset>__<seed>``.
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch.utils.data import TensorDataset

from autobatch.workloads import Workload, load_workload

TEST_SEED = 7777
DATASETS = ("mnist1d", "digits", "digits32")


@lru_cache(maxsize=None)
def _pool_and_test(name: str) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    if name == "mnist1d":
        w = load_workload("mnist1d")
        return w.train.tensors, w.val.tensors
    if name not in ("digits", "digits32"):
        raise ValueError(f"unknown benchmark dataset {name!r}; one of {DATASETS}")
    w = load_workload("digits", seed=0)
    x = torch.cat([w.train.tensors[0], w.val.tensors[0]])
    y = torch.cat([w.train.tensors[1], w.val.tensors[1]])
    if name == "digits32":
        x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(TEST_SEED))
    n_test = round(0.2 * len(x))
    test, pool = order[:n_test], order[n_test:]
    return (x[pool], y[pool]), (x[test], y[test])


def scoring(name: str) -> Workload:
    """Train on the whole pool, score on the test split."""
    (x, y), (xt, yt) = _pool_and_test(name)
    return Workload(f"{name} (pool / test)", TensorDataset(x, y), TensorDataset(xt, yt), 10, tuple(x.shape[1:]))


def tuning_split(name: str, seed: int) -> tuple[TensorDataset, TensorDataset, int]:
    """The pool split 80/20 with ``seed``: what a tuner with that seed trains and selects on."""
    (x, y), _ = _pool_and_test(name)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = round(0.2 * len(x))
    val, train = order[:n_val], order[n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val]), 10


def tuning(name: str, seed: int) -> Workload:
    train, val, classes = tuning_split(name, seed)
    return Workload(f"{name} (tuning split {seed})", train, val, classes, tuple(train.tensors[0].shape[1:]))


def spec(name: str, seed: int) -> str:
    """The ``--dataset`` spec that hands ``tune`` the tuning split."""
    return f"bench_tuning.data:tune__{name}__{seed}"


def __getattr__(attr: str):  # PEP 562: ``tune__<name>__<seed>`` factories for autobatch's hook
    if attr.startswith("tune__"):
        _, name, seed = attr.split("__")
        return lambda: tuning_split(name, int(seed))
    raise AttributeError(attr)
