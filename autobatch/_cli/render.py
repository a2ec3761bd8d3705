"""What ``studies`` and ``show`` print: rich tables (plain text when not on a terminal), and the
answer of a study too young for the trade-off model."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from ..recipe import metric_label
from ..units import format_bytes


def _console():  # type: ignore[no-untyped-def]
    """A rich console on stdout; piped, its tables are not squeezed into 80 columns."""
    import sys

    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _metric(value: Optional[float], metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.1%}" if metric == "accuracy" or metric.endswith("_accuracy") else f"{value:.4g}"


def _setting(answer: Optional[dict[str, Any]]) -> str:
    if not answer:
        return "-"
    return (f"{answer['batch_size']} x {answer['accumulation_steps']}, "
            f"lr {answer['learning_rate']:.3g}")


def studies_table(rows: Sequence[Any], where: str) -> None:
    """``autobatch studies``: one row per study (``storage.StudySummary``)."""
    from rich import box
    from rich.table import Table

    table = Table(title=f"studies in {where}", title_justify="left", box=box.SIMPLE_HEAD)
    for name, justify in (("study", "left"), ("complete", "right"), ("pruned", "right"), ("failed", "right"),
                          ("running", "right"), ("queued", "right"), ("best", "right"),
                          ("answer (micro-batch x accumulation, lr)", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        metric = (row.answer or {}).get("metric", "accuracy" if row.direction == "maximize" else "value")
        best = "-" if row.best_value is None else f"{_metric(row.best_value, metric)} (#{row.best_number})"
        c = row.counts
        table.add_row(row.name + ("" if row.autobatch else " (not autobatch)"), str(c.get("complete", 0)),
                      str(c.get("pruned", 0)), str(c.get("fail", 0)), str(c.get("running", 0)),
                      str(c.get("waiting", 0)), best, _setting(row.answer))
    _console().print(table)


def best_trials_table(frame: Any, metric: str, maximize: bool, n: int) -> None:
    """The ``n`` best completed trials of ``records.read_trials``' frame, best first."""
    from rich import box
    from rich.table import Table

    done = frame[frame["state"] == "COMPLETE"].sort_values("value", ascending=not maximize).head(n)
    table = Table(title=f"best {len(done)} completed trials", title_justify="left", box=box.SIMPLE_HEAD)
    for name in ("trial", "micro-batch", "accumulation", "effective batch", "lr", metric, "epoch time",
                 "peak memory", "stop reason"):
        table.add_column(name, justify="left" if name == "stop reason" else "right")
    for _, t in done.iterrows():
        peak = t["measured_peak_bytes"]
        table.add_row(f"#{t['number']}", str(t["batch_size"]), str(t["accumulation_steps"]),
                      str(t["effective_batch_size"]), f"{t['learning_rate']:.3g}", _metric(t["value"], metric),
                      "-" if math.isnan(t["epoch_time_s"]) else f"{t['epoch_time_s']:.3g} s",
                      "-" if math.isnan(peak) else format_bytes(peak), str(t["stop_reason"]))
    _console().print(table)


def best_trial_answer(answer: dict[str, Any]) -> str:
    """The answer of a study with too few trials for the trade-off model: its best trial."""
    if not answer:
        return "no completed trial yet: give the study more budget or trials"
    metric = answer.get("metric", "accuracy")
    epoch, peak = answer.get("predicted_epoch_time_s"), answer.get("predicted_peak_bytes")
    lines = [f"best trial of {answer.get('study_name')} (#{answer.get('best_trial')}):",
             f"  setting      micro-batch {answer['batch_size']} x {answer['accumulation_steps']} accumulation "
             f"steps = effective batch {answer['effective_batch_size']}, learning rate {answer['learning_rate']:.4g}",
             f"  {metric_label(metric, 'val'):<12} {_metric(answer.get('predicted_metric'), metric)} (measured)"]
    if epoch is not None:
        lines.append(f"  epoch time   {epoch:.3g} s (measured)")
    if peak is not None:
        lines.append(f"  peak memory  {format_bytes(peak)} (predicted)")
    lines.append(f"  why          {answer.get('rationale', '')}")
    return "\n".join(lines)


def answer_text(answer: dict[str, Any]) -> str:
    """``str(Recommendation)`` for a stored recommendation, else the best-trial block."""
    if answer and "pareto_front" in answer:
        from ..recommender import Recommendation

        return str(Recommendation.from_dict(answer))
    return best_trial_answer(answer)

