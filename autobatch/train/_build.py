"""Torch objects built from the study's ``TrainRecipe``: the optimizer, the lr scheduler, the
loss, the metric, the step's loss computation and its precision (autocast, gradient scaler,
clipping). Every trial, probe, throughput measurement and baseline builds them here, and so does
a user's script through the ``Recommendation`` (so it trains exactly what the trials measured).

Every user-facing problem raises ``RecipeError`` (an ``AutobatchError``: one line naming the
option, the problem and the fix); ``torch.OutOfMemoryError`` always passes through untouched
(the trial loop handles it).

Shapes: ``outputs`` are ``(N, C, ...)`` logits for classification and ``(N, ...)`` for
regression; ``targets`` are class indices ``(N, ...)`` of any integer dtype, or one-hot / soft /
multi-hot values (float or int) shaped like ``outputs``.
"""

from __future__ import annotations

import importlib
import math
import numbers
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable, Optional, Union

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import AutobatchError
from ..recipe import RecipeError, TrainRecipe, is_user_function, topk
from ..workloads import call_model, import_path, own_loss, prediction_of, raise_user_error, split_batch, user_code
from ._step import FP32, ComputeLoss, Precision

Tensor = torch.Tensor
LossFn = Callable[[Tensor, Tensor], Tensor]  # (outputs, targets) -> batch-mean loss, 0-dim
DeviceLike = Union[str, torch.device]


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def load_function(option: str, ref: str) -> Callable:
    """The callable named by ``pkg.module:function`` (``function`` may be dotted).
    Raises ``RecipeError`` naming ``option`` if the module cannot be imported or lacks it."""
    module_name, _, attr = ref.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure is the user's module
        raise RecipeError(f"{option}: cannot import {module_name!r} ({_line(exc)}); "
                          "put the module on PYTHONPATH or fix its name") from None
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    if not callable(obj):
        raise RecipeError(f"{option}: {module_name!r} has no callable {attr!r}; check the function name")
    return obj


def _call_user(option: str, ref: str, fn: Callable, *args, **kwargs):  # type: ignore[no-untyped-def]
    try:
        return fn(*args, **kwargs)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:
        raise RecipeError(f"{option}: {ref!r} raised {_line(exc)}; fix the function or use a built-in") from exc


# --- optimizer and lr schedule ------------------------------------------------------------

def make_optimizer(params: Iterable[nn.Parameter], lr: float = 0.1,
                   recipe: TrainRecipe = TrainRecipe()) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``params`` at learning rate ``lr`` (the peak lr for
    ``onecycle``). SGD: momentum, nesterov, weight decay on every parameter (as autobatch 0.1);
    Adam/AdamW: betas, weight decay (L2-coupled for Adam, decoupled for AdamW); a user function
    is called as ``function(params, lr=lr)`` and must return a ``torch.optim.Optimizer``."""
    if not (isinstance(lr, numbers.Real) and lr > 0):
        raise RecipeError(f"lr: {lr!r} is not a positive number; pass the tuned learning rate")
    name = recipe.optimizer
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                               weight_decay=recipe.weight_decay)
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, betas=recipe.betas, weight_decay=recipe.weight_decay)
    optimizer = _call_user("optimizer", name, load_function("optimizer", name), params, lr=lr)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise RecipeError(f"optimizer: {name!r} returned {type(optimizer).__name__}, not a "
                          "torch.optim.Optimizer; return e.g. torch.optim.SGD(params, lr=lr)")
    return optimizer


@dataclass(frozen=True)
class LRFactor:
    """The lr multiplier at optimizer step ``step`` (0-based) of ``total_steps``: linear warm-up
    over ``w = max(1, int(warmup_fraction * total_steps))`` steps, factor ``(step + 1) / w``, then
    ``cosine``: ``0.5 * (1 + cos(pi * p))``, ``linear``: ``1 - p`` (to 0), ``constant``: 1, with
    ``p = (step - w) / max(1, total_steps - w)`` clipped to [0, 1]. The cosine case is
    autobatch 0.1's ``lr_factor`` expression for expression (bit-identical). A callable object,
    not a closure, so ``LambdaLR.state_dict()`` saves it."""

    schedule: str
    total_steps: int
    warmup_fraction: float

    def __call__(self, step: int) -> float:
        warmup = max(1, int(self.warmup_fraction * self.total_steps))
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, self.total_steps - warmup)
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if self.schedule == "linear":  # = 1 - p, in Hugging Face's expression (bit-identical to it)
            return max(0.0, (self.total_steps - step) / max(1, self.total_steps - warmup))
        return 1.0


def warmup_steps(total_steps: int, recipe: TrainRecipe = TrainRecipe()) -> int:
    """Warm-up length in optimizer steps, as ``LRFactor`` counts it (at least 1)."""
    return max(1, int(recipe.warmup_fraction * total_steps))


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                   recipe: TrainRecipe = TrainRecipe()) -> torch.optim.lr_scheduler.LRScheduler:
    """The recipe's per-optimizer-step schedule over ``total_steps`` steps; call ``.step()``
    after each ``optimizer.step()``. Built once, it sets the first step's lr on construction.

    cosine/linear/constant: ``LambdaLR(LRFactor)`` (exact; a ``SequentialLR(LinearLR,
    CosineAnnealingLR)`` drifts by ~1e-17 through its recursive form). onecycle: ``OneCycleLR``
    with the optimizer's lr as ``max_lr``, ``pct_start = warmup_fraction``, cosine annealing,
    torch's div factors (25, 1e4) and ``cycle_momentum=False`` (momentum/betas stay as set); it
    refuses a step beyond ``total_steps``."""
    if not (isinstance(total_steps, numbers.Integral) and total_steps >= 1):
        raise RecipeError(f"total_steps: {total_steps!r} is not an integer >= 1; pass the number of optimizer steps")
    if recipe.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=int(total_steps), pct_start=float(recipe.warmup_fraction),
            anneal_strategy="cos", cycle_momentum=False)
    factor = LRFactor(recipe.schedule, int(total_steps), recipe.warmup_fraction)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --- loss -------------------------------------------------------------------------------------

def _dtype(outputs: Tensor) -> torch.dtype:
    """At least float32: autocast runs these losses in float32 anyway."""
    return torch.promote_types(outputs.dtype, torch.float32)


def _like(outputs: Tensor, targets: Tensor, what: str) -> Tensor:
    """``targets`` as float shaped like ``outputs`` ((N,) vs (N, 1) are reconciled)."""
    if targets.shape != outputs.shape:
        if targets.numel() != outputs.numel():
            raise RecipeError(f"{what}: outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)} "
                              "do not match; make the model output one value per target")
        targets = targets.reshape(outputs.shape)
    return targets.to(_dtype(outputs))


def _class_targets(outputs: Tensor, targets: Tensor) -> tuple[Tensor, bool]:
    """(targets, soft): soft = one-hot/probabilities (float or int) with the outputs' number of
    dimensions, (N, C, ...); else class indices (N, ...), one dimension fewer."""
    if targets.dim() == outputs.dim():
        return targets.to(_dtype(outputs)), True
    return targets.long(), False


def make_loss(recipe: TrainRecipe = TrainRecipe()) -> LossFn:
    """``loss(outputs, targets) -> 0-dim tensor``, the mean over the batch.

    cross_entropy: integer class targets (any int dtype) or one-hot/soft targets, with
    ``label_smoothing``; bce: ``binary_cross_entropy_with_logits`` for multi-hot targets; mse:
    mean-squared error; a user function is called as ``function(outputs, targets)``, and an
    exception or a non-scalar result becomes a ``RecipeError``."""
    if recipe.loss == "cross_entropy":
        smoothing = recipe.label_smoothing

        def cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
            targets, soft = _class_targets(outputs, targets)
            logits = outputs.to(targets.dtype) if soft else outputs
            return F.cross_entropy(logits, targets, label_smoothing=smoothing)
        return cross_entropy
    if recipe.loss == "bce":
        return lambda outputs, targets: F.binary_cross_entropy_with_logits(
            outputs.to(_dtype(outputs)), _like(outputs, targets, "loss"))
    if recipe.loss == "mse":
        return lambda outputs, targets: F.mse_loss(outputs.to(_dtype(outputs)), _like(outputs, targets, "loss"))
    ref, fn = recipe.loss, load_function("loss", recipe.loss)

    def user_loss(outputs: Tensor, targets: Tensor) -> Tensor:
        value = _call_user("loss", ref, fn, outputs, targets)
        if not (isinstance(value, Tensor) and value.numel() == 1 and value.is_floating_point()):
            raise RecipeError(f"loss: {ref!r} returned {type(value).__name__}, not a scalar float "
                              "tensor; return the batch-mean loss as a tensor")
        return value.reshape(())
    return user_loss


def make_compute_loss(recipe: TrainRecipe = TrainRecipe(), step: Optional[str] = None) -> ComputeLoss:
    """``compute_loss(model, batch) -> 0-dim loss``.

    Default: the batch conventions (``autobatch.workloads``): forward ``model(x)``,
    ``model(*inputs)`` or ``model(**inputs)``; a loss the model computed itself (``outputs.loss``)
    is used as is; otherwise the prediction (a tensor, the first of a tuple/list, ``logits``) and
    the targets go to the recipe's loss ``make_loss(recipe)(prediction, targets)``.

    ``step`` (``pkg.module:function``, or an object handed in-process): ``function(model, batch)``
    returns the loss and replaces all of the above. Errors in the user's forward, loss or step
    raise ``UserCodeError`` naming it (``RecipeError`` for a user loss); out-of-memory errors
    pass through.
    """
    if step is not None:
        return _step_hook(step)
    loss_fn = make_loss(recipe)

    def compute_loss(model: nn.Module, batch) -> torch.Tensor:  # type: ignore[no-untyped-def]
        # try/except as ``user_code`` does, without its context manager's cost every step
        inputs, targets, key = split_batch(batch)
        try:
            outputs = call_model(model, inputs, targets, key)
        except Exception as exc:
            raise_user_error(f"forward of {type(model).__name__}", exc)
        own = own_loss(outputs)
        if own is not None:
            return own
        prediction = prediction_of(outputs)
        try:
            return loss_fn(prediction, targets)
        except Exception as exc:
            raise_user_error(f"loss {recipe.loss} on the model's prediction {tuple(prediction.shape)}", exc)

    return compute_loss


def _step_hook(step: str) -> ComputeLoss:
    function = import_path(step, "step")

    def compute_loss(model: nn.Module, batch) -> torch.Tensor:  # type: ignore[no-untyped-def]
        with user_code(f"step {step}"):
            loss = function(model, batch)
        needs_grad = torch.is_grad_enabled()  # validation runs the step under no_grad
        if not (isinstance(loss, torch.Tensor) and loss.numel() == 1 and (loss.requires_grad or not needs_grad)):
            got = (type(loss).__name__ if not isinstance(loss, torch.Tensor)
                   else f"a tensor of shape {tuple(loss.shape)} (reduce it, e.g. .mean(), or use reduction='mean')"
                   if loss.numel() != 1 else "a tensor without grad (computed under no_grad or detached?)")
            raise AutobatchError(f"step {step} must return the loss as a 1-element tensor with grad, got {got}")
        return loss.reshape(())

    return compute_loss


# --- metric ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    """``metric(outputs, targets)`` gives the metric's SUM over the batch's samples (a tensor on
    the outputs' device for the built-in metrics: accumulate it without ``.item()``, so
    evaluation never waits for the device per batch); ``reduce(total, n_samples)`` turns the
    accumulated sum into the value (the mean, or its square root for rmse)."""

    name: str
    direction: str
    batch_sum: Callable[[Tensor, Tensor], Union[Tensor, float]]
    root: bool = False

    def __call__(self, outputs: Tensor, targets: Tensor) -> Union[Tensor, float]:
        return self.batch_sum(outputs, targets)

    def reduce(self, total: Union[Tensor, float], n_samples: int) -> float:
        mean = float(total) / n_samples
        return math.sqrt(mean) if self.root else mean


def _per_sample_sum(values: Tensor) -> Tensor:
    """Sum over samples of each sample's mean (over classes/pixels/outputs), in float64."""
    values = values.to(torch.float64)
    return (values.flatten(1).mean(1) if values.dim() > 1 else values).sum()


def _topk_sum(k: int) -> Callable[[Tensor, Tensor], Tensor]:
    def batch_sum(outputs: Tensor, targets: Tensor) -> Tensor:
        labels, soft = _class_targets(outputs, targets)
        labels = labels.argmax(1) if soft else labels
        if k == 1:  # argmax, as autobatch 0.1 (ties resolve identically)
            return _per_sample_sum(outputs.argmax(1) == labels)
        if outputs.shape[1] < k:
            raise RecipeError(f"metric: top{k}_accuracy needs at least {k} classes, the model "
                              f"outputs {outputs.shape[1]}; choose accuracy")
        return _per_sample_sum((outputs.topk(k, dim=1).indices == labels.unsqueeze(1)).any(1))
    return batch_sum


def _number(ref: str, value) -> float:  # type: ignore[no-untyped-def]
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    elif hasattr(value, "item") and getattr(value, "size", None) == 1:  # numpy scalar
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RecipeError(f"metric: {ref!r} returned {type(value).__name__}, not a number; "
                          "return the batch mean as a float")
    return float(value)


def make_metric(recipe: TrainRecipe = TrainRecipe()) -> Metric:
    """The recipe's validation metric (see ``Metric``). accuracy/topK: against class indices or
    the argmax of one-hot/soft targets; val_loss: the recipe's loss (batch mean x N); mae/rmse:
    per-sample mean absolute/squared error; a user function returns the batch MEAN as a number
    (weighted by N here; reading it waits for the device); a non-number or an exception is a
    ``RecipeError``."""
    metric, name, direction = recipe.metric, recipe.metric_name, recipe.direction
    k = topk(metric)
    if k:
        return Metric(name, direction, _topk_sum(k))
    if metric == "val_loss":
        loss = make_loss(recipe)
        return Metric(name, direction, lambda o, t: loss(o, t).detach().to(torch.float64) * o.shape[0])
    if metric in ("mae", "rmse"):
        power = 1 if metric == "mae" else 2
        return Metric(name, direction, lambda o, t: _per_sample_sum(
            (o.detach().to(_dtype(o)) - _like(o, t, "metric")).abs() ** power), root=power == 2)
    assert is_user_function(metric)
    fn = load_function("metric", metric)
    return Metric(name, direction, lambda o, t: _number(metric, _call_user("metric", metric, fn, o, t)) * o.shape[0])


# --- precision ---------------------------------------------------------------------------------

def check_device(recipe: TrainRecipe, device: DeviceLike) -> torch.device:
    """``device`` as a ``torch.device`` if the recipe's precision runs there: fp16 needs CUDA,
    bf16 needs CPU or a CUDA GPU that supports it. Raises ``RecipeError`` otherwise."""
    device = torch.device(device)
    if recipe.precision == "fp16" and device.type != "cuda":
        raise RecipeError(f"precision: fp16 needs a CUDA device (autocast + GradScaler), not "
                          f"{device.type}; use bf16 or fp32 on {device.type}")
    if recipe.precision == "bf16":
        if device.type not in ("cpu", "cuda"):
            raise RecipeError(f"precision: bf16 autocast is supported on cpu and cuda, not {device.type}; use fp32")
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise RecipeError("precision: this GPU does not support bf16; use fp16 or fp32")
    return device


def autocast(recipe: TrainRecipe, device: DeviceLike) -> AbstractContextManager:
    """The forward pass's precision context: fp32 nothing, bf16/fp16 ``torch.autocast``.
    Wrap the forward and the loss, not ``backward()``."""
    device = check_device(recipe, device)
    if recipe.precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if recipe.precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def make_grad_scaler(recipe: TrainRecipe, device: DeviceLike) -> torch.amp.GradScaler:
    """A ``GradScaler`` enabled for fp16 only; disabled, its ``scale``/``step``/``update`` are
    pass-throughs, so one training loop serves every precision."""
    device = check_device(recipe, device)
    return torch.amp.GradScaler(device.type, enabled=recipe.precision == "fp16")


def clip_gradients(recipe: TrainRecipe, parameters: Iterable[Tensor], *,
                   optimizer: Optional[torch.optim.Optimizer] = None,
                   scaler: Optional[torch.amp.GradScaler] = None) -> Optional[Tensor]:
    """Clip the gradients' global L2 norm to ``recipe.grad_clip_norm``; call once per optimizer
    step, after the last micro-batch's ``backward()`` and before ``optimizer.step()`` /
    ``scaler.step(optimizer)``. With an enabled scaler the gradients are unscaled first (pass
    ``optimizer``). Returns the pre-clip norm, or ``None`` when the recipe does not clip.
    ``parameters`` must be re-iterable or fresh (e.g. ``model.parameters()``)."""
    if recipe.grad_clip_norm is None:
        return None
    if scaler is not None and scaler.is_enabled():
        if optimizer is None:
            raise ValueError("clip_gradients: pass optimizer= with an enabled GradScaler (it must unscale first)")
        scaler.unscale_(optimizer)
    return nn.utils.clip_grad_norm_(parameters, recipe.grad_clip_norm)


def make_precision(recipe: TrainRecipe = TrainRecipe(), device: DeviceLike = "cpu") -> Precision:
    """The training step's precision for the recipe on ``device``: the autocast context (bf16,
    fp16), the gradient scaler (fp16 only) and the clipping norm; ``FP32`` for today's recipe.
    Raises ``RecipeError`` for a precision the device cannot run (fp16 on CPU)."""
    device = check_device(recipe, device)
    if recipe.precision == "fp32" and recipe.grad_clip_norm is None:
        return FP32
    context = (nullcontext if recipe.precision == "fp32" else
               partial(torch.autocast, device.type,
                       dtype=torch.bfloat16 if recipe.precision == "bf16" else torch.float16))
    scaler = torch.amp.GradScaler(device.type) if recipe.precision == "fp16" else None
    return Precision(autocast=context, scaler=scaler, grad_clip_norm=recipe.grad_clip_norm)
