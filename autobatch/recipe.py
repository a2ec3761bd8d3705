"""The training recipe: what a trial trains with, besides the three tuned numbers.

A ``TrainRecipe`` names the optimizer and its settings, the lr schedule and its warm-up, the
precision, the loss, the metric and its direction, and gradient clipping. It is stored with the
study (``to_dict``; part of the study's identity on resume) and handed back with the answer, so
the user's script trains exactly what the trials measured. Torch-free: ``autobatch.train``
builds the torch objects from it.

**None fields are resolved at construction.** ``weight_decay`` and ``metric_direction`` accept
``None`` meaning "the default for the chosen optimizer / metric"; ``__post_init__`` replaces the
``None`` by that default, so a recipe (and its ``to_dict``) always holds concrete values and two
recipes that train the same way compare equal. Consequence: ``dataclasses.replace(r,
optimizer="adamw")`` keeps ``r``'s resolved weight decay; ``r.with_changes(optimizer="adamw")``
re-resolves it (and likewise metric after a new loss, direction after a new metric). A user
optimizer (``pkg.module:function``) is called as ``function(params, lr=...)`` only, so its
``weight_decay`` resolves to ``None`` ("the function's own").
``grad_clip_norm=0`` is normalised to ``None`` (no clipping, as in Hugging Face's
``max_grad_norm=0``).

Errors: every invalid value raises ``RecipeError`` (an ``AutobatchError`` and a ``ValueError``:
the CLI prints it as one line and exits 2) with the message ``"<option>: <problem>; <fix>"``.
``fp16`` is accepted here and checked against the device by ``autobatch.train.check_device``
(it needs CUDA).

The lr defaults live here too (torch-free, so the search space can use them): the base lr at
effective batch ``REFERENCE_BATCH_SIZE`` and the rule that scales it, per optimizer.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Optional

from .errors import AutobatchError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "constant", "linear", "onecycle")
PRECISIONS = ("fp32", "bf16", "fp16")
LOSSES = ("cross_entropy", "bce", "mse")
METRICS = ("accuracy", "top5_accuracy", "val_loss", "mae", "rmse")  # and any topK_accuracy
DIRECTIONS = ("maximize", "minimize")
SCALING_RULES = ("linear", "sqrt", "none")
REFERENCE_BATCH_SIZE = 256  # the effective batch size at which ``default_base_lr`` applies

# Base lr at REFERENCE_BATCH_SIZE and the rule that scales it with the effective batch size:
# SGD 0.1 at 256 with the linear rule (Goyal et al. 2017, "Accurate, Large Minibatch SGD", eq. 1
# and sec. 2.1); Adam-family 1e-3 (Kingma & Ba 2015 default) with the square-root rule
# (Hoffer et al. 2017, sec. 4; Malladi et al. 2022, "On the SDEs and Scaling Rules for Adaptive
# Gradient Algorithms", Definition 3.3).
_BASE_LR = {"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3}
_SCALING_RULE = {"sgd": "linear", "adam": "sqrt", "adamw": "sqrt"}
# Weight decay: today's 5e-4 for SGD, torch's own defaults for Adam (0) and AdamW (0.01).
_WEIGHT_DECAY = {"sgd": 5e-4, "adam": 0.0, "adamw": 0.01}
_MINIMIZED = ("val_loss", "mae", "rmse")
_DISPLAY = {"accuracy": "accuracy", "val_loss": "validation loss", "mae": "MAE", "rmse": "RMSE"}
_DEFAULT_METRIC = {"cross_entropy": "accuracy", "bce": "val_loss", "mse": "rmse"}
_TOPK = re.compile(r"top([1-9][0-9]*)_accuracy$")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_USER_FUNCTION = re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$")


class RecipeError(AutobatchError, ValueError):
    """An invalid recipe option; the message is one line: ``"<option>: <problem>; <fix>"``."""


def is_user_function(name: str) -> bool:
    """True for a ``pkg.module:function`` reference (``function`` may be dotted: ``Cls.method``)."""
    return isinstance(name, str) and _USER_FUNCTION.match(name) is not None


def topk(metric: str) -> Optional[int]:
    """``k`` of a ``topK_accuracy`` metric (``accuracy`` is top-1), else ``None``."""
    if metric == "accuracy":
        return 1
    match = _TOPK.match(metric) if isinstance(metric, str) else None
    return int(match.group(1)) if match else None


def metric_name(metric: str) -> str:
    """A metric for display: ``"accuracy"``, ``"top-5 accuracy"``, ``"validation loss"``,
    ``"MAE"``, ``"RMSE"``, or a user function's name (``pkg.mod:f1`` -> ``"f1"``)."""
    k = topk(metric)
    if k and k > 1:
        return f"top-{k} accuracy"
    if metric in _DISPLAY:
        return _DISPLAY[metric]
    return metric.rsplit(":", 1)[-1]


def metric_label(metric: str, prefix: str = "validation") -> str:
    """The metric measured on the validation set, for display: ``"validation accuracy"``,
    ``"val RMSE"`` (``prefix="val"``), and ``"validation loss"`` (never "validation validation
    loss" nor "val val_loss")."""
    return metric_name(metric) if metric == "val_loss" else f"{prefix} {metric_name(metric)}"


def default_base_lr(optimizer: str) -> float:
    """The learning rate at effective batch ``REFERENCE_BATCH_SIZE`` (256) for ``optimizer``.

    Raises ``RecipeError`` for a user optimizer: there is no sensible default, the user sets it.
    """
    if optimizer in _BASE_LR:
        return _BASE_LR[optimizer]
    raise RecipeError(f"base_lr: optimizer {optimizer!r} has no default learning rate; set --base-lr "
                      f"(or base_lr in [space]): the lr at effective batch {REFERENCE_BATCH_SIZE}")


def default_scaling_rule(optimizer: str) -> str:
    """``"linear"`` for SGD, ``"sqrt"`` for Adam/AdamW (see the sources above).

    Raises ``RecipeError`` for a user optimizer: set the rule (linear, sqrt or none).
    """
    if optimizer in _SCALING_RULE:
        return _SCALING_RULE[optimizer]
    raise RecipeError(f"scaling_rule: optimizer {optimizer!r} has no default lr scaling rule; set "
                      f"--scaling-rule (or scaling_rule in [space]) to one of {', '.join(SCALING_RULES)}")


def default_weight_decay(optimizer: str) -> Optional[float]:
    """5e-4 for SGD (autobatch 0.1), 0 for Adam, 0.01 for AdamW (torch); ``None`` for a user
    optimizer (it is called with ``lr`` only)."""
    return _WEIGHT_DECAY.get(optimizer)


def _fail(option: str, problem: str, fix: str) -> None:
    raise RecipeError(f"{option}: {problem}; {fix}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, kw_only=True)
class TrainRecipe:
    """The training recipe; the defaults are autobatch 0.1's fixed recipe (SGD, Nesterov
    momentum 0.9, weight decay 5e-4, 5% linear warm-up then cosine to 0 per optimizer step,
    cross-entropy, fp32, accuracy). See the module docstring for how ``None`` is resolved."""

    optimizer: str = "sgd"                   # sgd | adam | adamw | pkg.module:function
    momentum: float = 0.9                    # sgd
    nesterov: bool = True                    # sgd
    weight_decay: Optional[float] = None     # None: default_weight_decay(optimizer)
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw
    schedule: str = "cosine"                 # cosine | constant | linear | onecycle
    warmup_fraction: float = 0.05            # of optimizer steps; onecycle: its rising phase
    precision: str = "fp32"                  # fp32 | bf16 | fp16 (CUDA only)
    loss: str = "cross_entropy"              # cross_entropy | bce | mse | pkg.module:function
    label_smoothing: float = 0.0             # cross_entropy only
    metric: Optional[str] = None             # None: accuracy (CE), val_loss (bce, user), rmse (mse)
    metric_direction: Optional[str] = None   # None: follows the metric (user metric: maximize)
    grad_clip_norm: Optional[float] = None   # max gradient L2 norm; None (or 0): no clipping

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        opt = self.optimizer
        if not (opt in OPTIMIZERS or is_user_function(opt)):
            _fail("optimizer", f"unknown {opt!r}", f"choose {', '.join(OPTIMIZERS)} or pkg.module:function")
        if not (_is_number(self.momentum) and 0 <= self.momentum < 1):
            _fail("momentum", f"{self.momentum!r} is not in [0, 1)", "use e.g. 0.9")
        if not isinstance(self.nesterov, bool):
            _fail("nesterov", f"{self.nesterov!r} is not true/false", "use true or false")
        if opt == "sgd" and self.nesterov and self.momentum == 0:
            _fail("nesterov", "Nesterov SGD needs momentum > 0", "set momentum (e.g. 0.9) or nesterov false")
        if self.weight_decay is None:
            set_("weight_decay", default_weight_decay(opt))
        elif not (_is_number(self.weight_decay) and self.weight_decay >= 0):
            _fail("weight_decay", f"{self.weight_decay!r} is not a number >= 0", "use e.g. 5e-4 (sgd) or 0.01 (adamw)")
        elif is_user_function(opt):
            _fail("weight_decay", f"optimizer {opt!r} is called as function(params, lr=...) only",
                  "apply weight decay inside the function and drop weight_decay")
        betas = self.betas
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2
                and all(_is_number(b) and 0 <= b < 1 for b in betas)):
            _fail("betas", f"{betas!r} is not two numbers in [0, 1)", "use e.g. [0.9, 0.999]")
        set_("betas", (float(betas[0]), float(betas[1])))
        if self.schedule not in SCHEDULES:
            _fail("schedule", f"unknown {self.schedule!r}", f"choose {', '.join(SCHEDULES)}")
        if not (_is_number(self.warmup_fraction) and 0 <= self.warmup_fraction < 1):
            _fail("warmup_fraction", f"{self.warmup_fraction!r} is not in [0, 1)", "use e.g. 0.05")
        if self.precision not in PRECISIONS:
            _fail("precision", f"unknown {self.precision!r}", f"choose {', '.join(PRECISIONS)}")
        self._check_loss_and_metric(set_)
        clip = self.grad_clip_norm
        if clip is not None and not (_is_number(clip) and clip >= 0):
            _fail("grad_clip_norm", f"{clip!r} is not a number >= 0", "use a positive max norm, e.g. 1.0, or omit it")
        if clip == 0:
            set_("grad_clip_norm", None)

    def _check_loss_and_metric(self, set_) -> None:
        loss = self.loss
        if not (loss in LOSSES or is_user_function(loss)):
            _fail("loss", f"unknown {loss!r}", f"choose {', '.join(LOSSES)} or pkg.module:function")
        if not (_is_number(self.label_smoothing) and 0 <= self.label_smoothing < 1):
            _fail("label_smoothing", f"{self.label_smoothing!r} is not in [0, 1)", "use e.g. 0.1")
        if self.label_smoothing and loss != "cross_entropy":
            _fail("label_smoothing", f"applies to cross_entropy only, not {loss!r}", "set it to 0")
        if self.metric is None:
            set_("metric", _DEFAULT_METRIC.get(loss, "val_loss"))
        metric = self.metric
        if not (metric in METRICS or topk(metric) or is_user_function(metric)):
            _fail("metric", f"unknown {metric!r}",
                  f"choose {', '.join(METRICS)}, topK_accuracy or pkg.module:function")
        if topk(metric) and loss in ("bce", "mse"):
            _fail("metric", f"{metric} needs class targets but the loss is {loss}",
                  "choose val_loss" + (", mae or rmse" if loss == "mse" else " or pkg.module:function"))
        natural = "minimize" if metric in _MINIMIZED else "maximize"
        if self.metric_direction is None:
            set_("metric_direction", natural)
        elif self.metric_direction not in DIRECTIONS:
            _fail("metric_direction", f"unknown {self.metric_direction!r}", "choose maximize or minimize")
        elif self.metric_direction != natural and not is_user_function(metric):
            _fail("metric_direction", f"{metric} is always {natural}d", "drop metric_direction")

    @property
    def direction(self) -> str:
        """``"maximize"`` or ``"minimize"``: the Optuna study direction the metric needs."""
        return self.metric_direction

    @property
    def metric_name(self) -> str:
        """The metric for display (``metric_name``)."""
        return metric_name(self.metric)

    @property
    def metric_is_fraction(self) -> bool:
        """True for accuracy and top-k accuracy: a fraction in [0, 1], higher is better (shown
        in percent, predictions clipped to [0, 1], accuracy milestones apply)."""
        return topk(self.metric) is not None

    def with_changes(self, **changes: Any) -> "TrainRecipe":
        """``dataclasses.replace`` that re-resolves the defaults a change invalidates: a new
        optimizer resets ``weight_decay``, a new loss resets ``metric``, a new metric resets
        ``metric_direction`` (unless the same call sets them)."""
        for driver, dependents in (("optimizer", ("weight_decay",)),
                                   ("loss", ("metric", "metric_direction")),
                                   ("metric", ("metric_direction",))):
            if driver in changes and changes[driver] != getattr(self, driver):
                for name in dependents:
                    changes.setdefault(name, None)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (``betas`` as a list). ``None`` values are kept; a TOML
        writer drops them and ``from_dict`` reads a missing key back as ``None``."""
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: Optional[dict[str, Any]]) -> "TrainRecipe":
        """The recipe in ``data``; a missing key takes its default, so ``{}`` or ``None`` (a
        study stored before recipes existed) gives autobatch 0.1's recipe. Raises
        ``RecipeError`` for an unknown key or an invalid value."""
        data = dict(data or {})
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            _fail("recipe", f"unknown key(s) {', '.join(unknown)}", f"use only {', '.join(names)}")
        if isinstance(data.get("betas"), list):
            data["betas"] = tuple(data["betas"])
        return cls(**data)
