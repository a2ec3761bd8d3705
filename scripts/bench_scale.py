"""Scaling of the tuner's own cost: per-trial overhead on studies of 10, 100 and 1,000 trials,
and 8 workers on one PostgreSQL study.

    python scripts/bench_scale.py [--quick] [--out DIR]
    python scripts/benchmark.py --only scale

*Sizes*: one real ``tune`` of a tiny MLP on digits (12 trials, SQLite) seeds every study; a study
of N trials is a fresh study with the seed's user attributes and N of its finished trials
(copied round-robin with ``Study.add_trials``), its trial count raised to N + a few. Then one
``autobatch worker`` process (the product's worker loop, ``run_worker``) runs those few real
trials. *Workers*: 8 ``autobatch worker`` processes started together on one PostgreSQL study.

Inside each worker process (``--worker LOG``, which installs ``Meter`` and then runs the CLI's
``main``), on the main thread: *storage* is the time a database connection is checked out of
SQLAlchemy's pool (every Optuna/autobatch storage call holds one for its statements and commit;
the heartbeat thread is left out), *sampler* the TPE sampler's own methods (its storage reads
taken out), *pruner* ``SnapshotPruner.prune`` (likewise); each in wall and thread-CPU seconds,
with SQL statements (as the database runs them: an executemany counts each row) and commits. Per trial: from the end of the previous trial's event to the
end of this one (the claim, the trial, its ``tell``, the progress counts). *Outside*: the
trial's ``TrialFinished.overhead_seconds`` (its wall time less training and evaluation). A
worker's first trial also reads the whole study into Optuna's cache: it is shown apart.
Raw numbers go to ``DIR/bench_scale.json``.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from typing import Optional, Sequence

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

POSTGRES = os.environ.get("AUTOBATCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
SIZES = (10, 100, 1000)
GOALS_MS = {"sqlite": 20.0, "postgresql": 40.0}  # issue 17: per-trial overhead
WORKERS = 8
PARTS = ("storage", "sampler", "pruner")


# --- pure helpers ----------------------------------------------------------------------------------

def summary(values: Sequence[float]) -> dict[str, float]:
    """Median and 90th percentile (linear interpolation, ``numpy.percentile``) of ``values``;
    NaN for both when empty."""
    if not values:
        return {"median": float("nan"), "p90": float("nan"), "n": 0}
    return {"median": float(np.median(values)), "p90": float(np.percentile(values, 90)), "n": len(values)}


def line_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares line ``y = a + b x`` (``numpy.polyfit``, degree 1): ``(a, b)``. Needs two
    distinct ``xs`` at least; raises ``ValueError`` otherwise."""
    if len(set(xs)) < 2 or len(xs) != len(ys):
        raise ValueError("a line needs two distinct x values and one y per x")
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(intercept), float(slope)


def crossing(intercept: float, slope: float, goal: float) -> Optional[float]:
    """The x where ``intercept + slope x`` reaches ``goal``: 0 when it is there already at x=0,
    None when a flat or falling line never gets there."""
    if intercept >= goal:
        return 0.0
    if slope <= 0:
        return None
    return (goal - intercept) / slope


def per_trial(records: list[dict], skip_first: bool = True) -> list[dict]:
    """A worker's per-trial records less its first (the cold read of the whole study)."""
    return records[1:] if skip_first else records


# --- inside a worker process -----------------------------------------------------------------------

class Meter:
    """Main-thread storage, sampler and pruner time, statements and commits, cut per trial at
    each ``TrialFinished`` event and appended to ``log`` as JSON lines."""

    def __init__(self, log: pathlib.Path) -> None:
        import threading

        self.log = log
        self.main = threading.main_thread()
        self.total = {f"{p}_{k}": 0.0 for p in PARTS for k in ("wall", "cpu")}
        self.total.update(statements=0, commits=0)
        self._held: list[tuple[float, float]] = []
        self._cut = dict(self.total)

    def _on_main(self) -> bool:
        import threading

        return threading.current_thread() is self.main

    def install(self) -> None:
        import time

        import optuna
        import sqlalchemy

        from autobatch.tuning import _pruning, _worker

        def checkout(*_args) -> None:
            if self._on_main():
                self._held.append((time.perf_counter(), time.thread_time()))

        def checkin(*_args) -> None:
            if self._on_main() and self._held:
                wall, cpu = self._held.pop()
                if not self._held:  # the outermost connection only
                    self.total["storage_wall"] += time.perf_counter() - wall
                    self.total["storage_cpu"] += time.thread_time() - cpu

        sql_log = os.environ.get("BENCH_SCALE_SQL_LOG")  # a file to write each statement to

        from bench_storage import statements_run

        def statement(_conn, _cursor, text, parameters, _context, executemany) -> None:
            if self._on_main():
                self.total["statements"] += statements_run(parameters, executemany)
                if sql_log:
                    with open(sql_log, "a") as out:
                        out.write(" ".join(text.split())[:120] + "\n")

        def commit(*_args) -> None:
            if self._on_main():
                self.total["commits"] += 1

        sqlalchemy.event.listen(sqlalchemy.pool.Pool, "checkout", checkout)
        sqlalchemy.event.listen(sqlalchemy.pool.Pool, "checkin", checkin)
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", statement)
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "commit", commit)
        tpe = optuna.samplers.TPESampler
        for name in ("infer_relative_search_space", "sample_relative", "sample_independent", "before_trial",
                     "after_trial"):
            setattr(tpe, name, self._timed(getattr(tpe, name), "sampler"))
        _pruning.SnapshotPruner.prune = self._timed(_pruning.SnapshotPruner.prune, "pruner")
        finished = _worker._finished

        def cut(*args, **kwargs):
            event = finished(*args, **kwargs)
            self._record(event)
            return event
        _worker._finished = cut

    def _timed(self, function, part: str):
        import functools
        import time

        meter = self

        @functools.wraps(function)
        def call(*args, **kwargs):
            if not meter._on_main():
                return function(*args, **kwargs)
            wall, cpu = time.perf_counter(), time.thread_time()
            stored_wall, stored_cpu = meter.total["storage_wall"], meter.total["storage_cpu"]
            try:
                return function(*args, **kwargs)
            finally:  # its storage reads are storage's
                meter.total[f"{part}_wall"] += (time.perf_counter() - wall) - (meter.total["storage_wall"] - stored_wall)
                meter.total[f"{part}_cpu"] += (time.thread_time() - cpu) - (meter.total["storage_cpu"] - stored_cpu)
        return call

    def _record(self, event) -> None:
        delta = {k: v - self._cut[k] for k, v in self.total.items()}
        self._cut = dict(self.total)
        row = {**delta, "number": event.trial.number, "state": event.trial.state.name,
               "outside_s": event.overhead_seconds, "seconds": event.seconds,
               "train_s": event.train_seconds, "eval_s": event.eval_seconds, "timings": event.timings}
        with open(self.log, "a") as out:
            out.write(json.dumps(row) + "\n")
        sql_log = os.environ.get("BENCH_SCALE_SQL_LOG")
        if sql_log:
            with open(sql_log, "a") as out:
                out.write(f"=== end of trial {event.trial.number}\n")


def _worker_main(log: str, argv: list[str]) -> None:
    Meter(pathlib.Path(log)).install()
    from autobatch.cli import main

    sys.exit(main(argv))


# --- the driver ------------------------------------------------------------------------------------

def seed_study(url: str) -> str:
    """One real ``tune`` of a tiny MLP on digits (12 trials): the trials every study copies."""
    import contextlib
    import io
    import uuid

    from autobatch.search import SearchSpace, TuneSettings
    from autobatch.tuning import tune

    name = f"scale-seed-{uuid.uuid4().hex[:6]}"
    space = SearchSpace(batch_size_min=16, batch_size_max=128, lr_multiplier_min=0.5, lr_multiplier_max=2.0)
    with contextlib.redirect_stderr(io.StringIO()):
        tune(TuneSettings(model="mlp", dataset="digits", device="cpu", epochs=0.2, n_trials=12, storage=url,
                          study_name=name, baselines=False, space=space))
    return name


def prefill(source, url: str, name: str, n: int, extra: int) -> float:
    """A study ``name`` in ``url`` with ``source``'s user and system attributes and ``n`` of its
    finished trials (round-robin), room for ``extra`` more, no deadline. Returns the seconds."""
    import time

    import optuna

    from autobatch import records as R
    from autobatch.storage import open_storage

    started = time.perf_counter()
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name=name, direction=source.direction)
    for key, value in source._storage.get_study_system_attrs(source._study_id).items():
        storage.set_study_system_attr(study._study_id, key, value)
    for key, value in source.user_attrs.items():
        study.set_user_attr(key, value)
    study.set_user_attr(R.STUDY_MAX_TRIALS, n + extra)
    study.set_user_attr(R.STUDY_DEADLINE, None)
    finished = [t for t in source.get_trials(deepcopy=False) if t.state.is_finished() and t.state.name != "FAIL"]
    study.add_trials([finished[i % len(finished)] for i in range(n)])
    return time.perf_counter() - started


def run_workers(url: str, name: str, count: int, logs: pathlib.Path) -> list[list[dict]]:
    """``count`` ``autobatch worker`` processes on the study together (one torch thread each,
    no loader processes), each metered (``Meter``); their per-trial records, worker by worker."""
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs, files = [], []
    for i in range(count):
        log = logs / f"{name}-{i}.jsonl"
        log.unlink(missing_ok=True)
        files.append(log)
        cmd = [sys.executable, __file__, "--worker", str(log), "--", "worker", "--study-name", name,
               "--storage", url, "--device", "cpu", "--num-workers", "0"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(err[-3000:])
    return [[json.loads(line) for line in f.read_text().splitlines()] if f.exists() else [] for f in files]


def size_row(backend: str, n: int, records: list[dict], prefill_s: float) -> dict:
    warm = per_trial(records)
    ms = lambda key: summary([1000 * r[key] for r in warm])  # noqa: E731
    row = {"backend": backend, "trials_before": n, "measured": len(warm), "prefill_s": prefill_s,
           "outside_ms": ms("outside_s"),
           **{f"{p}_{k}_ms": ms(f"{p}_{k}") for p in PARTS for k in ("wall", "cpu")},
           "statements": summary([r["statements"] for r in warm]), "commits": summary([r["commits"] for r in warm]),
           "first_storage_ms": 1000 * records[0]["storage_wall"] if records else float("nan"),
           "records": records}
    row["other_ms"] = summary([1000 * (r["outside_s"] - sum(r[f"{p}_wall"] for p in PARTS)) for r in warm])
    return row


def sizes_rows(seed_url: str, seed: str, tmp: pathlib.Path, extra: int) -> list[dict]:
    import optuna

    source = optuna.load_study(study_name=seed, storage=seed_url)
    rows = []
    for backend in ("sqlite", "postgresql"):
        for n in SIZES:  # a file per SQLite study: a fresh database each, as a user's study file is
            url = f"sqlite:///{tmp / f'scale-{n}.db'}" if backend == "sqlite" else POSTGRES
            name = f"{seed}-{backend}-{n}"
            took = prefill(source, url, name, n, extra)
            records = run_workers(url, name, 1, tmp)[0]
            rows.append(size_row(backend, n, records, took))
            r = rows[-1]
            print(f"  {backend} {n}: storage {r['storage_wall_ms']['median']:.1f} ms, sampler "
                  f"{r['sampler_wall_ms']['median']:.1f} ms (prefill {took:.0f}s)", file=sys.stderr, flush=True)
            if backend != "sqlite":
                _drop(url, name)
    return rows


def workers_row(seed_url: str, seed: str, tmp: pathlib.Path, per_worker: int) -> dict:
    import optuna

    source = optuna.load_study(study_name=seed, storage=seed_url)
    name = f"{seed}-postgresql-{WORKERS}w"
    before = len(source.trials)
    prefill(source, POSTGRES, name, before, WORKERS * per_worker)
    by_worker = run_workers(POSTGRES, name, WORKERS, tmp)
    _drop(POSTGRES, name)
    warm = [r for records in by_worker for r in per_trial(records)]
    ms = lambda key, rows: summary([1000 * r[key] for r in rows])  # noqa: E731
    row = {"workers": WORKERS, "trials_before": before, "measured": len(warm),
           "trials_per_worker": [len(w) for w in by_worker],
           **{f"{p}_{k}_ms": ms(f"{p}_{k}", warm) for p in PARTS for k in ("wall", "cpu")},
           "outside_ms": ms("outside_s", warm),
           "claim_ms": summary([1000 * r["timings"].get("claim", 0.0) for r in warm]),
           "statements": summary([r["statements"] for r in warm]),
           "worker_storage_median_ms": [ms("storage_wall", per_trial(w))["median"] for w in by_worker],
           "first_storage_ms": [1000 * w[0]["storage_wall"] for w in by_worker if w], "records": by_worker}
    print(f"  {WORKERS} workers: storage {row['storage_wall_ms']['median']:.1f} ms median, "
          f"{row['storage_wall_ms']['p90']:.1f} ms p90", file=sys.stderr, flush=True)
    return row


def _drop(url: str, name: str) -> None:
    import optuna

    try:
        optuna.delete_study(study_name=name, storage=url)
    except Exception:
        pass


# --- the section -----------------------------------------------------------------------------------

def _cell(s: dict, fmt: str = "{:.1f}") -> str:
    return "–" if not s["n"] else f"{fmt.format(s['median'])} [{fmt.format(s['p90'])}]"


def render_sizes(rows: list[dict], extra: int) -> list[str]:
    lines = ["### Per-trial cost against the study's size", "",
             f"Per storage and size: a fresh study of N copied trials, then {extra} real trials (MLP on digits, "
             "0.2 epochs) by one metered `autobatch worker`; its first trial (the cold read of the whole study "
             "into Optuna's cache) is left out of the medians and shown in the last column. Milliseconds per "
             "trial, median [p90]; wall time with the thread-CPU time beside it for storage and the sampler "
             "(wall is inflated by other work on this 2-core machine). *Other*: outside less storage, sampler "
             "and pruner (model building, the trainer's set-up and memory profiling, events).", "",
             "| storage | trials before | trials measured | outside ms | storage wall ms | storage CPU ms | "
             "TPE sampler wall ms | TPE sampler CPU ms | pruner ms | other ms | statements / trial | "
             "commits / trial | first trial's storage ms |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['trials_before']:,} | {r['measured']} | {_cell(r['outside_ms'])} | "
                     f"{_cell(r['storage_wall_ms'])} | {_cell(r['storage_cpu_ms'])} | {_cell(r['sampler_wall_ms'])} | "
                     f"{_cell(r['sampler_cpu_ms'])} | {_cell(r['pruner_wall_ms'])} | {_cell(r['other_ms'])} | "
                     f"{_cell(r['statements'], '{:.0f}')} | {_cell(r['commits'], '{:.0f}')} | "
                     f"{r['first_storage_ms']:.0f} |")
    lines += ["", "Where the lines go (least-squares line through the three sizes' medians, in CPU ms so the "
              "machine's load does not bend it; the crossings are extrapolations where beyond 1,000):", ""]
    for backend, goal in GOALS_MS.items():
        group = [r for r in rows if r["backend"] == backend]
        if len(group) < 2:
            continue
        xs = [r["trials_before"] for r in group]
        for label, key in (("storage", "storage_cpu_ms"), ("TPE sampler", "sampler_cpu_ms")):
            a, b = line_fit(xs, [r[key]["median"] for r in group])
            at = crossing(a, b, goal)
            where = ("never reaches it (flat or falling)" if at is None else "is above it from the start" if at == 0
                     else f"reaches it at about {at:,.0f} trials")
            lines.append(f"- {backend}, {label}: {a:.2f} ms {1000 * b:+.3f} ms per 1,000 trials; against the "
                         f"{goal:.0f} ms goal it {where}.")
    return lines


def render_workers(row: dict, load: str) -> list[str]:
    goal = GOALS_MS["postgresql"]
    verdict = "met" if row["storage_wall_ms"]["p90"] <= goal else (
        "met at the median" if row["storage_wall_ms"]["median"] <= goal else "not met")
    return ["", f"### {row['workers']} workers on one PostgreSQL study", "",
            f"{row['workers']} metered `autobatch worker` processes started together on one PostgreSQL study "
            f"({row['trials_before']} copied trials to begin with), tiny trials as above; trials run per worker: "
            f"{', '.join(map(str, row['trials_per_worker']))}. This machine has **2 cores** (shared; load at the "
            f"start {load}), so {row['workers']} workers queue for the CPU: wall times carry that wait and the CPU "
            "times do not; storage is measured per call inside the workers, not from throughput. Pooled over "
            "every worker's trials but its first; ms per trial, median [p90].", "",
            "| storage wall ms | storage CPU ms | claim ms | statements / trial | TPE sampler wall ms | "
            "outside ms | per worker, storage median ms | first trials' storage ms | goal (storage ≤40 ms) |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
            f"| {_cell(row['storage_wall_ms'])} | {_cell(row['storage_cpu_ms'])} | {_cell(row['claim_ms'])} | "
            f"{_cell(row['statements'], '{:.0f}')} | {_cell(row['sampler_wall_ms'])} | {_cell(row['outside_ms'])} | "
            f"{', '.join(f'{v:.0f}' for v in row['worker_storage_median_ms'])} | "
            f"{', '.join(f'{v:.0f}' for v in row['first_storage_ms'])} | {verdict} |"]


def _method() -> str:
    """The module docstring's account of the method, as one Markdown paragraph."""
    return __doc__.split("\n\n", 2)[2].split("Raw numbers")[0].strip().replace("\n", " ").replace("``", "`")


def run(quick: bool, out_dir: pathlib.Path) -> str:
    import tempfile

    from _bench_common import load_average

    load = load_average()
    tmp = pathlib.Path(tempfile.mkdtemp())
    seed_url = f"sqlite:///{tmp / 'seed.db'}"
    extra, per_worker = (6, 4) if quick else (15, 8)
    seed = seed_study(seed_url)
    sizes = sizes_rows(seed_url, seed, tmp, extra)
    workers_load = load_average()
    workers = workers_row(seed_url, seed, tmp, per_worker)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_scale.json").write_text(json.dumps({"sizes": sizes, "workers": workers}, indent=1))
    lines = ["## Scale: per-trial cost from 10 to 1,000 trials, and 8 workers on PostgreSQL", "",
             f"`scripts/bench_scale.py`{' --quick' if quick else ''}; load average at the start: {load}, at the "
             f"end: {load_average()}. " + _method(),
             ""]
    lines += render_sizes(sizes, extra) + render_workers(workers, workers_load)
    return "\n".join(lines) + "\n"


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:  # one metered autobatch worker: --worker LOG -- ARGS
        _worker_main(sys.argv[2], sys.argv[4:])
        return
    from _bench_common import bench_main

    bench_main(run, __doc__)


if __name__ == "__main__":
    main()
