"""Models: torchvision's classification models by name (never weights), autobatch's small
reference models (``small_cnn`` for images, ``mlp`` for any fixed-shape input, ``cnn1d`` for
signals, ``gru`` for token sequences) and ``pkg.module:function`` factories, called as
``function(num_classes=..., input_shape=SHAPE)`` with SHAPE one sample's input shape."""

from __future__ import annotations

import copy
import math
from typing import Callable, Optional

import torch
from torch import nn

from ..errors import AutobatchError
from ._conventions import user_code
from ._imports import import_path, unknown_name

ModelFactory = Callable[..., nn.Module]


def _image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise AutobatchError(
            f"model {name!r} needs image inputs (C, H, W); this dataset's samples are {tuple(input_shape)}: "
            "use cnn1d (signals), mlp (any fixed shape), gru (token ids) or your own pkg.module:function")
    return tuple(input_shape)  # type: ignore[return-value]


class SmallCNN(nn.Sequential):
    """Two convolutions and a linear head: a fast, batch-norm-free reference model for images."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...]) -> None:
        channels = _image_shape("small_cnn", input_shape)[0]
        super().__init__(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(32 * 16, num_classes),
        )


class MLP(nn.Module):
    """One hidden layer of 128 over the flattened sample, whatever its shape."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        features = math.prod(input_shape)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(features, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x if x.is_floating_point() else x.float())


class CNN1d(nn.Module):
    """The MNIST-1D paper's CNN (Greydanus 2020, ``ConvBase``): three 1-D convolutions of 25
    channels (kernel 5 then 3, stride 2, padding 1) with ReLU, flattened into a linear head.
    Inputs ``(N, L)`` or ``(N, C, L)``; for MNIST-1D (L = 40) the head sees 25 x 5 features."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], channels: int = 25) -> None:
        super().__init__()
        if len(input_shape) not in (1, 2):
            raise AutobatchError(f"model 'cnn1d' needs signal inputs (L,) or (C, L); got {tuple(input_shape)}")
        in_channels, length = (1, input_shape[0]) if len(input_shape) == 1 else input_shape
        self.convs = nn.Sequential(
            nn.Conv1d(in_channels, channels, 5, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        )
        for kernel in (5, 3, 3):
            length = (length + 2 - kernel) // 2 + 1
        if length < 1:
            raise AutobatchError(f"model 'cnn1d' needs signals of length 4 or more; got {tuple(input_shape)}")
        self.in_channels = in_channels
        self.head = nn.Linear(channels * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.in_channels, x.shape[-1])
        return self.head(self.convs(x).flatten(1))


class GRUClassifier(nn.Module):
    """A token-sequence classifier: ``Embedding(vocab, 64)`` -> one-layer GRU(64) -> the last
    hidden state -> linear. Inputs ``(N, L)`` integer token ids in ``[0, vocab_size)``."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], vocab_size: Optional[int],
                 dim: int = 64) -> None:
        super().__init__()
        if vocab_size is None or len(input_shape) != 1:
            raise AutobatchError(
                f"model 'gru' needs token-id inputs: samples of shape (L,) with an integer dtype; "
                f"got {tuple(input_shape)}{'' if vocab_size else ' of floats'}")
        self.embed = nn.Embedding(vocab_size, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _, hidden = self.gru(self.embed(tokens.long()))
        return self.head(hidden[-1])


# Each builder is called as builder(num_classes, input_shape, vocab_size).
_OWN_MODELS: dict[str, Callable[[int, tuple, Optional[int]], nn.Module]] = {
    "small_cnn": lambda c, shape, vocab: SmallCNN(c, shape),
    "mlp": lambda c, shape, vocab: MLP(c, shape),
    "cnn1d": lambda c, shape, vocab: CNN1d(c, shape),
    "gru": lambda c, shape, vocab: GRUClassifier(c, shape, vocab),
}
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


def build_model(name: str, *, num_classes: int, input_shape: tuple[int, ...],
                vocab_size: Optional[int] = None) -> nn.Module:
    """A freshly initialised model for samples of ``input_shape`` (``vocab_size``: token ids'
    vocabulary, for ``gru``). A user factory that raises is a ``UserCodeError`` naming it."""
    if ":" in name:
        factory = import_path(name, "model")
        with user_code(f"model factory {name}"):
            model = factory(num_classes=num_classes, input_shape=tuple(input_shape))
        if not isinstance(model, nn.Module):
            raise AutobatchError(
                f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module"
            )
        return model
    if name in _OWN_MODELS:
        return _OWN_MODELS[name](num_classes, tuple(input_shape), vocab_size)
    check_model_name(name)
    import torchvision.models as tvm

    image_shape = _image_shape(name, input_shape)
    extra = _EXTRA_KWARGS.get(name, {})
    model = tvm.get_model(name, weights=None, num_classes=num_classes, **extra)  # no download
    return InputAdapter(3, _torchvision_input_size(name, model, image_shape), model)


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
