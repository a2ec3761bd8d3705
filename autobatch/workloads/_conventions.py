"""Batch conventions: how a dataset item becomes a model call, and a model's output a prediction.

A dataset item (and so a collated batch) is one of:

- ``(inputs, target)``: ``inputs`` a tensor of any shape and dtype (``model(x)``), a tuple or list
  of tensors (``model(*inputs)``) or a dict of tensors (``model(**inputs)``);
- a dict following the Hugging Face convention: the ``labels`` (or ``label``) key is the target,
  the other keys are the model's keyword arguments. When the model's ``forward`` names that key
  as a parameter, it is passed too, so a model that computes its own loss can.

Targets pass to the recipe's loss and metric as they come (``autobatch.train.make_loss`` reads
class indices of any integer dtype, one-hot / soft / multi-hot targets shaped like the
prediction, and regression targets).

A model's output is the prediction when it is a tensor; else the first element of a tuple or
list, the ``logits`` of a dict or of an object (Hugging Face ``ModelOutput``). An output that
carries a non-None ``loss`` (key or attribute) is a model that computed its own loss: that loss
trains it.

Errors the user's code raises are re-raised as ``UserCodeError`` naming the function
(``user_code``); out-of-memory errors pass through untouched (they are a result, not a bug).
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Iterator, NoReturn, Optional

import torch
from torch import nn

from ..errors import AutobatchError, UserCodeError

TARGET_KEYS = ("labels", "label")


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failure (CUDA's typed error or the CPU allocator's message)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


@contextmanager
def user_code(where: str) -> Iterator[None]:
    """Run the user's code: any exception becomes a ``UserCodeError`` naming ``where``; an
    out-of-memory error, an ``AutobatchError`` and ``KeyboardInterrupt`` pass through."""
    try:
        yield
    except Exception as exc:
        raise_user_error(where, exc)


def raise_user_error(where: str, exc: Exception) -> NoReturn:
    """What ``user_code`` raises for ``exc`` (call it in an ``except`` block): ``exc`` itself
    when it is an ``AutobatchError`` or an out-of-memory error, else a ``UserCodeError`` naming
    ``where``. For a per-step path, where a context manager's cost counts."""
    if isinstance(exc, AutobatchError) or is_out_of_memory(exc):
        raise exc
    raise UserCodeError(where, exc) from exc


def split_batch(batch: Any) -> tuple[Any, Any, Optional[str]]:
    """``(inputs, targets, target_key)`` of a batch; ``target_key`` is the dict key the target
    came from (a Hugging Face style sample), else None. Raises ``AutobatchError`` for anything
    else."""
    if isinstance(batch, dict):
        for key in TARGET_KEYS:
            if key in batch:
                return {k: v for k, v in batch.items() if k != key}, batch[key], key
        raise AutobatchError(
            f"a dict sample needs a 'labels' or 'label' key for the target; it has {', '.join(map(str, batch))}")
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1], None
    kind = f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list)) else type(batch).__name__
    raise AutobatchError(
        f"a dataset item must be (inputs, target) or a dict with a 'labels' key, got {kind}")


def _forward_params(model: nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def call_model(model: nn.Module, inputs: Any, targets: Any = None, target_key: Optional[str] = None) -> Any:
    """The model's output for ``inputs``: ``model(x)``, ``model(*inputs)`` or ``model(**inputs)``.
    A Hugging Face style batch also passes its target when ``forward`` names the key."""
    if isinstance(inputs, dict):
        kwargs = dict(inputs)
        if target_key is not None and targets is not None and target_key in _forward_params(model):
            kwargs[target_key] = targets
        return model(**kwargs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def own_loss(outputs: Any) -> Optional[torch.Tensor]:
    """The loss a model computed itself (``outputs["loss"]`` or ``outputs.loss``), else None."""
    if isinstance(outputs, torch.Tensor):
        return None
    loss = outputs.get("loss") if isinstance(outputs, dict) else getattr(outputs, "loss", None)
    return loss if isinstance(loss, torch.Tensor) else None


def prediction_of(outputs: Any) -> torch.Tensor:
    """The prediction in a model's output (see the module docstring). Raises ``AutobatchError``
    naming what came back when there is none."""
    pred = outputs
    if isinstance(outputs, (tuple, list)) and outputs:
        pred = outputs[0]
    elif isinstance(outputs, dict):
        pred = outputs.get("logits")
    elif not isinstance(outputs, torch.Tensor):
        pred = getattr(outputs, "logits", None)
    if not isinstance(pred, torch.Tensor):
        raise AutobatchError(
            f"the model returned {type(outputs).__name__}: expected a tensor, a tuple/list whose first "
            "element is the prediction, a dict or an object with 'logits', or one with 'loss'; "
            "otherwise give --step pkg.module:function")
    return pred


def to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """``obj`` (a tensor, or tuples/lists/dicts of them) on ``device``; float64 tensors become
    float32 (trained as float32, said once at load)."""
    if isinstance(obj, torch.Tensor):
        if obj.dtype == torch.float64:
            obj = obj.float()
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        items = [to_device(v, device, non_blocking) for v in obj]
        return tuple(items) if isinstance(obj, tuple) else items
    return obj


def first_tensor(inputs: Any) -> Optional[torch.Tensor]:
    """The first tensor of ``inputs`` (itself, the first of a tuple/list, the first dict value)."""
    if isinstance(inputs, torch.Tensor):
        return inputs
    values = list(inputs.values()) if isinstance(inputs, dict) else inputs
    if isinstance(values, (tuple, list)):
        for value in values:
            found = first_tensor(value)
            if found is not None:
                return found
    return None


def batch_length(batch: Any) -> int:
    """Samples in a collated batch: the first dimension of its first tensor."""
    tensor = first_tensor(batch)
    return int(tensor.shape[0]) if tensor is not None and tensor.dim() > 0 else 1
