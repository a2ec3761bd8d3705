import time

import pytest
import torch

from autobatch.records import STOP_BUDGET, STOP_COMPLETED, STOP_DIVERGED, STOP_PRUNED, TrialConfig
from autobatch.train import eval_points, lr_factor, train_trial
from autobatch.workloads import build_model, load_workload

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_workload("digits", seed=0)


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model("small_cnn", num_classes=10, input_shape=(1, 8, 8))


def test_accumulation_is_exact(digits):
    """k micro-batches of b make the same update as one batch of k*b (no batch norm)."""
    results = {}
    for b, k in ((32, 1), (8, 4), (4, 8)):
        model = _model()
        train_trial(model, digits, TrialConfig(batch_size=b, accumulation_steps=k, learning_rate=0.5),
                    train_samples=32, checkpoints=(32,), device=CPU, seed=7)
        results[(b, k)] = model.state_dict()
    reference = results[(32, 1)]
    changed = any(not torch.equal(reference[n], _model().state_dict()[n]) for n in reference)
    assert changed, "the step must have changed the weights"
    for key in ((8, 4), (4, 8)):
        for name, tensor in reference.items():
            torch.testing.assert_close(results[key][name], tensor, rtol=1e-5, atol=1e-6)


def test_different_batch_sizes_report_at_identical_steps(digits):
    points = eval_points(600, 4)
    seen = {}
    for b, k in ((8, 1), (64, 2), (256, 8)):
        steps = []
        train_trial(_model(), digits, TrialConfig(batch_size=b, accumulation_steps=k, learning_rate=0.05),
                    train_samples=600, checkpoints=points, device=CPU,
                    on_eval=lambda p: steps.append(p.samples_seen) and False)
        seen[(b, k)] = steps
    assert all(steps == list(points) for steps in seen.values()), seen


def test_result_measures_and_learns(digits):
    result = train_trial(_model(), digits, TrialConfig(batch_size=32, learning_rate=0.1),
                         train_samples=3 * len(digits.train), checkpoints=eval_points(3 * len(digits.train), 3),
                         device=CPU)
    assert result.stop_reason == STOP_COMPLETED
    assert result.final_accuracy > 0.8
    assert result.samples_seen >= 3 * len(digits.train)
    assert result.throughput > 0 and result.eval_time_s > 0
    assert result.wall_time_s >= result.train_time_s + result.eval_time_s * 0.99
    assert len(result.curve) == 3


def test_divergence_ends_the_trial(digits):
    result = train_trial(_model(), digits, TrialConfig(batch_size=32, learning_rate=1e4),
                         train_samples=2000, checkpoints=(1000, 2000), device=CPU)
    assert result.stop_reason == STOP_DIVERGED
    assert result.samples_seen < 2000 and "loss" in result.stop_detail


def test_pruning_callback_stops(digits):
    result = train_trial(_model(), digits, TrialConfig(batch_size=16, learning_rate=0.05),
                         train_samples=1000, checkpoints=(250, 500, 1000), device=CPU, on_eval=lambda p: True)
    assert result.stop_reason == STOP_PRUNED and len(result.curve) == 1 and result.samples_seen < 300


def test_deadline_cuts_off(digits):
    result = train_trial(_model(), digits, TrialConfig(batch_size=8, learning_rate=0.05),
                         train_samples=10**6, checkpoints=(10**6,), device=CPU, deadline=time.time() + 1.0)
    assert result.stop_reason == STOP_BUDGET and result.samples_seen < 10**6


def test_lr_schedule_and_eval_points():
    assert lr_factor(0, 100) == pytest.approx(0.2)      # warm-up over 5 steps
    assert lr_factor(4, 100) == pytest.approx(1.0)
    assert lr_factor(99, 100) < 0.01
    assert eval_points(1000, 4) == (250, 500, 750, 1000)
