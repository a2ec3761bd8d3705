"""Interval helpers shared by the fitted models: every interval is two-sided at ``COVERAGE``."""

from __future__ import annotations

from scipy import stats

COVERAGE = 0.8              # two-sided coverage of every predicted interval


def z_quantile(coverage: float) -> float:
    return float(stats.norm.ppf(0.5 + coverage / 2))


def t_quantile(coverage: float, dof: int) -> float:
    return float(stats.t.ppf(0.5 + coverage / 2, max(dof, 1)))
