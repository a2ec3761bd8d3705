"""Headline benchmark: autobatch against an exhaustive grid and the usual baselines, at equal compute.

    python scripts/bench_tuning [--quick] [--out DIR] [--reuse-grid]
    python scripts/benchmark.py [--quick]      # all sections, writes BENCHMARKS.md

For each task (a small CNN on digits; resnet18 on digits):

1. Ground truth: every configuration of a grid (micro-batch x lr multiplier x accumulation steps)
   trained for the same number of samples with each of the grid's seeds; accuracy = mean final
   validation accuracy over seeds. The best configuration is the reference.
2. autobatch (``tune``, samples-seen pruning, its own baselines, the trade-off model's
   ``priority="accuracy"`` answer) stopped at fractions of the grid's compute.
3. At the same compute: random search and Optuna's default TPE over the same space, no pruning,
   best observed trial. At their own (tiny) compute: the largest micro-batch with the linearly
   scaled lr, and the folk default (batch 32).

Every answer is re-trained with the grid's seeds, split and sample budget (or read off the grid
when it is a grid point): regret = grid best - its accuracy, in accuracy points. Also: tuner
overhead, memory-probe error, trainer throughput against a plain loop. Returns a Markdown
section; raw numbers go to ``DIR/bench_tuning.json``, the plot to ``docs/regret_vs_compute.png``.

A package, one module per job: ``tasks`` (settings), ``ground_truth`` (the grid), ``methods``
(random search, TPE, rules), ``autobatch_run`` (``tune`` stopped by an event callback),
``summary`` and ``render`` (tables, plot, JSON). ``run`` is what ``scripts/benchmark.py`` calls.
"""

from __future__ import annotations

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
for _path in (ROOT, ROOT / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import optuna  # noqa: E402
import torch  # noqa: E402
from _bench_common import compare_throughput, load_average  # noqa: E402

from autobatch.workloads import load_workload  # noqa: E402

from .autobatch_run import autobatch_run  # noqa: E402
from .ground_truth import GroundTruth, grid_fingerprint  # noqa: E402
from .methods import Answer, fixed_answers, search_baseline  # noqa: E402
from .render import plot, render, to_json  # noqa: E402
from .tasks import (  # noqa: E402
    PLOT,
    RANDOM,
    SPLIT_SEED,
    THREADS,
    THROUGHPUT_REPEATS,
    TPE,
    Task,
    tasks,
)


def run_task(task: Task, out_dir: pathlib.Path, reuse_grid: bool) -> dict:
    def progress(message: str) -> None:
        print(f"  [{task.name}] {message}", file=sys.stderr, flush=True)

    workload = load_workload(task.dataset, seed=SPLIT_SEED)
    train_samples = max(1, round(task.epochs * len(workload.train)))  # as autobatch plans it
    truth = GroundTruth(task, workload, train_samples)
    cache = out_dir / f"bench_tuning_grid_{task.model}.json"
    cached = json.loads(cache.read_text()) if reuse_grid and cache.exists() else None
    if cached and cached["fingerprint"] == json.loads(json.dumps(grid_fingerprint(task))):
        truth.load_grid(cached["grid"])
        truth.seconds = cached["seconds"]
        progress(f"grid reused from {cache}")
    else:
        truth.run_grid(progress)
        out_dir.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"fingerprint": grid_fingerprint(task), "seconds": truth.seconds,
                                     "grid": truth.to_json()}))
    grid_compute = len(task.configs()) * train_samples

    answers: list[Answer] = fixed_answers(task, train_samples)
    studies = out_dir / "bench_tuning_studies"  # autobatch's SQLite files, kept for inspection
    studies.mkdir(parents=True, exist_ok=True)
    for repeat in range(task.repeats):
        answers += autobatch_run(task, repeat, grid_compute, train_samples, studies, progress)
        for kind in (RANDOM, TPE):
            answers += search_baseline(kind, task, repeat, grid_compute, train_samples, progress)
    for answer in answers:  # re-train every answer off the grid (not counted as compute)
        truth.measure(answer.pick)
    progress(f"answers evaluated ({len(truth.extra)} re-trained off-grid, {truth.retrain_seconds:.0f}s)")

    throughput = []
    for batch in task.throughput_batches:
        lr = task.space.learning_rate(1.0, batch)
        raw = compare_throughput(task.model, workload, batch_size=batch, learning_rate=lr,
                                 samples=train_samples, repeats=THROUGHPUT_REPEATS)
        throughput.append({"batch_size": batch, **raw})
    progress("throughput measured")
    return {"task": task, "train_samples": train_samples, "grid_compute": grid_compute,
            "truth": truth, "answers": answers, "throughput": throughput,
            "train_size": len(workload.train), "val_size": len(workload.val)}


def run(quick: bool, out_dir: pathlib.Path, *, reuse_grid: bool = False) -> str:
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started_load = load_average()
    try:
        results = [run_task(task, out_dir, reuse_grid) for task in tasks(quick)]
    finally:
        torch.set_num_threads(threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_tuning.json").write_text(json.dumps(to_json(results, quick), indent=1, default=str))
    plot(results, PLOT)
    return render(results, quick, started_load, load_average())
