"""Infeasible is a result, not a crash; the user's errors fail their trial (never re-queued) and
stop a study where everything fails; a micro-batch never exceeds the data; the step hook trains."""

import dataclasses

import optuna
import pytest
import torch
from optuna.trial import TrialState

from autobatch import records as R
from autobatch.errors import AutobatchError
from autobatch.memory import Affine, MemoryEstimate
from autobatch.records import TrialConfig
from autobatch.search import SearchSpace, StudySpec, fit_space_to_data, params_for
from autobatch.train import eval_points, measure_throughput, train_trial
from autobatch.tuning import TrialContext, run_trial
from autobatch.tuning._objective import StudyFailedError
from autobatch.workloads import build_model, load_workload
from tests import userland

CPU = torch.device("cpu")
SPACE = SearchSpace(batch_size_min=1, batch_size_max=64, accumulation_steps=(1, 2))


@pytest.fixture(scope="module")
def blobs():
    return load_workload("tests.userland:blobs_dataset")


def _context(workload, model="tests.userland:bn_model", **spec):
    values = dict(model=model, dataset=workload.name, space=SPACE, train_samples=360,
                  eval_points=eval_points(360, 2), train_size=len(workload.train), val_size=len(workload.val),
                  num_classes=3, input_shape=workload.input_shape)
    values.update(spec)
    return TrialContext(spec=StudySpec(**values), workload=workload, device=CPU, num_workers=0)


def _run(ctx, batch_size, accumulation=1):
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(params_for(ctx.spec.space, batch_size=batch_size, accumulation_steps=accumulation,
                                   multiplier=1.0))
    return study, run_trial(study, study.ask(), ctx)


def test_batchnorm_at_one_is_infeasible_with_its_reason_and_the_study_goes_on(blobs):
    ctx = _context(blobs)
    study, frozen = _run(ctx, 1)
    assert frozen.state == TrialState.PRUNED
    assert frozen.user_attrs[R.STOP_REASON] == R.STOP_INFEASIBLE
    assert "micro-batch 1 cannot train this model" in frozen.user_attrs[R.STOP_DETAIL]
    assert "Expected more than 1 value per channel" in frozen.user_attrs[R.STOP_DETAIL]
    assert frozen.constraints["trainable"] > 0  # the sampler sees a violated constraint
    study.enqueue_trial(params_for(SPACE, batch_size=8, accumulation_steps=1, multiplier=1.0))
    after = run_trial(study, study.ask(), ctx)
    assert after.state == TrialState.COMPLETE and "trainable" not in after.constraints


def test_an_effective_batch_beyond_the_data_is_refused_before_training(blobs):
    ctx = _context(blobs, model="mlp", train_size=20)
    _, frozen = _run(ctx, 16, 2)
    assert frozen.state == TrialState.PRUNED and frozen.user_attrs[R.SAMPLES_SEEN] == 0
    assert "effective batch 32 (16 x 2) exceeds the 20 training samples" in frozen.user_attrs[R.STOP_DETAIL]


def test_a_micro_batch_the_model_refused_in_the_probe_is_infeasible_before_training(blobs):
    refusal = "forward of SizeLimited raised RuntimeError: batch too big for my custom kernel (> 24)"
    small = Affine(fixed_bytes=1000.0, per_sample_bytes=10.0)
    estimate = MemoryEstimate(train=small, eval=small, eval_max_batch_size=24, cap_bytes=2**30,  # as the probe
                              too_big=21, refused_batch_size=32, refused_reason=refusal)       # leaves it
    ctx = dataclasses.replace(_context(blobs, model="tests.userland:size_limited", max_memory_bytes=2**30),
                              memory_model=estimate)
    study, frozen = _run(ctx, 64)
    assert frozen.state == TrialState.PRUNED and frozen.user_attrs[R.SAMPLES_SEEN] == 0
    assert frozen.user_attrs[R.STOP_REASON] == R.STOP_INFEASIBLE and frozen.constraints["trainable"] > 0
    assert frozen.user_attrs[R.STOP_DETAIL] == ("micro-batch 64 cannot train this model: micro-batch 32 raised in "
                                                f"the probe: {refusal}; refused before training")
    assert R.USER_ERROR not in frozen.user_attrs  # not a failure of the user's code: the study goes on
    study.enqueue_trial(params_for(SPACE, batch_size=16, accumulation_steps=1, multiplier=1.0))
    assert run_trial(study, study.ask(), ctx).state == TrialState.COMPLETE


def test_fit_space_to_data_keeps_micro_batches_within_the_training_set():
    space, note = fit_space_to_data(SearchSpace(), 24)
    assert space.batch_sizes == [8, 16] and space.accumulation_steps == (1, 2) and "24 samples" in note
    assert fit_space_to_data(SearchSpace(), 5000) == (SearchSpace(), None)
    with pytest.raises(AutobatchError, match="fewer than the smallest micro-batch 8"):
        fit_space_to_data(SearchSpace(), 6)


def test_a_failing_metric_fails_its_trial_without_requeue_and_three_stop_the_study(blobs):
    ctx = _context(blobs, model="tests.userland:linear", step="tests.userland:contrastive_step",
                   step_eval="tests.userland:raising_eval")
    study = optuna.create_study(direction="maximize")
    for number in range(3):
        study.enqueue_trial(params_for(SPACE, batch_size=8, accumulation_steps=1, multiplier=1.0))
        trial = study.ask()
        if number < 2:
            frozen = run_trial(study, trial, ctx)
            assert frozen.state == TrialState.FAIL
            assert frozen.user_attrs[R.STOP_REASON] == R.STOP_ERROR
            assert "evaluation function tests.userland:raising_eval raised KeyError" in frozen.user_attrs[R.STOP_DETAIL]
        else:
            with pytest.raises(StudyFailedError, match="raising_eval raised KeyError.*none completed"):
                run_trial(study, trial, ctx)
    assert not study.get_trials(states=(TrialState.WAITING,))  # nothing re-queued
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 3


def test_the_step_hook_trains_measures_and_evaluates(blobs):
    calls = dict(userland.STEP_CALLS)
    model = build_model("tests.userland:linear", num_classes=3, input_shape=blobs.input_shape)
    assert measure_throughput(model, blobs, 8, CPU, step="tests.userland:contrastive_step") > 0
    assert userland.STEP_CALLS["step"] == calls["step"] + 4
    result = train_trial(model, blobs, TrialConfig(batch_size=8, learning_rate=0.1), train_samples=720,
                         checkpoints=(360, 720), device=CPU, step="tests.userland:contrastive_step",
                         step_eval="tests.userland:step_accuracy", num_workers=0)
    assert result.stop_reason == R.STOP_COMPLETED
    assert userland.STEP_CALLS["eval"] == calls["eval"] + 2
    assert result.final_metric > 0.8  # the margin loss learned the blobs


def test_the_readmes_language_model_step_hook_learns():
    lm = load_workload("tests.userland:lm_corpus")
    model = build_model("tests.userland:lm_build", num_classes=lm.num_classes, input_shape=lm.input_shape)
    result = train_trial(model, lm, TrialConfig(batch_size=16, learning_rate=0.5), train_samples=3000,
                         checkpoints=(3000,), device=CPU, step="tests.userland:step",
                         step_eval="tests.userland:next_token_accuracy", num_workers=0)
    assert result.stop_reason == R.STOP_COMPLETED, result.stop_detail
    assert result.final_metric > 0.9  # counting modulo 30 is learnt from one token


def test_one_stalled_step_does_not_set_the_measured_throughput():
    from autobatch.train._throughput import steady_step_seconds

    assert steady_step_seconds([0.010, 1.5, 0.011]) == 0.011   # another process took the core once
    assert steady_step_seconds([0.5, 0.5, 0.6]) == 0.5          # a machine busy throughout counts
    assert steady_step_seconds([0.02]) == 0.02
    with pytest.raises(ValueError):
        steady_step_seconds([])
