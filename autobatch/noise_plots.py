"""The report's two critical-batch plots, from a study's stored data alone: the gradient noise
scale over training (trials that accumulated, and the probe at the start), and the optimizer
steps to an accuracy target against the effective batch with ``S = S_min (1 + B_noise / B)``
fitted (McCandlish et al. 2018, §2.3) and the critical batch marked.

Each function returns the figure and the arrays drawn (as ``autobatch.report``'s plots do).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from . import records as R
from .noise_scale import fit_steps, steps_needed

MIN_BATCHES = 3  # distinct effective batches that reached a target, for the steps plot
MAX_SERIES = 12  # noise-scale lines drawn: the trials with the most measured steps


def plot_noise_over_training(trials: Sequence[Any], probe: Optional[dict]) -> tuple[Figure, dict]:
    """``B_simple`` against training samples seen: one line per trial with a stored
    ``noise_scale`` series (positive values; the interval as a band; the ``MAX_SERIES`` trials
    that measured most steps), the probe's estimate as a horizontal line. ``trials``: ``optuna``
    frozen trials."""
    fig = Figure(figsize=(7.5, 4), layout="constrained")
    ax = fig.add_subplot()
    drawn: dict[int, list] = {}
    # the trials that measured most (most steps), at most MAX_SERIES lines: a study has dozens
    measured = sorted((t for t in trials if (t.user_attrs.get(R.NOISE_SCALE) or {}).get("series")),
                      key=lambda t: -t.user_attrs[R.NOISE_SCALE].get("steps", 0))[:MAX_SERIES]
    for t in sorted(measured, key=lambda t: t.number):
        noise = t.user_attrs.get(R.NOISE_SCALE)
        rows = [r for r in (noise or {}).get("series", ()) if r[1] is not None and r[1] > 0]
        if not rows:
            continue
        x = [r[0] for r in rows]
        line, = ax.plot(x, [r[1] for r in rows], marker=".", lw=1, alpha=0.8,
                        label=f"#{t.number}: {noise['b_small']} / {noise['b_big']}")
        low = [r[2] if r[2] is not None and r[2] > 0 else r[1] for r in rows]
        high = [r[3] if r[3] is not None else r[1] for r in rows]
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.05)
        drawn[t.number] = rows
    probe_value = (probe or {}).get("critical_batch")
    if probe_value:
        ax.axhline(probe_value, color="k", ls=":", lw=1.2, label=f"probe at the start: {probe_value:.0f}")
    if not drawn and not probe_value:
        ax.text(0.5, 0.5, "no noise-scale measurement stored", ha="center", va="center", transform=ax.transAxes)
    ax.set(yscale="log", xlabel="training samples seen", ylabel="B_simple = tr(Σ)/|G|²  (samples)",
           title="Gradient noise scale over training")
    if drawn or probe_value:
        ax.legend(fontsize=6, title="trial: micro / effective batch", title_fontsize=6, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0))
    return fig, {"series": drawn, "probe": probe_value}


def steps_to_target(trials: Sequence[Any]) -> tuple[Optional[float], dict[int, int]]:
    """The highest accuracy milestone (``records.MILESTONE_TARGETS``) that completed trials
    reached at ``MIN_BATCHES`` or more effective batches, and the fewest optimizer steps it took
    at each (``ceil(samples / effective batch)``; samples at the evaluation that passed it).
    ``(None, {})`` when no target was reached that widely."""
    for target in sorted(R.MILESTONE_TARGETS, reverse=True):
        best: dict[int, int] = {}
        for t in trials:
            hit = (t.user_attrs.get(R.MILESTONES) or {}).get(f"{target:.2f}")
            batch = t.user_attrs.get(R.EFFECTIVE_BATCH_SIZE)
            if hit and batch:
                steps = math.ceil(hit[0] / batch)
                best[batch] = min(best.get(batch, steps), steps)
        if len(best) >= MIN_BATCHES:
            return target, dict(sorted(best.items()))
    return None, {}


def plot_steps_to_target(trials: Sequence[Any], critical_batch: Optional[float]) -> tuple[Figure, dict]:
    """Fewest optimizer steps to the accuracy target (``steps_to_target``) against the effective
    batch, the fit ``S = S_min (1 + B_noise / B)`` (``noise_scale.fit_steps``) and its ``B_noise``,
    and ``critical_batch`` (the answer's) marked."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    target, best = steps_to_target(trials)
    fit = None
    if best:
        ax.scatter(list(best), list(best.values()), color="C0", zorder=3, label="fewest steps at this batch")
        try:
            fit = fit_steps(list(best), list(best.values()))
        except ValueError:
            fit = None
        if fit is not None:
            xs = np.geomspace(min(best) / 2, max(best) * 2, 100)
            ax.plot(xs, steps_needed(xs, s_min=fit.s_min, b_noise=fit.b_noise), color="C1",
                    label=f"S_min (1 + B_noise/B): S_min {fit.s_min:.0f}, B_noise {fit.b_noise:.0f}")
            ax.axvline(fit.b_noise, color="C1", ls="--", lw=1)
        ax.set(xscale="log", yscale="log", ylabel=f"optimizer steps to {target:.0%}")
    else:
        ax.text(0.5, 0.5, f"fewer than {MIN_BATCHES} effective batches reached an accuracy milestone",
                ha="center", va="center", transform=ax.transAxes, fontsize=8)
    if critical_batch:
        ax.axvline(critical_batch, color="C2", ls=":", lw=1.5, label=f"critical batch ≈ {critical_batch:.0f}")
    ax.set(xlabel="effective batch", title="Steps to target against effective batch")
    if best or critical_batch:
        ax.legend(fontsize=7)
    return fig, {"target": target, "best": best,
                 "fit": None if fit is None else {"s_min": fit.s_min, "b_noise": fit.b_noise}}
