"""The critical batch a recommendation states, and the Pollux-style goodput pick beside it.

The critical batch is the gradient noise scale ``B_simple`` (McCandlish et al. 2018): from the
trials that accumulated (each one's value at the end of its training, where the choice of batch
matters most: the noise scale grows as the loss falls) when at least ``MIN_TRIAL_ESTIMATES`` have
one, else from the probe at the start of ``tune``.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from ..noise_scale import goodput, statistical_efficiency

MIN_TRIAL_ESTIMATES = 3


def _final(noise: Optional[dict]) -> Optional[float]:
    """A trial's last positive, finite ``B_simple`` (its ``noise_scale`` attribute), else None."""
    rows = [r for r in (noise or {}).get("series", ()) if r[1] is not None and math.isfinite(r[1]) and r[1] > 0]
    return float(rows[-1][1]) if rows else None


def critical_batch(probe: Optional[dict], trials: Sequence[Optional[dict]]) -> Optional[dict[str, Any]]:
    """``{"value", "interval", "source"}``: the median of the trials' final ``B_simple`` with the
    10th-90th percentile across them, or the probe's estimate and bootstrap interval (its top None
    when unbounded); None when neither resolved it. ``probe``: the study's ``noise_scale`` attribute; ``trials``: the
    trials' ``noise_scale`` attributes (None for a trial that did not accumulate)."""
    finals = [v for v in map(_final, trials) if v is not None]
    if len(finals) >= MIN_TRIAL_ESTIMATES:
        lo, hi = np.quantile(finals, [0.1, 0.9])
        return {"value": float(np.median(finals)), "interval": (float(lo), float(hi)),
                "source": f"{len(finals)} trials that accumulated, at the end of training"}
    if probe and probe.get("critical_batch"):
        interval = probe.get("interval")
        return {"value": float(probe["critical_batch"]),
                "interval": None if not interval or interval[0] is None else
                (float(interval[0]), None if interval[1] is None else float(interval[1])),
                "source": f"probe of {probe.get('samples')} samples at the start"}
    return None


def goodput_pick(candidates: pd.DataFrame, b_noise: float, train_size: int) -> Optional[dict[str, Any]]:
    """The candidate with the highest predicted goodput, ``throughput × B_noise/(B_noise + B)``
    (Qiao et al. 2021, §3.1, efficiency relative to ``E_min``), throughput from the predicted
    epoch time (``train_size / epoch_time_s`` samples/s). ``candidates``: the recommender's
    feasible grid (``batch_size``, ``accumulation_steps``, ``effective_batch_size``,
    ``learning_rate``, ``epoch_time_s``). None for an empty grid."""
    if candidates.empty or not train_size:
        return None
    throughput = train_size / candidates["epoch_time_s"].to_numpy(dtype=float)
    batches = candidates["effective_batch_size"].to_numpy(dtype=float)
    scores = goodput(batches, throughput, b_noise=b_noise)
    i = int(np.argmax(scores))
    row = candidates.iloc[i]
    return {"batch_size": int(row["batch_size"]), "accumulation_steps": int(row["accumulation_steps"]),
            "effective_batch_size": int(row["effective_batch_size"]), "learning_rate": float(row["learning_rate"]),
            "throughput": float(throughput[i]),
            "efficiency": float(statistical_efficiency(batches[i], b_noise=b_noise)),
            "goodput": float(scores[i])}
