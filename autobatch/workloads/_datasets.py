"""Datasets: ``digits`` (scikit-learn's bundled handwritten digits), ``synthetic[:NxCxHxW]``,
``cifar10`` (from ``--data-dir``), ``imagefolder:PATH`` and ``pkg.module:function`` returning
``(train_dataset, val_dataset, num_classes)``; the seeded train/validation split."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from ..errors import AutobatchError
from ._imports import import_path, unknown_name


@dataclass(frozen=True)
class Workload:
    """A dataset ready to train on: splits, class count and the shape of one input."""

    name: str
    train: Dataset
    val: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]


_SYNTHETIC = re.compile(r"synthetic(?::(\d+)x(\d+)x(\d+)x(\d+))?")
_DATASETS = ("digits", "synthetic", "cifar10", "imagefolder")


def _split(dataset: Dataset, val_fraction: float, seed: int) -> tuple[Subset, Subset]:
    """A deterministic, seeded train/validation split."""
    n = len(dataset)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, int(round(n * val_fraction)))
    return Subset(dataset, order[n_val:]), Subset(dataset, order[:n_val])


def _tensor_split(x: torch.Tensor, y: torch.Tensor, seed: int, val_fraction: float = 0.2):
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(len(x) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


def digits(seed: int) -> Workload:
    """scikit-learn's 1,797 8x8 handwritten digits (bundled: no download), standardised."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(data.target, dtype=torch.long)
    train, val = _tensor_split(x, y, seed)
    return Workload("digits", train, val, 10, (1, 8, 8))


def synthetic(n: int, shape: tuple[int, int, int], seed: int, num_classes: int = 10) -> Workload:
    """Learnable images: a fixed random prototype per class, plus noise. Seeded."""
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(num_classes, *shape, generator=gen)
    y = torch.randint(0, num_classes, (n,), generator=gen)
    x = prototypes[y] * 0.5 + torch.randn(n, *shape, generator=gen)
    train, val = _tensor_split(x, y, seed)
    return Workload(f"synthetic:{n}x{'x'.join(map(str, shape))}", train, val, num_classes, shape)


def cifar10(data_dir: Optional[Path], seed: int) -> Workload:
    import torchvision
    from torchvision import transforms

    root = Path(data_dir or "data")
    if not (root / "cifar-10-batches-py").is_dir():
        raise AutobatchError(
            f"no CIFAR-10 under {root} (expected {root / 'cifar-10-batches-py'}); "
            "download it there or pass --data-dir"
        )
    tf = transforms.Compose([
        transforms.ToTensor(),
        transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    ])
    train = torchvision.datasets.CIFAR10(str(root), train=True, transform=tf, download=False)
    val = torchvision.datasets.CIFAR10(str(root), train=False, transform=tf, download=False)
    return Workload("cifar10", train, val, 10, (3, 32, 32))


def imagefolder(path: str, seed: int, size: int = 64) -> Workload:
    import torchvision
    from torchvision import transforms

    root = Path(path)
    if not root.is_dir():
        raise AutobatchError(f"imagefolder path {root} is not a directory")
    tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()])
    try:
        full = torchvision.datasets.ImageFolder(str(root), transform=tf)
    except (FileNotFoundError, RuntimeError) as exc:
        raise AutobatchError(f"imagefolder {root}: {exc}") from None
    train, val = _split(full, 0.2, seed)
    return Workload(f"imagefolder:{root}", train, val, len(full.classes), (3, size, size))


def user_dataset(spec: str) -> Workload:
    factory = import_path(spec, "dataset")
    try:
        result = factory()
    except Exception as exc:
        raise AutobatchError(f"dataset factory {spec!r} failed: {type(exc).__name__}: {exc}") from None
    if not (isinstance(result, tuple) and len(result) == 3):
        raise AutobatchError(
            f"dataset factory {spec!r} must return (train_dataset, val_dataset, num_classes)"
        )
    train, val, num_classes = result
    try:
        x, _ = train[0]
        shape = tuple(torch.as_tensor(x).shape)
        if len(val) == 0 or len(train) == 0 or int(num_classes) < 2:
            raise ValueError
    except Exception:
        raise AutobatchError(
            f"dataset factory {spec!r} returned datasets that do not yield (input, label) pairs"
            " or an invalid class count"
        ) from None
    if len(shape) != 3:
        raise AutobatchError(f"dataset {spec!r}: inputs must be CxHxW tensors, got shape {shape}")
    return Workload(spec, train, val, int(num_classes), shape)


def load_workload(spec: str, *, data_dir: Optional[Path] = None, seed: int = 0) -> Workload:
    """The dataset named by ``spec`` (see module docstring)."""
    if spec == "digits":
        return digits(seed)
    if match := _SYNTHETIC.fullmatch(spec):
        if match.group(1):
            n, c, h, w = (int(g) for g in match.groups())
            if min(n, c, h, w) < 1 or n < 20:
                raise AutobatchError(f"synthetic shape in {spec!r} needs N >= 20 and positive sizes")
            return synthetic(n, (c, h, w), seed)
        return synthetic(2048, (3, 32, 32), seed)
    if spec == "cifar10":
        return cifar10(data_dir, seed)
    if spec.startswith("imagefolder:"):
        return imagefolder(spec.split(":", 1)[1], seed)
    if ":" in spec and not spec.startswith("synthetic"):
        return user_dataset(spec)
    raise unknown_name("dataset", spec.split(":")[0], list(_DATASETS) + ["synthetic:NxCxHxW"])
