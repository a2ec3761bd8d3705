"""Rendering: the Markdown section, the two plots and the raw JSON."""
from __future__ import annotations

import datetime
import math
import pathlib
import statistics

import torch
from _bench_common import show

from .long_runs import LONG_FACTOR
from .methods import N_REPORTS
from .summary import coverage, floor, goals, label, rows_by_method
from .tasks import METHODS, SEARCHES, THREADS, TOP_FOR_NOISE

PROTOCOL = (
    "**Protocol.** *Compute* is a method's CPU seconds (process CPU time, one torch thread) from its "
    "start to its answer, everything included: data loading, autobatch's memory probe and throughput "
    "measurement, every trial's training and evaluation, the sampler, pruner and storage, the "
    "trade-off fit. Budgets are fractions of the grid's compute (one seed of every distinct "
    "configuration, each trained and evaluated); a method stops after the trial that brings it within "
    "half a typical trial of the budget, and its CPU seconds and wall seconds are stated. *Data*: each "
    "task has a pool and a test split; tuners tune on their own 80/20 split of the pool (split seed "
    "= tuner seed) and never see the test split; the grid and every re-training train on the whole "
    "pool and are scored on the test split. *Seeds*: grid seeds, tuner seeds (and their trials' seeds), "
    "fresh re-training seeds and long-run seeds are disjoint (`protocol.SeedPlan`). Every answer, and "
    "the grid's best, is re-trained with the fresh seeds; regret = re-trained grid best - re-trained "
    "answer (mean over the fresh seeds, points; negative: better than the grid's best). *Grid*: "
    "distinct runs only (without BatchNorm, micro-batch b x accumulation a is the run b·a x 1 and is "
    "kept once); lr multipliers offset from the recommender's 25 candidates and from 1, so no tuner "
    "can return a grid point. *Noise floor*: the median seed-to-seed standard deviation of accuracy "
    f"over the {TOP_FOR_NOISE} best grid configurations; differences of median regret within it are ties.")
METHODS_TEXT = (
    "Methods: **autobatch** `tune` with its defaults (median pruner on the samples-seen axis, "
    f"{N_REPORTS} evaluations per trial, its two baseline trials, seeded multivariate TPE), answer "
    "`recommend_study(priority=\"accuracy\")`; **random search** (`RandomSampler`, full-length trials); "
    f"**Optuna TPE + median pruner** (`TPESampler` defaults, `MedianPruner()`, reports at the same {N_REPORTS} "
    "checkpoints); **Hyperband** (`RandomSampler`, `HyperbandPruner(1, 4, 3)`); all through autobatch's "
    "trainer, same space, same budget accounting. Rules (no search): **largest-fit + linear lr** (on CPU "
    "nothing runs out of memory: the largest micro-batch of the space that is a batch of the data), "
    "**batch 128 / batch 32 + linear lr** (the task's reference lr scaled linearly), and **the paper's "
    "setting** where there is one. **Pollux-style goodput** (Qiao et al. 2021, §3.1): the gradient noise "
    "scale measured once on the tuning split (autobatch's noise probe, 12 steps of 16 x 8 samples), "
    "throughput timed at every micro-batch of the space, the batch maximizing throughput x "
    "(B_noise + M0) / (B_noise + M), lr by the task's scaling rule, no accumulation; its compute (probe "
    "and timings) counted the same way, the same answer at every budget.")


def render(results: list[dict], mode: str, started_load: str, ended_load: str) -> str:
    from benchmark import machine  # scripts/benchmark.py, the driver

    lines = ["## Tuning: regret against a grid of distinct settings, at equal total compute", "",
             f"Run on {datetime.date.today()}, {machine()}.", "",
             f"Mode: {mode}. CPU, torch {torch.__version__}, {THREADS} thread, one process. Load average "
             f"{started_load} at the start and {ended_load} at the end: other work on the machine slows "
             "wall-clock figures; CPU seconds (the budgets, and time to accuracy: the training thread's CPU "
             "seconds) are less affected.", "",
             PROTOCOL, "", METHODS_TEXT, "",
             "![regret against compute](docs/regret_vs_compute.png)", "",
             "![time to accuracy](docs/time_to_accuracy.png)", "", "### Goals", "",
             "Reported against, not asserted.", "", "| goal | task | measured | verdict |", "| --- | --- | --- | --- |"]
    lines += [f"| {g} | {t} | {m} | {v} |" for g, t, m, v in goals(results)]
    for result in results:
        lines += render_task(result)
    return "\n".join(lines) + "\n"


def render_task(result: dict) -> list[str]:
    task, truth = result["task"], result["truth"]
    best, ref, seeds = truth.best, truth.reference, task.seeds
    lines = [
        "", f"### {task.name}", "",
        f"Model `{task.model}`, recipe {task.recipe.optimizer} ({task.recipe.schedule} lr), data "
        f"`{task.dataset}`: pool {result['pool']}, test {result['test']} (one test sample is "
        f"{100 / result['test']:.2f} points); tuners train on {result['tuner_train']}. What it can show: "
        f"{task.can_show}. What it cannot: {task.cannot_show}.", "",
        f"Trial length {result['train_samples']:,} samples ({task.epochs:g} tuner epochs) for every grid point, "
        f"tuner trial and re-training. Grid: micro-batch {', '.join(map(str, task.space.batch_sizes))} x "
        f"accumulation {', '.join(map(str, task.space.accumulation_steps))} x lr multiplier "
        f"{', '.join(f'{m:.3g}' for m in task.multipliers)} = {truth.all_configs} cells, "
        f"**{len(truth.configs)} distinct** ({'BatchNorm: all distinct' if truth.batchnorm else 'no BatchNorm'}), "
        f"x {len(seeds.grid)} seeds ({truth.seconds:.0f} s); grid compute {truth.cpu_one_seed:.1f} CPU s "
        f"(one seed). Budgets: {', '.join(f'{100 * f:.0f}% = {s:.1f} CPU s' for f, s in zip(task.budgets, result['budgets_s']))}. "
        f"Seeds: grid {list(seeds.grid)}, tuners {list(seeds.tuners)}, fresh {list(seeds.fresh)}, "
        f"long {list(seeds.long)}.", "",
        f"Grid best: **{best.config.label()}** (lr {task.learning_rate(best.config):.3g}), "
        f"{100 * best.accuracy:.2f}% over the grid seeds, **{100 * ref.accuracy:.2f}%** re-trained with the "
        f"fresh seeds ({', '.join(f'{100 * a:.2f}' for a in ref.accuracies)}). Noise floor "
        f"**{floor(result):.2f} points**.", "",
        "| method | compute, % of grid CPU s | wall s | regret, points: median [min, max] | epoch s | answer "
        "(most common) | trials |", "| --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    for row in rows_by_method(result):
        fallback = f"; {row['fallbacks']} from the best trial" if row["fallbacks"] else ""
        lines.append(f"| {label(row)} | {show(row['compute'], '{:.1f}')} | {show(row['wall'], '{:.1f}')} | "
                     f"{show(row['regret'])} | {show(row['epoch_time'], '{:.3f}')} | {row['pick']}{fallback} | "
                     f"{show(row['trials'], '{:.0f}')} |")
    inside, total = coverage(result)
    if total:
        lines += ["", f"autobatch's 80% accuracy interval (predicted on its tuning split) held {inside} of "
                      f"{total} fresh re-trainings (on the test split)."]
    longer = result["longer"]
    if longer:
        lines += ["", f"**Longer training** ({longer['factor']}x the trial length, {longer['samples']:,} samples, "
                      f"long seeds {list(seeds.long)}; each method's answer of tuner seed {seeds.tuners[0]}): Kendall "
                      f"tau between the 1x and {longer['factor']}x orderings **{longer['kendall_tau']:.2f}**.", "",
                  f"| pick | setting | accuracy at 1x, % | at {longer['factor']}x, % |", "| --- | --- | ---: | ---: |"]
        for name, row in sorted(longer["rows"].items(), key=lambda kv: -kv[1]["long"]):
            lines.append(f"| {name} | {row['config']} | {100 * row['short']:.2f} | {100 * row['long']:.2f} |")
    else:
        lines += ["", "**Longer training**: not run on this task (see what it cannot show)."]
    if result["tta"]:
        lines += ["", f"**Time to {100 * task.target:.0f}% test accuracy** (CPU seconds of the training thread, "
                      f"evaluation excluded, not wall clock: other engineers share the machine's cores; horizon "
                      f"{task.tta_samples:,} samples; seeds {list(result['tta_seeds'])}; median):", "",
                  "| pick | setting | CPU s | samples | best accuracy, % | reached |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        for name, row in result["tta"].items():
            samples = [r["samples"] for r in row["runs"] if r["samples"]]
            lines.append(f"| {name} | {row['config']} | {row['seconds']:.1f} | "
                         f"{statistics.median(samples) if samples else '–'} | "
                         f"{100 * max(r['best'] for r in row['runs']):.1f} | {row['reached']}/{len(row['runs'])} |")
    else:
        lines += ["", "**Time to accuracy**: not run on this task (see what it cannot show)."]
    if result["peers"]:
        probe = [a.extra.get("probe_s", 0.0) for a in result["answers"] if a.extra.get("probe_s")]
        lines += ["", "**The peers' batch-size finders** on the same model and pool, uncapped (CPU: no "
                      "out-of-memory error is ever raised, so they stop for other reasons)"
                      + (f"; autobatch's probe and throughput measurement took {statistics.median(probe):.1f} s "
                         "(median over its runs)" if probe else "") + ":", "",
                  "| peer | answer | wall s | CPU s | steps | samples | stopped by | sizes tried |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
        for p in result["peers"]:
            if "error" in p:
                lines.append(f"| {p['peer']} | – | – | – | – | – | {p['error']} | – |")
            else:
                lines.append(f"| {p['peer']} | {p['answer']} | {p['wall_s']:.1f} | {p['cpu_s']:.1f} | {p['steps']} | "
                             f"{p['samples']} | {p['stopped_by']} | {', '.join(map(str, p['tried']))} |")
    return lines


def plot(results: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.8), squeeze=False)
    for ax, result in zip(axes[0], results):
        rows, noise = rows_by_method(result), floor(result)
        for i, method in enumerate(m for m in SEARCHES):
            mine = [r for r in rows if r["method"] == method]
            if mine:
                ax.errorbar([r["compute"].median for r in mine], [r["regret"].median for r in mine],
                            xerr=[[r["compute"].median - r["compute"].low for r in mine],
                                  [r["compute"].high - r["compute"].median for r in mine]],
                            yerr=[[r["regret"].median - r["regret"].low for r in mine],
                                  [r["regret"].high - r["regret"].median for r in mine]],
                            marker="osD^v"[i], capsize=3, label=method)
        for j, r in enumerate(r for r in rows if r["budget"] is None):
            ax.axhline(r["regret"].median, color=f"C{5 + j}", linestyle="--", linewidth=1,
                       label=f"{r['method']} (no search)")
        ax.axhspan(-noise, noise, color="grey", alpha=0.2, label=f"noise floor ±{noise:.2f}")
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="goal: 0.5 points")
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlabel("compute, % of the grid's CPU seconds (everything included)")
        ax.set_ylabel("regret, points (fresh seeds, test split; symlog)")
        ax.set_title(f"{result['task'].name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Regret against the re-trained grid best: median and min–max over tuner seeds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_tta(results: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in results if r["tta"]]
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, result in zip(axes[0], results):
        for name, row in result["tta"].items():
            run = row["runs"][0]
            ax.plot([t for t, _, _ in run["curve"]], [100 * a for _, a, _ in run["curve"]],
                    label=f"{name}: {row['config']}")
        ax.axhline(100 * result["task"].target, color="black", linestyle=":", linewidth=1)
        ax.set_xlabel("training CPU seconds (the training thread, evaluation excluded)")
        ax.set_ylabel("test accuracy, %")
        ax.set_ylim(max(0, 100 * result["task"].target - 30), 100)
        ax.set_title(f"{result['task'].name}: time to {100 * result['task'].target:.0f}%")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def to_json(results: list[dict]) -> dict:
    out = []
    for r in results:
        truth = r["truth"]
        out.append({
            "task": r["task"].name, "mode": r["mode"], "seeds": r["task"].seeds.__dict__,
            "train_samples": r["train_samples"], "grid_cpu_one_seed": truth.cpu_one_seed,
            "budgets_s": r["budgets_s"], "noise_floor": floor(r), "coverage": coverage(r),
            "grid": [{"config": m.config.label(), "accuracies": m.accuracies, "cpu_s": m.cpu_s}
                     for m in truth.grid.values()],
            "answers": [{"method": a.method, "budget": a.budget, "repeat": a.repeat, "cpu_s": a.cpu_s,
                         "wall_s": a.wall_s, "trials": a.trials, "pick": a.pick.label(),
                         "regret": truth.regret(a.pick), "fresh": truth.fresh(a.pick).accuracies,
                         "extra": a.extra} for a in r["answers"]],
            "longer": r["longer"], "tta": r["tta"], "peers": r["peers"],
            "infinite": [k for k, v in r["tta"].items() if math.isinf(v["seconds"])]})
    return out
