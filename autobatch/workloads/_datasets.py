"""Datasets: ``digits`` (scikit-learn's bundled handwritten digits), ``mnist1d`` (MNIST-1D,
generated offline), ``wine`` and ``breast_cancer`` (scikit-learn's bundled tables),
``synthetic[:NxCxHxW]``, ``cifar10`` (from ``--data-dir``), ``imagefolder:PATH`` and
``pkg.module:function`` returning ``(train_dataset, val_dataset, num_classes)``; the seeded
train/validation split. A user's splits are checked at load (``_checks``)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from ..errors import AutobatchError
from ._checks import TargetFacts, check_data
from ._conventions import user_code
from ._imports import import_path, unknown_name


@dataclass(frozen=True)
class Workload:
    """A dataset ready to train on: splits, class count, the shape of one sample's input
    (``(C, H, W)``, ``(C, L)``, ``(L,)``, ``(F,)``: for tuple or dict inputs, the first tensor's),
    the token vocabulary when inputs are integer ids, notes to show the user once, and what a
    user dataset's targets are (None for the built-in datasets: class indices)."""

    name: str
    train: Dataset
    val: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    vocab_size: Optional[int] = None
    notes: tuple[str, ...] = ()
    targets: Optional[TargetFacts] = None


_SYNTHETIC = re.compile(r"synthetic(?::(\d+)x(\d+)x(\d+)x(\d+))?")
_DATASETS = ("digits", "mnist1d", "wine", "breast_cancer", "synthetic", "cifar10", "imagefolder")


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


@lru_cache(maxsize=1)
def _mnist1d_arrays():
    """MNIST-1D as the package generates it from its templates (Greydanus 2020): 5,000 signals
    of length 40 with its default arguments (seed 42, 80/20 split), built in memory, never
    downloaded. The generator seeds numpy's and Python's global RNGs: they are restored."""
    from mnist1d.data import get_dataset_args, make_dataset

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return data["x"], data["y"], data["x_test"], data["y_test"]


def mnist1d(seed: int) -> Workload:
    """MNIST-1D: 4,000 training and 1,000 test signals of length 40, 10 classes; the test split
    validates (its paper reports 94% test accuracy for a CNN, 68% for an MLP). Fixed split:
    ``seed`` does not change it."""
    x, y, x_test, y_test = _mnist1d_arrays()
    train = TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long))
    val = TensorDataset(torch.tensor(x_test, dtype=torch.float32), torch.tensor(y_test, dtype=torch.long))
    return Workload("mnist1d", train, val, 10, (40,))


def _sklearn_table(name: str, loader, seed: int) -> Workload:
    """A bundled scikit-learn table, standardised with the training split's statistics."""
    data = loader()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    train, val = _tensor_split(x, y, seed)
    mean, std = train.tensors[0].mean(0), train.tensors[0].std(0).clamp_min(1e-8)
    train = TensorDataset((train.tensors[0] - mean) / std, train.tensors[1])
    val = TensorDataset((val.tensors[0] - mean) / std, val.tensors[1])
    return Workload(name, train, val, int(y.max()) + 1, (x.shape[1],))


def wine(seed: int) -> Workload:
    """scikit-learn's wine table: 178 rows of 13 features, 3 classes (bundled: no download)."""
    from sklearn.datasets import load_wine

    return _sklearn_table("wine", load_wine, seed)


def breast_cancer(seed: int) -> Workload:
    """scikit-learn's breast cancer table: 569 rows of 30 features, 2 classes (bundled)."""
    from sklearn.datasets import load_breast_cancer

    return _sklearn_table("breast_cancer", load_breast_cancer, seed)


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


def user_dataset(spec: str, factory=None) -> Workload:
    """``pkg.module:function`` (or an in-process factory) returning ``(train, val, num_classes)``,
    checked at load (``check_data``)."""
    factory = factory or import_path(spec, "dataset")
    with user_code(f"dataset factory {spec}"):
        result = factory()
    if not (isinstance(result, (tuple, list)) and len(result) == 3
            and all(hasattr(d, "__getitem__") and hasattr(d, "__len__") for d in result[:2])):
        raise AutobatchError(
            f"dataset factory {spec!r} must return (train_dataset, val_dataset, num_classes), "
            f"got {type(result).__name__}")
    train, val, num_classes = result
    try:
        num_classes = int(num_classes)
    except (TypeError, ValueError):
        raise AutobatchError(f"dataset factory {spec!r}: num_classes must be an int, got {num_classes!r}") from None
    if num_classes < 1:
        raise AutobatchError(f"dataset factory {spec!r}: num_classes must be at least 1, got {num_classes}")
    facts = check_data(spec, train, val, num_classes)
    return Workload(spec, facts.train, facts.val, num_classes, facts.input_shape, facts.vocab_size, facts.notes,
                    facts.targets)


def load_workload(spec: str, *, data_dir: Optional[Path] = None, seed: int = 0) -> Workload:
    """The dataset named by ``spec`` (see module docstring)."""
    if spec in _BUILTIN:
        return _BUILTIN[spec](seed)
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
    if spec.startswith("synthetic:"):
        raise AutobatchError(f"dataset {spec!r}: write synthetic:NxCxHxW, N samples of C channels of H x W "
                             "(e.g. synthetic:2048x3x32x32), or synthetic alone for that default")
    if ":" in spec:
        return user_dataset(spec)
    raise unknown_name("dataset", spec.split(":")[0], list(_DATASETS) + ["synthetic:NxCxHxW"])


_BUILTIN = {"digits": digits, "mnist1d": mnist1d, "wine": wine, "breast_cancer": breast_cancer}
