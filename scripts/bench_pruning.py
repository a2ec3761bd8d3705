"""Benchmark of pruning on the samples-seen axis: compute saved against the same study without
pruning, and whether the best configuration found holds (goal: within 0.5 accuracy points).

    python scripts/bench_pruning.py [--quick] [--out DIR]

Runs the same seeded study (small_cnn on digits, fixed trial length, the default search space
with a wide lr range) with each pruner and no pruner, over several seeds. Compute is the
training samples all trials consumed. Returns a Markdown section for BENCHMARKS.md.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import optuna  # noqa: E402
import torch  # noqa: E402

from autobatch import records as R  # noqa: E402
from autobatch.search import TuneSettings  # noqa: E402
from autobatch.search import SearchSpace  # noqa: E402
from autobatch.tuning import tune  # noqa: E402

PRUNERS = ("none", "median", "halving", "hyperband")
SPACE = SearchSpace(batch_size_min=8, batch_size_max=256, lr_multiplier_min=0.01, lr_multiplier_max=100.0)


def one_study(pruner: str, seed: int, n_trials: int, epochs: float, storage: str) -> dict:
    name = f"prune-{pruner}-{seed}"
    settings = TuneSettings(model="small_cnn", dataset="digits", n_trials=n_trials, epochs=epochs,
                            storage=storage, study_name=name, seed=seed, device="cpu", space=SPACE,
                            pruner=pruner, baselines=False)
    started = time.perf_counter()
    tune(settings)
    wall = time.perf_counter() - started
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.trials
    best = study.best_trial
    return {
        "pruner": pruner, "seed": seed, "wall_s": wall,
        "samples": sum(t.user_attrs.get(R.SAMPLES_SEEN, 0) for t in trials),
        "train_s": sum(t.user_attrs.get(R.TRAIN_TIME_S, 0.0) for t in trials),
        "eval_s": sum(t.user_attrs.get(R.EVAL_TIME_S, 0.0) for t in trials),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
        "best_accuracy": best.value,
        "best_config": (best.user_attrs[R.BATCH_SIZE], best.user_attrs[R.ACCUMULATION_STEPS],
                        round(best.user_attrs[R.LEARNING_RATE], 4)),
    }


def run(quick: bool, out_dir: pathlib.Path) -> str:
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seeds = (0,) if quick else (0, 1, 2)
    n_trials, epochs = (20, 2.0) if quick else (30, 3.0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        storage = f"sqlite:///{tmp}/pruning.db"
        for seed in seeds:
            for pruner in PRUNERS:
                rows.append(one_study(pruner, seed, n_trials, epochs, storage))
                print(f"  {pruner} seed {seed}: {rows[-1]['samples']} samples, "
                      f"best {rows[-1]['best_accuracy']:.4f}", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_pruning.json").write_text(json.dumps(rows, indent=1))

    base = {r["seed"]: r for r in rows if r["pruner"] == "none"}
    lines = [
        "## Pruning on the samples-seen axis",
        "",
        f"small_cnn on digits, {n_trials} trials of {epochs:g} epochs each, seeded TPE, lr multiplier "
        f"{SPACE.lr_multiplier_min}..{SPACE.lr_multiplier_max} (so the space holds bad learning rates), "
        f"seeds {', '.join(map(str, seeds))}; CPU, 1 thread. Compute = training samples of all trials. "
        "Regret = best accuracy without pruning minus best accuracy with it (points; negative is better).",
        "",
        "| pruner | compute saved (median) | trials pruned (median) | best accuracy (median) | regret vs none, points (median, worst) | eval share of trial time |",
        "|---|---|---|---|---|---|",
    ]
    for pruner in PRUNERS:
        mine = [r for r in rows if r["pruner"] == pruner]
        saved = [1 - r["samples"] / base[r["seed"]]["samples"] for r in mine]
        regret = [100 * (base[r["seed"]]["best_accuracy"] - r["best_accuracy"]) for r in mine]
        share = [r["eval_s"] / (r["eval_s"] + r["train_s"]) for r in mine]
        lines.append(
            f"| {pruner} | {100 * statistics.median(saved):.0f}% | {statistics.median(r['pruned'] for r in mine):.0f} "
            f"| {statistics.median(r['best_accuracy'] for r in mine):.4f} "
            f"| {statistics.median(regret):+.2f}, {max(regret):+.2f} | {100 * statistics.median(share):.1f}% |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    from _bench_common import bench_main

    bench_main(run, __doc__)
