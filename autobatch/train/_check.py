"""A recipe checked on the user's model and data before a study spends anything on it."""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from ..errors import AutobatchError, UserCodeError
from ..recipe import RecipeError, TrainRecipe, topk
from ..workloads import TargetFacts
from ._build import make_optimizer, make_precision
from ._evaluate import evaluate

CHECK_SAMPLES = 4
CHECK_RETRY_SAMPLES = 64  # ... again at this many when the user's code raised at CHECK_SAMPLES


def _head(dataset: Dataset, n: int) -> Dataset:
    n = min(n, len(dataset))
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[:n] for t in dataset.tensors))
    return Subset(dataset, range(n))


def _span(targets: TargetFacts) -> str:
    return f"from {targets.low:.4g} to {targets.high:.4g}"


def _rows(targets: TargetFacts) -> str:
    """Vector targets whose rows are not probabilities, in words: their row sums (and values
    below 0)."""
    low, high = targets.row_sums or (targets.low, targets.high)
    low_text, high_text = f"{low:.4g}", f"{high:.4g}"
    sums = f"sum to {low_text}" if low_text == high_text else f"sum from {low_text} to {high_text}"
    negative = f" and hold values down to {targets.low:.4g}" if targets.low < 0 else ""
    return f"{'float' if targets.floating else 'integer'} vectors whose rows {sums}{negative}"


def check_targets(targets: TargetFacts, recipe: TrainRecipe) -> None:
    """Refuse, with a ``RecipeError`` naming the option and the fix, a built-in loss or metric
    that cannot learn or score these targets: cross-entropy or a top-k accuracy on real values
    (neither whole non-negative class indices nor probabilities in [0, 1]), on one value per
    sample, or on vectors ``(C,)`` whose rows are not probability distributions (multi-hot
    labels: cross-entropy would read them as unnormalised probabilities, the accuracy their
    argmax); binary cross-entropy on values outside [0, 1]. A user's loss or metric function is
    the user's to match to the targets."""
    classes = targets.whole and targets.low >= 0
    probabilities = targets.shape != () and 0 <= targets.low and targets.high <= 1
    real = targets.floating and not (classes or probabilities)
    not_rows = targets.row_sums is not None and not real and not targets.probability_rows
    if recipe.loss == "cross_entropy":
        if real:
            raise RecipeError(f"loss: the targets are real values ({_span(targets)}), not class indices or "
                              "probabilities, which cross_entropy needs; for regression pass --loss mse (its metric "
                              "is rmse; --metric mae also fits)")
        if targets.shape == (1,):
            raise RecipeError("loss: the targets are one value per sample (num_classes 1): cross_entropy over one "
                              "class learns nothing; pass --loss bce for 0/1 labels, --loss mse for real values")
        if not_rows:
            raise RecipeError(f"loss: the targets are {_rows(targets)}, not probabilities (cross_entropy needs rows "
                              "that are non-negative and sum to 1); for multi-label (multi-hot) targets pass "
                              "--loss bce, for soft labels make each row sum to 1")
    if recipe.loss == "bce" and not (0 <= targets.low and targets.high <= 1):
        raise RecipeError(f"loss: bce (binary cross-entropy) needs targets in [0, 1], these range {_span(targets)}; "
                          "scale them into [0, 1], or pass --loss mse for real values")
    if topk(recipe.metric) is not None and not_rows:
        raise RecipeError(f"metric: {recipe.metric} needs class targets, these are {_rows(targets)}, not "
                          "probabilities (rows that are non-negative and sum to 1) to take the argmax of; "
                          "choose --metric val_loss (with --loss bce for multi-label targets)")
    if topk(recipe.metric) is not None and (real or targets.shape == (1,)):
        these = f"real values ({_span(targets)})" if real else "one value per sample"
        raise RecipeError(f"metric: {recipe.metric} needs class targets, these are {these}; "
                          "choose --metric rmse or mae (or val_loss)")


def check_recipe(model: nn.Module, val: Dataset, device: torch.device,
                 recipe: TrainRecipe = TrainRecipe(), *, step: Optional[str] = None,
                 step_eval: Optional[str] = None, targets: Optional[TargetFacts] = None) -> None:
    """Build the recipe's precision and optimizer (on a copy of ``model``) and evaluate its loss
    and metric on the first ``CHECK_SAMPLES`` validation samples: fp16 on CPU, a user optimizer,
    loss or metric that cannot be imported, raises or returns the wrong type fail here, with a
    ``RecipeError`` naming the option, before the probe and the study; so do a loss or metric
    that does not fit the data's ``targets`` (``check_targets``; a workload's ``targets``, None:
    not checked); a model without trainable parameters raises ``AutobatchError``. The caller's
    model is left untouched. ``step``/``step_eval``: the user's step and evaluation functions,
    evaluated as the trials will (the recipe's loss and metric are then not checked against the
    targets)."""
    make_precision(recipe, device)
    if targets is not None and step is None:
        check_targets(targets, recipe)
    if not any(p.requires_grad for p in model.parameters()):
        raise AutobatchError(f"model {type(model).__name__} has no trainable parameters: nothing to tune; "
                             "return a module with parameters that require grad")
    replica = copy.deepcopy(model).to(device)
    make_optimizer(replica.parameters(), recipe=recipe)
    try:
        evaluate(replica, _head(val, CHECK_SAMPLES), CHECK_SAMPLES, device, recipe, step=step, step_eval=step_eval)
    except UserCodeError as small:
        # A model may need more samples per batch than CHECK_SAMPLES (a kernel's minimum batch):
        # then a larger batch runs, and the probe finds the smallest micro-batch it trains at.
        larger = min(len(val), CHECK_RETRY_SAMPLES)
        if larger <= CHECK_SAMPLES:
            raise
        try:
            evaluate(replica, _head(val, larger), larger, device, recipe, step=step, step_eval=step_eval)
        except UserCodeError:
            raise small  # with its cause: the user's traceback under --debug
