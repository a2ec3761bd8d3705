"""Summaries of a task's answers: rows per method, the goals table, overhead shares."""
from __future__ import annotations

import collections
import statistics

from _bench_common import Spread

from .methods import Answer
from .tasks import AUTOBATCH, METHODS


def rows_by_method(result: dict) -> list[dict]:
    """One row per (method, budget): spreads over repeats."""
    truth, grid_compute = result["truth"], result["grid_compute"]
    groups: dict[tuple, list[Answer]] = collections.defaultdict(list)
    for answer in result["answers"]:
        groups[(answer.method, answer.budget)].append(answer)
    rows = []
    for (method, budget), group in sorted(groups.items(), key=lambda kv: (METHODS.index(kv[0][0]),
                                                                          kv[0][1] or 0)):
        picks = collections.Counter((a.pick.batch_size, a.pick.accumulation_steps) for a in group)
        (b, acc), count = picks.most_common(1)[0]
        mults = [a.pick.multiplier for a in group
                 if (a.pick.batch_size, a.pick.accumulation_steps) == (b, acc)]
        mult = (f"m={min(mults):.3g}" if min(mults) == max(mults)
                else f"m={min(mults):.3g}–{max(mults):.3g}")
        rows.append({
            "method": method, "budget": budget, "n": len(group),
            "compute": Spread.of([100 * a.compute_samples / grid_compute for a in group]),
            "regret": Spread.of([truth.regret(a.pick) for a in group]),
            "epoch_time": Spread.of([truth.measure(a.pick).epoch_time for a in group]),
            "trials": Spread.of([a.trials for a in group]),
            "pick": f"{b}x{acc}, {mult} ({count}/{len(group)})",
            "fallbacks": sum(a.picked_by == "best trial" for a in group),
        })
    return rows


def method_label(row: dict) -> str:
    return row["method"] if row["budget"] is None else f"{row['method']} @ {100 * row['budget']:.0f}%"


def goals(results: list[dict]) -> list[tuple[str, str, str, str]]:
    """(goal, task, measured, verdict) rows."""
    out = []
    for result in results:
        name, rows = result["task"].name, rows_by_method(result)
        ours = {r["budget"]: r for r in rows if r["method"] == AUTOBATCH}
        at20 = ours.get(0.2)
        if at20:
            met = at20["regret"].median <= 0.5
            out.append(("autobatch within 0.5 points of the grid's best at 20% of its compute", name,
                        f"median regret {at20['regret'].median:.2f} points", "met" if met else "not met"))
        for budget, row in sorted(ours.items()):
            rivals = [r for r in rows if r["method"] != AUTOBATCH
                      and (r["budget"] == budget or r["budget"] is None)]
            worse = [method_label(r) for r in rivals if not row["regret"].median < r["regret"].median]
            out.append((f"better median regret than every baseline at {100 * budget:.0f}% compute", name,
                        f"{row['regret'].median:.2f} vs " + ", ".join(
                            f"{r['method']} {r['regret'].median:.2f}" for r in rivals),
                        "met" if not worse else "not met (" + ", ".join(worse) + ")"))
        shares = overhead_shares(result)
        if shares:
            spread = Spread.of(shares)
            out.append(("tuner overhead under 3% of the budget", name, f"median {spread.median:.1f}%",
                        "met" if spread.median < 3 else "not met"))
        ratios = [statistics.median(t["autobatch"]) / statistics.median(t["plain"])
                  for t in result["throughput"]]
        if ratios:
            out.append(("trainer throughput at least 95% of a plain loop", name,
                        ", ".join(f"{100 * r:.0f}% at batch {t['batch_size']}"
                                  for r, t in zip(ratios, result["throughput"])),
                        "met" if min(ratios) >= 0.95 else "not met"))
    return out


def final_autobatch(result: dict) -> list[Answer]:
    """autobatch answers at the largest budget: they carry the whole run's timings."""
    last = max(result["task"].budgets)
    return [a for a in result["answers"] if a.method == AUTOBATCH and a.budget == last]


def overhead_shares(result: dict) -> list[float]:
    return [100 * overhead_s(a) / a.extra["tuner_s"] for a in final_autobatch(result)]


def overhead_s(answer: Answer) -> float:
    """The tuner's time that is neither training nor evaluation."""
    return answer.extra["tuner_s"] - answer.extra["train_s"] - answer.extra["eval_s"]
