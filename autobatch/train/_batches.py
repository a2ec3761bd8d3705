"""Micro-batches from a stream of reshuffled epochs."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset


def index_stream(n: int, seed: int) -> Iterator[int]:
    """Sample indices forever, reshuffled each epoch: no sample dropped, none seen twice as
    often as another, and effective batches larger than the dataset still work."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield from torch.randperm(n, generator=gen).tolist()


class MicroBatches:
    """Micro-batches from a stream of reshuffled epochs: in-memory tensors are sliced directly
    (fast path: one permutation tensor per epoch, no per-sample Python), other datasets go
    through a DataLoader over ``index_stream`` (the same order)."""

    def __init__(self, dataset: Dataset, batch_size: int, device: torch.device, seed: int):
        self.batch_size, self.device = batch_size, device
        if isinstance(dataset, TensorDataset):
            self.x, self.y = (t.to(device) for t in dataset.tensors)
            self.n, self.gen = len(dataset), torch.Generator().manual_seed(seed)
            self.order, self.pos = torch.empty(0, dtype=torch.long), 0
            self._next = self._tensor_batch
        else:
            loader = DataLoader(dataset, batch_size=batch_size, sampler=index_stream(len(dataset), seed),
                                num_workers=2, pin_memory=device.type == "cuda", persistent_workers=True)
            iterator = iter(loader)
            self._next = lambda: tuple(t.to(self.device, non_blocking=True) for t in next(iterator))

    def _tensor_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        parts, need = [], self.batch_size
        while need:
            if self.pos == len(self.order):  # next epoch: as index_stream does
                self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
            take = min(need, len(self.order) - self.pos)
            parts.append(self.order[self.pos:self.pos + take])
            self.pos, need = self.pos + take, need - take
        idx = (parts[0] if len(parts) == 1 else torch.cat(parts)).to(self.device)
        return self.x[idx], self.y[idx]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._next()
