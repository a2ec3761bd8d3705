"""Live progress on a terminal with ``rich.progress``: the probe, the study (trials done, best,
time left) and the trial in flight (samples seen of those planned, its metric, time left).
Every other event's line (``tuning.event_line``) scrolls above the bars. Off a terminal, or
with ``--json``, the CLI prints the plain lines instead (``plain``)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Optional

from ..tuning import (PlanMade, ProbeDone, ProbeProgress, ProbeStarted, StudyReady, TrialFinished, TrialProgress,
                      TrialStarted, event_line, metric_text)
from ..units import format_duration


def plain(say: Callable[[str], None]) -> Callable[[Any, Any], None]:
    """A callback printing each event's line with ``say``."""
    def callback(run: Any, event: Any) -> None:
        line = event_line(event)
        if line is not None:
            say(line)
    return callback


class LiveProgress:
    """A ``callback(run, event)`` drawing progress bars on ``console`` (default: stderr); use it
    as a context manager around the run (the bars are cleared when it ends)."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

        self.console = console or Console(stderr=True, highlight=False)
        self.bars = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                             MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                             console=self.console, transient=True)
        self.probe: Optional[int] = None
        self.study: Optional[int] = None
        self.trial: Optional[int] = None
        self.planned: Optional[int] = None
        self.deadline: Optional[float] = None

    def __enter__(self) -> "LiveProgress":
        self.bars.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bars.stop()

    def _print(self, line: Optional[str]) -> None:
        if line is not None:
            self.bars.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def _left(self) -> str:
        return f"{format_duration(self.deadline - time.time())} left" if self.deadline else ""

    def __call__(self, run: Any, event: Any) -> None:
        bars = self.bars
        if isinstance(event, ProbeStarted):
            self._print(event_line(event))
            self.probe = bars.add_task("probe", total=None, status="")
        elif isinstance(event, ProbeProgress) and self.probe is not None:
            bars.update(self.probe, description=f"probe {event.phase}", status=event_line(event).strip())
        elif isinstance(event, ProbeDone):
            if self.probe is not None:
                bars.remove_task(self.probe)
                self.probe = None
            self._print(event_line(event))
        elif isinstance(event, PlanMade):
            self.planned = event.spec.train_samples
            self._print(event_line(event))
        elif isinstance(event, StudyReady):
            self.deadline = event.deadline
            self._print(event_line(event))
            self.study = bars.add_task("trials", total=event.n_trials, status=self._left())
        elif isinstance(event, TrialStarted):
            self._drop_trial()
            config = event.config
            self.trial = bars.add_task(f"trial {event.number} (b={config.batch_size} x{config.accumulation_steps})",
                                       total=self.planned, status="")
        elif isinstance(event, TrialProgress):
            if self.trial is None:  # a worker that joined: no plan event
                self.trial = bars.add_task(f"trial {event.number}", total=event.planned_samples, status="")
            # drawn now, not at the next tick (10 a second): a short trial's checkpoints would
            # otherwise come and go unseen
            bars.update(self.trial, completed=event.samples_seen, total=event.planned_samples,
                        status=f"{metric_text(event.metric, event.value)}, {format_duration(event.seconds_left)} left",
                        refresh=True)
        elif isinstance(event, TrialFinished):
            self._drop_trial()
            self._print(event_line(event))
            self.deadline = event.deadline
            if self.study is None:
                self.study = bars.add_task("trials", total=None, status="")
            c = event.counts
            best = f"best {event.best_value:.4g} (#{event.best_number})" if event.best_value is not None else ""
            bars.update(self.study, completed=c["complete"] + c["pruned"] + c["fail"],
                        status=" | ".join(s for s in (best, self._left()) if s), refresh=True)
        else:
            self._print(event_line(event))

    def _drop_trial(self) -> None:
        if self.trial is not None:
            self.bars.remove_task(self.trial)
            self.trial = None


def live_or_plain(json_output: bool, say: Callable[[str], None]) -> Any:
    """``LiveProgress`` when this process owns the terminal stderr is on and the output is not
    JSON, else a context holding the plain-lines callback."""
    if not json_output and _foreground_terminal():
        return LiveProgress()
    return _Plain(plain(say))


def _foreground_terminal() -> bool:
    """stderr is a terminal and this process is in its foreground group: not piped, not a
    background job, not one of ``tune --workers``' helpers (their own sessions), which would
    draw over each other's bars."""
    try:
        fd = sys.stderr.fileno()
        return os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp()
    except (OSError, ValueError, AttributeError):  # no file descriptor, no controlling terminal
        return False


class _Plain:
    def __init__(self, callback: Callable[[Any, Any], None]) -> None:
        self.callback = callback

    def __enter__(self) -> Callable[[Any, Any], None]:
        return self.callback

    def __exit__(self, *exc: Any) -> None:
        pass
