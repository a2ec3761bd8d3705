"""Validation: the metric and the mean loss of a model on a dataset."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset



@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device) -> tuple[float, float]:
    """Validation (accuracy, mean loss)."""
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    if isinstance(dataset, TensorDataset):
        x_all, y_all = dataset.tensors
        chunks = ((x_all[i:i + batch_size], y_all[i:i + batch_size])
                  for i in range(0, len(x_all), batch_size))
    else:
        chunks = DataLoader(dataset, batch_size=batch_size, num_workers=2)
    for x, y in chunks:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    model.train()
    return correct / n, loss_sum / n
