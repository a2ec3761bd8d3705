"""Benchmark of the tuner's overhead: what a trial costs outside training and evaluation, on
SQLite and PostgreSQL, as the study grows, and with 8 workers on one PostgreSQL study.

    python scripts/bench_storage.py [--quick] [--out DIR] [--storage URL] [--before PATH]

Measured, per trial, on real ``tune`` runs (in-process) and real ``autobatch worker`` processes:

- *statements* and *commits*: SQLAlchemy's own engine events (``before_cursor_execute``,
  ``commit``), the worker's main thread, from the study being ready to its last trial (read
  transactions commit too, and count); statements as the database runs them (an executemany
  counts each row, ``statements_run``);
- *storage ms*: seconds inside the storage's entry points (every Optuna RDB call, autobatch's
  claim and one-transaction writes) on the main thread, each timed by a wrapper;
- *overhead ms*: the issue's definition: the run's wall time less the probe and the trials' own
  training and evaluation time (``train_time_s + eval_time_s``), per trial: storage, sampler,
  pruner, model building, the final fit, bookkeeping. Since this work a trial's evaluation time
  excludes its reports and pruning decisions (storage round trips): they count as overhead;
  ``--before`` code books them as evaluation, so its overhead is understated;
- *stages* (after only): ``TrialFinished.timings``, the seconds of each stage of a trial.

``--before PATH`` runs the same measurement on another checkout (e.g. the main branch before
this work) in a subprocess, for a before/after table. Scaling: overhead and the sampler's time by
trial number up to 1,000 trials (300 with ``--quick``) of a tiny MLP on digits. Returns a
Markdown section; raw numbers go to ``DIR/bench_storage.json``.
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
DEFAULT_PG = os.environ.get("AUTOBATCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


# --- instrumentation ------------------------------------------------------------------------------

def statements_run(parameters, executemany: bool) -> int:
    """Statements the database runs for one ``before_cursor_execute`` event: an executemany runs
    its statement once per row (psycopg2 sends each, a round trip apiece)."""
    return len(parameters) if executemany and parameters else 1


class Meter:
    """Counts statements (as the database runs them: ``statements_run``) and commits (SQLAlchemy
    engine events) and times storage entry points,
    for the main thread, while ``on`` is set."""

    def __init__(self) -> None:
        self.on = False
        self.statements = self.commits = 0
        self.storage_s = 0.0
        self.storage_cpu_s = 0.0  # this thread's CPU inside storage calls (no waiting for the CPU or the database)
        self.calls: dict[str, list] = {}
        self._local = threading.local()

    def install(self) -> None:
        import sqlalchemy
        from autobatch import storage

        main = threading.main_thread()

        def statement(_conn, _cursor, _text, parameters, _context, executemany) -> None:
            if self.on and threading.current_thread() is main:
                self.statements += statements_run(parameters, executemany)

        def commit(*_args) -> None:
            if self.on and threading.current_thread() is main:
                self.commits += 1

        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", statement)
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "commit", commit)
        cls = storage._rdb._RetryingRDBStorage if hasattr(storage, "_rdb") else storage._RetryingRDBStorage
        names = tuple(getattr(storage._rdb, "_RETRIED", ())) + tuple(getattr(storage._rdb, "_OWN", ()))
        for name in names:
            setattr(cls, name, self._timed(name, getattr(cls, name), main))

    def _timed(self, name: str, method, main):
        meter = self

        def call(self_, *args, **kwargs):
            if getattr(meter._local, "depth", 0) or threading.current_thread() is not main or not meter.on:
                return method(self_, *args, **kwargs)
            meter._local.depth = 1
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return method(self_, *args, **kwargs)
            finally:
                took = time.perf_counter() - started
                meter._local.depth = 0
                meter.storage_s += took
                meter.storage_cpu_s += time.thread_time() - cpu
                entry = meter.calls.setdefault(name, [0, 0.0])
                entry[0] += 1
                entry[1] += took
        return call


def measure(url: str, *, model: str, epochs: float, n_trials: int, pruner: str = "median",
            name: str | None = None) -> dict:
    """One in-process ``tune`` (one worker): per-trial statements, commits, storage and overhead."""
    import optuna
    from autobatch.search import SearchSpace, TuneSettings
    from autobatch.tuning import ProbeDone, StudyReady, TrialFinished, tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    meter = Meter()
    meter.install()
    events: list = []
    marks: dict = {}

    def on_event(run, event) -> None:
        if isinstance(event, StudyReady):
            meter.on = True
            marks["ready"] = time.perf_counter()
        elif isinstance(event, ProbeDone):
            marks["probe_s"] = event.seconds
        elif isinstance(event, TrialFinished):
            events.append(event)
            marks["last"] = time.perf_counter()
            marks["counted"] = (meter.statements, meter.commits, meter.storage_s, meter.storage_cpu_s)

    name = name or f"bench-{uuid.uuid4().hex[:8]}"
    # A tame lr range: no trial diverges, so every trial does about the same work.
    space = SearchSpace(batch_size_min=16, batch_size_max=128, lr_multiplier_min=0.5, lr_multiplier_max=2.0)
    started = time.perf_counter()
    tune(TuneSettings(model=model, dataset="digits", device="cpu", epochs=epochs, n_trials=n_trials,
                      storage=url, study_name=name, pruner=pruner, baselines=False, space=space),
         callbacks=[on_event])
    wall = time.perf_counter() - started
    study = optuna.load_study(study_name=name, storage=_plain(url))
    trials = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("train_time_s") is not None]
    trainer = sum(t.user_attrs["train_time_s"] + t.user_attrs["eval_time_s"] for t in trials)
    try:
        optuna.delete_study(study_name=name, storage=_plain(url))
    except KeyError:
        pass
    n = len(events)
    statements, commits, storage_s, storage_cpu_s = marks["counted"]
    row = {
        "backend": url.split(":", 1)[0].split("+", 1)[0], "trials": n, "model": model, "epochs": epochs,
        "statements_per_trial": statements / n, "commits_per_trial": commits / n,
        "storage_ms_per_trial": 1000 * storage_s / n, "storage_cpu_ms_per_trial": 1000 * storage_cpu_s / n,
        "overhead_ms_per_trial": 1000 * (wall - marks.get("probe_s", 0.0) - trainer) / n,
        "trainer_s_per_trial": trainer / n, "wall_s": wall, "probe_s": marks.get("probe_s", 0.0),
        "overhead_share": (wall - marks.get("probe_s", 0.0) - trainer) / trainer,
        "by_call": {k: {"calls_per_trial": v[0] / n, "ms_per_trial": 1000 * v[1] / n}
                    for k, v in sorted(meter.calls.items(), key=lambda kv: -kv[1][1])},
    }
    if events and getattr(events[0], "timings", None):
        row["stages_ms"] = {k: 1000 * statistics.median(e.timings.get(k, 0.0) for e in events)
                            for k in ("claim", "sample", "write", "report", "state")}
        row["event_overhead_ms"] = [1000 * e.overhead_seconds for e in events]
        row["sample_ms"] = [1000 * e.timings.get("sample", 0.0) for e in events]
    return row


def _plain(url: str) -> str:
    from autobatch.storage import resolve_url

    return resolve_url(url)


# --- writing a trial's result: three ways ---------------------------------------------------------

def attribute_writes(url: str, trials: int = 30) -> dict:
    """Milliseconds to write one trial's result attributes (a real trial's ``result_attrs``)
    three ways: one Optuna ``set_trial_user_attr`` each (before), one JSON record attribute, and
    all of them in one transaction through the RDB session (``records.write_attrs``, now)."""
    import optuna
    from autobatch import records as R
    from autobatch.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    attrs = R.result_attrs(R.TrialResult(
        config=R.TrialConfig(batch_size=32, learning_rate=0.1),
        curve=tuple(R.EvalPoint(samples_seen=180 * i, metric=0.2 * i, loss=1.0 / i, train_time_s=0.1 * i)
                    for i in range(1, 5)),
        samples_seen=720, train_time_s=0.4, eval_time_s=0.1, wall_time_s=0.6, measured_peak_bytes=10**6,
        stop_reason=R.STOP_COMPLETED), train_size=1437)
    name = f"bench-attrs-{uuid.uuid4().hex[:6]}"
    study = optuna.create_study(study_name=name, storage=open_storage(url))
    out = {"attributes": len(attrs)}
    ways = {
        "per_attribute": lambda t: [t.set_user_attr(k, v) for k, v in attrs.items()],
        "one_record": lambda t: t.set_user_attr("autobatch_result", attrs),
        "one_transaction": lambda t: R.write_attrs(t, attrs),
    }
    for way, write in ways.items():
        times = []
        for _ in range(trials):
            trial = study.ask()
            started = time.perf_counter()
            write(trial)
            times.append(time.perf_counter() - started)
            study.tell(trial, 0.5)
        out[way] = 1000 * statistics.median(times)
    optuna.delete_study(study_name=name, storage=_plain(url))
    return out


# --- workers on one PostgreSQL study ----------------------------------------------------------------

def _worker(name: str, url: str, out: str) -> int:
    """An ``autobatch worker`` with the meter on; its numbers written to ``out`` at exit."""
    from autobatch import cli
    from autobatch import tuning

    meter = Meter()
    meter.install()
    meter.on = True
    seen: list = []
    original = tuning.run_worker

    def run_worker(*args, **kwargs):
        run = kwargs.get("run")
        if run is not None:
            run._callbacks = tuple(run._callbacks) + (
                lambda _run, e: seen.append(e) if isinstance(e, tuning.TrialFinished) else None,)
        return original(*args, **kwargs)

    tuning.run_worker = run_worker
    os.environ["AUTOBATCH_STORAGE"] = url
    code = cli.main(["worker", "--study-name", name, "--device", "cpu"])
    pathlib.Path(out).write_text(json.dumps({
        "trials": len(seen), "statements": meter.statements, "commits": meter.commits,
        "storage_s": meter.storage_s, "storage_cpu_s": meter.storage_cpu_s,
        "overhead_s": [e.overhead_seconds for e in seen], "trainer_s": [e.train_seconds + e.eval_seconds for e in seen],
        "claim_s": [e.timings.get("claim", 0.0) for e in seen]}))
    return code


def many_workers(url: str, workers: int, n_trials: int, tmp: pathlib.Path) -> dict:
    import optuna
    from autobatch.search import SearchSpace, TuneSettings
    from autobatch.tuning import tune

    name = f"bench-{workers}w-{uuid.uuid4().hex[:6]}"
    space = SearchSpace(batch_size_min=16, batch_size_max=128, lr_multiplier_min=0.5, lr_multiplier_max=2.0)
    tune(TuneSettings(model="mlp", dataset="digits", device="cpu", epochs=0.5, n_trials=n_trials, storage=url,
                      study_name=name, pruner="none", baselines=False, create_only=True, space=space))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    outs = [tmp / f"{name}-{i}.json" for i in range(workers)]
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", name, url, str(o)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for o in outs]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"worker exited {proc.returncode}: {err[-2000:]}")
    stats = [json.loads(o.read_text()) for o in outs]
    study = optuna.load_study(study_name=name, storage=_plain(url))
    results = sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    optuna.delete_study(study_name=name, storage=_plain(url))
    n = sum(s["trials"] for s in stats)
    return {"backend": "postgresql", "workers": workers, "trials": n, "results": results, "asked": n_trials,
            "statements_per_trial": sum(s["statements"] for s in stats) / n,
            "commits_per_trial": sum(s["commits"] for s in stats) / n,
            "storage_ms_per_trial": 1000 * sum(s["storage_s"] for s in stats) / n,
            "storage_cpu_ms_per_trial": 1000 * sum(s["storage_cpu_s"] for s in stats) / n,
            "claim_ms_median": 1000 * statistics.median(c for s in stats for c in s["claim_s"]),
            "overhead_ms_median": 1000 * statistics.median(o for s in stats for o in s["overhead_s"]),
            "trainer_s_per_trial": statistics.mean(t for s in stats for t in s["trainer_s"])}


# --- the report -----------------------------------------------------------------------------------

def _buckets(values: list[float], edges: tuple[int, ...]) -> list[tuple[str, float]]:
    out, start = [], 0
    for end in edges:
        part = values[start:end]
        if part:
            out.append((f"{start + 1}-{min(end, len(values))}", statistics.median(part)))
        start = end
    return out


def run(quick: bool, out_dir: pathlib.Path, postgres: str = DEFAULT_PG, before: str | None = None) -> str:
    tmp = pathlib.Path(tempfile.mkdtemp())
    n, epochs = (12, 0.5) if quick else (12, 2.0)
    rows = {"after": [measure(f"sqlite:///{tmp / 'a.db'}", model="small_cnn", epochs=epochs, n_trials=n),
                      measure(postgres, model="small_cnn", epochs=epochs, n_trials=n)]}
    if before:
        rows["before"] = [json.loads(subprocess.run(
            [sys.executable, __file__, "--one", url, "--code", before, "--n", str(n), "--epochs", str(epochs)],
            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, check=True).stdout)
            for url in (f"sqlite:///{tmp / 'b.db'}", postgres)]
    rows["writes"] = [dict(attribute_writes(url), backend=url.split(":", 1)[0])
                      for url in (f"sqlite:///{tmp / 'w.db'}", postgres)]
    scale_n = 300 if quick else 1000
    rows["scaling"] = measure(f"sqlite:///{tmp / 's.db'}", model="mlp", epochs=0.05, n_trials=scale_n, pruner="none")
    rows["workers"] = many_workers(postgres, 8, 24 if quick else 64, tmp)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_storage.json").write_text(json.dumps(rows, indent=2))
    return render(rows, quick=quick)


def render(rows: dict, *, quick: bool) -> str:
    lines = ["## Tuner overhead: storage, sampler and bookkeeping per trial", "",
             f"`scripts/bench_storage.py{' --quick' if quick else ''}`: small_cnn on digits, "
             f"{rows['after'][0]['trials']} trials of {rows['after'][0]['epochs']:g} epochs, one worker, in-process "
             f"`tune`, {os.cpu_count()} CPU cores; PostgreSQL on the same machine.", "",
             "| code | storage | statements / trial | commits / trial | storage ms / trial (CPU) | overhead ms / trial "
             "| training + evaluation s / trial | overhead / (training + evaluation) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label in ("before", "after"):
        for r in rows.get(label, []):
            lines.append(f"| {label} | {r['backend']} | {r['statements_per_trial']:.0f} | {r['commits_per_trial']:.1f} | "
                         f"{r['storage_ms_per_trial']:.1f} ({r.get('storage_cpu_ms_per_trial', float('nan')):.1f}) | "
                         f"{r['overhead_ms_per_trial']:.0f} | "
                         f"{r['trainer_s_per_trial']:.2f} | {100 * r['overhead_share']:.0f}% |")
    for r in rows["after"]:
        if "stages_ms" in r:
            lines.append(f"\nStages of a trial on {r['backend']} (median ms): "
                         + ", ".join(f"{k} {v:.1f}" for k, v in r["stages_ms"].items()) + ".")
    lines += ["", f"Writing a trial's {rows['writes'][0]['attributes']} result attributes (median ms per trial):", "",
              "| storage | one Optuna call each (before) | one JSON record attribute | one transaction (now) |",
              "| --- | ---: | ---: | ---: |"]
    for w in rows["writes"]:
        lines.append(f"| {w['backend']} | {w['per_attribute']:.1f} | {w['one_record']:.1f} | {w['one_transaction']:.1f} |")
    lines.append("One transaction keeps each attribute a column of `trials_dataframe()` and in "
                 "optuna-dashboard, which a single record attribute would hide in one JSON blob.")
    s = rows["scaling"]
    edges = (10, 100, 300, 1000)
    lines += ["", f"Scaling ({s['trials']} trials of a tiny MLP on digits, SQLite, no pruning): median ms per "
              "trial by trial number.", "", "| trials | overhead ms | of which the sampler (TPE) ms |",
              "| --- | ---: | ---: |"]
    for (label, over), (_, sample) in zip(_buckets(s["event_overhead_ms"], edges), _buckets(s["sample_ms"], edges)):
        lines.append(f"| {label} | {over:.1f} | {sample:.1f} |")
    w = rows["workers"]
    lines += ["", f"{w['workers']} `autobatch worker` processes on one PostgreSQL study, {w['asked']} trials asked, "
              f"{w['results']} results: storage {w['storage_ms_per_trial']:.1f} ms per trial (main threads, wall; "
              f"{w['storage_cpu_ms_per_trial']:.1f} ms of it the worker's own CPU), "
              f"{w['statements_per_trial']:.0f} statements and {w['commits_per_trial']:.1f} commits per trial, "
              f"claim {w['claim_ms_median']:.1f} ms (median), overhead {w['overhead_ms_median']:.0f} ms per trial "
              f"(median) against {w['trainer_s_per_trial']:.2f} s of training and evaluation; "
              f"{os.cpu_count()} cores shared by the workers and the database: with 8 workers on "
              f"{os.cpu_count()} cores each storage call mostly waits for a CPU, so the wall figures "
              "measure this machine's contention more than the storage."]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.path.insert(0, str(ROOT))
        sys.exit(_worker(*sys.argv[2:5]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter trials, 300 trials of scaling (~5 minutes)")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "out" / "bench")
    parser.add_argument("--storage", default=DEFAULT_PG, help="the PostgreSQL URL to measure")
    parser.add_argument("--before", help="another checkout to measure the same way (before/after)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--code", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=12, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=float, default=2.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(pathlib.Path(args.code).resolve()) if args.code else str(ROOT))
    if args.one:
        print(json.dumps(measure(args.one, model="small_cnn", epochs=args.epochs, n_trials=args.n)))
        return
    print(run(args.quick, args.out, args.storage, args.before))


if __name__ == "__main__":
    main()
