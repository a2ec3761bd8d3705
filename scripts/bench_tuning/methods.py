"""The baselines as people use them: Optuna searches through autobatch's trainer, on the same
tuning split and CPU-second budget as autobatch, and the no-search rules.

- random search: ``RandomSampler``, every trial full length, no pruning;
- Optuna TPE + median pruner: ``TPESampler`` (Optuna's defaults) with ``MedianPruner()``
  (defaults: 5 start-up trials), the trial reporting validation accuracy at each of the same 4
  samples-seen checkpoints autobatch's trials evaluate at (``trial.report``/``should_prune``);
- Hyperband: ``RandomSampler`` with ``HyperbandPruner(min_resource=1, max_resource=4,
  reduction_factor=3)`` on the same 4 reports (Li et al. 2018, as Optuna implements it);
- Pollux-style goodput pick (Qiao et al. 2021, OSDI, §3.1): the gradient noise scale measured
  once on the tuning split (autobatch's noise probe, ``B_simple`` of McCandlish et al. 2018, at
  the space's lr for its probe batch), training throughput measured at every micro-batch of the
  space, and the batch ``M`` maximizing ``GOODPUT(M) = THROUGHPUT(M) x (B_noise + M0) / (B_noise +
  M)`` (``autobatch.noise_scale.goodput``), lr by the task's scaling rule (multiplier 1). No
  accumulation: at a fixed micro-batch it lowers efficiency and leaves throughput as it is, and
  on CPU no memory limit forces it. Its compute (probe and timings) is counted like any other;
  it does not grow with the budget, so its answer is the same at every budget;
- the rules: largest-fit + linear lr, batch 128 + linear lr, batch 32 + linear lr (the task's
  reference lr scaled linearly, Goyal et al. 2017 eq. 1), and the paper's own setting.

A search method is ``method(ctx) -> list[Answer]``; ``SEARCH_METHODS`` maps names to them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import math

import numpy as np
import optuna
import torch

from autobatch import records as R
from autobatch.noise_scale import goodput
from autobatch.search import distributions
from autobatch.train import PROBE_ACCUMULATION, PROBE_MICRO_BATCH, eval_points, measure_throughput, probe_noise_scale
from autobatch.workloads import build_model

from . import data
from .ground_truth import train_run
from .protocol import Meter, should_stop
from .tasks import B128, CPU, FOLK, GOODPUT, HYPERBAND, LARGEST, PAPER, RANDOM, TPE, Config, Task

N_REPORTS = 4
SAMPLER_OFFSET = {RANDOM: 1, TPE: 2, HYPERBAND: 3}  # autobatch's default n_evals: the same checkpoints for the pruned baselines


@dataclass(kw_only=True)
class Answer:
    """A method's answer at one budget. ``cpu_s``/``wall_s``: the method's compute from its
    start to this answer, everything included."""

    method: str
    budget: Optional[float]         # fraction of the grid's CPU seconds (None: no search)
    repeat: int
    cpu_s: float
    wall_s: float
    trials: int
    pick: Config
    picked_by: str
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Context:
    """What a search method gets: the task, its repeat's tuner seed, the budgets in CPU seconds,
    the trial length (samples), a progress line, and ``grid_run_s``: the mean CPU seconds of one
    grid run (what a user's trial costs, about: the number of trials a budget buys)."""

    task: Task
    repeat: int
    tuner_seed: int
    budgets_s: tuple[float, ...]
    train_samples: int
    studies: object                 # a directory for study files
    progress: Callable[[str], None]
    grid_run_s: float


def trial_config(params: dict) -> Config:
    batch, accumulation = R.batch_and_accumulation(params)
    return Config(batch, accumulation, float(params[R.PARAM_LR_MULTIPLIER]))


def _optuna_search(kind: str, ctx: Context) -> list[Answer]:
    task, seed = ctx.task, ctx.tuner_seed
    meter = Meter()
    # Sampler seeds differ by method (TPE's start-up trials are random draws: with one seed the
    # three searches would train the very same first trials); trial seeds are the tuner's.
    sampler_seed = seed + SAMPLER_OFFSET[kind]
    if kind == RANDOM:
        sampler, pruner = optuna.samplers.RandomSampler(seed=sampler_seed), optuna.pruners.NopPruner()
    elif kind == TPE:
        sampler, pruner = optuna.samplers.TPESampler(seed=sampler_seed), optuna.pruners.MedianPruner()
    else:
        sampler = optuna.samplers.RandomSampler(seed=sampler_seed)
        pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=N_REPORTS, reduction_factor=3)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    workload = data.tuning(task.dataset, seed)
    space = distributions(task.space)
    checkpoints = (ctx.train_samples,) if kind == RANDOM else eval_points(ctx.train_samples, N_REPORTS)
    answers: list[Answer] = []
    costs: list[float] = []
    for fraction, budget in zip(task.budgets, ctx.budgets_s):
        while not should_stop(meter.cpu, budget, costs):
            before = meter.cpu
            trial = study.ask(space)
            config = trial_config(trial.params)
            if config.effective > len(workload.train):  # as autobatch refuses it: not a batch of the data
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            step = iter(range(1, N_REPORTS + 1))

            def on_eval(point, trial=trial, step=step) -> bool:
                trial.report(point.metric, next(step))
                return kind != RANDOM and trial.should_prune()

            result, accuracy = train_run(task, workload, config, seed=seed + trial.number,
                                         train_samples=ctx.train_samples, checkpoints=checkpoints,
                                         on_eval=on_eval)
            if result.stop_reason == R.STOP_PRUNED:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, accuracy)
            costs.append(meter.cpu - before)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = study.best_trial if done else max(
            (t for t in study.trials if t.intermediate_values),
            key=lambda t: t.intermediate_values[max(t.intermediate_values)])
        answers.append(Answer(method=kind, budget=fraction, repeat=ctx.repeat, cpu_s=meter.cpu,
                              wall_s=meter.wall, trials=len(study.trials), pick=trial_config(best.params),
                              picked_by="best completed trial",
                              extra={"pruned": sum(t.state == optuna.trial.TrialState.PRUNED
                                                   for t in study.trials)}))
    ctx.progress(f"{kind} repeat {ctx.repeat}: {len(study.trials)} trials, {meter.cpu:.0f} CPU s")
    return answers


def goodput_batch(sizes: list[int], throughput: list[float], b_noise: float) -> tuple[int, list[float]]:
    """The batch of ``sizes`` (samples) with the highest ``GOODPUT = throughput (samples/s) x
    (B_noise + M0) / (B_noise + M)``, ``M0`` the smallest size (Qiao et al. 2021, §3.1), and every
    size's goodput. A ``b_noise`` that is not positive and finite (the probe did not resolve
    ``|G|²``: the gradient lost in its noise, so no batch is less efficient than another) leaves
    goodput = throughput."""
    if not (math.isfinite(b_noise) and b_noise > 0):
        scores = np.asarray(throughput, dtype=float)
    else:
        scores = goodput(np.asarray(sizes), np.asarray(throughput), b_noise=b_noise, base_batch=min(sizes))
    return sizes[int(np.argmax(scores))], scores.tolist()


def goodput_search(ctx: Context) -> list[Answer]:
    """The Pollux-style pick (module docstring) on the tuner's split, with the tuner's seed."""
    task, seed = ctx.task, ctx.tuner_seed
    meter = Meter()
    workload = data.tuning(task.dataset, seed)
    torch.manual_seed(seed)
    model = build_model(task.model, num_classes=workload.num_classes, input_shape=workload.input_shape)
    estimate = probe_noise_scale(model, workload, CPU, recipe=task.recipe, seed=seed,
                                 learning_rate=task.space.learning_rate(1.0, PROBE_MICRO_BATCH * PROBE_ACCUMULATION))
    sizes = [b for b in task.space.batch_sizes if b <= len(workload.train)]
    throughput = [measure_throughput(model, workload, b, CPU, recipe=task.recipe) for b in sizes]
    b_noise = estimate.b_simple
    batch, scores = goodput_batch(sizes, throughput, b_noise)
    pick = Config(batch, 1, 1.0)
    extra = {"b_noise": b_noise, "throughput": dict(zip(sizes, throughput)),
             "goodput": dict(zip(sizes, scores))}
    ctx.progress(f"{GOODPUT} repeat {ctx.repeat}: B_noise {b_noise:.0f}, batch {batch}, {meter.cpu:.1f} CPU s")
    return [Answer(method=GOODPUT, budget=fraction, repeat=ctx.repeat, cpu_s=meter.cpu, wall_s=meter.wall,
                   trials=0, pick=pick, picked_by="goodput", extra=extra) for fraction in task.budgets]


SEARCH_METHODS: dict[str, Callable[[Context], list[Answer]]] = {
    RANDOM: lambda ctx: _optuna_search(RANDOM, ctx),
    TPE: lambda ctx: _optuna_search(TPE, ctx),
    HYPERBAND: lambda ctx: _optuna_search(HYPERBAND, ctx),
    GOODPUT: goodput_search,
}


def rule_configs(task: Task, tuner_train_size: int) -> dict[str, Config]:
    """The no-search settings. Largest-fit: on CPU no out-of-memory error caps the micro-batch,
    so it is the space's largest that is a batch of the data."""
    largest = max(b for b in task.space.batch_sizes if b <= tuner_train_size)
    out = {LARGEST: task.linear_rule(largest), B128: task.linear_rule(128), FOLK: task.linear_rule(32)}
    if task.paper:
        out[PAPER] = task.at_lr(*task.paper)
    return out


def fixed_answers(task: Task, tuner_train_size: int) -> list[Answer]:
    """No search, no tuning compute (the one training run is the user's)."""
    return [Answer(method=name, budget=None, repeat=0, cpu_s=0.0, wall_s=0.0, trials=0, pick=config,
                   picked_by="rule") for name, config in rule_configs(task, tuner_train_size).items()]
