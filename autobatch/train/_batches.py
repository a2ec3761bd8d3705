"""Micro-batches from a stream of reshuffled epochs, validation batches, and probe batches: real
samples of the user's training set, of any structure the batch conventions allow, on the device.

A DataLoader's worker processes belong to the object that made them: ``MicroBatches.close()``
(or leaving its ``with`` block) shuts them down, so no trial leaves workers behind and no
forked child ever finalises another trial's loader (the "can only test a child process" noise).
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..workloads import to_device, user_code

MAX_DEFAULT_WORKERS = 4


def default_num_workers() -> int:
    """Loader worker processes that fit this machine: one per CPU beyond the one that trains,
    at most ``MAX_DEFAULT_WORKERS``; none on a single CPU."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        cpus = os.cpu_count() or 1
    return max(0, min(MAX_DEFAULT_WORKERS, cpus - 1))


def _is_tensor_pairs(dataset: Dataset) -> bool:
    return isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2


def index_stream(n: int, seed: int) -> Iterator[int]:
    """Sample indices forever, reshuffled each epoch: no sample dropped, none seen twice as
    often as another, and effective batches larger than the dataset still work."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield from torch.randperm(n, generator=gen).tolist()


class MicroBatches:
    """Micro-batches from a stream of reshuffled epochs: in-memory ``(inputs, target)`` tensors
    are sliced directly (fast path: one permutation tensor per epoch, no per-sample Python),
    other datasets go through a DataLoader over ``index_stream`` (the same order) with
    ``num_workers`` worker processes (default: ``default_num_workers()``), shut down by
    ``close()``. Batches come out on ``device`` with float64 as float32."""

    def __init__(self, dataset: Dataset, batch_size: int, device: torch.device, seed: int,
                 num_workers: Optional[int] = None, name: str = "dataset"):
        self.batch_size, self.device, self.name = batch_size, torch.device(device), name
        self._loader: Optional[DataLoader] = None
        self._iterator: Optional[Iterator[Any]] = None
        self._sliced = _is_tensor_pairs(dataset)
        if self._sliced:
            self.x, self.y = (t.to(device) for t in dataset.tensors)
            self.n, self.gen = len(dataset), torch.Generator().manual_seed(seed)
            self.order, self.pos = torch.empty(0, dtype=torch.long, device=device), 0
        else:
            workers = default_num_workers() if num_workers is None else num_workers
            self._loader = DataLoader(dataset, batch_size=batch_size, sampler=index_stream(len(dataset), seed),
                                      num_workers=workers, pin_memory=device.type == "cuda")

    def _loader_batch(self) -> Any:
        if self._loader is None:
            raise RuntimeError("MicroBatches.next() after close()")
        if self._iterator is None:
            with user_code(f"{self.name} (loading a batch)"):
                self._iterator = iter(self._loader)
        with user_code(f"{self.name} (loading a batch)"):
            batch = next(self._iterator)
        return to_device(batch, self.device, non_blocking=True)

    def _tensor_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.pos, self.pos + self.batch_size
        if end <= len(self.order):  # within this epoch: one slice, as a plain loop does
            self.pos = end
            idx = self.order[start:end]
            return self.x[idx], self.y[idx]
        parts, need = [], self.batch_size
        while need:
            if self.pos == len(self.order):  # next epoch: as index_stream does
                self.order, self.pos = self._epoch_order(), 0
            take = min(need, len(self.order) - self.pos)
            parts.append(self.order[self.pos:self.pos + take])
            self.pos, need = self.pos + take, need - take
        idx = parts[0] if len(parts) == 1 else torch.cat(parts)
        return self.x[idx], self.y[idx]

    def _epoch_order(self) -> torch.Tensor:
        """One epoch's shuffled indices, on the data's device (one copy per epoch, not per batch)."""
        order = torch.randperm(self.n, generator=self.gen)
        return order if self.device.type == "cpu" else order.to(self.device)

    def next(self) -> Any:
        # No bound method kept on self: a reference cycle would leave the batches (and a
        # loader's workers) to the cyclic garbage collector, at a time no one chooses.
        return self._tensor_batch() if self._sliced else self._loader_batch()

    def close(self) -> None:
        """Shut the loader's worker processes down (dropping the last reference to a
        multi-process iterator joins its workers at once)."""
        iterator, self._iterator, self._loader = self._iterator, None, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:  # the public way is garbage collection; do it now, not later
            shutdown()
        del iterator

    def __enter__(self) -> "MicroBatches":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def eval_batches(dataset: Dataset, batch_size: int, device: torch.device,
                 num_workers: Optional[int] = 0, name: str = "dataset") -> Iterator[Any]:
    """The whole ``dataset`` once, in order, in batches of ``batch_size`` on ``device``; a
    loader's workers are shut down when the iteration ends or is abandoned."""
    if _is_tensor_pairs(dataset):
        x_all, y_all = dataset.tensors
        for i in range(0, len(x_all), batch_size):
            yield to_device((x_all[i:i + batch_size], y_all[i:i + batch_size]), device)
        return
    workers = default_num_workers() if num_workers is None else num_workers
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda")
    iterator = iter(loader)
    try:
        while True:
            with user_code(f"{name} (loading a validation batch)"):
                batch = next(iterator, None)
            if batch is None:
                return
            yield to_device(batch, device, non_blocking=True)
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def sample_batch(dataset: Dataset, size: int, seed: int = 0) -> Any:
    """A batch of ``size`` real samples of ``dataset`` on the CPU, collated as training collates
    them: the first ``size`` of a seeded shuffle, the dataset repeated when it is smaller."""
    with MicroBatches(dataset, size, torch.device("cpu"), seed, num_workers=0) as batches:
        return batches.next()


def copy_to(batch: Any, device: torch.device) -> Any:
    """A fresh copy of ``batch`` on ``device`` (new storage even on the same device), so that a
    measuring window sees the batch allocated as a training step does."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, copy=True)
    if isinstance(batch, dict):
        return {k: copy_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        items = [copy_to(v, device) for v in batch]
        return tuple(items) if isinstance(batch, tuple) else items
    return batch
