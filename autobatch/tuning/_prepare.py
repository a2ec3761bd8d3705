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
from ..memory import ProbeResult, default_cap, probe
from ..search import (StudySpec, TuneSettings, enqueue_baselines, fit_reserve, fit_space_to_data, make_pruner,
                      plan_train_samples, seconds_per_sample)
from ..storage import find_study
from ..train import check_recipe, eval_points, measure_throughput, step_runner
from ..units import format_bytes
from ..workloads import Workload, build_model
from ._events import Note, PlanMade, ProbeDone, ProbeStarted, StudyResumed, TuneRun
from ._worker import counts


def probe_workload(settings: TuneSettings, workload: Workload, device: torch.device,
                   run: TuneRun) -> tuple[ProbeResult, list[int], float]:
    """Memory model and throughput: what the plan and the memory-aware search rest on. Returns
    the probe, the space's micro-batch sizes that fit, and the mean seconds per sample. The
    probe trains on real batches of the training set; a smallest micro-batch the model cannot
    train (BatchNorm at 1) is said once and left to the trials, which record it infeasible."""
    started = time.perf_counter()
    model = build_model(settings.model, num_classes=workload.num_classes, input_shape=workload.input_shape,
                        vocab_size=workload.vocab_size)
    check_recipe(model, workload.val, device, settings.recipe,  # a bad recipe fails before the probe
                 step=settings.step, step_eval=settings.step_eval)
    cap = settings.max_memory_bytes or default_cap(device)
    run.emit(ProbeStarted(model=settings.model, device=str(device)))
    runner = step_runner(model, dataset=workload.train, device=device, recipe=settings.recipe, step=settings.step)
    result = probe(runner, device=device, cap_bytes=cap)
    sizes = [b for b in settings.space.batch_sizes if result.max_batch_size is None or b <= result.max_batch_size]
    if not sizes:
        raise AutobatchError(
            f"no batch size in the search space fits under {format_bytes(cap)}: the largest micro-batch "
            f"that fits is {result.max_batch_size}; lower batch_size_min or raise --max-memory")

    def throughput(b: int) -> float:
        return measure_throughput(model, workload, b, device, recipe=settings.recipe, step=settings.step,
                                  num_workers=settings.num_workers)

    while True:
        try:
            smallest = (sizes[0], throughput(sizes[0]))
            break
        except UserCodeError as exc:
            if len(sizes) == 1:
                raise
            run.emit(Note(text=f"micro-batch {sizes[0]} cannot train this model ({exc}); "
                               f"trials at it are recorded infeasible"))
            sizes = sizes[1:]
    measured = (smallest,) + ((sizes[-1], throughput(sizes[-1])),) * (sizes[-1] != sizes[0])
    run.emit(ProbeDone(probe=result, throughput=measured, seconds=time.perf_counter() - started))
    return result, sizes, seconds_per_sample(measured, sizes)


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
