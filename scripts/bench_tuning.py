"""Headline benchmark: autobatch against an exhaustive grid and the usual baselines, at equal compute.

    python scripts/bench_tuning.py [--quick] [--out DIR] [--reuse-grid]
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
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import math
import pathlib
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402

from _bench_common import Spread, compare_throughput, load_average, show  # noqa: E402
from autobatch import records as R  # noqa: E402
from autobatch.errors import AutobatchError  # noqa: E402
from autobatch.recommender import recommend_study  # noqa: E402
from autobatch.records import TrialConfig  # noqa: E402
from autobatch.search import distributions  # noqa: E402
from autobatch.search import TuneSettings  # noqa: E402
from autobatch.search import SearchSpace  # noqa: E402
from autobatch.train import EVAL_BATCH_FACTOR, evaluate, train_trial  # noqa: E402
from autobatch.search import FOLK_BATCH
from autobatch.tuning import tune  # noqa: E402
from autobatch.workloads import Workload, build_model, load_workload  # noqa: E402

CPU = torch.device("cpu")
THREADS = 1           # torch threads for everything: steadier timings on a shared machine
SPLIT_SEED = 0        # the grid's (and every re-training's) train/validation split
THROUGHPUT_REPEATS = 3
TPE_SEED_OFFSET = 100
TOP_FOR_NOISE = 10
PLOT = ROOT / "docs" / "regret_vs_compute.png"
AUTOBATCH, RANDOM, TPE, LARGEST, FOLK = ("autobatch", "random search", "Optuna TPE",
                                         "largest batch + linear lr", "folk default (32)")
METHODS = (AUTOBATCH, RANDOM, TPE, LARGEST, FOLK)


# --- tasks and configurations --------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    batch_size: int
    accumulation_steps: int
    multiplier: float  # lr = multiplier * base_lr * effective / reference (linear rule)

    @property
    def key(self) -> tuple:
        return (self.batch_size, self.accumulation_steps, round(math.log(self.multiplier), 6))

    def label(self) -> str:
        return f"{self.batch_size}x{self.accumulation_steps}, m={self.multiplier:.3g}"


@dataclass(frozen=True, kw_only=True)
class Task:
    name: str
    model: str
    dataset: str
    space: SearchSpace
    n_multipliers: int              # log-spaced over the space's multiplier range
    epochs: float                   # trial length for the grid, every tuner and re-training
    grid_seeds: tuple[int, ...]
    repeats: int                    # tuner seeds per method
    budgets: tuple[float, ...]      # fractions of the grid's compute
    throughput_batches: tuple[int, ...]

    @property
    def multipliers(self) -> tuple[float, ...]:
        # np.geomspace as the recommender's candidates use, so its answers can hit grid points.
        return tuple(float(m) for m in np.geomspace(self.space.lr_multiplier_min,
                                                     self.space.lr_multiplier_max, self.n_multipliers))

    def configs(self) -> list[Config]:
        return [Config(b, a, m) for b in self.space.batch_sizes
                for a in self.space.accumulation_steps for m in self.multipliers]

    def learning_rate(self, config: Config) -> float:
        return self.space.learning_rate(config.multiplier, config.batch_size * config.accumulation_steps)


def tasks(quick: bool) -> list[Task]:
    if quick:
        return [
            Task(name="small_cnn / digits", model="small_cnn", dataset="digits",
                 space=SearchSpace(batch_size_min=8, batch_size_max=256, accumulation_steps=(1, 2, 4)),
                 n_multipliers=5, epochs=2.0, grid_seeds=(0, 1), repeats=2, budgets=(0.1, 0.2),
                 throughput_batches=(8, 128)),
            Task(name="resnet18 / digits", model="resnet18", dataset="digits",
                 space=SearchSpace(batch_size_min=16, batch_size_max=128, accumulation_steps=(1, 2, 4)),
                 n_multipliers=5, epochs=0.5, grid_seeds=(0,), repeats=2, budgets=(0.1, 0.2),
                 throughput_batches=(32,)),
        ]
    return [
        Task(name="small_cnn / digits", model="small_cnn", dataset="digits",
             space=SearchSpace(batch_size_min=8, batch_size_max=256, accumulation_steps=(1, 2, 4)),
             n_multipliers=5, epochs=3.0, grid_seeds=(0, 1, 2), repeats=5, budgets=(0.1, 0.2, 0.4),
             throughput_batches=(8, 128)),
        Task(name="resnet18 / digits", model="resnet18", dataset="digits",
             space=SearchSpace(batch_size_min=16, batch_size_max=256, accumulation_steps=(1, 2, 4)),
             n_multipliers=5, epochs=1.0, grid_seeds=(0, 1), repeats=3, budgets=(0.1, 0.2),
             throughput_batches=(32, 128)),
    ]


# --- the ground-truth protocol ---------------------------------------------------------------

def train_run(task: Task, workload: Workload, config: Config, *, seed: int, train_samples: int,
              checkpoints: tuple[int, ...]) -> tuple[R.TrialResult, float]:
    """One training run with autobatch's trainer; returns the result and the final validation
    accuracy (for a run the trainer stopped as diverged: the model where it stopped)."""
    torch.manual_seed(seed)
    model = build_model(task.model, num_classes=workload.num_classes, input_shape=workload.input_shape)
    trial_config = TrialConfig(batch_size=config.batch_size, accumulation_steps=config.accumulation_steps,
                               learning_rate=task.learning_rate(config))
    result = train_trial(model, workload, trial_config, train_samples=train_samples,
                         checkpoints=checkpoints, device=CPU, seed=seed)
    if result.stop_reason == R.STOP_COMPLETED:
        return result, result.final_accuracy
    accuracy, _ = evaluate(model, workload.val, config.batch_size * EVAL_BATCH_FACTOR, CPU)
    return result, accuracy


@dataclass
class Measured:
    """A configuration under the ground-truth protocol, one entry per grid seed."""

    config: Config
    accuracies: list[float]
    epoch_times: list[float]   # train-split size / throughput (evaluation excluded)
    stops: list[str]
    on_grid: bool = True

    @property
    def accuracy(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def epoch_time(self) -> float:
        return statistics.fmean(self.epoch_times)


class GroundTruth:
    """The grid, and every other configuration re-trained the same way (cached)."""

    def __init__(self, task: Task, workload: Workload, train_samples: int) -> None:
        self.task, self.workload, self.train_samples = task, workload, train_samples
        self.grid: dict[tuple, Measured] = {}
        self.extra: dict[tuple, Measured] = {}
        self.seconds = 0.0
        self.retrain_seconds = 0.0

    def train(self, config: Config, on_grid: bool) -> Measured:
        measured = Measured(config, [], [], [], on_grid)
        for seed in self.task.grid_seeds:
            result, accuracy = train_run(self.task, self.workload, config, seed=seed,
                                         train_samples=self.train_samples,
                                         checkpoints=(self.train_samples,))
            measured.accuracies.append(accuracy)
            measured.epoch_times.append(len(self.workload.train) / result.throughput
                                        if result.throughput > 0 else math.nan)
            measured.stops.append(result.stop_reason)
        return measured

    def run_grid(self, progress: Callable[[str], None]) -> None:
        started = time.perf_counter()
        configs = self.task.configs()
        for i, config in enumerate(configs, 1):
            self.grid[config.key] = self.train(config, on_grid=True)
            if i % 15 == 0 or i == len(configs):
                progress(f"grid {i}/{len(configs)} ({time.perf_counter() - started:.0f}s)")
        self.seconds = time.perf_counter() - started

    def measure(self, config: Config) -> Measured:
        if config.key in self.grid:
            return self.grid[config.key]
        if config.key not in self.extra:
            started = time.perf_counter()
            self.extra[config.key] = self.train(config, on_grid=False)
            self.retrain_seconds += time.perf_counter() - started
        return self.extra[config.key]

    @property
    def best(self) -> Measured:
        return max(self.grid.values(), key=lambda m: m.accuracy)

    def regret(self, config: Config) -> float:
        """Accuracy points below the grid's best."""
        return 100 * (self.best.accuracy - self.measure(config).accuracy)

    def to_json(self) -> list[dict]:
        return [dict(asdict(m), accuracy=m.accuracy, epoch_time=m.epoch_time)
                for m in [*self.grid.values(), *self.extra.values()]]

    def load_grid(self, rows: list[dict]) -> None:
        for row in rows:
            measured = Measured(Config(**row["config"]), row["accuracies"], row["epoch_times"],
                                row["stops"], row["on_grid"])
            if measured.on_grid:
                self.grid[measured.config.key] = measured


def grid_fingerprint(task: Task) -> dict:
    return {"model": task.model, "dataset": task.dataset, "space": repr(task.space),
            "multipliers": task.multipliers, "epochs": task.epochs, "seeds": task.grid_seeds,
            "torch": torch.__version__, "threads": THREADS}


# --- the methods ---------------------------------------------------------------------------

@dataclass(kw_only=True)
class Answer:
    """A method's answer at one budget."""

    method: str
    budget: Optional[float]         # fraction of grid compute asked for (None: no search)
    repeat: int
    compute_samples: int
    trials: int
    pick: Config
    picked_by: str
    extra: dict = field(default_factory=dict)


def trial_config(params: dict) -> Config:
    return Config(2 ** int(params[R.PARAM_BATCH_LOG2]), 2 ** int(params[R.PARAM_ACCUM_LOG2]),
                  float(params[R.PARAM_LR_MULTIPLIER]))


def search_baseline(kind: str, task: Task, repeat: int, grid_compute: int, train_samples: int,
                    progress: Callable[[str], None]) -> list[Answer]:
    """Random search or Optuna's default TPE over the same space: every trial trains the full
    trial length (no pruning, no memory model), the answer is the best observed trial. Data split
    and trial seeds follow the same rule as autobatch's (split = tuner seed, trial seed = tuner
    seed + trial number)."""
    # TPE's start-up trials come from a RandomSampler with TPE's seed: another seed than random
    # search's, or the two would train the very same first ten configurations.
    sampler = (optuna.samplers.RandomSampler(seed=repeat) if kind == RANDOM
               else optuna.samplers.TPESampler(seed=TPE_SEED_OFFSET + repeat))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    workload = load_workload(task.dataset, seed=repeat)
    space = distributions(task.space)
    used, answers = 0, []
    for fraction in task.budgets:
        budget = fraction * grid_compute
        while budget - used >= train_samples / 2:
            trial = study.ask(space)
            result, accuracy = train_run(task, workload, trial_config(trial.params),
                                         seed=repeat + trial.number, train_samples=train_samples,
                                         checkpoints=(train_samples,))
            used += result.samples_seen
            study.tell(trial, accuracy)
        best = study.best_trial
        answers.append(Answer(method=kind, budget=fraction, repeat=repeat, compute_samples=used,
                              trials=len(study.trials), pick=trial_config(best.params),
                              picked_by="best observed trial"))
    progress(f"{kind} repeat {repeat}: {len(study.trials)} trials")
    return answers


class _BudgetReached(Exception):
    """Raised from ``say`` after the trial that reaches a budget: stops ``tune`` as Ctrl-C does."""


def autobatch_run(task: Task, repeat: int, grid_compute: int, train_samples: int,
                  studies: pathlib.Path, progress: Callable[[str], None]) -> list[Answer]:
    """``tune`` as a user runs it (SQLite storage, median pruner, its baselines, default TPE),
    stopped after the trial that brings the budget within half a trial (``say`` raises, as a
    Ctrl-C would: finished trials are kept), resumed for the next budget. The answer at each
    budget is ``recommend_study(priority="accuracy")``, timed as part of the overhead."""
    name = f"bench-{task.model}-{repeat}"
    path = studies / f"{name}.db"
    path.unlink(missing_ok=True)  # a fresh study, not a resumed one from an earlier run
    storage = f"sqlite:///{path.resolve()}"
    events: list[tuple[float, str]] = []
    timing = collections.Counter()
    used, answers, study, reader = 0, [], None, None

    def samples_used() -> int:
        nonlocal reader
        reader = reader or optuna.storages.RDBStorage(storage)  # the benchmark's own connection
        trials = optuna.load_study(study_name=name, storage=reader).get_trials(deepcopy=False)
        return sum(t.user_attrs.get(R.SAMPLES_SEEN, 0) for t in trials)

    for fraction in task.budgets:
        budget = fraction * grid_compute

        def say(message: str) -> None:
            nonlocal used
            events.append((time.perf_counter(), message))
            if message.startswith("trial "):
                started = time.perf_counter()
                used = samples_used()
                timing["harness_s"] += time.perf_counter() - started  # not the tuner's time
                if budget - used < train_samples / 2:
                    raise _BudgetReached

        while budget - used >= train_samples / 2:
            before = used
            # Enough queued slots for the budget left even if most trials are pruned early.
            slots = 2 * math.ceil((budget - used) / train_samples) + 2
            settings = TuneSettings(model=task.model, dataset=task.dataset, epochs=task.epochs,
                                    n_trials=slots, storage=storage, study_name=name, seed=repeat,
                                    device="cpu", space=task.space)
            started = time.perf_counter()
            try:
                tune(settings, say)
                timing["runs_to_end"] += 1  # slots ran out first: ended with tune's own answer
            except _BudgetReached:
                pass
            timing["wall_s"] += time.perf_counter() - started
            timing["tune_calls"] += 1
            used = samples_used()
            if used == before:
                break  # nothing trained: do not loop for ever
        study = optuna.load_study(study_name=name, storage=reader or storage)
        trials = study.get_trials()
        started = time.perf_counter()
        try:
            rec = recommend_study(study, priority="accuracy")
            pick = Config(rec.batch_size, rec.accumulation_steps, rec.lr_multiplier)
            picked_by = "trade-off model"
            predicted = {"predicted_accuracy": rec.predicted_accuracy,
                         "accuracy_interval": list(rec.accuracy_interval),
                         "predicted_epoch_time_s": rec.predicted_epoch_time_s}
        except AutobatchError:  # too few completed trials to fit: what tune itself falls back to
            pick, picked_by, predicted = trial_config(study.best_trial.params), "best trial", {}
        timing["fit_s"] += time.perf_counter() - started
        probe_start = next((t for t, m in events if m.startswith("probing memory")), None)
        probe_end = next((t for t, m in events if m.startswith("plan:")), None)
        trained = [t for t in trials if t.user_attrs.get(R.TRAIN_TIME_S) is not None]
        extra = dict(timing, **predicted,
                     tuner_s=timing["wall_s"] - timing["harness_s"] + timing["fit_s"],
                     probe_s=(probe_end - probe_start) if None not in (probe_start, probe_end) else 0.0,
                     memory_probe_s=study.user_attrs.get(R.STUDY_MEMORY_MODEL, {}).get("seconds", 0.0),
                     train_s=sum(t.user_attrs[R.TRAIN_TIME_S] for t in trained),
                     eval_s=sum(t.user_attrs.get(R.EVAL_TIME_S) or 0.0 for t in trained),
                     pruned=sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
                     memory_errors=memory_errors(trials))
        answers.append(Answer(method=AUTOBATCH, budget=fraction, repeat=repeat, compute_samples=used,
                              trials=len(trained), pick=pick, picked_by=picked_by, extra=extra))
    progress(f"autobatch repeat {repeat}: {answers[-1].trials} trials, {timing['tune_calls']} tune "
             f"calls, {timing['wall_s']:.0f}s")
    return answers


def memory_errors(trials) -> list[float]:
    """(predicted - measured) / measured peak bytes of every trained trial."""
    out = []
    for t in trials:
        predicted, measured = (t.user_attrs.get(R.PREDICTED_PEAK_BYTES),
                               t.user_attrs.get(R.MEASURED_PEAK_BYTES))
        if predicted is not None and measured:
            out.append((predicted - measured) / measured)
    return out


def fixed_answers(task: Task, train_samples: int) -> list[Answer]:
    """No search: one training run's worth of compute each."""
    sizes = task.space.batch_sizes
    folk = min(max(FOLK_BATCH, sizes[0]), sizes[-1])
    return [Answer(method=LARGEST, budget=None, repeat=0, compute_samples=train_samples, trials=1,
                   pick=Config(sizes[-1], 1, 1.0), picked_by="rule (no probe cap on CPU: largest in space)"),
            Answer(method=FOLK, budget=None, repeat=0, compute_samples=train_samples, trials=1,
                   pick=Config(folk, 1, 1.0), picked_by="rule")]


# --- one task --------------------------------------------------------------------------------

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


# --- summaries -----------------------------------------------------------------------------

def rows_by_method(result: dict) -> list[dict]:
    """One row per (method, budget): spreads over repeats."""
    truth, grid_compute = result["truth"], result["grid_compute"]
    groups: dict[tuple, list[Answer]] = collections.defaultdict(list)
    for answer in result["answers"]:
        groups[(answer.method, answer.budget)].append(answer)
    rows = []
    for (method, budget), group in sorted(groups.items(), key=lambda kv: (METHODS.index(kv[0][0]),
                                                                          kv[0][1] or 0)):
        picks = collections.Counter((a.pick.batch_size, a.pick.accumulation_steps) for a in group)
        (b, acc), count = picks.most_common(1)[0]
        mults = [a.pick.multiplier for a in group
                 if (a.pick.batch_size, a.pick.accumulation_steps) == (b, acc)]
        mult = (f"m={min(mults):.3g}" if min(mults) == max(mults)
                else f"m={min(mults):.3g}–{max(mults):.3g}")
        rows.append({
            "method": method, "budget": budget, "n": len(group),
            "compute": Spread.of([100 * a.compute_samples / grid_compute for a in group]),
            "regret": Spread.of([truth.regret(a.pick) for a in group]),
            "epoch_time": Spread.of([truth.measure(a.pick).epoch_time for a in group]),
            "trials": Spread.of([a.trials for a in group]),
            "pick": f"{b}x{acc}, {mult} ({count}/{len(group)})",
            "fallbacks": sum(a.picked_by == "best trial" for a in group),
        })
    return rows


def method_label(row: dict) -> str:
    return row["method"] if row["budget"] is None else f"{row['method']} @ {100 * row['budget']:.0f}%"


def goals(results: list[dict]) -> list[tuple[str, str, str, str]]:
    """(goal, task, measured, verdict) rows."""
    out = []
    for result in results:
        name, rows = result["task"].name, rows_by_method(result)
        ours = {r["budget"]: r for r in rows if r["method"] == AUTOBATCH}
        at20 = ours.get(0.2)
        if at20:
            met = at20["regret"].median <= 0.5
            out.append(("autobatch within 0.5 points of the grid's best at 20% of its compute", name,
                        f"median regret {at20['regret'].median:.2f} points", "met" if met else "not met"))
        for budget, row in sorted(ours.items()):
            rivals = [r for r in rows if r["method"] != AUTOBATCH
                      and (r["budget"] == budget or r["budget"] is None)]
            worse = [method_label(r) for r in rivals if not row["regret"].median < r["regret"].median]
            out.append((f"better median regret than every baseline at {100 * budget:.0f}% compute", name,
                        f"{row['regret'].median:.2f} vs " + ", ".join(
                            f"{r['method']} {r['regret'].median:.2f}" for r in rivals),
                        "met" if not worse else "not met (" + ", ".join(worse) + ")"))
        shares = overhead_shares(result)
        if shares:
            spread = Spread.of(shares)
            out.append(("tuner overhead under 3% of the budget", name, f"median {spread.median:.1f}%",
                        "met" if spread.median < 3 else "not met"))
        ratios = [statistics.median(t["autobatch"]) / statistics.median(t["plain"])
                  for t in result["throughput"]]
        if ratios:
            out.append(("trainer throughput at least 95% of a plain loop", name,
                        ", ".join(f"{100 * r:.0f}% at batch {t['batch_size']}"
                                  for r, t in zip(ratios, result["throughput"])),
                        "met" if min(ratios) >= 0.95 else "not met"))
    return out


def final_autobatch(result: dict) -> list[Answer]:
    """autobatch answers at the largest budget: they carry the whole run's timings."""
    last = max(result["task"].budgets)
    return [a for a in result["answers"] if a.method == AUTOBATCH and a.budget == last]


def overhead_shares(result: dict) -> list[float]:
    return [100 * overhead_s(a) / a.extra["tuner_s"] for a in final_autobatch(result)]


def overhead_s(answer: Answer) -> float:
    """The tuner's time that is neither training nor evaluation."""
    return answer.extra["tuner_s"] - answer.extra["train_s"] - answer.extra["eval_s"]


# --- rendering -----------------------------------------------------------------------------

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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller grids, fewer repeats (minutes)")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "out" / "bench")
    parser.add_argument("--reuse-grid", action="store_true",
                        help="reuse the ground-truth grid saved in --out by an earlier run with the same settings")
    args = parser.parse_args()
    print(run(args.quick, args.out, reuse_grid=args.reuse_grid))
