"""Data checked once, at load, with clear words.

A user's splits are checked before anything trains: neither may be empty; an item must follow
the batch conventions; integer class labels must lie in ``[0, num_classes)`` (the error names the
largest); per-sample target vectors must have ``num_classes`` entries. Integer labels of any
dtype are cast to int64 and float64 inputs are trained as float32 (said once, as a note). Items
are read as PyTorch's default collate reads them: NumPy arrays and scalars in an item count as
tensors (``default_convert``), as they become tensors in a batch. What the targets are
(``TargetFacts``: shape, range, whole numbers or not, and for per-sample vectors whether every
row is a probability distribution) is recorded, so that the recipe's loss and metric can be
checked against them before anything trains (``autobatch.train.check_recipe``).
In-memory ``TensorDataset`` splits are checked exactly; other datasets item by item, up to
``MAX_SCAN`` items (a larger dataset's later items are checked by the loss when they train).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch.utils.data import Dataset, TensorDataset, default_convert

from ..errors import AutobatchError
from ._conventions import first_tensor, split_batch, user_code

MAX_SCAN = 20_000
ROW_SUM_TOLERANCE = 1e-3  # a probability row sums to 1 within this (or its dtype's eps: bfloat16)


@dataclass(frozen=True)
class TargetFacts:
    """The targets of both splits, for checking them against the recipe's loss and metric:
    ``shape`` of one sample's target (``()`` for a label or a value, ``(C,)`` for a vector; None
    when it varies), whether any is a float, the smallest and largest value, and whether every
    value is a whole number (class indices are). For vectors ``(C,)`` (C > 1) also the smallest
    and largest row sum (``row_sums``, else None) and whether every row is a probability
    distribution (``probability_rows``: non-negative values summing to 1 within
    ``ROW_SUM_TOLERANCE``, as one-hot and soft labels are and multi-hot labels are not)."""

    shape: Optional[tuple[int, ...]]
    floating: bool
    low: float
    high: float
    whole: bool
    row_sums: Optional[tuple[float, float]] = None
    probability_rows: bool = False

    @classmethod
    def of(cls, targets: list[torch.Tensor], shape: Optional[tuple[int, ...]]) -> Optional["TargetFacts"]:
        """The facts of ``targets`` (tensors of any shapes), one sample's target being ``shape``;
        None when they hold no value."""
        values = torch.cat([t.detach().reshape(-1) for t in targets]) if targets else torch.empty(0)
        if values.numel() == 0:
            return None
        floating = values.is_floating_point()
        dtype = values.dtype
        values = values.double() if floating else values.long()
        whole = not floating or bool(torch.equal(values, values.round()))
        low, high = float(values.min()), float(values.max())
        row_sums, probability_rows = None, False
        if shape is not None and len(shape) == 1 and shape[0] > 1:  # (C,) per sample: one row each
            sums = values.reshape(-1, shape[0]).sum(1)
            row_sums = (float(sums.min()), float(sums.max()))
            # values rounded to the dtype (each by half its eps, relative) move a sum of 1 by eps/2 at most
            tolerance = max(ROW_SUM_TOLERANCE, torch.finfo(dtype).eps) if floating else 0.0
            probability_rows = low >= 0 and max(abs(row_sums[0] - 1), abs(row_sums[1] - 1)) <= tolerance
        return cls(shape=shape, floating=floating, low=low, high=high, whole=whole,
                   row_sums=row_sums, probability_rows=probability_rows)


@dataclass(frozen=True)
class DataFacts:
    """What the checks learned: the (possibly converted) splits, a sample's input shape, the
    token vocabulary (integer inputs: the largest id + 1, else None), notes to show once and
    what the targets are."""

    train: Dataset
    val: Dataset
    input_shape: tuple[int, ...]
    vocab_size: Optional[int]
    notes: tuple[str, ...]
    targets: Optional[TargetFacts] = None


def _as_tensor(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        return value


def _item(name: str, dataset: Dataset, index: int, split: str) -> tuple[Any, Any]:
    with user_code(f"dataset {name} ({split} item {index})"):
        item = dataset[index]
    inputs, target, _ = split_batch(item)
    # as the default collate does: NumPy arrays and scalars become tensors (strings stay as they are)
    return default_convert(inputs), _as_tensor(default_convert(target))


def _fast(dataset: Dataset) -> bool:
    return isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2


def _cast_tensor_dataset(dataset: TensorDataset) -> TensorDataset:
    """float64 inputs/targets as float32, integer targets as int64: converted once."""
    x, y = dataset.tensors
    if x.dtype == torch.float64:
        x = x.float()
    if y.dtype == torch.float64:
        y = y.float()
    elif not y.is_floating_point() and y.dtype != torch.long and y.dtype != torch.bool:
        y = y.long()
    return TensorDataset(x, y)


_LABEL_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _scan(name: str, dataset: Dataset, split: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Targets and first input tensors of up to ``MAX_SCAN`` items."""
    targets, inputs = [], []
    for index in range(min(len(dataset), MAX_SCAN)):
        x, y = _item(name, dataset, index, split)
        target = _as_tensor(y)
        if not isinstance(target, torch.Tensor) or not (target.dtype.is_floating_point or target.dtype in _LABEL_DTYPES):
            raise AutobatchError(
                f"dataset {name}: {split} item {index} has a target of type {type(y).__name__} ({y!r:.40}); "
                "targets must be numbers or tensors: map labels such as names to class indices 0..C-1")
        targets.append(target)
        inputs.append(_as_tensor(first_tensor(x) if not isinstance(x, torch.Tensor) else x))
    return targets, inputs


def _check_labels(name: str, labels: torch.Tensor, num_classes: int, split: str) -> None:
    if labels.numel() == 0 or labels.is_floating_point() or labels.dtype == torch.bool:
        return
    largest, smallest = int(labels.max()), int(labels.min())
    if largest >= num_classes or smallest < 0:
        bad = largest if largest >= num_classes else smallest
        raise AutobatchError(
            f"dataset {name}: {split} label {bad} is outside [0, {num_classes}) (largest label {largest}, "
            f"num_classes {num_classes}); return the right class count or fix the labels")


def check_data(name: str, train: Dataset, val: Dataset, num_classes: int) -> DataFacts:
    """Check a user's splits (see the module docstring); raises ``AutobatchError``."""
    for split, data in (("training", train), ("validation", val)):
        try:
            size = len(data)
        except TypeError:
            raise AutobatchError(f"dataset {name}: the {split} split has no len(); give a map-style "
                                 "Dataset (or a TensorDataset)") from None
        if size == 0:
            raise AutobatchError(f"dataset {name}: the {split} split is empty")
    notes: list[str] = []
    inputs, target = _item(name, train, 0, "training")
    first = _as_tensor(first_tensor(inputs) if not isinstance(inputs, torch.Tensor) else inputs)
    if not isinstance(first, torch.Tensor):
        raise AutobatchError(f"dataset {name}: inputs must be tensors (or a tuple/dict of tensors), "
                             f"got {type(inputs).__name__}")
    if first.dtype == torch.float64:
        notes.append(f"dataset {name}: float64 inputs are trained as float32")
    splits: dict[str, Dataset] = {"training": train, "validation": val}
    vocab = None
    seen: list[torch.Tensor] = []
    shapes: set[tuple[int, ...]] = set()
    for split, data in list(splits.items()):
        if _fast(data):
            data = splits[split] = _cast_tensor_dataset(data)
            labels, xs = data.tensors[1], [data.tensors[0]]
            seen.append(labels)
            shapes.add(tuple(labels.shape[1:]))
        else:
            ys, xs = _scan(name, data, split)
            item_shapes = {tuple(y.shape) for y in ys}
            labels = torch.stack(ys) if len(item_shapes) == 1 else torch.empty(0)
            seen.extend(ys)
            shapes |= item_shapes
        if labels.dim() == 1:
            _check_labels(name, labels, num_classes, split)
        elif labels.dim() == 2 and labels.shape[1] != num_classes:
            raise AutobatchError(
                f"dataset {name}: {split} targets have {labels.shape[1]} values per sample but num_classes "
                f"is {num_classes}")
        if not first.is_floating_point() and first.dtype != torch.bool:
            biggest = max((int(x.max()) for x in xs if isinstance(x, torch.Tensor) and x.numel()), default=0)
            vocab = max(vocab or 0, biggest + 1)
    return DataFacts(train=splits["training"], val=splits["validation"], input_shape=tuple(first.shape),
                     vocab_size=vocab, notes=tuple(notes),
                     targets=TargetFacts.of(seen, shapes.pop() if len(shapes) == 1 else None))
