"""Speed of the tuner's own parts: the trainer against a plain PyTorch loop, and how fast
``autobatch recommend`` starts and answers.

    python scripts/bench_speed.py [--quick] [--out DIR]
    python scripts/benchmark.py --only speed

Trainer: ``compare_throughput`` (``scripts/_bench_common.py``): training samples per CPU-second
of this thread (``time.thread_time``, one torch thread) for ``train_trial`` and for the loop
written out there, the same model, initialisation, data, optimizer, lr schedule and batch;
interleaved rounds, the plain loop run twice per round for the noise floor (measured once when
the trainer is the same code before and after). ``tune``: everything outside training and
evaluation of a 12-trial ``small_cnn``/``digits`` study, the probes (noise-scale, memory +
throughput) and the verification's training booked apart (``tune_overhead``), and the same by
component (``Breakdown``). ``recommend``:
``python -X importtime`` and the wall time of ``autobatch recommend`` on studies of 60 and 200
trials (real ``tune`` runs of a tiny model, copied up to the size), and the answer's own time
after imports. Returns a Markdown section; raw numbers go to ``DIR/bench_speed.json``.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# ``--tune URL --code PATH`` measures another checkout's autobatch: it goes first on the path.
_CODE = sys.argv[sys.argv.index("--code") + 1] if sys.argv[1:2] in (["--tune"], ["--trainer"], ["--answer"]) else str(ROOT)
for _path in (_CODE, ROOT / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402
from _bench_common import (PLAIN, PLAIN_AGAIN, TRAINER, TRAINER_MEASURED, Spread, bench_main,  # noqa: E402
                           compare_throughput, load_average, ratios)

from autobatch.workloads import load_workload  # noqa: E402

# (model, micro-batch, optimizer steps per run, lr): the three cases
TRAINER_CASES = (("small_cnn", 8, 360, 0.05), ("small_cnn", 128, 120, 0.2), ("resnet18", 32, 45, 0.05))
TRAINER_GOAL = 0.97


def trainer_rows(quick: bool) -> list[dict]:
    workload = load_workload("digits", seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for model, batch, steps, lr in TRAINER_CASES:
            steps = steps // 3 if quick and model == "resnet18" else steps
            raw = compare_throughput(model, workload, batch_size=batch, learning_rate=lr, steps=steps,
                                     rounds=8 if quick else 12)  # a multiple of the 4 loops: each order as often
            rows.append({"model": model, "batch_size": batch, "steps": steps, "raw": raw})
            print(f"  trainer {model} b={batch}: {statistics.median(ratios(raw, TRAINER)):.3f}",
                  file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(threads)
    return rows


def trainer_rows_of(code: pathlib.Path, quick: bool) -> list[dict]:
    """``trainer_rows`` with the checkout ``code``'s trainer, in a fresh interpreter. A trainer
    without ``measure_memory`` (before this work) always measures memory: both of its columns
    are that trainer."""
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(code)}
    done = subprocess.run([sys.executable, __file__, "--trainer", "quick" if quick else "full", "--code", str(code)],
                          env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _trainer_main(quick: bool) -> None:
    import inspect

    import _bench_common

    train_trial = _bench_common.train_trial
    if "measure_memory" not in inspect.signature(train_trial).parameters:  # an older trainer
        _bench_common.train_trial = lambda *args, measure_memory=True, **kwargs: train_trial(*args, **kwargs)
    print(json.dumps(trainer_rows(quick)))


def _same_trainer(before: pathlib.Path, after: pathlib.Path) -> bool:
    """Whether the two checkouts' trainers (``autobatch/train``) are the same files: then the
    trainer is measured once."""
    def files(root: pathlib.Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted((root / "autobatch" / "train").glob("*.py"))}
    return files(before) == files(after)


def render_trainer(groups: dict[str, list[dict]]) -> list[str]:
    rounds = len(groups["after"][0]["raw"][PLAIN])
    lines = [
        "### Trainer against a plain PyTorch loop", "",
        f"Training samples per CPU-second of the training thread (`time.thread_time`, one torch thread), "
        f"{rounds} interleaved rounds after one untimed warm-up each (the order rotates each round); "
        "each run from a fresh model with the same initialisation; the whole call timed (set-up, "
        "loader, steps, the trainer's divergence checks). Plain loop: the loop written out in "
        "`scripts/_bench_common.py` (`make_optimizer`, `make_scheduler`, shuffled index batches from "
        "the same in-memory tensors, forward, `cross_entropy`, backward, step, zero_grad, schedule step). "
        "*autobatch*: `train_trial` with no evaluation checkpoints (`measure_memory=False`); *+ memory*: "
        "with the CPU memory accounting of its first 2 steps that `tune` runs (the profiler; kept out of "
        "the trial's training time, so it is tuner overhead, not trainer speed). Ratios per round against "
        "the same round's plain loop: median [min, max]. *Noise floor*: the plain loop against itself "
        "in the same round; a ratio within its range is a tie. "
        + ("*before*: the main branch this work started from, whose trainer always measured memory (both its "
           "columns are that trainer)." if "before" in groups else
           "The trainer (`autobatch/train`) is the same code before and after this work, so it is measured once."),
        "",
        "| code | task | micro-batch | steps / run | plain loop samples/CPU-s | autobatch / plain | "
        "noise floor (plain / plain) | autobatch + memory / plain | goal (≥97%) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for label, rows in groups.items():
        for row in rows:
            raw = row["raw"]
            ours, floor, measured = (Spread.of(ratios(raw, name)) for name in (TRAINER, PLAIN_AGAIN, TRAINER_MEASURED))
            if floor.low <= ours.median <= floor.high:  # this machine cannot tell them apart
                verdict = "tie with the plain loop (within the noise floor)"
            else:
                verdict = "met" if ours.median >= TRAINER_GOAL else "not met"
            pct = "{:.1%}"
            lines.append(f"| {label} | {row['model']} / digits | {row['batch_size']} | {row['steps']} | "
                         f"{statistics.median(raw[PLAIN]):,.0f} | {ours.show(pct)} | {floor.show(pct)} | "
                         f"{measured.show(pct)} | {verdict} |")
    return lines


# --- tune: everything outside training and evaluation ------------------------------------------

TUNE_ARGS = ("--model", "small_cnn", "--dataset", "digits", "--n-trials", "12", "--epochs", "2", "--json")
TUNE_ROUNDS = 3  # interleaved rounds of the 12-trial tune, per checkout and storage: the spread shows
STUDY_BUDGET = "10m"  # the whole-study case: the tuner's share of a 10-minute small_cnn/digits study
SHARE_GOAL = 0.03


def budget_args(budget: str) -> tuple[str, ...]:
    """``tune`` arguments of a ``small_cnn``/``digits`` study planned by its budget alone."""
    return ("--model", "small_cnn", "--dataset", "digits", "--budget", budget, "--json")


class Breakdown:
    """Wall and main-thread CPU seconds and SQL statements of ``tune`` by component, each call's
    own share (nested components' time is theirs, not their caller's), from wrapping the named
    functions where ``tune``'s modules look them up. ``train_trial`` is split by its own result:
    ``train_time_s + eval_time_s`` (less the reports and pruning decisions made inside it, their
    own component) is training + evaluation, the rest of the call is the trainer's set-up, loader
    start-up and memory profiling."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.statements: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[list] = []  # [label, wall at entry, cpu at entry, children's wall, children's cpu]
        self._restore: list[tuple] = []

    def label(self) -> str:
        return self._stack[-1][0] if self._stack else "other"

    def book(self, label: str, wall: float, cpu: float) -> None:
        self.wall[label] = self.wall.get(label, 0.0) + wall
        self.cpu[label] = self.cpu.get(label, 0.0) + cpu

    def wrap(self, owner, name: str, label: str, split=None, inside: tuple[str, ...] = ()) -> None:
        """Time ``owner.name`` as ``label``; ``split(result, own_wall)`` -> (label, seconds)
        moves that share of the call's own wall time to another label. A call made inside one
        of the components ``inside`` stays that component's."""
        import functools
        import threading
        import time

        original = getattr(owner, name)
        main, booker = threading.main_thread(), self

        @functools.wraps(original)
        def timed(*args, **kwargs):
            if threading.current_thread() is not main or (booker._stack and booker._stack[-1][0] in inside):
                return original(*args, **kwargs)
            frame = [label, time.perf_counter(), time.thread_time(), 0.0, 0.0]
            booker._stack.append(frame)
            try:
                result = original(*args, **kwargs)
            finally:
                booker._stack.pop()
                wall, cpu = time.perf_counter() - frame[1], time.thread_time() - frame[2]
                own_wall, own_cpu = wall - frame[3], cpu - frame[4]
                booker.calls[label] = booker.calls.get(label, 0) + 1
                if booker._stack:
                    booker._stack[-1][3] += wall
                    booker._stack[-1][4] += cpu
            if split is not None:
                other, seconds = split(result, frame)
                seconds = min(seconds, own_wall)
                booker.book(other, seconds, own_cpu * seconds / own_wall if own_wall > 0 else 0.0)
                own_wall, own_cpu = own_wall - seconds, own_cpu * (1 - seconds / own_wall) if own_wall > 0 else 0.0
            booker.book(label, own_wall, own_cpu)
            return result
        self._restore.append((owner, name, original))
        setattr(owner, name, timed)

    def count_statements(self) -> None:
        import threading

        import sqlalchemy

        main = threading.main_thread()

        log = os.environ.get("BENCH_SPEED_SQL_LOG")  # a file to write each statement's component to

        from bench_storage import statements_run

        def statement(_conn, _cursor, text, parameters, _context, executemany) -> None:
            if threading.current_thread() is main:
                self.statements[self.label()] = (self.statements.get(self.label(), 0)
                                                 + statements_run(parameters, executemany))
                if log:
                    with open(log, "a") as out:
                        out.write(f"{self.label()}\t{' '.join(text.split())[:150]}\n")
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", statement)
        self._listener = statement

    def undo(self) -> None:
        import sqlalchemy

        for owner, name, original in reversed(self._restore):
            setattr(owner, name, original)
        if getattr(self, "_listener", None) is not None:
            sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", self._listener)
            self._listener = None


TRAINING = "training + evaluation"
PROBES = ("noise probe", "memory + throughput probe")
# (module, function, label) wrapped by ``tune_overhead``; the trainer's calls are split (``Breakdown``)
COMPONENTS = (
    ("autobatch.tuning._prepare", "measure_critical_batch", "noise probe"),
    ("autobatch.tuning._prepare", "probe_workload", "memory + throughput probe"),
    ("autobatch.tuning._tune", "open_storage", "storage open"),
    ("autobatch.tuning._tune", "load_workload", "workload loading"),
    ("autobatch.tuning._tune", "prepare_study", "study creation (plan, baselines, attributes)"),
    ("autobatch.tuning._tune", "run_worker", "worker loop (trial views for sampler and pruner, refits)"),
    ("autobatch.tuning._worker", "next_claim", "claim"),
    ("autobatch.tuning._worker", "_finished", "study state after each trial"),
    ("autobatch.tuning._worker", "run_trial", "trial bookkeeping (memory check, attributes)"),
    ("autobatch.tuning._objective", "suggest", "sampler (suggest)"),
    ("autobatch.records", "write_attrs", "trial attribute writes"),
    ("autobatch.storage._writes.TrialWrites", "flush", "trial attribute writes"),  # held writes: parameters too
    ("autobatch.tuning._objective", "refit_study_memory", "memory model refit"),
    ("autobatch.tuning._objective", "_tell", "tell"),
    ("autobatch.tuning._objective", "build_model", "model building"),
    ("optuna.trial.Trial", "report", "report + pruner"),
    ("optuna.trial.Trial", "should_prune", "report + pruner"),
    ("autobatch.tuning._tune", "recommend_study", "final answer: trade-off model fit"),
    # the refit that confirms the verified answer is what a fit gives (``confirmed_key``)
    ("autobatch.recommender._api", "recommend_study", "final answer: trade-off model fit"),
    ("autobatch.tuning._tune", "publish", "final answer: stored + dashboard note"),
    ("autobatch.tuning._tune", "verify_answer", "verification: bookkeeping"),
    ("autobatch.tuning._verify", "build_model", "model building"),
)
TRAINER_SETUP = "trainer set-up, loader start-up, memory profiling"
# Modules imported for the first time during the run (``importlib._bootstrap._find_and_load``,
# the outermost import's own time): start-up like interpreter start, booked apart from outside.
IMPORTS = "imports at first use (start-up)"
# Imported before a measured ``tune`` (``tune_overhead``): start-up, not the tuner's overhead.
PRELOADED = ("pandas", "scipy.stats", "scipy.optimize", "sklearn.gaussian_process", "sklearn.linear_model")


def _owner(path: str):
    """The module, or the class in a module, at the dotted ``path``; None when this checkout has
    neither."""
    import importlib

    try:
        return importlib.import_module(path)
    except ModuleNotFoundError:
        module, _, name = path.rpartition(".")
        try:
            return getattr(importlib.import_module(module), name, None)
        except ModuleNotFoundError:
            return None


def tune_overhead(url: str, args: tuple[str, ...] = TUNE_ARGS) -> dict:
    """``autobatch tune --model small_cnn --dataset digits --n-trials 12 --epochs 2 --json`` run
    in-process through ``cli.main`` (the study's storage at ``url``): the issue's figure,
    everything outside training and evaluation = the JSON's ``wall_time_s`` less the probes (the
    noise-scale probe and the memory + throughput probe) and the training and evaluation of the
    trials and of the verification re-training(s) (``train_time_s + eval_time_s`` of each
    ``train_trial``, the reports to the storage inside it excluded, and the held-out evaluation),
    as a share of the latter and per trial; the same by component (``Breakdown``); statements
    and commits per trial (SQLAlchemy engine events, main thread, from the study being ready to
    the last trial). CPU: the process's CPU time less the probes' and the trainer's (each
    ``train_trial`` call's and held-out evaluation's thread CPU time). The numeric libraries
    the final fit runs on (``PRELOADED``) are imported before the run, as interpreter start-up
    is left out: a checkout that imports them with ``autobatch.tuning`` and one that imports
    them at the final fit then pay them alike."""
    import contextlib
    import importlib
    import io
    import time
    import uuid

    import optuna
    from bench_storage import Meter

    for module in PRELOADED:
        importlib.import_module(module)

    from autobatch import cli, tuning
    from autobatch.tuning import _objective

    meter, events = Meter(), []
    meter.install()
    parts = Breakdown()
    parts.count_statements()
    original = tuning.tune
    modules = {m: _owner(m) for m, _, _ in COMPONENTS}
    for module, function, label in COMPONENTS:
        if hasattr(modules[module], function):  # an older checkout may lack one
            parts.wrap(modules[module], function, label)
    _verify = importlib.import_module("autobatch.tuning._verify")

    def trained(result, frame) -> tuple[str, float]:
        reports = parts.wall.get("report + pruner", 0.0) - frame[-1]  # made inside this call
        return TRAINING, max(0.0, result.train_time_s + result.eval_time_s - reports)

    for owner, label in ((_objective, TRAINER_SETUP), (_verify, "verification: " + TRAINER_SETUP)):
        if hasattr(owner, "train_trial"):
            inner = owner.train_trial
            owner.train_trial = _mark_reports(parts, inner)
            parts.wrap(owner, "train_trial", label, split=trained)
    if hasattr(_verify, "evaluate"):
        parts.wrap(_verify, "evaluate", TRAINING)
    # every module not loaded yet; the probes' own (torch._dynamo at the first optimizer) stay theirs
    parts.wrap(importlib._bootstrap, "_find_and_load", IMPORTS, inside=PROBES)

    def tune(settings, callbacks=()):
        def listen(_run, event) -> None:
            events.append(event)
            if type(event).__name__ == "StudyReady":
                meter.on = True
        return original(settings, callbacks=[*callbacks, listen])
    tuning.tune = tune
    name = f"speed-{uuid.uuid4().hex[:8]}"
    out, cpu = io.StringIO(), time.process_time()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(["tune", *args, "--storage", url, "--study-name", name])
    cpu = time.process_time() - cpu
    tuning.tune = original
    parts.undo()
    if code != 0:
        raise RuntimeError(f"tune exited {code}")
    answer = json.loads(out.getvalue())
    finished = [e for e in events if type(e).__name__ == "TrialFinished"]
    probe = sum(parts.wall.get(k, 0.0) for k in PROBES)
    trainer = parts.wall.get(TRAINING, 0.0)
    imports = parts.wall.get(IMPORTS, 0.0)
    outside = answer["wall_time_s"] - probe - trainer - imports
    parts.book("other (events, progress, the rest)",
               answer["wall_time_s"] - sum(parts.wall.values()), 0.0)
    meter.on = False  # the clean-up below is the benchmark's, not the tuner's
    try:
        optuna.delete_study(study_name=name, storage=url)
    except Exception:
        pass
    n = len(finished)
    trainer_cpu = sum(v for k, v in parts.cpu.items() if k == TRAINING or TRAINER_SETUP in k)
    return {"backend": url.split(":", 1)[0].split("+", 1)[0], "trials": n, "wall_s": answer["wall_time_s"],
            "probe_s": probe, "trainer_s": trainer, "outside_s": outside, "share": outside / trainer,
            "imports_s": imports, "imports_cpu_s": parts.cpu.get(IMPORTS, 0.0),
            "outside_ms_per_trial": 1000 * outside / n, "statements_per_trial": meter.statements / n,
            "commits_per_trial": meter.commits / n, "process_cpu_s": cpu,
            "probe_cpu_s": sum(parts.cpu.get(k, 0.0) for k in PROBES), "trainer_cpu_s": trainer_cpu,
            "parts_wall_s": parts.wall, "parts_cpu_s": parts.cpu, "parts_statements": parts.statements,
            "parts_calls": parts.calls, "verified_runs": len(answer.get("verified_values") or ()),
            "trial_overhead_ms": [1000 * e.overhead_seconds for e in finished]}


def _mark_reports(parts: Breakdown, train_trial):
    """``train_trial`` noting, in the caller's frame, the report time booked before it started
    (so ``trained`` can tell the reports made inside the call)."""
    def call(*args, **kwargs):
        parts._stack[-1].append(parts.wall.get("report + pruner", 0.0))
        return train_trial(*args, **kwargs)
    return call


def tune_rows(code: pathlib.Path, urls: list[str], budget: str = "") -> list[dict]:
    """``tune_overhead`` of the checkout ``code`` (this one, or e.g. the main branch before this
    work) for each storage, each in a fresh interpreter; with ``budget``, of a study planned by
    that budget (``budget_args``) instead of 12 trials of 2 epochs."""
    import os
    import subprocess

    rows = []
    for url in urls:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(code)}
        done = subprocess.run([sys.executable, __file__, "--tune", url, "--code", str(code),
                               *(("--budget", budget) if budget else ())], env=env,
                              capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  tune {code.name} {rows[-1]['backend']}: {rows[-1]['share']:.0%}", file=sys.stderr, flush=True)
    return rows


def render_tune(rows: dict[str, list[dict]]) -> list[str]:
    lines = ["", "### Everything outside training and evaluation in `tune`", "",
             f"`autobatch tune {' '.join(TUNE_ARGS)}` in a fresh interpreter (`cli.main` in-process, so "
             "interpreter start-up is excluded), small_cnn on digits, one worker, per storage and checkout "
             f"{TUNE_ROUNDS} runs, interleaved (the checkouts' order rotating each round); median [min, max] over "
             "the runs. "
             "*Outside* = the JSON's `wall_time_s` less the probes and less training + evaluation. "
             "*Probes*: the gradient-noise probe (`measure_critical_batch`, which every `tune` runs first) and "
             "the memory + throughput probe, each timed whole. *Training + evaluation*: each `train_trial` "
             "call's own `train_time_s + eval_time_s` (the storage round trips of `trial.report` / "
             "`should_prune` made inside it taken out: they are overhead), for the 12 trials (the folk "
             "baseline's planned repeat is one of them) and for the verification re-training(s) after the "
             "search, whose held-out evaluation counts too. Everything else is outside: storage, sampler, "
             "pruner, model building, the trainer's set-up, loader start-up and memory profiling, the final "
             "fit, the dashboard note, bookkeeping. *Imports at first use*: modules loaded for the first time "
             "during the run (`importlib._bootstrap._find_and_load`, the outermost import timed; those made "
             "inside the probes stay the probes') are start-up, like interpreter start, and are "
             "booked apart: the share with them counted as outside is shown too. Wall-clock figures on a shared machine, so the same split "
             "in CPU seconds is given beside them: the process's CPU time less the probes' and the trainer's "
             "(each `train_trial` call's thread CPU time, its set-up and memory profiling included, so this "
             "share is a lower bound). Statements and commits per trial: SQLAlchemy engine events on the "
             "main thread from the study being ready to the end (the final answer's reads included), "
             "statements as the database runs them (an executemany counts each row: psycopg2 sends each). "
             "*before* = the main branch this work started from, measured the same way (`$AUTOBATCH_BENCH_BEFORE`).", "",
             "| code | storage | trials × runs | wall s | probes s | imports at first use s | training + evaluation s | "
             "outside s | outside per trial, ms | outside / (training + evaluation) (goal ≤25%) | the same, "
             "imports counted as outside | statements / trial | commits / trial "
             "| process CPU s | outside, CPU s | outside / trainer, CPU |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, group in rows.items():
        for backend in dict.fromkeys(r["backend"] for r in group):
            runs = [r for r in group if r["backend"] == backend]
            cell = lambda f, fmt: Spread.of([f(r) for r in runs]).show(fmt)  # noqa: E731
            lines.append(
                f"| {label} | {backend} | {runs[0]['trials']} × {len(runs)} | {cell(lambda r: r['wall_s'], '{:.1f}')} | "
                f"{cell(lambda r: r['probe_s'], '{:.1f}')} | {cell(lambda r: r.get('imports_s', 0.0), '{:.2f}')} | "
                f"{cell(lambda r: r['trainer_s'], '{:.2f}')} | {cell(lambda r: r['outside_s'], '{:.2f}')} | "
                f"{cell(lambda r: r['outside_ms_per_trial'], '{:.0f}')} | **{cell(lambda r: r['share'], '{:.0%}')}** | "
                f"{cell(lambda r: (r['outside_s'] + r.get('imports_s', 0.0)) / r['trainer_s'], '{:.0%}')} | "
                f"{cell(lambda r: r['statements_per_trial'], '{:.0f}')} | {cell(lambda r: r['commits_per_trial'], '{:.1f}')} | "
                f"{cell(lambda r: r['process_cpu_s'], '{:.1f}')} | {cell(_outside_cpu, '{:.2f}')} | "
                f"{cell(lambda r: _outside_cpu(r) / r['trainer_cpu_s'], '{:.0%}')} |")
    return lines + render_breakdown(rows)


def render_study(rows: list[dict]) -> list[str]:
    """The tuner's share of a whole study planned by its budget (``STUDY_BUDGET``)."""
    if not rows:
        return []
    lines = ["", f"### The tuner's share of a {STUDY_BUDGET} study", "",
             f"`autobatch tune {' '.join(budget_args(STUDY_BUDGET))}` measured as above (`cli.main` in a fresh "
             "interpreter, the same split), with the defaults a user gets: the planned trial count and length, "
             "baselines, pruning, verification. *Outside* = everything but the probes and training + evaluation; "
             f"the goal is outside ≤{SHARE_GOAL:.0%} of the study's wall time; the probes' share is shown beside it "
             "(a fixed cost of every study, not per-trial overhead).", "",
             "| storage | trials | wall s | probes s | imports at first use s | training + evaluation s | outside s | "
             f"outside / wall (goal ≤{SHARE_GOAL:.0%}) | the same, imports counted as outside | probes / wall | "
             "outside per trial, ms | outside / wall, CPU | goal |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        share = r["outside_s"] / r["wall_s"]
        cpu_share = _outside_cpu(r) / r["process_cpu_s"]
        imports = r.get("imports_s", 0.0)
        lines.append(f"| {r['backend']} | {r['trials']} | {r['wall_s']:.0f} | {r['probe_s']:.1f} | {imports:.1f} | "
                     f"{r['trainer_s']:.1f} | {r['outside_s']:.1f} | {share:.1%} | "
                     f"{(r['outside_s'] + imports) / r['wall_s']:.1%} | {r['probe_s'] / r['wall_s']:.1%} | "
                     f"{r['outside_ms_per_trial']:.0f} | {cpu_share:.1%} | {'met' if share <= SHARE_GOAL else 'not met'} |")
    return lines


def render_breakdown(rows: dict[str, list[dict]]) -> list[str]:
    """The runs above by component (``Breakdown``): wall seconds, and SQL statements per trial."""
    runs = []
    for label, group in rows.items():  # a code's runs on one storage: their mean
        for backend in dict.fromkeys(r["backend"] for r in group if "parts_wall_s" in r):
            same = [r for r in group if r["backend"] == backend and "parts_wall_s" in r]
            names_ = {k for r in same for k in r["parts_wall_s"]}
            runs.append((label, {"backend": backend, "trials": same[0]["trials"],
                                 "parts_wall_s": {k: sum(r["parts_wall_s"].get(k, 0.0) for r in same) / len(same)
                                                  for k in names_},
                                 "parts_statements": {k: sum(r["parts_statements"].get(k, 0) for r in same) / len(same)
                                                      for k in names_}}))
    if not runs:
        return []
    names: list[str] = []
    for _, r in runs:
        names += [k for k in sorted(r["parts_wall_s"], key=lambda k: -r["parts_wall_s"][k]) if k not in names]
    lines = ["", "By component (the same runs, the mean of each code's runs): each wrapped function's own wall time in seconds (time in a "
             "component it calls is that component's), and its SQL statements per trial in brackets. "
             "*Other* is the rest of `wall_time_s`: events, progress output, bookkeeping between the components.", "",
             "| component | booked as | " + " | ".join(f"{label} {r['backend']}" for label, r in runs) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in runs) + " |"]
    for name in names:
        kind = ("probe" if name in PROBES else TRAINING if name == TRAINING else
                "start-up" if name == IMPORTS else "outside")
        cells = []
        for _, r in runs:
            wall, sql = r["parts_wall_s"].get(name), r["parts_statements"].get(name, 0)
            cells.append("–" if wall is None else f"{wall:.2f}" + (f" ({sql / r['trials']:.1f})" if sql else ""))
        lines.append(f"| {name} | {kind} | " + " | ".join(cells) + " |")
    return lines


def _outside_cpu(row: dict) -> float:
    return row["process_cpu_s"] - row["probe_cpu_s"] - row["trainer_cpu_s"] - row.get("imports_cpu_s", 0.0)


# --- recommend: start-up and answer ----------------------------------------------------------------

def recommend_rows(url: str, sizes: tuple[int, ...], repeats: int, codes: dict[str, pathlib.Path]) -> list[dict]:
    """Studies of ``sizes`` trials made from one real ``tune`` of a tiny MLP (12 trials), its
    finished trials copied with their records up to the size (``Study.add_trial``), twice: one
    whose stored answer is the seed's (*fitted*: ``recommend`` fits), and a copy of it whose
    answer is published with its key as ``tune`` publishes one (*stored*: ``recommend`` returns
    it unfitted; a checkout without stored answers fits). Then, per size, answer and checkout in
    ``codes`` (interleaved), ``autobatch recommend --study-name S --storage URL --json`` in a
    fresh interpreter (wall time and the child's CPU time, ``resource.getrusage``), the same
    under ``python -X importtime`` (the import share), and the answer after its imports in one
    more interpreter (``--answer``: wall and CPU of each of ``repeats`` answers; *fitted*:
    ``recommend_study`` on the study opened as the command opens it; *stored*: ``recommend``
    opening the study)."""
    import contextlib
    import io
    import resource
    import subprocess
    import time
    import uuid

    import optuna

    from autobatch.recommender import answer_key, publish, recommend_study
    from autobatch.search import SearchSpace, TuneSettings
    from autobatch.tuning import tune

    seed = f"speed-seed-{uuid.uuid4().hex[:6]}"
    space = SearchSpace(batch_size_min=16, batch_size_max=128, lr_multiplier_min=0.5, lr_multiplier_max=2.0)
    with contextlib.redirect_stderr(io.StringIO()):
        tune(TuneSettings(model="mlp", dataset="digits", device="cpu", epochs=0.2, n_trials=12, storage=url,
                          study_name=seed, baselines=False, space=space))
    source = optuna.load_study(study_name=seed, storage=url)
    finished = [t for t in source.get_trials(deepcopy=False) if t.state.is_finished()]
    rows = []
    for n in sizes:
        name = f"{seed}-{n}"
        optuna.copy_study(from_study_name=seed, from_storage=url, to_storage=url, to_study_name=name)
        study = optuna.load_study(study_name=name, storage=url)
        for i in range(n - len(finished)):
            study.add_trial(finished[i % len(finished)])
        optuna.copy_study(from_study_name=name, from_storage=url, to_storage=url, to_study_name=f"{name}-stored")
        stored = optuna.load_study(study_name=f"{name}-stored", storage=url)
        key = answer_key(stored)  # before the fit, as tune takes it
        publish(stored, recommend_study(stored), key)
        for answer, study_name in (("fitted", name), ("stored", f"{name}-stored")):
            command = ["-m", "autobatch", "recommend", "--study-name", study_name, "--storage", url, "--json"]
            got = {label: {"wall_s": [], "cpu_s": [], "import_s": []} for label in codes}
            for _ in range(repeats):
                for label, code in codes.items():
                    env = _user_env(code)
                    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
                    # from the checkout's folder: ``python -m`` puts the working directory first on the path
                    subprocess.run([sys.executable, *command], env=env, check=True, capture_output=True, cwd=code)
                    got[label]["wall_s"].append(time.perf_counter() - started)
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    got[label]["cpu_s"].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
                    trace = subprocess.run([sys.executable, "-X", "importtime", *command], env=env, check=True,
                                           capture_output=True, text=True, cwd=code).stderr
                    got[label]["import_s"].append(_import_seconds(trace))
            for label, code in codes.items():
                env = _user_env(code)
                done = subprocess.run([sys.executable, __file__, "--answer", url, study_name, str(repeats), answer,
                                       "--code", str(code)], env=env, check=True, capture_output=True, text=True)
                got[label].update(json.loads(done.stdout.strip().splitlines()[-1]))
                rows.append({"code": label, "trials": n, "answer": answer, **got[label]})
                print(f"  recommend {label} {n} {answer}: {statistics.median(got[label]['wall_s']):.2f}s",
                      file=sys.stderr, flush=True)
    return rows


def _user_env(code: pathlib.Path) -> dict[str, str]:
    """The environment a user runs ``recommend`` in: the checkout ``code`` on the path, the
    thread pools' defaults (no ``OMP_NUM_THREADS``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return {**env, "PYTHONPATH": str(code)}


def _answer_main(url: str, name: str, repeats: int, answer: str) -> None:
    """The answer ``repeats`` times after the imports (the fit's included): JSON of the wall and
    CPU seconds of each. ``answer``: ``fitted``, ``recommend_study`` on the study opened as
    ``autobatch recommend`` opens it (``open_study``, read-only: its trials are read inside the
    timed answer); ``stored``, ``recommend(name, url)`` (opening the study, then its stored answer
    or a fit)."""
    import time

    from autobatch.recommender import recommend, recommend_from_frame, recommend_study  # noqa: F401 - imports
    from autobatch.storage import open_study

    from autobatch.recommender import _accuracy

    answers, cpus = [], []
    for _ in range(repeats):
        getattr(_accuracy, "forget_fits", lambda: None)()  # each answer fits: none reuses the last one's fit
        study = open_study(url, name, read_only=True) if answer == "fitted" else None
        started, cpu = time.perf_counter(), time.process_time()
        if study is not None:
            recommend_study(study)
        else:
            recommend(name, storage=url)
        answers.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)
    print(json.dumps({"answer_s": answers, "answer_cpu_s": cpus}))


def _import_seconds(trace: str) -> float:
    """Seconds of imports in a ``-X importtime`` trace: the top-level modules' cumulative times."""
    total = 0
    for line in trace.splitlines():
        parts = line.split("|")
        if line.startswith("import time:") and len(parts) == 3 and parts[1].strip().isdigit():
            name = parts[2]
            if name.startswith(" ") and not name.startswith("  "):
                total += int(parts[1])
    return total / 1e6


def render_recommend(rows: list[dict]) -> list[str]:
    from _bench_common import show

    lines = ["", "### `autobatch recommend`: start-up and answer", "",
             "Studies made from one real `tune` of a tiny MLP on digits (12 trials, SQLite), its finished "
             "trials copied with their records up to the size. *Answer*: **fitted**, the study's stored answer is "
             "another study's (its key does not hold), so `recommend` fits; **stored**, a copy whose answer was "
             "published with its key as `tune` publishes one, so `recommend` returns it unfitted (a checkout "
             "without stored answers fits). *Command*: `autobatch recommend --study-name S "
             "--storage URL --json` in a fresh interpreter, wall and the child's CPU time; *imports*: the "
             "top-level modules' cumulative times under `python -X importtime` (the same command); *answer "
             "s*: after the imports (the fit's included), fitted: `recommend_study` on the study opened as "
             "`autobatch recommend` opens it (`open_study`, read-only; the study's trials are read from the "
             "storage inside the answer), stored: `recommend(S, URL)` (opening "
             "the study too); wall and CPU. Median [min, max] over the repeats; "
             "the checkouts interleaved; the thread pools at their defaults, as a user runs it. Goals: the command under 2 s, the "
             "answer under 0.5 s on 200 trials.", "",
             "| code | trials | answer | command wall s | command CPU s | imports s | answer wall s | answer CPU s |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['code']} | {r['trials']} | {r.get('answer', 'fitted')} | "
                     + " | ".join(show(Spread.of(r[k])) for k in ("wall_s", "cpu_s", "import_s", "answer_s", "answer_cpu_s"))
                     + " |")
    return lines


def run(quick: bool, out_dir: pathlib.Path) -> str:
    import tempfile

    load = load_average()
    tmp = pathlib.Path(tempfile.mkdtemp())
    trainer = {"after": trainer_rows(quick)}
    if BEFORE.exists() and not _same_trainer(BEFORE, ROOT):
        trainer = {"before": trainer_rows_of(BEFORE, quick), **trainer}
    tune_codes = {"before": BEFORE, "after": ROOT} if BEFORE.exists() else {"after": ROOT}
    tune: dict[str, list[dict]] = {label: [] for label in tune_codes}
    for round_ in range(TUNE_ROUNDS):  # the checkouts interleaved, their order rotating each round
        order = list(tune_codes.items())
        order = order[round_ % len(order):] + order[:round_ % len(order)]
        for backend in ("sqlite", "postgresql"):
            for label, code in order:
                url = f"sqlite:///{tmp / f'{label}-{round_}.db'}" if backend == "sqlite" else POSTGRES
                tune[label] += tune_rows(code, [url])
    study = tune_rows(ROOT, [f"sqlite:///{tmp / 'study.db'}"], budget=STUDY_BUDGET)
    codes = {"before": BEFORE, "after": ROOT} if BEFORE.exists() else {"after": ROOT}
    recommend = recommend_rows(f"sqlite:///{tmp / 'recommend.db'}", (60, 200), 3 if quick else 5, codes)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_speed.json").write_text(json.dumps({"trainer": trainer, "tune": tune, "study": study,
                                                         "recommend": recommend}, indent=1))
    lines = ["## Speed: the trainer against a plain loop, the tuner outside training, `recommend`'s start", "",
             f"`scripts/bench_speed.py`{' --quick' if quick else ''}; load average at the start: {load}, at the "
             f"end: {load_average()}.", ""]
    lines += render_trainer(trainer) + render_tune(tune) + render_study(study) + render_recommend(recommend)
    return "\n".join(lines) + "\n"


POSTGRES = os.environ.get("AUTOBATCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
BEFORE = pathlib.Path(os.environ.get("AUTOBATCH_BENCH_BEFORE", "/nonexistent"))  # a checkout to compare with


def main() -> None:
    if sys.argv[1:2] == ["--trainer"]:  # trainer_rows of the checkout --code
        _trainer_main(sys.argv[2] == "quick")
        return
    if sys.argv[1:2] == ["--answer"]:  # recommend_study's own time, of the checkout --code
        _answer_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--tune":  # one tune_overhead, of the checkout --code
        budget = sys.argv[sys.argv.index("--budget") + 1] if "--budget" in sys.argv else ""
        print(json.dumps(tune_overhead(sys.argv[2], budget_args(budget) if budget else TUNE_ARGS)))
        return
    bench_main(run, __doc__)


if __name__ == "__main__":
    main()
