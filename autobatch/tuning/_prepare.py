"""Preparing a study: probe memory and throughput, plan the budget, create the study — or resume
it after checking it is the same study."""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

import optuna
import torch

from .. import records as R
from ..errors import AutobatchError, UserCodeError
from ..memory import ProbeResult, default_cap, is_out_of_memory, probe
from ..search import (StudySpec, TuneSettings, enqueue_baselines, fit_reserve, fit_space_to_data, make_pruner,
                      plan_train_samples, seconds_per_sample)
from ..storage import find_study
from ..train import check_recipe, eval_points, eval_runner, measure_throughput, step_runner
from ..units import format_bytes
from ..workloads import Workload, build_model
from ._events import Note, PlanMade, ProbeDone, ProbeProgress, ProbeStarted, StudyResumed, TuneRun
from ._worker import counts


def probe_workload(settings: TuneSettings, workload: Workload, device: torch.device,
                   run: TuneRun) -> tuple[ProbeResult, list[int], float]:
    """Memory model and throughput: what the plan and the memory-aware search rest on. Returns
    the probe, the space's micro-batch sizes that fit, and the mean seconds per sample.

    The probe trains on real batches of the training set and evaluates real validation samples:
    training steps up to the largest micro-batch the study will try (the space's largest, at most
    the training set, at most what fits under the cap: ``--max-memory``, else the device's
    memory, on CPU the memory available), evaluation up to its batch; each measurement is a
    ``ProbeProgress`` event. A smallest micro-batch the model cannot train (BatchNorm at 1) is
    said once and left to the trials, which record it infeasible.
    """
    started = time.perf_counter()
    model = build_model(settings.model, num_classes=workload.num_classes, input_shape=workload.input_shape,
                        vocab_size=workload.vocab_size)
    check_recipe(model, workload.val, device, settings.recipe,  # a bad recipe fails before the probe
                 step=settings.step, step_eval=settings.step_eval)
    cap = settings.max_memory_bytes or default_cap(device)
    run.emit(ProbeStarted(model=settings.model, device=str(device)))
    train = step_runner(model, dataset=workload.train, device=device, recipe=settings.recipe, step=settings.step)
    evaluation = eval_runner(model, dataset=workload.val, device=device, recipe=settings.recipe,
                             step=settings.step, step_eval=settings.step_eval)
    result = probe(train, device=device, cap_bytes=cap, space_max=max(settings.space.batch_sizes),
                   dataset_max=len(workload.train), run_eval=evaluation, eval_space_max=len(workload.val),
                   on_point=lambda point, step: run.emit(ProbeProgress.of(point, step)))
    result, sizes, measured = _measure_throughput(result, settings, workload, model, device, run, cap)
    run.emit(ProbeDone(probe=result, throughput=measured, seconds=time.perf_counter() - started))
    return result, sizes, seconds_per_sample(measured, sizes)


def _measure_throughput(result: ProbeResult, settings: TuneSettings, workload: Workload, model: torch.nn.Module,
                        device: torch.device, run: TuneRun, cap: Optional[int]
                        ) -> tuple[ProbeResult, list[int], tuple[tuple[int, float], ...]]:
    """Throughput at the smallest and largest space sizes that fit. A smallest size the model
    cannot train (``UserCodeError``) is said once and the next one timed; a size that runs out of
    memory here (the probe measured below it, or the cap is above what the machine holds) bounds
    the micro-batch like a probe failure, and the next smaller size is timed."""
    measured: dict[int, float] = {}
    skip_smallest = 0
    while True:
        limit = result.max_batch_size
        sizes = [b for b in settings.space.batch_sizes if limit is None or b <= limit][skip_smallest:]
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
            elif isinstance(exc, UserCodeError) and b == sizes[0] and len(sizes) > 1:
                run.emit(Note(text=f"micro-batch {b} cannot train this model ({exc}); "
                                   f"trials at it are recorded infeasible"))
                skip_smallest += 1
            else:
                raise


def prepare_study(settings: TuneSettings, storage: optuna.storages.BaseStorage, study_name: str,
                  workload: Workload, device: torch.device, started: float,
                  run: TuneRun) -> tuple[optuna.Study, StudySpec]:
    """Create the study (probing and planning first) or resume it (checking it matches)."""
    space, note = fit_space_to_data(settings.space, len(workload.train))
    settings = dataclasses.replace(settings, space=space)
    wanted = StudySpec(model=settings.model, dataset=settings.dataset, space=settings.space,
                       recipe=settings.recipe, step=settings.step, step_eval=settings.step_eval)
    study = find_study(storage, study_name)
    if study is not None and R.STUDY_SPEC in study.user_attrs:
        spec = StudySpec.from_dict(study.user_attrs[R.STUDY_SPEC])
        difference = spec.identity_difference(wanted)
        if difference:
            raise AutobatchError(
                f"study {study_name!r} already exists with another setup ({difference}); "
                f"use another --study-name, e.g. {study_name}-2")
        run.emit(StudyResumed(study_name=study_name, completed=counts(study)["complete"]))
        return study, spec

    if note:
        run.emit(Note(text=note))
    result, sizes, sec_per_sample = probe_workload(settings, workload, device, run)
    budget_end = deadline_of(settings, started)
    train_samples = plan_train_samples(
        seconds_left=budget_end - time.time() if budget_end else None,
        seconds_per_sample=sec_per_sample, train_size=len(workload.train),
        n_trials=settings.n_trials, epochs=settings.epochs)
    spec = StudySpec(
        model=settings.model, dataset=settings.dataset, space=settings.space, recipe=settings.recipe,
        train_samples=train_samples, eval_points=eval_points(train_samples, settings.n_evals),
        train_size=len(workload.train), val_size=len(workload.val),
        num_classes=workload.num_classes, input_shape=tuple(workload.input_shape),
        max_memory_bytes=result.cap_bytes, pruner=settings.pruner, seed=settings.seed,
        step=settings.step, step_eval=settings.step_eval)
    make_pruner(spec.pruner, spec.eval_points)  # an unknown pruner fails before anything is stored
    run.emit(PlanMade(spec=spec))
    # The study's direction and so its pruner follow the metric (maximize accuracy, minimize a loss).
    study = optuna.create_study(study_name=study_name, storage=storage, direction=spec.recipe.direction,
                                load_if_exists=True)
    # What optuna-dashboard and trials_dataframe() call the objective: "accuracy", "val_loss", or
    # a user metric's function name.
    study.set_metric_names([spec.recipe.metric.rsplit(":", 1)[-1]])
    study.set_user_attr(R.STUDY_SPEC, spec.to_dict())
    study.set_user_attr(R.STUDY_MEMORY_MODEL, result.to_dict())
    if settings.baselines:
        enqueue_baselines(study, spec, sizes)
    return study, spec


def deadline_of(settings: TuneSettings, started: float) -> Optional[float]:
    """Unix time the study's trials must end by: the budget less the final fit's reserve."""
    if not settings.budget_s:
        return None
    return started + settings.budget_s - fit_reserve(settings.budget_s)
