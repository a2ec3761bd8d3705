"""Pruning decisions against a snapshot of the study taken when a trial starts.

Optuna's pruners read the study's trials afresh at every checkpoint (``Trial.should_prune`` ->
``pruner.prune`` -> ``study.get_trials``): a storage round trip per checkpoint. The median and
successive-halving pruners compare a trial with *other* trials; here those are the trials as
they stood when this trial started, read once. Finished trials never change, so the snapshot is
exact for them; what it leaves out is only a trial finished by another worker while this one
runs, and leaving it out compares every checkpoint of a trial against the same trials (with
fresh reads, a trial's early checkpoints and its later ones see different references).
Hyperband keeps Optuna's fresh reads: its brackets are studies of their own.
"""

from __future__ import annotations

import copy
from typing import Any, Container, Optional

import optuna
from optuna.trial import FrozenTrial

from ..search import make_pruner


class SnapshotPruner(optuna.pruners.BasePruner):
    """The study's pruner (``search.make_pruner``) judging against ``refresh``'s snapshot."""

    def __init__(self, name: str, checkpoints: tuple[int, ...]) -> None:
        self.inner = make_pruner(name, checkpoints)
        self.uses_snapshot = not isinstance(self.inner, (optuna.pruners.HyperbandPruner, optuna.pruners.NopPruner))
        self._trials: Optional[list[FrozenTrial]] = None

    def refresh(self, trials: list[FrozenTrial]) -> None:
        """The snapshot for the trial about to start: the study's trials, read as it starts."""
        self._trials = trials if self.uses_snapshot else None

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if self._trials is None:
            return self.inner.prune(study, trial)
        return self.inner.prune(_Snapshot(study, self._trials), trial)  # type: ignore[arg-type]


class _Snapshot:
    """A study whose ``get_trials`` answers from a list; everything else is the study's."""

    def __init__(self, study: optuna.Study, trials: list[FrozenTrial]) -> None:
        self._study, self._trials = study, trials

    def get_trials(self, deepcopy: bool = True, states: Optional[Container] = None) -> list[FrozenTrial]:
        trials = [t for t in self._trials if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)
