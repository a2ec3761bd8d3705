"""Storage: where studies live, the one door to a study, and surviving faults.

``open_study`` is the door every command goes through; ``open_storage`` opens an Optuna RDB
storage that retries through a database restart; ``fail_stale_trials`` and ``requeue`` recover
the trials of workers that died; ``list_studies`` says what a storage holds. A password is
never shown: ``mask_url`` is what messages use.
"""

from ._rdb import (CONNECT_TIMEOUT_S, ENV_HEARTBEAT, ENV_RETRY, GRACE_FACTOR, HEARTBEAT_S, RETRY_S,
                   StorageLostError, open_storage)
from ._claim import Claim, StudyState, claim_trial, study_state, trial_marks
from ._fresh import discard_if_unused, parts_to_create
from ._listing import StudySummary, list_studies, only_study_name
from ._stale import MAX_RETRIES, fail_stale_trials, fail_trial, requeue
from ._study import StudyLike, describe, find_study, open_study
from ._writes import TrialWrites, hold_writes
from ._urls import DEFAULT_SQLITE, ENV_STORAGE, mask_url, resolve_url

__all__ = ["Claim", "StudyState", "claim_trial", "fail_trial", "study_state", "CONNECT_TIMEOUT_S", "DEFAULT_SQLITE", "ENV_HEARTBEAT", "ENV_RETRY", "ENV_STORAGE",
           "GRACE_FACTOR", "HEARTBEAT_S", "MAX_RETRIES", "RETRY_S", "StorageLostError", "StudyLike",
           "StudySummary", "TrialWrites", "describe", "discard_if_unused", "fail_stale_trials", "find_study", "list_studies", "mask_url",
           "only_study_name", "open_storage", "open_study", "parts_to_create",
           "hold_writes", "requeue", "resolve_url", "trial_marks"]
