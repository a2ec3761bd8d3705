"""Selection and scoring apart: a deterministic slice of the validation split held out from the
trials, on which only the verification of the answer is scored.

The trials' validation metric chooses the setting, so scoring the answer again on the same
samples measures it with the same luck. Where the validation split is large enough
(``MIN_VAL_FOR_HOLDOUT`` samples), ``HOLDOUT_FRACTION`` of it is held out: the trials see the
rest (the "select" part), the verification runs are scored on both.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from ._datasets import Workload

HOLDOUT_FRACTION = 0.3     # share of the validation split held out for verification
MIN_VAL_FOR_HOLDOUT = 300  # smaller validation splits are not cut: the trials need every sample
HOLDOUT_SEED = 7919        # offset of the split's seed from the study's


def holdout_size(val_size: int) -> int:
    """Validation samples to hold out of ``val_size``: ``HOLDOUT_FRACTION`` of them (rounded),
    0 below ``MIN_VAL_FOR_HOLDOUT``."""
    return int(round(HOLDOUT_FRACTION * val_size)) if val_size >= MIN_VAL_FOR_HOLDOUT else 0


def _subset(dataset: Dataset, indices: list[int]) -> Dataset:
    """``indices`` of ``dataset``; in-memory tensors stay in-memory tensors (the fast path)."""
    if isinstance(dataset, TensorDataset):
        index = torch.tensor(indices, dtype=torch.long)
        return TensorDataset(*(t[index] for t in dataset.tensors))
    return Subset(dataset, indices)


def split_holdout(workload: Workload, holdout: int, seed: int) -> tuple[Workload, Optional[Dataset]]:
    """``(workload whose val is the select part, the held-out part)``: ``holdout`` samples of
    ``workload.val`` drawn by a permutation seeded with ``seed + HOLDOUT_SEED`` (the same on
    every worker and resume). ``holdout`` 0: the workload as it is and None. Raises
    ``ValueError`` when ``holdout`` leaves no sample to select on."""
    if holdout <= 0:
        return workload, None
    n = len(workload.val)
    if holdout >= n:
        raise ValueError(f"cannot hold out {holdout} of {n} validation samples")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + HOLDOUT_SEED)).tolist()
    held, select = sorted(order[:holdout]), sorted(order[holdout:])
    return dataclasses.replace(workload, val=_subset(workload.val, select)), _subset(workload.val, held)
