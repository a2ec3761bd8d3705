"""autobatch as a user runs it, stopped at each compute budget through an event callback."""
from __future__ import annotations

import collections
import math
import pathlib
import time
from typing import Callable

import optuna

from autobatch import records as R
from autobatch.errors import AutobatchError
from autobatch.recommender import recommend_study
from autobatch.search import TuneSettings
from autobatch.tuning import ProbeDone, TrialFinished, tune

from .methods import Answer, trial_config
from .tasks import AUTOBATCH, Config, Task


def autobatch_run(task: Task, repeat: int, grid_compute: int, train_samples: int,
                  studies: pathlib.Path, progress: Callable[[str], None]) -> list[Answer]:
    """``tune`` as a user runs it (SQLite storage, median pruner, its baselines, default TPE),
    stopped through ``run.stop()`` from an event callback after the trial that brings the budget
    within half a trial (finished trials are kept), resumed for the next budget. The samples used
    are summed from the ``TrialFinished`` events, the probe time read from ``ProbeDone``. The
    answer at each budget is ``recommend_study(priority="accuracy")``, timed as overhead."""
    name = f"bench-{task.model}-{repeat}"
    path = studies / f"{name}.db"
    path.unlink(missing_ok=True)  # a fresh study, not a resumed one from an earlier run
    storage = f"sqlite:///{path.resolve()}"
    timing: collections.Counter = collections.Counter()
    used, answers = 0, []

    for fraction in task.budgets:
        budget = fraction * grid_compute

        def on_event(run, event) -> None:  # type: ignore[no-untyped-def]
            nonlocal used
            if isinstance(event, ProbeDone):
                timing["probe_s"] += event.seconds
            elif isinstance(event, TrialFinished):
                used += event.trial.user_attrs.get(R.SAMPLES_SEEN) or 0
                if budget - used < train_samples / 2:
                    run.stop()

        while budget - used >= train_samples / 2:
            before = used
            # Enough queued slots for the budget left even if most trials are pruned early.
            slots = 2 * math.ceil((budget - used) / train_samples) + 2
            settings = TuneSettings(model=task.model, dataset=task.dataset, epochs=task.epochs,
                                    n_trials=slots, storage=storage, study_name=name, seed=repeat,
                                    device="cpu", space=task.space)
            started = time.perf_counter()
            tune(settings, callbacks=[on_event])
            timing["wall_s"] += time.perf_counter() - started
            timing["tune_calls"] += 1
            if used == before:
                break  # nothing trained: do not loop for ever
        study = optuna.load_study(study_name=name, storage=storage)
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
        trained = [t for t in trials if t.user_attrs.get(R.TRAIN_TIME_S) is not None]
        extra = dict(timing, **predicted,
                     tuner_s=timing["wall_s"] + timing["fit_s"],
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
