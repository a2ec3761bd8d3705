"""Speed of the tuner's own parts: the trainer against a plain PyTorch loop, and how fast
``autobatch recommend`` starts and answers.

    python scripts/bench_speed.py [--quick] [--out DIR]
    python scripts/benchmark.py --only speed

Trainer: ``compare_throughput`` (``scripts/_bench_common.py``): training samples per CPU-second
of this thread (``time.thread_time``, one torch thread) for ``train_trial`` and for the loop
written out there, the same model, initialisation, data, optimizer, lr schedule and batch;
interleaved rounds, the plain loop run twice per round for the noise floor. ``recommend``:
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
_CODE = sys.argv[sys.argv.index("--code") + 1] if sys.argv[1:2] in (["--tune"], ["--trainer"]) else str(ROOT)
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
            steps = steps // 2 if quick and model == "resnet18" else steps
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
        "in the same round; a ratio within its range is a tie. *before*: the main branch this work "
        "started from, whose trainer always measured memory (both its columns are that trainer).", "",
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


def tune_overhead(url: str) -> dict:
    """``autobatch tune --model small_cnn --dataset digits --n-trials 12 --epochs 2 --json`` run
    in-process through ``cli.main`` (the study's storage at ``url``): the issue's figure,
    everything outside training and evaluation = the JSON's ``wall_time_s`` less the probe
    (``ProbeDone.seconds``) and the trials' own ``train_time_s + eval_time_s``, as a share of the
    latter and per trial; statements and commits per trial (SQLAlchemy engine events, main
    thread, from the study being ready to the last trial); the tuner's CPU seconds outside the
    trainer are not separable, so the process CPU time is given too."""
    import contextlib
    import io
    import time
    import uuid

    import optuna
    from bench_storage import Meter

    from autobatch import cli, tuning
    from autobatch.tuning import _objective

    meter, events, marks, trainer_cpu = Meter(), [], {}, []
    meter.install()
    original, train_trial = tuning.tune, _objective.train_trial

    def timed_train_trial(*args, **kwargs):
        begun = time.thread_time()
        try:
            return train_trial(*args, **kwargs)
        finally:
            trainer_cpu.append(time.thread_time() - begun)

    def tune(settings, callbacks=()):
        def listen(_run, event) -> None:
            events.append(event)
            marks.setdefault(type(event).__name__, time.process_time())
            if type(event).__name__ == "StudyReady":
                meter.on = True
        return original(settings, callbacks=[*callbacks, listen])
    tuning.tune, _objective.train_trial = tune, timed_train_trial
    name = f"speed-{uuid.uuid4().hex[:8]}"
    out, cpu = io.StringIO(), time.process_time()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(["tune", *TUNE_ARGS, "--storage", url, "--study-name", name])
    cpu = time.process_time() - cpu
    tuning.tune, _objective.train_trial = original, train_trial
    if code != 0:
        raise RuntimeError(f"tune exited {code}")
    answer = json.loads(out.getvalue())
    finished = [e for e in events if type(e).__name__ == "TrialFinished"]
    probe = sum(e.seconds for e in events if type(e).__name__ == "ProbeDone")
    trainer = sum(e.train_seconds + e.eval_seconds for e in finished)
    outside = answer["wall_time_s"] - probe - trainer
    try:
        optuna.delete_study(study_name=name, storage=url)
    except Exception:
        pass
    n = len(finished)
    return {"backend": url.split(":", 1)[0].split("+", 1)[0], "trials": n, "wall_s": answer["wall_time_s"],
            "probe_s": probe, "trainer_s": trainer, "outside_s": outside, "share": outside / trainer,
            "outside_ms_per_trial": 1000 * outside / n, "statements_per_trial": meter.statements / n,
            "commits_per_trial": meter.commits / n, "process_cpu_s": cpu,
            "probe_cpu_s": marks.get("ProbeDone", 0.0) - marks.get("ProbeStarted", 0.0),
            "trainer_cpu_s": sum(trainer_cpu),
            "trial_overhead_ms": [1000 * e.overhead_seconds for e in finished]}


def tune_rows(code: pathlib.Path, urls: list[str]) -> list[dict]:
    """``tune_overhead`` of the checkout ``code`` (this one, or e.g. the main branch before this
    work) for each storage, each in a fresh interpreter."""
    import os
    import subprocess

    rows = []
    for url in urls:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(code)}
        done = subprocess.run([sys.executable, __file__, "--tune", url, "--code", str(code)], env=env,
                              capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  tune {code.name} {rows[-1]['backend']}: {rows[-1]['share']:.0%}", file=sys.stderr, flush=True)
    return rows


def render_tune(rows: dict[str, list[dict]]) -> list[str]:
    lines = ["", "### Everything outside training and evaluation in `tune`", "",
             f"`autobatch tune {' '.join(TUNE_ARGS)}` in a fresh interpreter (`cli.main` in-process, so "
             "interpreter start-up is excluded), one per storage, small_cnn on digits, one worker. "
             "*Outside* = the JSON's `wall_time_s` less the probe (`ProbeDone.seconds`) and the trials' own "
             "`train_time_s + eval_time_s`: storage, sampler, pruner, model building, loader start-up, the "
             "trainer's memory profiling, the final fit, bookkeeping. Wall-clock figures on a shared machine: "
             "so the same split in CPU seconds is given beside them: the process's CPU time less the probe's and less "
             "the trainer's (each `train_trial` call's thread CPU time, its set-up and memory profiling included, "
             "so this share is a lower bound). Statements and commits per trial: SQLAlchemy "
             "engine events on the main thread from the study being ready to the last trial (the final "
             "answer's reads included). *before* = the main branch this work started from.", "",
             "| code | storage | trials | wall s | probe s | training + evaluation s | outside s | outside per "
             "trial, ms | outside / (training + evaluation) (goal ≤25%) | statements / trial | commits / trial "
             "| process CPU s | outside, CPU s | outside / trainer, CPU |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, group in rows.items():
        for r in group:
            lines.append(f"| {label} | {r['backend']} | {r['trials']} | {r['wall_s']:.1f} | {r['probe_s']:.1f} | "
                         f"{r['trainer_s']:.1f} | {r['outside_s']:.1f} | {r['outside_ms_per_trial']:.0f} | "
                         f"{r['share']:.0%} | {r['statements_per_trial']:.0f} | {r['commits_per_trial']:.1f} | "
                         f"{r['process_cpu_s']:.1f} | {_outside_cpu(r):.1f} | {_outside_cpu(r) / r['trainer_cpu_s']:.0%} |")
    return lines


def _outside_cpu(row: dict) -> float:
    return row["process_cpu_s"] - row["probe_cpu_s"] - row["trainer_cpu_s"]


# --- recommend: start-up and answer ----------------------------------------------------------------

def recommend_rows(url: str, sizes: tuple[int, ...], repeats: int) -> list[dict]:
    """Studies of ``sizes`` trials made from one real ``tune`` of a tiny MLP (12 trials), its
    finished trials copied with their records up to the size (``Study.add_trial``); then, per
    size, ``autobatch recommend --study-name S --storage URL --json`` in a fresh interpreter
    (wall time and the child's CPU time, ``resource.getrusage``), the same under
    ``python -X importtime`` (the import share), and ``recommend_study`` in this process after
    its imports (wall and CPU)."""
    import contextlib
    import io
    import os
    import resource
    import subprocess
    import time
    import uuid

    import optuna

    from autobatch.recommender import recommend_study
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
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        command = ["-m", "autobatch", "recommend", "--study-name", name, "--storage", url, "--json"]
        walls, cpus, imports, answers, answer_cpus = [], [], [], [], []
        for _ in range(repeats):
            before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            subprocess.run([sys.executable, *command], env=env, check=True, capture_output=True)
            walls.append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            trace = subprocess.run([sys.executable, "-X", "importtime", *command], env=env, check=True,
                                   capture_output=True, text=True).stderr
            imports.append(_import_seconds(trace))
            study = optuna.load_study(study_name=name, storage=url)
            started, cpu = time.perf_counter(), time.process_time()
            recommend_study(study)
            answers.append(time.perf_counter() - started)
            answer_cpus.append(time.process_time() - cpu)
        rows.append({"trials": len(study.get_trials(deepcopy=False)), "wall_s": walls, "cpu_s": cpus,
                     "import_s": imports, "answer_s": answers, "answer_cpu_s": answer_cpus})
        print(f"  recommend {n}: {statistics.median(walls):.2f}s", file=sys.stderr, flush=True)
    return rows


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
             "trials copied with their records up to the size. *Command*: `autobatch recommend --study-name S "
             "--storage URL --json` in a fresh interpreter, wall and the child's CPU time; *imports*: the "
             "top-level modules' cumulative times under `python -X importtime` (the same command); *answer*: "
             "`recommend_study` on the loaded study in a warm process (wall and CPU). Median [min, max] over "
             "the repeats. Goals: the command under 2 s, the answer under 0.5 s on 200 trials.", "",
             "| trials | command wall s | command CPU s | imports s | answer wall s | answer CPU s |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['trials']} | " + " | ".join(show(Spread.of(r[k])) for k in
                                                       ("wall_s", "cpu_s", "import_s", "answer_s", "answer_cpu_s"))
                     + " |")
    return lines


def run(quick: bool, out_dir: pathlib.Path) -> str:
    import tempfile

    load = load_average()
    tmp = pathlib.Path(tempfile.mkdtemp())
    trainer = {"after": trainer_rows(quick)}
    if BEFORE.exists():
        trainer = {"before": trainer_rows_of(BEFORE, quick), **trainer}
    tune = {"after": tune_rows(ROOT, [f"sqlite:///{tmp / 'after.db'}", POSTGRES])}
    if BEFORE.exists():
        tune = {"before": tune_rows(BEFORE, [f"sqlite:///{tmp / 'before.db'}", POSTGRES]), **tune}
    recommend = recommend_rows(f"sqlite:///{tmp / 'recommend.db'}", (60, 200), 3 if quick else 5)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_speed.json").write_text(json.dumps({"trainer": trainer, "tune": tune,
                                                         "recommend": recommend}, indent=1))
    lines = ["## Speed: the trainer against a plain loop, the tuner outside training, `recommend`'s start", "",
             f"`scripts/bench_speed.py`{' --quick' if quick else ''}; load average at the start: {load}, at the "
             f"end: {load_average()}.", ""]
    lines += render_trainer(trainer) + render_tune(tune) + render_recommend(recommend)
    return "\n".join(lines) + "\n"


POSTGRES = os.environ.get("AUTOBATCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
BEFORE = pathlib.Path(os.environ.get("AUTOBATCH_BENCH_BEFORE", "/nonexistent"))  # a checkout to compare with


def main() -> None:
    if sys.argv[1:2] == ["--trainer"]:  # trainer_rows of the checkout --code
        _trainer_main(sys.argv[2] == "quick")
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--tune":  # one tune_overhead, of the checkout --code
        print(json.dumps(tune_overhead(sys.argv[2])))
        return
    bench_main(run, __doc__)


if __name__ == "__main__":
    main()
