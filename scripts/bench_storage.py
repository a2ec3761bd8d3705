"""Benchmark of the study storage: time spent in Optuna storage calls per trial, and trials per
hour with 1, 2 and 4 worker processes on one PostgreSQL study.

    python scripts/bench_storage.py [--quick] [--out DIR] [--storage URL]

Every worker is a real ``autobatch worker`` process (small_cnn on digits, short trials, no
pruning, no baselines, so all trials do the same work), run through a thin wrapper that times
each storage call the worker's main thread makes (the heartbeat thread's calls are counted
apart: they run beside training). Two overheads per trial are reported:

- *storage*: seconds inside storage calls on the main thread, per trial run;
- *outside training*: a trial's wall time in the storage (start to complete) minus the
  trainer's own ``wall_time_s`` (training and evaluation): storage, sampler, model building.

Trials per hour use the span from the first trial's start to the last one's completion
(steady state), and the span from launching the workers to the last one's exit (with the
process start). SQLite is measured with one worker for comparison. PostgreSQL comes from
``--storage``, else ``$AUTOBATCH_TEST_POSTGRES``, else ``postgresql://postgres@127.0.0.1:5432/test``.
Returns a Markdown section for BENCHMARKS.md; raw numbers go to ``DIR/bench_storage.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_PG = os.environ.get("AUTOBATCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
WORKER_COUNTS = (1, 2, 4)


# --- inside a worker process -------------------------------------------------------------------

def _instrumented_worker(name: str, url: str, stats_path: str) -> int:
    """``autobatch worker`` with every storage entry point timed; stats written at exit."""
    from autobatch import cli, tuning
    from autobatch.storage import _rdb

    main_thread = threading.main_thread()
    local = threading.local()
    stats = {"main_s": 0.0, "main_calls": 0, "beat_s": 0.0, "beat_calls": 0, "by_call": {}, "trials": 0}

    def timed(name_, method):
        def call(self, *args, **kwargs):
            if getattr(local, "depth", 0):
                return method(self, *args, **kwargs)
            local.depth = 1
            started = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                took = time.perf_counter() - started
                local.depth = 0
                if threading.current_thread() is main_thread:
                    stats["main_s"] += took
                    stats["main_calls"] += 1
                    entry = stats["by_call"].setdefault(name_, [0, 0.0])
                    entry[0] += 1
                    entry[1] += took
                else:
                    stats["beat_s"] += took
                    stats["beat_calls"] += 1
        return call

    cls = _rdb._RetryingRDBStorage
    for entry in _rdb._RETRIED + ("record_heartbeat",):
        setattr(cls, entry, timed(entry, getattr(cls, entry)))
    run_worker = tuning.run_worker

    def counting(*args, **kwargs):
        stats["trials"] = run_worker(*args, **kwargs)
        return stats["trials"]

    tuning.run_worker = counting
    os.environ["AUTOBATCH_STORAGE"] = url
    code = cli.main(["worker", "--study-name", name, "--device", "cpu"])
    pathlib.Path(stats_path).write_text(json.dumps(stats))
    return code


# --- the benchmark -----------------------------------------------------------------------------

def _create(url: str, name: str, n_trials: int, epochs: float) -> None:
    from autobatch.search import TuneSettings
    from autobatch.search import SearchSpace
    from autobatch.tuning import tune

    # A tame lr range: no trial diverges, so every trial does the same amount of work.
    space = SearchSpace(batch_size_min=16, batch_size_max=128, lr_multiplier_min=0.5, lr_multiplier_max=2.0)
    tune(TuneSettings(model="small_cnn", dataset="digits", device="cpu", epochs=epochs, n_trials=n_trials,
                      storage=url, study_name=name, pruner="none", baselines=False, create_only=True,
                      space=space))


def one_run(url: str, workers: int, n_trials: int, epochs: float, tmp: pathlib.Path) -> dict:
    import optuna
    from optuna.trial import TrialState

    from autobatch import records as R
    from autobatch.storage import resolve_url

    name = f"bench-storage-{workers}w-{uuid.uuid4().hex[:6]}"
    _create(url, name, n_trials, epochs)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    stats_files = [tmp / f"{name}-{i}.json" for i in range(workers)]
    launched = time.time()
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", name, url, str(path)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for path in stats_files]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"worker exited {proc.returncode}: {err[-2000:]}")
    exited = time.time()
    stats = [json.loads(path.read_text()) for path in stats_files]
    storage = resolve_url(url)
    study = optuna.load_study(study_name=name, storage=storage)
    trials = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    try:
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:
        pass
    if len(trials) != n_trials:
        raise RuntimeError(f"{len(trials)} of {n_trials} trials finished")
    first = min(t.datetime_start for t in trials).timestamp()
    last = max(t.datetime_complete for t in trials).timestamp()
    in_storage = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    trainer = [t.user_attrs[R.WALL_TIME_S] for t in trials]
    run = sum(s["trials"] for s in stats)
    by_call: dict[str, list] = {}
    for s in stats:
        for call, (count, seconds) in s["by_call"].items():
            entry = by_call.setdefault(call, [0, 0.0])
            entry[0] += count
            entry[1] += seconds
    return {
        "backend": url.split(":", 1)[0].split("+", 1)[0], "workers": workers, "trials": n_trials,
        "trials_run": run,
        "storage_ms_per_trial": 1000 * sum(s["main_s"] for s in stats) / run,
        "storage_calls_per_trial": sum(s["main_calls"] for s in stats) / run,
        "heartbeat_ms_per_trial": 1000 * sum(s["beat_s"] for s in stats) / run,
        "outside_training_ms_per_trial": 1000 * statistics.mean(a - b for a, b in zip(in_storage, trainer)),
        "trainer_s_per_trial": statistics.mean(trainer),
        "span_s": last - first, "launch_to_exit_s": exited - launched,
        "trials_per_hour": 3600 * n_trials / (last - first),
        "trials_per_hour_with_start": 3600 * n_trials / (exited - launched),
        "by_call": {k: {"calls": v[0], "ms_per_trial": 1000 * v[1] / run, "ms_per_call": 1000 * v[1] / v[0]}
                    for k, v in sorted(by_call.items(), key=lambda kv: -kv[1][1])},
    }


def run(quick: bool, out_dir: pathlib.Path, postgres: str = DEFAULT_PG) -> str:
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from _bench_common import load_average

    n_trials, epochs = (16, 5.0) if quick else (48, 5.0)
    load = load_average()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        rows.append(one_run(f"sqlite:///{tmp / 'bench.db'}", 1, n_trials, epochs, tmp))
        for workers in WORKER_COUNTS:
            rows.append(one_run(postgres, workers, n_trials, epochs, tmp))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_storage.json").write_text(json.dumps(rows, indent=2))
    return render(rows, quick=quick, cores=os.cpu_count(), gpu=torch.cuda.is_available(), load=load)


def render(rows: list[dict], *, quick: bool, cores: int, gpu: bool, load: str = "unknown") -> str:
    n = rows[0]["trials"]
    lines = [
        "## Storage: overhead per trial, and workers on one PostgreSQL study",
        "",
        f"`scripts/bench_storage.py`{' --quick' if quick else ''}: small_cnn on digits, {n} trials of "
        f"{rows[0]['trainer_s_per_trial']:.2f}s training each with one worker (batch 16-128, no pruning, "
        "no baselines), real `autobatch worker` "
        f"processes, heartbeat every 10 s, {cores} CPU cores{'' if not gpu else ' (a GPU present, unused)'}, "
        f"PostgreSQL on the same machine; load average at the start: {load}.",
        "",
        "| storage | workers | storage ms / trial (main thread) | calls / trial | heartbeat ms / trial "
        "| outside training ms / trial | training s / trial | trials / hour | with process start |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['workers']} | {r['storage_ms_per_trial']:.0f} | "
            f"{r['storage_calls_per_trial']:.0f} | {r['heartbeat_ms_per_trial']:.1f} | "
            f"{r['outside_training_ms_per_trial']:.0f} | {r['trainer_s_per_trial']:.2f} | {r['trials_per_hour']:.0f} | "
            f"{r['trials_per_hour_with_start']:.0f} |")
    one = next(r for r in rows if r["backend"] == "postgresql" and r["workers"] == 1)
    top = list(one["by_call"].items())[:4]
    lines += [
        "",
        "Where the PostgreSQL time goes with one worker (ms per trial): "
        + ", ".join(f"`{k}` {v['ms_per_trial']:.0f} ({v['calls'] / one['trials_run']:.0f} calls)" for k, v in top)
        + ".",
        "",
        "*Storage ms* is the time the worker's main thread spends inside Optuna storage calls per "
        "trial (taking a slot, the sampler's reads of past trials, parameters, reports, attributes, "
        "the final state, the progress line's counts). *Outside training* is a trial's start-to-complete "
        "time in the storage minus the trainer's own training and evaluation time. Trials per hour: "
        "from the first trial's start to the last one's completion, and from launching the workers "
        "to their exit. Workers train on CPU with one thread each: when workers (and the database, "
        "on the same machine here) outnumber the free cores, *training s / trial* grows with the "
        "worker count and bounds the scaling, and storage calls slow down with it: the workers' "
        "and the database's work share the same cores.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.exit(_instrumented_worker(*sys.argv[2:5]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 short trials per setting (about 2 minutes)")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "out" / "bench")
    parser.add_argument("--storage", default=DEFAULT_PG, help="the PostgreSQL URL to measure")
    args = parser.parse_args()
    print(run(args.quick, args.out, postgres=args.storage))


if __name__ == "__main__":
    main()
