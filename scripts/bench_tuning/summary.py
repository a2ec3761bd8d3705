"""Summaries of a task's answers: rows per method, the noise floor, coverage, the goals table."""
from __future__ import annotations

import collections
import math

from _bench_common import Spread

from .methods import Answer
from .protocol import compare, noise_floor
from .tasks import AUTOBATCH, B128, METHODS, PAPER, TOP_FOR_NOISE


def floor(result: dict) -> float:
    """The noise floor, points: seed-to-seed sd over the grid's best configurations."""
    return noise_floor([m.accuracies for m in result["truth"].grid.values()], TOP_FOR_NOISE)


def rows_by_method(result: dict) -> list[dict]:
    """One row per (method, budget): spreads over tuner seeds."""
    truth, grid_cpu = result["truth"], result["truth"].cpu_one_seed
    groups: dict[tuple, list[Answer]] = collections.defaultdict(list)
    for answer in result["answers"]:
        groups[(answer.method, answer.budget)].append(answer)
    rows = []
    for (method, budget), group in sorted(groups.items(), key=lambda kv: (METHODS.index(kv[0][0]), kv[0][1] or 0)):
        picks = collections.Counter((a.pick.batch_size, a.pick.accumulation_steps) for a in group)
        (b, acc), count = picks.most_common(1)[0]
        mults = sorted(a.pick.multiplier for a in group if (a.pick.batch_size, a.pick.accumulation_steps) == (b, acc))
        mult = f"m={mults[0]:.3g}" if mults[0] == mults[-1] else f"m={mults[0]:.3g}–{mults[-1]:.3g}"
        rows.append({
            "method": method, "budget": budget, "n": len(group),
            "compute": Spread.of([100 * a.cpu_s / grid_cpu for a in group]) if budget else None,
            "wall": Spread.of([a.wall_s for a in group]) if budget else None,
            "regret": Spread.of([truth.regret(a.pick) for a in group]),
            "epoch_time": Spread.of([truth.fresh(a.pick).epoch_time for a in group]),
            "trials": Spread.of([a.trials for a in group]) if budget else None,
            "pick": f"{b}x{acc}, {mult} ({count}/{len(group)})",
            "fallbacks": sum(a.picked_by == "best trial" for a in group),
        })
    return rows


def label(row: dict) -> str:
    return row["method"] if row["budget"] is None else f"{row['method']} @ {100 * row['budget']:.0f}%"


def coverage(result: dict) -> tuple[int, int]:
    """(inside, total): autobatch's 80% accuracy intervals against every fresh-seed re-training."""
    inside = total = 0
    for a in result["answers"]:
        if a.method == AUTOBATCH and "accuracy_interval" in a.extra:
            lo, hi = a.extra["accuracy_interval"]
            for acc in result["truth"].fresh(a.pick).accuracies:
                inside += lo <= acc <= hi
                total += 1
    return inside, total


def tta_ratio(result: dict, rival: str) -> float:
    tta = result["tta"]
    if rival not in tta or AUTOBATCH not in tta:
        return math.nan
    ours, theirs = tta[AUTOBATCH]["seconds"], tta[rival]["seconds"]
    if math.isinf(ours):
        return 0.0
    return math.inf if math.isinf(theirs) else theirs / ours


def goals(results: list[dict]) -> list[tuple[str, str, str, str]]:
    """(goal, task, measured, verdict) rows."""
    out = []
    for result in results:
        name, rows, noise = result["task"].name, rows_by_method(result), floor(result)
        ours = {r["budget"]: r for r in rows if r["method"] == AUTOBATCH}
        at20 = ours.get(0.2)
        if at20:
            met = at20["regret"].median <= 0.5 and at20["compute"].median <= 20.5
            out.append(("regret ≤ 0.5 points at ≤ 20% of the grid's compute", name,
                        f"median regret {at20['regret'].median:.2f} points at {at20['compute'].median:.1f}% "
                        f"of the grid's CPU seconds", "met" if met else "not met"))
        for budget, row in sorted(ours.items()):
            rivals = [r for r in rows if r["method"] != AUTOBATCH and r["budget"] in (budget, None)]
            verdicts = {label(r): compare(row["regret"].median, r["regret"].median, noise) for r in rivals}
            not_better = [k for k, v in verdicts.items() if v != "better"]
            out.append((f"better than every baseline beyond the noise floor ({noise:.2f} points) at "
                        f"{100 * budget:.0f}%", name,
                        f"{row['regret'].median:.2f} vs " + ", ".join(
                            f"{r['method']} {r['regret'].median:.2f} ({verdicts[label(r)]})" for r in rivals),
                        "met" if not not_better else f"not met ({len(not_better)} of {len(rivals)} not beaten)"))
        if PAPER in result["tta"]:
            tta = result["tta"]
            ours_s, paper_s = tta[AUTOBATCH]["seconds"], tta[PAPER]["seconds"]
            out.append((f"reaches {100 * result['task'].target:.0f}% sooner than the paper's setting", name,
                        f"{ours_s:.1f} vs {paper_s:.1f} CPU s of training (inf: not reached)",
                        "met" if ours_s < paper_s else "not met"))
        if result["tta"]:
            ratio = tta_ratio(result, B128)
            out.append(("time to accuracy ≥ 2× faster than batch 128 + linear lr (one task suffices)", name,
                        f"{ratio:.2f}× (target {100 * result['task'].target:.0f}%, training CPU seconds)",
                        "met" if ratio >= 2 else "not met"))
        inside, total = coverage(result)
        if total:
            out.append(("80% interval coverage ≥ 80%", name, f"{inside} of {total} fresh re-trainings "
                        f"({100 * inside / total:.0f}%)", "met" if inside >= 0.8 * total else "not met"))
        else:
            out.append(("80% interval coverage ≥ 80%", name, "no answer came from the trade-off model (too few "
                        "trials to fit: every answer is the best trial), so there is no interval", "not measured"))
        if result["longer"]:
            tau = result["longer"]["kendall_tau"]
            out.append((f"ranking holds at {result['longer']['factor']}× the trial length", name,
                        f"Kendall tau {tau:.2f} between 1× and {result['longer']['factor']}× accuracies",
                        "reported"))
    return out
