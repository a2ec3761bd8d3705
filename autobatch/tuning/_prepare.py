"""Preparing a study: probe memory and throughput, plan the budget, create the study — or resume
it after checking it is the same study. Safe when several ``tune`` start at once: exactly one
creates the study (and queues its baselines); the others resume it."""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

import optuna
import torch
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from .. import records as R
from ..errors import AutobatchError, UserCodeError
from ..memory import ProbeResult, default_cap, is_out_of_memory, probe
from ..search import (FOLK_BATCH, StudySpec, TrialTimes, TuneSettings, check_budget, check_budget_early,
                      enqueue_baselines, fit_reserve, fit_space_to_data, floor_samples, make_pruner,
                      plan_train_samples, resume_command, verification_runs)
from ..storage import find_study
from ..train import (PROBE_ACCUMULATION, PROBE_MICRO_BATCH, PROBE_STEPS, check_recipe, eval_points, eval_runner,
                     measure_throughput, step_runner)
from ..units import format_bytes
from ..workloads import Workload, build_model, holdout_size
from ._events import Note, PlanMade, ProbeDone, ProbeProgress, ProbeStarted, StudyResumed, TuneRun
from ._noise import (NOISE_PROBE_OFF, PROBE_FRACTION, centred_note, centred_settings,
                     measure_critical_batch, store_critical_batch)
from ._progress import refused_line, small_line
from ._worker import counts

SPEC_WAIT_S = 30.0  # how long a start that lost the race to create a study waits for its spec


def probe_workload(settings: TuneSettings, workload: Workload, device: torch.device,
                   run: TuneRun) -> tuple[ProbeResult, list[int], tuple[tuple[int, float], ...]]:
    """Memory model and throughput: what the plan and the memory-aware search rest on. Returns
    the probe, the space's micro-batch sizes that fit, and the measured (micro-batch, samples/s).

    The probe trains on real batches of the training set and evaluates real validation samples:
    training steps up to the largest micro-batch the study will try (the space's largest, at most
    the training set, at most what fits under the cap: ``--max-memory``, else the device's
    memory, on CPU the memory available), evaluation up to its batch; each measurement is a
    ``ProbeProgress`` event. The probe starts at the space's smallest micro-batch (at least 2).
    A small micro-batch the model cannot train (BatchNorm at 1, a model's minimum batch: the
    probe moves up past it) is said once and left to the trials, which record it infeasible; a
    larger one the user's code refuses (it raises there after smaller sizes trained) bounds the
    micro-batch like an out-of-memory, is said once, and the trials at and above it are refused
    as infeasible.
    """
    started = time.perf_counter()
    model = build_model(settings.model, num_classes=workload.num_classes, input_shape=workload.input_shape,
                        vocab_size=workload.vocab_size)
    check_recipe(model, workload.val, device, settings.recipe,  # a bad recipe fails before the probe
                 step=settings.step, step_eval=settings.step_eval, targets=workload.targets)
    cap = settings.max_memory_bytes or default_cap(device)
    run.emit(ProbeStarted(model=settings.model, device=str(device)))
    train = step_runner(model, dataset=workload.train, device=device, recipe=settings.recipe, step=settings.step)
    evaluation = eval_runner(model, dataset=workload.val, device=device, recipe=settings.recipe,
                             step=settings.step, step_eval=settings.step_eval)
    result = probe(train, device=device, cap_bytes=cap, space_min=min(settings.space.batch_sizes),
                   space_max=max(settings.space.batch_sizes), dataset_max=len(workload.train),
                   run_eval=evaluation, eval_space_max=len(workload.val),
                   on_point=lambda point, step: run.emit(ProbeProgress.of(point, step)))
    if result.refused is not None:  # said once; the trials at and above it are refused as infeasible
        run.emit(Note(text=refused_line(result.refused.batch_size, result.refused.refused)))
    elif result.eval_refused is not None:  # the evaluation batch is bounded below it
        refused = result.eval_refused
        run.emit(Note(text=f"evaluation batch {refused.batch_size} cannot run this model ({refused.refused}); "
                           f"evaluation runs in batches of at most {result.estimate.eval_max_batch_size}"))
    if result.too_small is not None:  # said once; the trials at it are recorded infeasible
        run.emit(Note(text=small_line(result.too_small.batch_size, result.too_small.refused)))
    run.emit(Note(text="measuring training throughput ..."))  # not silent between the probe and its summary
    result, sizes, measured = _measure_throughput(result, settings, workload, model, device, run, cap)
    run.emit(ProbeDone(probe=result, throughput=measured, seconds=time.perf_counter() - started,
                       train_size=len(workload.train)))
    return result, sizes, measured


def stored_spec(study: Optional[optuna.Study], wait_s: float = SPEC_WAIT_S) -> Optional[StudySpec]:
    """The spec of an existing study; a study another ``tune`` has just created gets its spec
    within moments, so it is waited for. None when there is no study."""
    if study is None:
        return None
    attrs = Retrying(retry=retry_if_result(lambda got: R.STUDY_SPEC not in got), stop=stop_after_delay(wait_s),
                     wait=wait_fixed(0.2), retry_error_callback=lambda state: state.outcome.result())(
        lambda: study.user_attrs)
    if R.STUDY_SPEC not in attrs:
        raise AutobatchError(f"study {study.study_name!r} exists but has no autobatch spec (it was not "
                             "created by autobatch tune, or its creator stopped); use another --study-name")
    return StudySpec.from_dict(attrs[R.STUDY_SPEC])


def _measure_throughput(result: ProbeResult, settings: TuneSettings, workload: Workload, model: torch.nn.Module,
                        device: torch.device, run: TuneRun, cap: Optional[int]
                        ) -> tuple[ProbeResult, list[int], tuple[tuple[int, float], ...]]:
    """Throughput at the smallest and largest space sizes that fit, above any the probe found
    too small for the model. A smallest size the model cannot train (``UserCodeError``) is said
    once and the next one timed; a size that runs out of memory here (the probe measured below
    it, or the cap is above what the machine holds), or a largest size the user's code refuses
    after the smallest trained, bounds the micro-batch like a probe failure, and the next
    smaller size is timed."""
    measured: dict[int, float] = {}
    skip_smallest = 0
    small = result.too_small.batch_size if result.too_small is not None else 0  # the probe's, said once
    while True:
        limit = result.max_batch_size
        sizes = [b for b in settings.space.batch_sizes if small < b and (limit is None or b <= limit)][skip_smallest:]
        if not sizes:
            failed = f" ({result.estimate.too_big} did not fit)" if result.estimate.too_big else ""
            raise AutobatchError(
                f"no batch size in the search space fits under {format_bytes(cap)}: the largest micro-batch "
                f"that fits is {limit}{failed}; lower batch_size_min or raise --max-memory")
        b = 0
        try:
            for b in sorted({sizes[0], sizes[-1]} - set(measured)):
                measured[b] = measure_throughput(model, workload, b, device, recipe=settings.recipe,
                                                 step=settings.step, num_workers=settings.num_workers)
            return result, sizes, tuple(sorted((s, measured[s]) for s in {sizes[0], sizes[-1]}))
        except Exception as exc:
            if is_out_of_memory(exc):
                run.emit(Note(text=f"micro-batch {b} ran out of memory while timing it "
                                   f"({str(exc).splitlines()[0][:120]}); larger micro-batches are not tried"))
                too_big = min(b, result.estimate.too_big or b)
                result = dataclasses.replace(result, estimate=dataclasses.replace(result.estimate, too_big=too_big))
            elif isinstance(exc, UserCodeError) and b == sizes[-1] and sizes[0] in measured:
                run.emit(Note(text=refused_line(b, str(exc))))
                # b is below the probe's bounds (too_big, refused_batch_size): it becomes both
                result = dataclasses.replace(result, estimate=dataclasses.replace(
                    result.estimate, too_big=b, refused_batch_size=b, refused_reason=str(exc)))
            elif isinstance(exc, UserCodeError) and b == sizes[0] and len(sizes) > 1:
                run.emit(Note(text=small_line(b, str(exc))))
                skip_smallest += 1
            else:
                raise


def prepare_study(settings: TuneSettings, storage: optuna.storages.BaseStorage, study_name: str,
                  workload: Workload, device: torch.device, started: float,
                  run: TuneRun) -> tuple[optuna.Study, StudySpec]:
    """Create the study (probing and planning first) or resume it (checking it matches).

    Raises ``AutobatchError`` when an existing study differs in identity, and
    ``BudgetTooShortError`` when the budget cannot fit the minimum number of trials."""
    space, note = fit_space_to_data(settings.space, len(workload.train))
    settings = dataclasses.replace(settings, space=space)
    study = find_study(storage, study_name)
    if study is None:
        created = _create(settings, storage, study_name, workload, device, started, run, note)
        if created is not None:
            return created
        study = find_study(storage, study_name)  # another tune created it meanwhile: resume it
    spec = stored_spec(study)
    # what was not given is the study's own, as on any resume (a start that lost the race to create
    # the study has not adopted it yet; e.g. the space the creator centred on the critical batch)
    settings = settings.resumed_from(spec)
    wanted = StudySpec(model=settings.model, dataset=settings.dataset, space=settings.space,
                       recipe=settings.recipe, step=settings.step, step_eval=settings.step_eval)
    difference = spec.identity_difference(wanted)
    if difference:
        raise AutobatchError(
            f"study {study_name!r} already exists with another setup ({difference}); "
            f"use another --study-name (e.g. --study-name {study_name}-2), or resume it as stored: "
            f"{resume_command(study_name, settings.storage)}")
    run.emit(StudyResumed(study_name=study_name, completed=counts(study)["complete"]))
    return study, spec


def _create(settings: TuneSettings, storage: optuna.storages.BaseStorage, study_name: str,
            workload: Workload, device: torch.device, started: float, run: TuneRun,
            note: Optional[str]) -> Optional[tuple[optuna.Study, StudySpec]]:
    """Probe, plan and create the study; None when another process created it first."""
    if note:
        run.emit(Note(text=note))
    if settings.budget_s:
        _check_budget_early(settings, workload, device, started)
    if settings.noise_probe:
        noise = measure_critical_batch(settings, workload, device, run)
    else:
        noise = None
        run.emit(Note(text=NOISE_PROBE_OFF))
    given, centred = settings, centred_settings(settings, noise, len(workload.train))
    settings = centred or settings
    result, sizes, measured = probe_workload(settings, workload, device, run)
    if centred is not None:  # the top of the range reached by accumulating what fits in memory
        settings = centred_settings(given, noise, len(workload.train), largest_micro=sizes[-1])
        sizes = [b for b in sizes if b <= settings.space.batch_size_max]
        space = settings.space
        run.emit(centred_note(space.batch_size_min, space.batch_size_max, space.accumulation_steps))
    budget_end = deadline_of(settings, started)
    times = TrialTimes.from_throughput(measured)
    verify_runs = verification_runs(settings.n_trials) if settings.verify_runs is None else settings.verify_runs
    holdout = holdout_size(len(workload.val)) if verify_runs else 0  # the trials never see it
    train_size, val_size = len(workload.train), len(workload.val) - holdout
    per_sample = sum(times.per_sample(b) for b in sizes) / len(sizes)
    eval_s = settings.n_evals * val_size * times.eval_per_sample + times.start_s
    floor = floor_samples(min(max(FOLK_BATCH, sizes[0]), sizes[-1]), train_size)
    seconds_left = budget_end - time.time() if budget_end else None
    train_samples = plan_train_samples(
        seconds_left=seconds_left, seconds_per_sample=per_sample, train_size=train_size,
        n_trials=settings.n_trials, epochs=settings.epochs, floor=floor, seconds_per_trial=eval_s,
        reserved_runs=verify_runs)
    if seconds_left is not None:
        epochs = train_samples / train_size
        check_budget(seconds_left=seconds_left, trial_seconds=train_samples * per_sample + eval_s,
                     n_trials=settings.n_trials, elapsed_s=time.time() - started, budget_s=settings.budget_s,
                     what=f"{train_samples} samples ({epochs:.3g} epochs of {settings.dataset})")
    spec = StudySpec(
        model=settings.model, dataset=settings.dataset, space=settings.space, recipe=settings.recipe,
        train_samples=train_samples, eval_points=eval_points(train_samples, settings.n_evals),
        train_size=train_size, val_size=val_size,
        num_classes=workload.num_classes, input_shape=tuple(workload.input_shape),
        max_memory_bytes=result.cap_bytes, pruner=settings.pruner, seed=settings.seed,
        step=settings.step, step_eval=settings.step_eval, verify_runs=verify_runs,
        verify_holdout=holdout)
    make_pruner(spec.pruner, spec.eval_points)  # an unknown pruner fails before anything is stored
    run.emit(PlanMade(spec=spec))
    try:
        # The study's direction and so its pruner follow the metric (maximize accuracy, minimize a loss).
        study = optuna.create_study(study_name=study_name, storage=storage, direction=spec.recipe.direction)
    except optuna.exceptions.DuplicatedStudyError:
        return None
    # What optuna-dashboard and trials_dataframe() call the objective: "accuracy", "val_loss", or
    # a user metric's function name.
    study.set_metric_names([spec.recipe.metric.rsplit(":", 1)[-1]])
    study.set_user_attr(R.STUDY_MEMORY_MODEL, result.to_dict())
    study.set_user_attr(R.STUDY_THROUGHPUT, [list(m) for m in measured])
    queued = enqueue_baselines(study, spec, sizes, limit=settings.n_trials) if settings.baselines else 0
    room = settings.n_trials is None or queued < settings.n_trials  # nothing queued beyond --n-trials
    store_critical_batch(study, spec, sizes, noise, centred=centred is not None,
                         baselines=settings.baselines and room)
    study.set_user_attr(R.STUDY_SPEC, spec.to_dict())  # last: a study with a spec is complete
    return study, spec


def _check_budget_early(settings: TuneSettings, workload: Workload, device: torch.device, started: float) -> None:
    """Refuse a budget too short for the minimum plan before anything is probed
    (``search.check_budget_early``), from one training step timed at the folk batch after one
    warm-up step. A recipe or model the user must fix fails here first, as it would at the probe;
    a step that cannot run at that size (out of memory, the user's step) leaves the question to
    the probe and the plan."""
    train_size = len(workload.train)
    space = settings.space
    batch = max(1, min(max(FOLK_BATCH, space.batch_size_min), space.batch_size_max, train_size))
    least = floor_samples(batch, train_size) if settings.epochs is None else max(1, round(settings.epochs * train_size))
    model = build_model(settings.model, num_classes=workload.num_classes, input_shape=workload.input_shape,
                        vocab_size=workload.vocab_size)
    check_recipe(model, workload.val, device, settings.recipe, step=settings.step, step_eval=settings.step_eval,
                 targets=workload.targets)
    try:
        throughput = measure_throughput(model, workload, batch, device, steps=1, recipe=settings.recipe,
                                        step=settings.step, num_workers=0)
    except Exception:  # noqa: BLE001 - out of memory or the user's code at this size: the probe says which
        return
    per_sample = 1.0 / throughput
    noise_s = 0.0
    if settings.noise_probe:  # at most its time limit, at most its samples at this pace
        noise_s = min(PROBE_FRACTION * settings.budget_s,  # its share of the budget (``probe_share``)
                      PROBE_STEPS * PROBE_MICRO_BATCH * PROBE_ACCUMULATION * per_sample)
    check_budget_early(budget_s=settings.budget_s, elapsed_s=time.time() - started, seconds_per_sample=per_sample,
                       least_samples=least, batch_size=batch, largest_batch=min(space.batch_size_max, train_size),
                       n_trials=settings.n_trials, noise_probe_s=noise_s,
                       what=f"{least / train_size:.3g} epochs of {settings.dataset}")


def deadline_of(settings: TuneSettings, started: float) -> Optional[float]:
    """Unix time the study's trials must end by: the budget less the final fit's reserve."""
    if not settings.budget_s:
        return None
    return started + settings.budget_s - fit_reserve(settings.budget_s)
