"""When to trust an answer less, said in one line with what would fix it; and what BatchNorm
does to an answer that accumulates. Pure functions of numbers the recommender already has."""

from __future__ import annotations

import math
from typing import Optional, Sequence

LOW_TRIALS = 10          # fewer completed trials than this: the surface is fitted to too little
NARROW_DOUBLINGS = 2.0   # completed trials spanning fewer doublings of effective batch (or of lr) than this


def confidence_note(*, completed: int, effective_batches: Sequence[float], multipliers: Sequence[float],
                    batch_size: int, lr_multiplier: float, space_batch: tuple[int, int],
                    space_multiplier: tuple[float, float], train_size: Optional[int] = None) -> Optional[str]:
    """One line saying why confidence in the answer is low and what would fix it, or None.

    Low when: fewer than ``LOW_TRIALS`` completed trials (fix: more budget); the completed
    trials span fewer than ``NARROW_DOUBLINGS`` doublings of effective batch or of lr multiplier
    (fix: a wider range, or more budget so the search leaves its start); the answer's micro-batch
    or lr multiplier is at a bound of the searched space (``space_batch``, ``space_multiplier``:
    (min, max)), where the best may lie beyond (fix: widen that bound; none for the largest
    micro-batch when the next power of two would exceed the ``train_size`` training samples:
    the training set is the bound there)."""
    why, fix = [], []
    if completed < LOW_TRIALS:
        why.append(f"only {completed} completed trials")
        fix.append("more budget")
    spans = {"effective batch": effective_batches, "learning rate": multipliers}
    for name, values in spans.items():
        v = [float(x) for x in values if x and x > 0]
        if v and math.log2(max(v) / min(v)) < NARROW_DOUBLINGS:
            why.append(f"the completed trials span {max(v) / min(v):.2g}x of {name}")
            fix.append(f"a wider {name} range")
    edges = [("micro-batch", batch_size, space_batch, "batch_size"),
             ("lr multiplier", lr_multiplier, space_multiplier, "lr_multiplier")]
    for name, value, (lo, hi), key in edges:
        if lo < hi and math.isclose(value, hi, rel_tol=1e-6):
            if key == "batch_size" and train_size and 2 * hi > train_size:
                why.append(f"the answer is at the largest micro-batch the {train_size} training samples allow ({hi:g})")
                continue
            why.append(f"the answer is at the largest {name} searched ({hi:g})")
            fix.append(f"a larger {_where(key, 'max')}")
        elif lo < hi and math.isclose(value, lo, rel_tol=1e-6):
            why.append(f"the answer is at the smallest {name} searched ({lo:g})")
            fix.append(f"a smaller {_where(key, 'min')}")
    if not why:
        return None
    fixes = list(dict.fromkeys(fix))
    return f"low confidence: {'; '.join(why)}" + (f"; would help: {', '.join(fixes)}" if fixes else "")


def _where(key: str, end: str) -> str:
    """Where a user sets that bound: the flag where there is one, else the study file's key."""
    if key == "batch_size":
        return f"--batch-size-{end}"
    return f"{key}_{end} ([space] table of a --config study file)"


def batchnorm_note(batch_size: int, accumulation_steps: int) -> Optional[str]:
    """The caveat for an answer that accumulates on a model with BatchNorm layers, else None:
    BatchNorm normalises each micro-batch of ``batch_size``, not the effective batch, so its
    statistics are those of "ghost batches" (Hoffer, Hubara & Soudry 2017, "Train longer,
    generalize better", Section 4): a script that changes the micro-batch changes the result
    even at the same effective batch."""
    if accumulation_steps <= 1:
        return None
    return (f"BatchNorm sees the micro-batch of {batch_size}, not the effective batch of "
            f"{batch_size * accumulation_steps} (ghost batch normalisation, Hoffer et al. 2017): keep the "
            f"micro-batch at {batch_size}; changing it changes the result even at the same effective batch")
