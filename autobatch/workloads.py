"""Models and datasets: registries filled once at import, and user factories by import path.

Models: any torchvision classification model by name (looked up in torchvision's own
registry), autobatch's two small reference models, or ``pkg.module:function`` called as
``function(num_classes=..., input_shape=(C, H, W))``.

Datasets: ``digits`` (scikit-learn's bundled handwritten digits), ``synthetic[:NxCxHxW]``,
``cifar10`` (from ``--data-dir``), ``imagefolder:PATH`` and ``pkg.module:function`` returning
``(train_dataset, val_dataset, num_classes)``.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from .errors import AutobatchError

ModelFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class Workload:
    """A dataset ready to train on: splits, class count and the shape of one input."""

    name: str
    train: Dataset
    val: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]


# --- models ---------------------------------------------------------------------------------

class SmallCNN(nn.Sequential):
    """Two convolutions and a linear head: a fast, batch-norm-free reference model."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        channels = input_shape[0]
        super().__init__(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(32 * 16, num_classes),
        )


class MLP(nn.Sequential):
    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        features = input_shape[0] * input_shape[1] * input_shape[2]
        super().__init__(nn.Flatten(), nn.Linear(features, 128), nn.ReLU(), nn.Linear(128, num_classes))


_OWN_MODELS: dict[str, ModelFactory] = {"small_cnn": SmallCNN, "mlp": MLP}
# Models whose training-mode output is not plain logits without these.
_EXTRA_KWARGS = {
    "inception_v3": {"aux_logits": False, "init_weights": True},
    "googlenet": {"aux_logits": False, "init_weights": True},
}


class InputAdapter(nn.Module):
    """Adapts a batch to what a torchvision model needs: 3 channels and a minimum size."""

    def __init__(self, channels: int, size: tuple[int, int], model: nn.Module) -> None:
        super().__init__()
        self.channels, self.size, self.model = channels, size, model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1) if x.shape[1] == 1 else x[:, : self.channels]
        if tuple(x.shape[-2:]) != self.size:
            x = nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return self.model(x)


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def list_models() -> list[str]:
    return sorted(_OWN_MODELS) + _torchvision_names()


def _import_path(spec: str, what: str) -> Callable:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: any import failure is their error to fix
        raise AutobatchError(f"cannot import {what} module {module_name!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise AutobatchError(f"{what} {spec!r}: {module_name} has no callable {attr!r}")
    return factory


def _unknown(kind: str, name: str, known: list[str]) -> AutobatchError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return AutobatchError(f"unknown {kind} {name!r}{hint} (or give pkg.module:function)")


def check_model_name(name: str) -> None:
    """Raise ``AutobatchError`` early for an unknown model name (no model is built)."""
    if ":" not in name and name not in _OWN_MODELS and name not in _torchvision_names():
        raise _unknown("model", name, list_models())


def build_model(name: str, *, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """A freshly initialised model mapping a batch of ``input_shape`` inputs to logits."""
    if ":" in name:
        factory = _import_path(name, "model")
        try:
            model = factory(num_classes=num_classes, input_shape=tuple(input_shape))
        except Exception as exc:  # the user's factory failed: say so, no traceback
            raise AutobatchError(f"model factory {name!r} failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(model, nn.Module):
            raise AutobatchError(
                f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module"
            )
        return model
    if name in _OWN_MODELS:
        return _OWN_MODELS[name](num_classes, tuple(input_shape))
    check_model_name(name)
    import torchvision.models as tvm

    extra = _EXTRA_KWARGS.get(name, {})
    model = tvm.get_model(name, weights=None, num_classes=num_classes, **extra)  # no download
    return InputAdapter(3, _torchvision_input_size(name, model, input_shape), model)


def _torchvision_input_size(name: str, model: nn.Module, input_shape) -> tuple[int, int]:
    """The smallest size >= the data's that the model accepts (its weights' ``min_size``,
    then doubled until a forward pass succeeds: some models fail on tiny maps)."""
    import torchvision.models as tvm

    height, width = input_shape[1], input_shape[2]
    try:
        min_h, min_w = next(iter(tvm.get_model_weights(name))).meta.get("min_size", (1, 1))
    except (ValueError, StopIteration, KeyError):
        min_h, min_w = 1, 1
    size = (max(height, min_h), max(width, min_w))
    trial = copy.deepcopy(model).train()  # training mode, on a copy: BN statistics untouched
    while True:
        try:
            with torch.no_grad():
                trial(torch.zeros(2, 3, *size))
            return size
        except RuntimeError:
            if min(size) >= 512:
                raise AutobatchError(f"model {name!r} rejects inputs up to 512x512") from None
            size = (size[0] * 2, size[1] * 2)


# --- datasets -------------------------------------------------------------------------------

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
    factory = _import_path(spec, "dataset")
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
    raise _unknown("dataset", spec.split(":")[0], list(_DATASETS) + ["synthetic:NxCxHxW"])
