"""Tuning: a run of a study from start to answer.

``tune`` probes memory and throughput, plans the budget, creates or resumes the study, runs the
workers and answers (``tune_objects``, exposed as ``autobatch.tune``, does it on Python objects
in-process); ``run_worker`` is the loop every worker runs (``autobatch worker`` and
``tune`` itself); ``run_trial`` is one trial. Progress comes out as typed events to callbacks
(``callback(run, event)``); ``event_line`` renders them as the CLI's lines.
"""

from ._events import (Callback, Event, Note, PlanMade, ProbeDone, ProbeProgress, ProbeStarted, RecommendationMade,
                      StudyReady, StudyResumed, TrialFinished, TrialProgress, TrialStarted, TuneRun)
from ._objective import TrialContext, run_trial
from ._prepare import deadline_of, prepare_study, probe_workload
from ._progress import event_line, metric_text, probe_summary
from ._python import tune as tune_objects
from ._tune import TuneOutcome, default_study_name, final_answer, set_limits, tune
from ._worker import (ENV_ALLOW, POLL_SECONDS, allowed_imports, check_imports, counts, heartbeat, next_claim,
                      next_trial_id, run_worker)

__all__ = ["ENV_ALLOW", "allowed_imports", "check_imports", "next_claim", "Callback", "Event", "Note", "POLL_SECONDS",
           "PlanMade", "ProbeDone", "ProbeProgress", "ProbeStarted",
           "RecommendationMade", "StudyReady", "StudyResumed", "TrialContext", "TrialFinished", "TrialProgress", "TrialStarted",
           "TuneOutcome", "TuneRun", "counts", "deadline_of", "default_study_name", "event_line", "final_answer", "metric_text",
           "heartbeat", "next_trial_id", "prepare_study", "probe_summary", "probe_workload", "run_trial",
           "run_worker", "set_limits", "tune", "tune_objects"]
