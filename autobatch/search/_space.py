"""The search space: micro-batch sizes, accumulation steps, the lr multiplier range and the
lr scaling rule the multiplier is relative to.

The base lr and the scaling rule follow the recipe's optimizer unless set: 0.1 at effective
batch 256 with the linear rule for SGD (Goyal et al. 2017, eq. 1), 1e-3 with the square-root
rule for Adam and AdamW (Malladi et al. 2022, Definition 3.3; see ``autobatch.recipe``). The
search over the multiplier stays either way, so the study finds what the rule gets wrong.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from ..errors import AutobatchError
from ..recipe import SCALING_RULES, TrainRecipe, default_base_lr, default_scaling_rule


def scaled_lr(*, base_lr: float, multiplier: float, effective_batch_size: int,
              reference_batch_size: int, rule: str) -> float:
    """Absolute learning rate: ``multiplier * base_lr * scale(effective / reference)``.

    Searching the multiplier instead of the absolute lr keeps the search well conditioned: the
    good region of the multiplier moves little with batch size (Goyal et al., 2017).
    """
    ratio = effective_batch_size / reference_batch_size
    scale = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[rule]
    return multiplier * base_lr * scale


def powers_of_two(low: int, high: int) -> list[int]:
    return [2**k for k in range(int(math.log2(low)), int(math.log2(high)) + 1)]


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    batch_size_min: int = 8
    batch_size_max: int = 256
    lr_multiplier_min: float = 0.1
    lr_multiplier_max: float = 10.0
    accumulation_steps: tuple[int, ...] = (1, 2, 4, 8)
    base_lr: Optional[float] = None       # None: the optimizer's default (see the module docstring)
    reference_batch_size: int = 256
    scaling_rule: Optional[str] = None    # linear | sqrt | none; None: the optimizer's default

    def __post_init__(self) -> None:
        for name in ("batch_size_min", "batch_size_max", "reference_batch_size"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise AutobatchError(f"{name} must be a power of two, got {value}")
        if self.batch_size_min > self.batch_size_max:
            raise AutobatchError("batch_size_min is larger than batch_size_max")
        if not 0 < self.lr_multiplier_min <= self.lr_multiplier_max:
            raise AutobatchError("lr multiplier bounds must satisfy 0 < min <= max")
        if not self.accumulation_steps or any(
            a < 1 or a & (a - 1) for a in self.accumulation_steps
        ):
            raise AutobatchError("accumulation_steps must be powers of two, e.g. [1, 2, 4, 8]")
        if self.scaling_rule is not None and self.scaling_rule not in SCALING_RULES:
            raise AutobatchError(
                f"unknown scaling_rule {self.scaling_rule!r}; choose one of {', '.join(SCALING_RULES)}"
            )
        if self.base_lr is not None and not self.base_lr > 0:
            raise AutobatchError("base_lr must be positive")

    def for_recipe(self, recipe: TrainRecipe) -> "SearchSpace":
        """This space with an unset ``base_lr``/``scaling_rule`` filled in from the recipe's
        optimizer. Raises ``RecipeError`` for a user optimizer (no default: set them)."""
        return dataclasses.replace(
            self,
            base_lr=self.base_lr if self.base_lr is not None else default_base_lr(recipe.optimizer),
            scaling_rule=self.scaling_rule if self.scaling_rule is not None
            else default_scaling_rule(recipe.optimizer))

    @property
    def batch_sizes(self) -> list[int]:
        return powers_of_two(self.batch_size_min, self.batch_size_max)

    def learning_rate(self, multiplier: float, effective_batch_size: int) -> float:
        """``multiplier * base_lr * scale(effective / reference)``; a space not yet filled in
        by ``for_recipe`` uses the default recipe's (SGD: 0.1, linear)."""
        filled = self.base_lr is not None and self.scaling_rule is not None
        space = self if filled else self.for_recipe(TrainRecipe())
        return scaled_lr(base_lr=space.base_lr, multiplier=multiplier,
                         effective_batch_size=effective_batch_size,
                         reference_batch_size=space.reference_batch_size, rule=space.scaling_rule)

    def multiplier_for(self, learning_rate: float, effective_batch_size: int) -> float:
        """Inverse of ``learning_rate``."""
        return learning_rate / self.learning_rate(1.0, effective_batch_size)


def fit_space_to_data(space: SearchSpace, train_size: int) -> tuple[SearchSpace, Optional[str]]:
    """``space`` with no micro-batch above the training set and no accumulation that would
    take even the smallest micro-batch beyond it; and a sentence saying what changed (None when
    nothing did). Raises ``AutobatchError`` when even ``batch_size_min`` exceeds the data.

    A micro-batch larger than the data would repeat samples within one step (24 samples at
    micro-batch 64 trains 64 samples per step, most of them twice): such a step is no batch of
    the data at all. Effective batches beyond it that remain (a larger micro-batch times some
    accumulation) are refused per trial, before training."""
    if train_size < space.batch_size_min:
        raise AutobatchError(
            f"the training set has {train_size} samples, fewer than the smallest micro-batch "
            f"{space.batch_size_min}: lower --batch-size-min (or bring more data)")
    largest = 2 ** int(math.log2(train_size))
    accumulation = (tuple(a for a in space.accumulation_steps if space.batch_size_min * a <= train_size)
                    or (min(space.accumulation_steps),))
    limited = dataclasses.replace(space, batch_size_max=min(space.batch_size_max, largest),
                                  accumulation_steps=accumulation)
    if limited == space:
        return space, None
    return limited, (f"the training set has {train_size} samples: micro-batches up to {limited.batch_size_max}, "
                     f"accumulation steps {', '.join(map(str, accumulation))}; effective batches above "
                     f"{train_size} are refused")


DEFAULT_SPACE = SearchSpace()
CRITICAL_LOW, CRITICAL_HIGH = 1 / 8, 4.0  # the effective batches searched around the critical batch
SMALLEST_CENTRED_MICRO = 2                # below it BatchNorm cannot train


def range_given(space: SearchSpace, given: frozenset[str] = frozenset()) -> bool:
    """Whether the user chose the batch range: a ``space.`` bound or accumulation named by a flag
    or study file, or bounds other than the defaults."""
    keys = {"space.batch_size_min", "space.batch_size_max", "space.accumulation_steps"}
    return bool(keys & given) or (space.batch_size_min, space.batch_size_max, space.accumulation_steps) != (
        DEFAULT_SPACE.batch_size_min, DEFAULT_SPACE.batch_size_max, DEFAULT_SPACE.accumulation_steps)


def centre_on_critical_batch(space: SearchSpace, critical_batch: float, *, train_size: int,
                             largest_micro: Optional[int] = None, lower_bound: Optional[float] = None) -> SearchSpace:
    """``space`` with its effective batches centred on ``critical_batch`` (the gradient noise
    scale, McCandlish et al. 2018): effective batches from ``B_crit/8`` to ``4 B_crit`` in powers of
    two (at least ``SMALLEST_CENTRED_MICRO``, at most the training set). The top is reached by
    accumulating: micro-batches up to half of it (and up to ``largest_micro``, the largest that
    fits in memory, once known), accumulation steps from 1 to what reaches it, at least ``(1, 2)``
    (a trial that accumulates measures the noise scale as it trains). Raises ``AutobatchError``
    for a critical batch that is not positive and finite.

    ``lower_bound``: the low end of the estimate's interval; the range then starts at an eighth of
    it. The range never starts above ``space.batch_size_min``: the probe at the start of training
    overestimates the critical batch (``scripts/bench_noise.py``: 2.5x on digits, about 20x on
    mnist1d, where ``|G|²`` is barely resolved at initialisation), and a range raised on it lost the
    small batches where the best trial was (regret 0.061 on mnist1d), so the estimate widens the
    range (upwards to ``4 B_crit``, downwards to ``B_crit/8``) and never removes its small end."""
    if not (math.isfinite(critical_batch) and critical_batch > 0):
        raise AutobatchError(f"critical batch must be positive and finite, got {critical_batch}")
    data_max = 2 ** int(math.log2(max(1, train_size)))
    high = min(2 ** math.ceil(math.log2(max(1.0, CRITICAL_HIGH * critical_batch))), data_max)
    bottom = min(critical_batch, lower_bound) if lower_bound and lower_bound > 0 else critical_batch
    low = min(max(SMALLEST_CENTRED_MICRO, 2 ** math.floor(math.log2(max(1.0, CRITICAL_LOW * bottom)))), high,
              space.batch_size_min)
    top = max(low, high // 2)
    if largest_micro is not None:
        top = max(low, min(top, 2 ** int(math.log2(max(1, largest_micro)))))
    accumulation = tuple(2 ** i for i in range(max(1, int(math.log2(max(1, high // top)))) + 1))
    return dataclasses.replace(space, batch_size_min=low, batch_size_max=top, accumulation_steps=accumulation)
