"""A tuning run: probe memory, plan the budget, create or resume the study, run workers,
answer. ``tune`` is what ``autobatch tune`` calls; ``run_worker`` what ``autobatch worker``
calls (and ``tune`` itself, as worker 0)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import optuna
import torch
from optuna.trial import TrialState

from . import records as R
from .budget import format_bytes, format_duration
from .errors import AutobatchError
from .planning import fit_reserve, plan_train_samples, seconds_per_sample
from .search import (TrialContext, heartbeat, make_pruner, make_sampler, next_trial_id,
                     params_for, requeue, run_trial)
from .settings import TuneSettings
from .spec import StudySpec
from .storage import (ENV_STORAGE, StorageLostError, fail_stale_trials, load_existing_study, mask_url,
                      open_storage, resolve_url)
from .trainer import eval_points, measure_throughput, train_trial
from .workloads import build_model, check_model_name, load_workload

Say = Callable[[str], None]
FOLK_BATCH = 32


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AutobatchError("--device cuda asked for, but no CUDA device is available")
    return torch.device(name)


def default_study_name(model: str, dataset: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{model}-{dataset}").strip("-")


def find_study(storage: optuna.storages.BaseStorage, name: str) -> Optional[optuna.Study]:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def counts(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    return {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}


# --- preparing a study ----------------------------------------------------------------------

def _probe(settings: TuneSettings, workload, device: torch.device, say: Say):
    """Memory model and throughput: what the plan and memory-aware search rest on."""
    from . import memory
    from .trainer import make_optimizer

    model = build_model(settings.model, num_classes=workload.num_classes, input_shape=workload.input_shape)
    cap = settings.max_memory_bytes or memory.default_cap(device)
    say(f"probing memory of {settings.model} on {device} ...")
    probe = memory.probe(model, input_shape=workload.input_shape, num_classes=workload.num_classes,
                         make_optimizer=make_optimizer, device=device, cap_bytes=cap)
    mm = probe.model
    fits = f", largest micro-batch under {format_bytes(cap)}: {probe.max_batch_size}" if cap else ""
    say(f"memory: {format_bytes(mm.fixed_bytes)} + {format_bytes(mm.per_sample_bytes)}/sample{fits} "
        f"({probe.seconds:.1f}s)")
    sizes = [b for b in settings.space.batch_sizes if probe.max_batch_size is None or b <= probe.max_batch_size]
    if not sizes:
        raise AutobatchError(
            f"no batch size in the search space fits under {format_bytes(cap)}: the largest micro-batch "
            f"that fits is {probe.max_batch_size}; lower batch_size_min or raise --max-memory")
    measured = [(b, measure_throughput(model, workload, b, device)) for b in sorted({sizes[0], sizes[-1]})]
    say("throughput: " + ", ".join(f"{thr:.0f} samples/s at batch {b}" for b, thr in measured))
    return probe, sizes, seconds_per_sample(measured, sizes)


def prepare_study(settings: TuneSettings, started: float, say: Say) -> tuple[optuna.Study, StudySpec]:
    """Create the study (probing and planning first) or resume it (checking it matches)."""
    check_model_name(settings.model)
    device = resolve_device(settings.device)
    name = settings.study_name or default_study_name(settings.model, settings.dataset)
    storage = open_storage(settings.storage)
    workload = load_workload(settings.dataset, data_dir=settings.data_dir, seed=settings.seed)
    wanted = StudySpec(model=settings.model, dataset=settings.dataset, space=settings.space)
    study = find_study(storage, name)
    if study is not None and R.STUDY_SPEC in study.user_attrs:
        spec = StudySpec.from_dict(study.user_attrs[R.STUDY_SPEC])
        difference = spec.identity_difference(wanted)
        if difference:
            raise AutobatchError(
                f"study {name!r} already exists with another setup ({difference}); "
                f"use another --study-name, e.g. {name}-2")
        say(f"resuming study {name!r}: {counts(study)['complete']} completed trials so far")
        return study, spec

    probe, sizes, sec_per_sample = _probe(settings, workload, device, say)
    budget_end = started + settings.budget_s - fit_reserve(settings.budget_s) if settings.budget_s else None
    train_samples = plan_train_samples(
        seconds_left=budget_end - time.time() if budget_end else None,
        seconds_per_sample=sec_per_sample, train_size=len(workload.train),
        n_trials=settings.n_trials, epochs=settings.epochs)
    spec = StudySpec(
        model=settings.model, dataset=settings.dataset, space=settings.space,
        train_samples=train_samples, eval_points=eval_points(train_samples, settings.n_evals),
        train_size=len(workload.train), val_size=len(workload.val),
        num_classes=workload.num_classes, input_shape=tuple(workload.input_shape),
        max_memory_bytes=probe.cap_bytes, pruner=settings.pruner, seed=settings.seed)
    make_pruner(spec.pruner, spec.eval_points)  # an unknown pruner fails before anything is stored
    say(f"plan: {train_samples} training samples per trial ({train_samples / spec.train_size:.1f} epochs), "
        f"evaluated at {', '.join(map(str, spec.eval_points))} samples seen")
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                load_if_exists=True)
    study.set_user_attr(R.STUDY_SPEC, spec.to_dict())
    study.set_user_attr(R.STUDY_MEMORY_MODEL, probe.to_dict())
    if settings.baselines:
        _enqueue_baselines(study, spec, sizes)
    return study, spec


def _enqueue_baselines(study: optuna.Study, spec: StudySpec, sizes: list[int]) -> None:
    """Reference points every study is compared with: the folk default (batch 32 at the
    rule's lr) and the largest micro-batch that fits with a linearly scaled lr (what a
    batch-size finder plus the Goyal et al. rule would pick)."""
    folk = min(max(FOLK_BATCH, sizes[0]), sizes[-1])
    largest = sizes[-1]
    linear_multiplier = spec.space.multiplier_for(
        spec.space.base_lr * largest / spec.space.reference_batch_size, largest)
    for label, batch, multiplier in (("folk-default-32", folk, 1.0),
                                     ("largest-fit-linear-lr", largest, linear_multiplier)):
        multiplier = min(max(multiplier, spec.space.lr_multiplier_min), spec.space.lr_multiplier_max)
        study.enqueue_trial(params_for(spec.space, batch_size=batch, accumulation_steps=1,
                                       multiplier=multiplier), user_attrs={R.BASELINE: label})


def set_limits(study: optuna.Study, *, deadline: Optional[float], n_trials: Optional[int]) -> None:
    """Study-wide limits every worker obeys: the deadline, and ``n_trials`` queued slots."""
    study.set_user_attr(R.STUDY_DEADLINE, deadline)
    study.set_user_attr(R.STUDY_MAX_TRIALS, n_trials)
    if n_trials:
        waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        for _ in range(max(0, n_trials - waiting)):
            study.enqueue_trial({}, skip_if_exists=False)


# --- workers --------------------------------------------------------------------------------

def run_worker(study_name: str, storage_url: Optional[str], *, device_name: str = "auto",
               data_dir: Optional[Path] = None, worker_seed: Optional[int] = None,
               say: Say = lambda s: None) -> int:
    """Run trials of an existing study until its limits are reached; returns trials run."""
    from .memory import MemoryModel

    study = load_existing_study(storage_url, study_name, create_tables=False)
    if R.STUDY_SPEC not in study.user_attrs:
        raise AutobatchError(f"study {study_name!r} was not created by autobatch tune")
    spec = StudySpec.from_dict(study.user_attrs[R.STUDY_SPEC])
    deadline = study.user_attrs.get(R.STUDY_DEADLINE)
    counted = bool(study.user_attrs.get(R.STUDY_MAX_TRIALS))
    device = resolve_device(device_name)
    workload = load_workload(spec.dataset, data_dir=data_dir, seed=spec.seed)
    memory = study.user_attrs.get(R.STUDY_MEMORY_MODEL) or {}
    mm = MemoryModel.from_dict(memory) if memory else None
    # The sampler's seed moves on with the study: a resumed study must not replay the
    # configurations of its first start-up trials.
    finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
    seed = (spec.seed if worker_seed is None else worker_seed) + finished
    study = optuna.load_study(study_name=study_name, storage=study._storage,
                              sampler=make_sampler(seed), pruner=make_pruner(spec.pruner, spec.eval_points))

    def train(config, trial, on_eval):
        torch.manual_seed(spec.seed + trial.number)
        model = build_model(spec.model, num_classes=spec.num_classes, input_shape=spec.input_shape)
        return train_trial(model, workload, config, train_samples=spec.train_samples,
                           checkpoints=spec.eval_points, device=device, seed=spec.seed + trial.number,
                           on_eval=on_eval, deadline=deadline)

    ctx = TrialContext(spec=spec, train=train, predict_peak=mm.predict if mm else None,
                       cap_bytes=spec.max_memory_bytes, deadline=deadline, device=str(device))
    done = 0
    while (trial_id := next_trial_id(study, counted=counted, deadline=deadline)) is not None:
        try:
            with heartbeat(study._storage, trial_id):
                frozen = run_trial(study, optuna.Trial(study, trial_id), ctx)
        except KeyboardInterrupt:
            _abandon(study, trial_id, "interrupted (Ctrl-C)")
            raise
        except StorageLostError:
            raise  # the database is gone: once it is back, the heartbeat fails and re-queues the trial
        except Exception as exc:
            # Another worker failed this trial (its heartbeat looked stale, e.g. after a long
            # database outage) and queued its configuration again: Optuna then refuses every
            # write to it. Not this worker's error: carry on with the next trial.
            number = _finished_elsewhere(study, trial_id)
            if number is not None:
                say(f"trial {number} was failed and re-queued by another worker (stale heartbeat); carrying on")
                continue
            _abandon(study, trial_id, f"worker error: {type(exc).__name__}: {exc}")
            raise
        done += 1
        say(progress_line(study, frozen, deadline))
    return done


def _finished_elsewhere(study: optuna.Study, trial_id: int) -> Optional[int]:
    """The trial's number if it is already finished in the storage, else None."""
    try:
        frozen = study._storage.get_trial(trial_id)
    except Exception:
        return None
    return frozen.number if frozen.state.is_finished() else None


def _abandon(study: optuna.Study, trial_id: int, why: str) -> None:
    """Mark an unfinished trial FAIL and queue its configuration again: nothing asked is lost."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial_id, R.STOP_REASON, "interrupted")
        storage.set_trial_user_attr(trial_id, R.STOP_DETAIL, why[:500])
        if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            requeue(study, storage.get_trial(trial_id))
    except Exception:  # the database may be gone too, or another worker failed it: the heartbeat copes
        pass


def progress_line(study: optuna.Study, frozen, deadline: Optional[float]) -> str:
    c = counts(study)
    a = frozen.user_attrs
    what = (f"acc {frozen.value:.4f}" if frozen.state == TrialState.COMPLETE
            else f"{a.get(R.STOP_REASON, frozen.state.name.lower())}")
    try:
        best = f"best {study.best_value:.4f} (#{study.best_trial.number})"
    except ValueError:
        best = "no completed trial yet"
    left = f" | {format_duration(deadline - time.time())} left" if deadline else ""
    return (f"trial {frozen.number}: b={a.get(R.BATCH_SIZE)} x{a.get(R.ACCUMULATION_STEPS)} "
            f"lr={a.get(R.LEARNING_RATE, 0):.3g} -> {what} | {best} | "
            f"{c['complete']} done, {c['pruned']} pruned, {c['waiting']} queued{left}")


# --- the whole run --------------------------------------------------------------------------

@dataclass(frozen=True)
class TuneOutcome:
    study_name: str
    storage: str          # masked
    counts: dict
    wall_time_s: float
    answer: dict          # the recommendation (or the best trial when too few trials)


def tune(settings: TuneSettings, say: Say) -> TuneOutcome:
    started = time.time()
    study, spec = prepare_study(settings, started, say)
    url = resolve_url(settings.storage)
    deadline = started + settings.budget_s - fit_reserve(settings.budget_s) if settings.budget_s else None
    set_limits(study, deadline=deadline, n_trials=settings.n_trials)
    say(f"study {study.study_name!r} in {mask_url(url)}")
    if settings.create_only:
        return TuneOutcome(study.study_name, mask_url(url), counts(study), time.time() - started, {})
    helpers = [_spawn_worker(study.study_name, url, settings, i) for i in range(1, settings.workers)]
    try:
        run_worker(study.study_name, settings.storage, device_name=settings.device,
                   data_dir=settings.data_dir, worker_seed=settings.seed, say=say)
    except BaseException:
        # Ctrl-C (or an error) here stops the local helpers too: a SIGINT lets each of them
        # fail and re-queue its trial in flight, as this process did.
        for proc in helpers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        raise
    finally:
        _wait_for_helpers(helpers, say)
    fail_stale_trials(study)
    answer = final_answer(study, say)
    return TuneOutcome(study.study_name, mask_url(url), counts(study), time.time() - started, answer)


def _wait_for_helpers(helpers: list[subprocess.Popen], say: Say) -> None:
    for index, proc in enumerate(helpers, start=1):
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # a second Ctrl-C: stop now; heartbeats fail what is left
            for other in helpers:
                other.terminate()
            raise
        if code not in (0, 130, -signal.SIGINT):
            say(f"worker {index} (pid {proc.pid}) exited with code {code}")


def _spawn_worker(study_name: str, url: str, settings: TuneSettings, index: int) -> subprocess.Popen:
    """A local worker process; the storage URL goes by environment, not argv (no password
    in the process list). In its own session: a terminal's Ctrl-C reaches only ``tune``,
    which passes exactly one SIGINT on (a second one would cut a worker's clean-up short)."""
    cmd = [sys.executable, "-m", "autobatch", "worker", "--study-name", study_name,
           "--device", settings.device, "--seed", str(settings.seed + 1000 * index)]
    if settings.data_dir:
        cmd += ["--data-dir", str(settings.data_dir)]
    return subprocess.Popen(cmd, env={**os.environ, ENV_STORAGE: url}, start_new_session=True)


def final_answer(study: optuna.Study, say: Say = lambda s: None) -> dict:
    """The trade-off model's recommendation, stored with the study (user attribute and
    dashboard note); the best completed trial while there are too few trials to fit."""
    from .recommend import publish, recommend_study

    try:
        rec = recommend_study(study)
    except AutobatchError as exc:
        say(f"trade-off model not fitted: {exc}")
    else:
        publish(study, rec)
        return rec.to_dict()
    try:
        best = study.best_trial
    except ValueError:
        return {}
    a = best.user_attrs
    return {
        "study_name": study.study_name, "batch_size": a[R.BATCH_SIZE],
        "learning_rate": a[R.LEARNING_RATE], "accumulation_steps": a[R.ACCUMULATION_STEPS],
        "effective_batch_size": a[R.EFFECTIVE_BATCH_SIZE], "predicted_accuracy": best.value,
        "predicted_epoch_time_s": a.get(R.EPOCH_TIME_S), "predicted_peak_bytes": a.get(R.PREDICTED_PEAK_BYTES),
        "best_trial": best.number, "trials": [best.number],
        "rationale": f"best completed trial (#{best.number}) by measured validation accuracy; "
                     "too few trials for the trade-off model",
    }
