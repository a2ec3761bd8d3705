"""autobatch as a user runs it, on the tuning split, stopped at each CPU-second budget."""
from __future__ import annotations

import collections
import math
import statistics

import optuna

from autobatch import records as R
from autobatch.errors import AutobatchError
from autobatch.recommender import recommend_study
from autobatch.search import MIN_FIT_TRIALS, TuneSettings
from autobatch.tuning import ProbeDone, TrialFinished, TrialStarted, tune

from . import data
from .methods import Answer, Context, trial_config
from .protocol import Meter, should_stop
from .tasks import AUTOBATCH, Config


def planned_trials(ctx: Context, finished: int, used_s: float, budget_s: float, costs: list[float]) -> int:
    """``--n-trials`` as a user with this budget would plan it: the first call, the trials the
    largest budget buys at a grid run's CPU seconds (at least ``MIN_FIT_TRIALS``, what the
    trade-off model needs); a resumed call, the ones the rest of this budget buys at the median
    trial cost so far (at least one more). The run is stopped at the budget either way."""
    if not finished:
        return max(MIN_FIT_TRIALS, math.ceil(max(ctx.budgets_s) / max(ctx.grid_run_s, 1e-3)))
    typical = statistics.median(costs) if costs else ctx.grid_run_s
    return finished + max(1, math.ceil((budget_s - used_s) / max(typical, 1e-3)))


def autobatch_run(ctx: Context) -> list[Answer]:
    """``tune`` as a user runs it (SQLite storage, median pruner, its baselines, seeded TPE, the
    task's recipe) on the tuning split (``data.spec``: autobatch's ``pkg.module:function``
    dataset hook), stopped through ``run.stop()`` from an event callback after the trial that
    brings its CPU seconds within half a typical trial of the budget, resumed for the next
    budget. Compute: the ``Meter`` from before the first ``tune`` call to after the answer
    (workload loading, memory probe, throughput measurement, trials, evaluation, storage,
    sampler, the trade-off fit). Answer: ``recommend_study(priority="accuracy")``."""
    task, seed = ctx.task, ctx.tuner_seed
    name = f"bench-{task.model}-{seed}"
    path = ctx.studies / f"{name}.db"
    path.unlink(missing_ok=True)  # a fresh study, not a resumed one from an earlier run
    storage = f"sqlite:///{path.resolve()}"
    timing: collections.Counter = collections.Counter()
    answers: list[Answer] = []
    meter = Meter()
    finished = 0
    costs: list[float] = []   # CPU seconds between consecutive trials' ends (a call's first: from its start)
    last_end, first_start = [None], [0.0]

    for fraction, budget in zip(task.budgets, ctx.budgets_s):
        def on_event(run, event) -> None:  # type: ignore[no-untyped-def]
            nonlocal finished
            if isinstance(event, ProbeDone):
                timing["probe_s"] += event.seconds
            elif isinstance(event, TrialStarted) and last_end[0] is None:
                first_start[0] = meter.cpu
            elif isinstance(event, TrialFinished):
                finished += 1
                now = meter.cpu
                # CPU seconds, as the budget: since the previous trial's end, or for a call's first
                # trial since its start (its wall times, on a shared machine, would overstate it)
                costs.append(now - (last_end[0] if last_end[0] is not None else first_start[0]))
                last_end[0] = now
                if should_stop(now, budget, costs):
                    run.stop()

        while not should_stop(meter.cpu, budget, costs):
            before = finished
            last_end[0] = None  # a resumed call starts with its own setup: its first trial timed alone
            settings = TuneSettings(model=task.model, dataset=data.spec(task.dataset, seed), epochs=task.epochs,
                                    n_trials=planned_trials(ctx, finished, meter.cpu, budget, costs),
                                    storage=storage, study_name=name, seed=seed,
                                    device="cpu", space=task.space, recipe=task.recipe, num_workers=0)
            tune(settings, callbacks=[on_event])
            timing["tune_calls"] += 1
            if finished == before:
                break  # nothing trained: do not loop for ever
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials()
        fit = Meter()
        try:
            rec = recommend_study(study, priority="accuracy")
            pick = Config(rec.batch_size, rec.accumulation_steps, rec.lr_multiplier)
            picked_by = "trade-off model"
            predicted = {"predicted_accuracy": rec.predicted_accuracy,
                         "accuracy_interval": list(rec.accuracy_interval)}
        except AutobatchError:  # too few completed trials to fit: what tune itself falls back to
            pick, picked_by, predicted = trial_config(study.best_trial.params), "best trial", {}
        timing["fit_s"] += fit.wall
        trained = [t for t in trials if t.user_attrs.get(R.TRAIN_TIME_S) is not None]
        extra = dict(timing, **predicted,
                     train_s=sum(t.user_attrs[R.TRAIN_TIME_S] for t in trained),
                     eval_s=sum(t.user_attrs.get(R.EVAL_TIME_S) or 0.0 for t in trained),
                     pruned=sum(t.state == optuna.trial.TrialState.PRUNED for t in trials))
        answers.append(Answer(method=AUTOBATCH, budget=fraction, repeat=ctx.repeat, cpu_s=meter.cpu,
                              wall_s=meter.wall, trials=len(trained), pick=pick, picked_by=picked_by,
                              extra=extra))
    ctx.progress(f"autobatch repeat {ctx.repeat}: {answers[-1].trials} trials, {timing['tune_calls']} tune "
                 f"calls, {meter.cpu:.0f} CPU s")
    return answers
