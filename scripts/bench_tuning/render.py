"""Rendering: the Markdown section, the regret-vs-compute plot and the raw JSON."""
from __future__ import annotations

import datetime
import pathlib
import statistics
from dataclasses import asdict

import torch
from _bench_common import Spread, show

from autobatch import records as R
from autobatch.search import SearchSpace

from .summary import (
    final_autobatch,
    goals,
    method_label,
    overhead_s,
    overhead_shares,
    rows_by_method,
)
from .tasks import (
    AUTOBATCH,
    METHODS,
    THREADS,
    THROUGHPUT_REPEATS,
    TOP_FOR_NOISE,
    Config,
)


def render(results: list[dict], quick: bool, started_load: str, ended_load: str) -> str:
    from benchmark import machine  # scripts/benchmark.py, the driver

    lines = [
        "## Tuning: regret against an exhaustive grid, at equal compute",
        "",
        f"Run on {datetime.date.today()}, {machine()}.",
        "",
        f"Mode: {'quick' if quick else 'full'}. CPU, torch {torch.__version__} with "
        f"{THREADS} thread (`torch.set_num_threads({THREADS})`), one process. Load average "
        f"{started_load} at the start and {ended_load} at the end: timings (epoch time, overhead, "
        "throughput) are only as steady as the machine was.",
        "",
        "**Protocol.** Compute = training samples (the sum of `samples_seen` over a method's "
        "trials; probes, evaluation and re-training excluded, probes reported as overhead), "
        "given as a percentage of the grid's compute = configurations x samples per trial (one "
        "seed; the grid's extra seeds only sharpen the ground truth). Every configuration of the "
        "grid trains the same number of samples with autobatch's trainer (SGD, Nesterov momentum "
        "0.9, weight decay 5e-4, 5% warm-up then cosine); its accuracy is the mean final "
        "validation accuracy over the grid's seeds (split seed 0); the best is the reference. "
        "lr = multiplier x 0.1 x effective batch / 256. Each method's answer is re-trained with "
        "the grid's seeds, split and sample budget (read off the grid when it is a grid point); "
        "regret = grid best - that accuracy, in points (negative: better than every grid point). "
        "Repeats are tuner seeds; a tuner with seed r tunes on the split with seed r (autobatch's "
        "`--seed` sets both), so answers are judged on data they were not selected on.",
        "",
        "- **autobatch**: `tune(TuneSettings(model, dataset, epochs=<trial length>, n_trials=<enough>, "
        "seed=r, storage=<an SQLite file>, space=<the grid's bounds>))`, the defaults otherwise "
        "(median pruner on the samples-seen axis, 4 evaluations per trial, its two baseline trials "
        "first, seeded multivariate TPE). Every method stops after the trial that brings its "
        "compute within half a trial of the budget (for `tune`, the benchmark's `say` callback "
        "raises, as a Ctrl-C would: finished trials are kept); the same call resumes the study for "
        "the next budget. Answer: `recommend_study(study, priority=\"accuracy\")` (the trade-off "
        "model; the best trial where it cannot fit yet). One study per repeat, its answer read at "
        "each budget (an anytime curve), likewise for the searches below.",
        "- **random search**: `optuna.samplers.RandomSampler(seed=r)` over the same distributions "
        "(`autobatch.search.distributions`), every trial full length, no pruning; answer = best "
        "observed trial. **Optuna TPE**: `TPESampler(seed=100 + r)` with Optuna's defaults (10 "
        "random start-up trials, independent sampling), otherwise the same: no memory model, no "
        "samples-seen pruning. Up to 10 trials it *is* random search (with other draws).",
        "- **largest batch + linear lr**: the largest micro-batch of the space (on CPU there is no "
        "memory cap, so nothing is excluded), multiplier 1 (the linear rule), no accumulation: what "
        "a batch-size finder plus Goyal et al.'s rule gives. **folk default**: batch 32, "
        "multiplier 1, no accumulation. Each costs one training run; there is no tuner seed, so "
        "no spread.",
        "",
        "![regret against compute](docs/regret_vs_compute.png)",
        "",
        "### Goals",
        "",
        "Reported against, not asserted. \"Better\" is a strictly lower median regret; the fixed "
        "baselines use less compute than autobatch at any budget and are compared at every budget.",
        "",
        "| goal | task | measured | verdict |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {g} | {t} | {m} | {v} |" for g, t, m, v in goals(results)]
    for result in results:
        lines += render_task(result)
    lines += render_overhead(results) + render_throughput(results) + render_memory(results)
    return "\n".join(lines) + "\n"


def render_task(result: dict) -> list[str]:
    task, truth = result["task"], result["truth"]
    best = truth.best
    seeds = len(task.grid_seeds)
    top = sorted(truth.grid.values(), key=lambda m: m.accuracy, reverse=True)[:TOP_FOR_NOISE]
    noise = statistics.median(100 * statistics.stdev(m.accuracies) for m in top) if seeds > 1 else None
    noise_text = (f"; seed-to-seed standard deviation of accuracy over the {TOP_FOR_NOISE} best "
                  f"configurations: median {noise:.2f} points" if noise is not None else
                  "; one seed only (quick mode), so the ground truth itself is noisy")
    space = task.space
    lines = [
        "", f"### {task.name}", "",
        f"Model `{task.model}`, dataset `{task.dataset}` ({result['train_size']} train / "
        f"{result['val_size']} validation samples: one validation sample is "
        f"{100 / result['val_size']:.2f} points). Trial length {result['train_samples']} samples "
        f"({task.epochs:g} epochs) for every grid point, tuner trial and re-training. Grid: "
        f"micro-batch {', '.join(map(str, space.batch_sizes))} x lr multiplier "
        f"{', '.join(f'{m:.3g}' for m in task.multipliers)} x accumulation "
        f"{', '.join(map(str, space.accumulation_steps))} = {len(truth.grid)} configurations x "
        f"{seeds} seed{'s' if seeds > 1 else ''} ({truth.seconds:.0f} s); grid compute "
        f"{result['grid_compute']:,} samples. Tuners search the same bounds, the multiplier "
        f"continuously. Repeats: {task.repeats} tuner seeds.",
        "",
        f"Grid best: **{best.config.label()}** (lr {task.learning_rate(best.config):.3g}), "
        f"accuracy **{100 * best.accuracy:.2f}%** (seeds: "
        f"{', '.join(f'{100 * a:.2f}' for a in best.accuracies)}), epoch time "
        f"{best.epoch_time:.3f} s{noise_text}.",
        "",
        "| method | compute, % of grid | regret, points: median [min, max] | epoch time of the "
        "answer, s | answer (most common micro-batch x accumulation) | trials |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for row in rows_by_method(result):
        fallback = f"; {row['fallbacks']} from the best trial" if row["fallbacks"] else ""
        lines.append(f"| {method_label(row)} | {show(row['compute'], '{:.1f}')} | "
                     f"{show(row['regret'])} | {show(row['epoch_time'], '{:.3f}')} | "
                     f"{row['pick']}{fallback} | {show(row['trials'], '{:.0f}')} |")
    calibrated = [a for a in result["answers"] if a.method == AUTOBATCH and "accuracy_interval" in a.extra]
    if calibrated:
        inside = sum(lo <= truth.measure(a.pick).accuracy <= hi
                     for a in calibrated for lo, hi in [a.extra["accuracy_interval"]])
        lines += ["", f"autobatch's predicted 80% accuracy interval held the re-trained accuracy "
                      f"in {inside} of {len(calibrated)} answers (predicted on the tuner's split, "
                      f"re-trained on the grid's)."]
    lines += ["", "Grid accuracy (%, mean over seeds) by micro-batch x accumulation (rows) and lr "
              "multiplier (columns); epoch time is the row's median (s). †: the trainer stopped a "
              "seed as diverged; it scores the model where it stopped.", "",
              "| batch x accum | " + " | ".join(f"m={m:.3g}" for m in task.multipliers) + " | epoch s |",
              "| --- | " + " | ".join("---:" for _ in task.multipliers) + " | ---: |"]
    for b in space.batch_sizes:
        for a in space.accumulation_steps:
            cells = [truth.grid[Config(b, a, m).key] for m in task.multipliers]
            text = [(f"**{100 * c.accuracy:.1f}**" if c is best else f"{100 * c.accuracy:.1f}")
                    + ("†" if any(stop != R.STOP_COMPLETED for stop in c.stops) else "") for c in cells]
            lines.append(f"| {b}x{a} | " + " | ".join(text) +
                         f" | {statistics.median(c.epoch_time for c in cells):.3f} |")
    return lines


def render_overhead(results: list[dict]) -> list[str]:
    lines = ["", "### Tuner overhead", "",
             "Per autobatch run (everything up to the largest budget), median [min, max] over "
             "repeats. Tuner time = the `tune` calls (less the benchmark's own budget checks) plus "
             "the `recommend_study` answer at each budget; train and evaluation = the trials' own "
             "`train_time_s` and `eval_time_s`; overhead = tuner time - train - evaluation, split "
             "into the probe (memory probe and throughput measurement: from the `probing memory` "
             "message to the `plan:` message), the answers (the trade-off fits) and the rest "
             "(workload loading, study creation and resumption, sampler, pruner, storage writes, "
             "model building). The trainer's first-step memory accounting is inside train time "
             "(see the throughput table).", "",
             "| task | tuner s | train s | evaluation s | probe s (memory part) | answers s | rest s | rest per "
             "trial, s | overhead, % of tuner time | trials |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for result in results:
        runs = final_autobatch(result)
        if not runs:
            continue
        get = lambda key: Spread.of([a.extra[key] for a in runs])  # noqa: E731
        rest = Spread.of([overhead_s(a) - a.extra["probe_s"] - a.extra["fit_s"] for a in runs])
        per_trial = Spread.of([(overhead_s(a) - a.extra["probe_s"] - a.extra["fit_s"]) / a.trials
                               for a in runs])
        lines.append(f"| {result['task'].name} | {show(get('tuner_s'), '{:.1f}')} | "
                     f"{show(get('train_s'), '{:.1f}')} | {show(get('eval_s'), '{:.1f}')} | "
                     f"{show(get('probe_s'), '{:.1f}')} ({show(get('memory_probe_s'), '{:.1f}')}) | "
                     f"{show(get('fit_s'), '{:.2f}')} | "
                     f"{show(rest, '{:.1f}')} | {show(per_trial, '{:.3f}')} | "
                     f"{show(Spread.of(overhead_shares(result)), '{:.1f}')} | "
                     f"{show(Spread.of([a.trials for a in runs]), '{:.0f}')} |")
    return lines


def render_throughput(results: list[dict]) -> list[str]:
    lines = ["", "### Trainer throughput against a plain PyTorch loop", "",
             f"`train_trial` (no evaluation checkpoints) against the loop written out in "
             f"`scripts/_bench_common.py` (same model and initialisation, `make_optimizer`, same "
             f"in-memory tensors, shuffled index batches, forward/backward/step/zero_grad), for one "
             f"trial length of samples at accumulation 1; one untimed warm-up each, then "
             f"{THROUGHPUT_REPEATS} interleaved runs. Ratio = median over median.", "",
             "| task | micro-batch | autobatch samples/s | plain loop samples/s | ratio | per-run ratios |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for result in results:
        for t in result["throughput"]:
            ours, plain = statistics.median(t["autobatch"]), statistics.median(t["plain"])
            per_run = ", ".join(f"{100 * a / p:.0f}%" for a, p in zip(t["autobatch"], t["plain"]))
            lines.append(f"| {result['task'].name} | {t['batch_size']} | {ours:,.0f} | {plain:,.0f} | "
                         f"{100 * ours / plain:.1f}% | {per_run} |")
    return lines


def render_memory(results: list[dict]) -> list[str]:
    lines = ["", "### Memory-probe error", "",
             "(predicted - measured) / measured peak bytes for every trained trial of autobatch's "
             "studies (predicted: the probe's line at the trial's micro-batch; measured: the "
             "trainer's exact tensor accounting of the first optimizer step plus parameters and "
             "buffers). Positive = over-predicted (the safe side). CPU, so no cap was set and "
             "nothing was pruned for memory.", "",
             "| task | trials | median of abs. error | largest abs. error | over-predicted |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for result in results:
        errors = [e for a in final_autobatch(result) for e in a.extra["memory_errors"]]
        if errors:
            worst = max(errors, key=abs)
            over = sum(e > 0 for e in errors)
            lines.append(f"| {result['task'].name} | {len(errors)} | "
                         f"{100 * statistics.median(abs(e) for e in errors):.2f}% | "
                         f"{100 * worst:+.2f}% | {over} of {len(errors)} |")
    return lines


def plot(results: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = dict(zip(METHODS, ("o", "s", "^", "D", "v")))
    nudge = dict(zip(METHODS, (0.0, -0.5, 0.5, 0.0, 0.0)))  # % of grid: keep error bars apart
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.8), squeeze=False)
    for ax, result in zip(axes[0], results):
        rows = rows_by_method(result)
        for method in METHODS:
            mine = [r for r in rows if r["method"] == method]
            if not mine:
                continue
            x = [r["compute"].median + nudge[method] for r in mine]
            y = [r["regret"].median for r in mine]
            yerr = [[r["regret"].median - r["regret"].low for r in mine],
                    [r["regret"].high - r["regret"].median for r in mine]]
            ax.errorbar(x, y, yerr=yerr, marker=markers[method], capsize=3, label=method,
                        linestyle="-" if len(mine) > 1 else "none")
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="goal: 0.5 points")
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.set_yscale("symlog", linthresh=1.0)
        low = min(r["regret"].low for r in rows)
        high = max(r["regret"].high for r in rows)
        ax.set_ylim(min(-1.0, 1.5 * low), max(2.0, 1.5 * high))
        ax.set_xlim(0, max(r["compute"].high for r in rows) + 3)
        ax.set_xlabel("compute, % of the grid (training samples)")
        ax.set_ylabel("accuracy regret, points (symlog)")
        ax.set_title(f"{result['task'].name}: grid best {100 * result['truth'].best.accuracy:.1f}%")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3 * len(results)), fontsize=8,
               frameon=False)
    fig.suptitle("Regret against the grid's best: median and min–max over tuner seeds")
    fig.tight_layout(rect=(0, 0.1 if len(results) == 1 else 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_json(results: list[dict], quick: bool) -> dict:
    return {"quick": quick, "threads": THREADS, "tasks": [{
        "task": {k: (repr(v) if isinstance(v, SearchSpace) else v) for k, v in asdict(r["task"]).items()},
        "train_samples": r["train_samples"], "grid_compute": r["grid_compute"],
        "grid_seconds": r["truth"].seconds, "retrain_seconds": r["truth"].retrain_seconds,
        "ground_truth": r["truth"].to_json(),
        "answers": [dict(asdict(a), regret=r["truth"].regret(a.pick),
                         accuracy=r["truth"].measure(a.pick).accuracy) for a in r["answers"]],
        "throughput": r["throughput"],
    } for r in results]}
