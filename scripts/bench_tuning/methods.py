"""The methods compared: random search and plain TPE at equal compute, and the no-search rules."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import optuna

from autobatch import records as R
from autobatch.search import FOLK_BATCH, distributions
from autobatch.workloads import load_workload

from .ground_truth import train_run
from .tasks import FOLK, LARGEST, RANDOM, TPE_SEED_OFFSET, Config, Task


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
    batch, accumulation = R.batch_and_accumulation(params)
    return Config(batch, accumulation, float(params[R.PARAM_LR_MULTIPLIER]))


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


def fixed_answers(task: Task, train_samples: int) -> list[Answer]:
    """No search: one training run's worth of compute each."""
    sizes = task.space.batch_sizes
    folk = min(max(FOLK_BATCH, sizes[0]), sizes[-1])
    return [Answer(method=LARGEST, budget=None, repeat=0, compute_samples=train_samples, trials=1,
                   pick=Config(sizes[-1], 1, 1.0), picked_by="rule (no probe cap on CPU: largest in space)"),
            Answer(method=FOLK, budget=None, repeat=0, compute_samples=train_samples, trials=1,
                   pick=Config(folk, 1, 1.0), picked_by="rule")]
