"""Search: what a study searches and how it proposes trials. Torch-free.

The space (micro-batch, accumulation steps, lr multiplier under a scaling rule), the study's
spec (its identity on resume), the settings of a run (defaults < study file < flags), the budget
plan, the sampler and pruners, a trial's suggested configuration, and the baselines.
"""

from ._baselines import CRITICAL_BASELINE, FOLK_BATCH, enqueue_baselines, enqueue_critical_batch
from ._plan import (DEFAULT_EPOCHS, MAX_EPOCHS, MIN_EPOCHS, MIN_FIT_TRIALS, MIN_STEPS, SAFETY, TARGET_TRIALS,
                    BudgetTooShortError, TrialTimes, check_budget, check_budget_early, fit_reserve, floor_samples, plan_train_samples,
                    search_deadline, seconds_per_sample, verification_runs, verification_seconds)
from ._commands import dashboard_command, password_note, resume_command, worker_command
from ._sampling import LOG2, PRUNERS, VALUES, distributions, param_encoding, make_pruner, make_sampler, params_for, suggest
from ._settings import DEFAULT_BUDGET_S, TuneSettings, build_settings, load_config
from ._space import (SCALING_RULES, SearchSpace, centre_on_critical_batch, fit_space_to_data, powers_of_two,
                     range_given, scaled_lr)
from ._spec import StudySpec

__all__ = ["BudgetTooShortError", "CRITICAL_BASELINE", "centre_on_critical_batch", "enqueue_critical_batch",
           "range_given", "MIN_FIT_TRIALS", "MIN_STEPS", "SAFETY", "TrialTimes", "check_budget", "check_budget_early",
           "floor_samples", "dashboard_command", "password_note", "resume_command", "worker_command", "DEFAULT_BUDGET_S", "DEFAULT_EPOCHS", "FOLK_BATCH", "MAX_EPOCHS", "MIN_EPOCHS", "PRUNERS",
           "SCALING_RULES", "SearchSpace", "StudySpec", "TARGET_TRIALS", "TuneSettings", "build_settings", "LOG2", "VALUES", "param_encoding",
           "distributions", "enqueue_baselines", "fit_space_to_data", "fit_reserve", "load_config", "make_pruner", "make_sampler",
           "params_for", "plan_train_samples", "powers_of_two", "scaled_lr", "seconds_per_sample", "suggest", "verification_runs",
           "search_deadline", "verification_seconds"]
