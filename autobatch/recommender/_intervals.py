"""Interval helpers shared by the fitted models: every interval is two-sided at ``COVERAGE``.

SciPy is imported by the quantiles, not here: ``COVERAGE`` is read by modules that never fit
(the stored answer's text)."""

from __future__ import annotations

COVERAGE = 0.8              # two-sided coverage of every predicted interval


def z_quantile(coverage: float) -> float:
    from scipy import stats

    return float(stats.norm.ppf(0.5 + coverage / 2))


def t_quantile(coverage: float, dof: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + coverage / 2, max(dof, 1)))
