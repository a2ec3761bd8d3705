"""Models: torchvision's classification models by name (never weights), two small references
(``small_cnn``, ``mlp``) and ``pkg.module:function`` factories."""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from ..errors import AutobatchError
from ._imports import import_path, unknown_name

ModelFactory = Callable[..., nn.Module]


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


def check_model_name(name: str) -> None:
    """Raise ``AutobatchError`` early for an unknown model name (no model is built)."""
    if ":" not in name and name not in _OWN_MODELS and name not in _torchvision_names():
        raise unknown_name("model", name, list_models())


def build_model(name: str, *, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """A freshly initialised model mapping a batch of ``input_shape`` inputs to logits."""
    if ":" in name:
        factory = import_path(name, "model")
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
