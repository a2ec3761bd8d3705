"""The baselines as people use them: Optuna searches through autobatch's trainer, on the same
tuning split and CPU-second budget as autobatch, and the no-search rules.

- random search: ``RandomSampler``, every trial full length, no pruning;
- Optuna TPE + median pruner: ``TPESampler`` (Optuna's defaults) with ``MedianPruner()``
  (defaults: 5 start-up trials), the trial reporting validation accuracy at each of the same 4
  samples-seen checkpoints autobatch's trials evaluate at (``trial.report``/``should_prune``);
- Hyperband: ``RandomSampler`` with ``HyperbandPruner(min_resource=1, max_resource=4,
  reduction_factor=3)`` on the same 4 reports (Li et al. 2018, as Optuna implements it);
- the rules: largest-fit + linear lr, batch 128 + linear lr, batch 32 + linear lr (the task's
  reference lr scaled linearly, Goyal et al. 2017 eq. 1), and the paper's own setting.

A search method is ``method(ctx) -> list[Answer]``; ``SEARCH_METHODS`` maps names to them. The
Pollux-style goodput pick (throughput x statistical efficiency, Qiao et al. 2021) comes from the
noise-scale work: register it under ``GOODPUT`` here and it runs under the same protocol.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import optuna

from autobatch import records as R
from autobatch.search import distributions
from autobatch.train import eval_points

from . import data
from .ground_truth import train_run
from .protocol import Meter, should_stop
from .tasks import B128, FOLK, HYPERBAND, LARGEST, PAPER, RANDOM, TPE, Config, Task

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
    the trial length (samples) and a progress line."""

    task: Task
    repeat: int
    tuner_seed: int
    budgets_s: tuple[float, ...]
    train_samples: int
    studies: object                 # a directory for study files
    progress: Callable[[str], None]


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


SEARCH_METHODS: dict[str, Callable[[Context], list[Answer]]] = {
    RANDOM: lambda ctx: _optuna_search(RANDOM, ctx),
    TPE: lambda ctx: _optuna_search(TPE, ctx),
    HYPERBAND: lambda ctx: _optuna_search(HYPERBAND, ctx),
    # GOODPUT: the noise-scale branch's Pollux-style pick goes here (same Context, same Answer).
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
