import contextlib
import time

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from autobatch.records import STOP_BUDGET, STOP_COMPLETED, STOP_DIVERGED, STOP_PRUNED, TrialConfig
from autobatch.train import LRFactor, eval_points, train_trial
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
    assert result.final_metric > 0.8 and result.metric == "accuracy"
    assert result.samples_seen >= 3 * len(digits.train)
    assert result.throughput > 0 and result.eval_time_s > 0
    assert result.wall_time_s >= result.train_time_s + result.eval_time_s * 0.99
    assert len(result.curve) == 3


def test_divergence_ends_the_trial(digits):
    result = train_trial(_model(), digits, TrialConfig(batch_size=32, learning_rate=1e4),
                         train_samples=2000, checkpoints=(1000, 2000), device=CPU)
    assert result.stop_reason == STOP_DIVERGED
    assert result.samples_seen < 2000 and "loss" in result.stop_detail


def test_loss_trend_judges_each_step_as_a_per_step_check_would():
    from autobatch.train import DIVERGENCE_FACTOR, LossTrend

    losses = [2.0, 1.9, 1.8, 3.0, 40.0, 1e3, 1e4, 1e5]
    per_step = LossTrend()
    for step, loss in enumerate(losses):  # one loss at a time
        per_step = per_step.after([loss], step)
        if per_step.diverged:
            break
    batched = LossTrend().after(losses[:3], 0).after(losses[3:], 3)  # two reads
    assert batched == per_step and batched.diverged.endswith(f"at step {step}") and step == 5
    assert batched.smooth > DIVERGENCE_FACTOR * batched.first
    assert batched.after([float("nan")], 9) is batched  # a verdict stays
    nan = LossTrend().after([2.0, 2.1], 0).after([1.0, float("nan"), 1.0], 2)
    assert nan.diverged == "loss became nan at step 3" and nan.first == 2.0
    sound = LossTrend().after([2.0, 1.0, 0.5], 0)
    assert not sound.diverged and sound.first == 2.0 and sound.smooth == pytest.approx(0.9 * (0.9 * 2 + 0.1) + 0.05)


def test_the_trial_loop_reads_no_value_off_the_device_per_step(digits, monkeypatch):
    """Losses are read in batches (one transfer per ``LOSS_READ_EVERY`` steps), never by a
    per-step ``.item()``: on a GPU that would wait for the device every step."""
    from autobatch.train import LOSS_READ_EVERY

    reads = {"item": 0, "tolist": 0}
    for name in reads:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            reads[_name] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    steps = 3 * LOSS_READ_EVERY + 1
    result = train_trial(_model(), digits, TrialConfig(batch_size=8, learning_rate=0.05), train_samples=8 * steps,
                         checkpoints=(), device=CPU, measure_memory=False)
    assert result.stop_reason == STOP_COMPLETED and result.samples_seen == 8 * steps
    assert reads == {"item": 0, "tolist": 4}  # after steps 16, 32, 48 and the last


def _slow_profiler(monkeypatch, slowed: str, seconds: float = 0.4) -> None:
    """The memory meter's ``slowed`` phase ("train" or "eval") made ``seconds`` slower."""
    from autobatch.memory import TrialMeter

    phase = TrialMeter.phase

    @contextlib.contextmanager
    def slow_phase(self, name, live_bytes):
        with phase(self, name, live_bytes):
            yield
            if name == slowed:
                time.sleep(seconds)
    monkeypatch.setattr(TrialMeter, "phase", slow_phase)


def test_profiled_steps_are_kept_out_of_the_training_time(digits, monkeypatch):
    """The CPU profiler slows the measured steps down; the training time counts them at the
    unprofiled steps' rate, and the wall time keeps what they really took (here a profiler
    made 0.8 s slower over the measured steps, which run in one window)."""
    _slow_profiler(monkeypatch, "train", seconds=0.8)
    config = TrialConfig(batch_size=8, learning_rate=0.05)
    measured = train_trial(_model(), digits, config, train_samples=8 * 40, checkpoints=(160, 320), device=CPU)
    assert measured.peaks.train_bytes > 0 and measured.measured_peak_bytes > 0
    assert measured.wall_time_s > 0.8 + measured.eval_time_s and measured.train_time_s < 0.4
    assert 0 < measured.curve[0].train_time_s < measured.curve[1].train_time_s <= measured.train_time_s
    bare = train_trial(_model(), digits, config, train_samples=8 * 40, checkpoints=(160, 320), device=CPU,
                       measure_memory=False)
    assert bare.peaks.train_bytes is None and bare.measured_peak_bytes is None
    assert [p.metric for p in bare.curve] == [p.metric for p in measured.curve]  # the same training


def test_the_profiled_evaluation_is_counted_at_the_unprofiled_rate(digits, monkeypatch):
    """The first evaluation runs under the profiler (its peak is measured): the evaluation time
    counts it at the rate of the unprofiled evaluations, the wall time keeps it (here a profiler
    made it 0.4 s slower). With no unprofiled evaluation to compare with, it is counted as it ran."""
    _slow_profiler(monkeypatch, "eval")
    config = TrialConfig(batch_size=32, learning_rate=0.05)
    measured = train_trial(_model(), digits, config, train_samples=32 * 12, checkpoints=(128, 256, 384), device=CPU)
    assert measured.peaks.eval_bytes > 0
    assert measured.eval_time_s < 0.4 < measured.wall_time_s - measured.train_time_s
    once = train_trial(_model(), digits, config, train_samples=32 * 4, checkpoints=(128,), device=CPU)
    assert once.eval_time_s > 0.4


def test_pruning_callback_stops(digits):
    result = train_trial(_model(), digits, TrialConfig(batch_size=16, learning_rate=0.05),
                         train_samples=1000, checkpoints=(250, 500, 1000), device=CPU, on_eval=lambda p: True)
    assert result.stop_reason == STOP_PRUNED and len(result.curve) == 1 and result.samples_seen < 300


def test_deadline_cuts_off(digits):
    result = train_trial(_model(), digits, TrialConfig(batch_size=8, learning_rate=0.05),
                         train_samples=10**6, checkpoints=(10**6,), device=CPU, deadline=time.time() + 1.0)
    assert result.stop_reason == STOP_BUDGET and result.samples_seen < 10**6


def test_lr_schedule_and_eval_points():
    lr_factor = LRFactor("cosine", 100, 0.05)
    assert lr_factor(0) == pytest.approx(0.2)      # warm-up over 5 steps
    assert lr_factor(4) == pytest.approx(1.0)
    assert lr_factor(99) < 0.01
    assert eval_points(1000, 4) == (250, 500, 750, 1000)


# --- the recipe in the trial loop --------------------------------------------------------

def _lrs_of(run):
    """The lr of every optimizer step ``run`` makes (torch's global optimizer hook)."""
    lrs = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: lrs.append((type(opt), opt.param_groups[0]["lr"])))
    try:
        result = run()
    finally:
        handle.remove()
    return result, lrs


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant", "onecycle"])
def test_the_trial_steps_the_recipes_schedule_once_per_optimizer_step(digits, schedule):
    from autobatch.recipe import TrainRecipe

    recipe = TrainRecipe(schedule=schedule, warmup_fraction=0.2)
    config = TrialConfig(batch_size=16, accumulation_steps=2, learning_rate=0.05)
    result, lrs = _lrs_of(lambda: train_trial(_model(), digits, config, train_samples=640, checkpoints=(640,),
                                              device=CPU, recipe=recipe))
    assert result.stop_reason == STOP_COMPLETED and len(lrs) == 20  # ceil(640 / 32) steps, no error past the end
    got = [lr for _, lr in lrs]
    if schedule == "onecycle":  # torch's OneCycleLR, peak at the end of the 20% rise
        assert got.index(max(got)) == 3 and max(got) == pytest.approx(0.05)
    else:
        assert got == [0.05 * LRFactor(schedule, 20, 0.2)(step) for step in range(20)]


def test_adamw_bf16_clipped_trial_learns(digits):
    from autobatch.recipe import TrainRecipe

    recipe = TrainRecipe(optimizer="adamw", precision="bf16", grad_clip_norm=1.0, label_smoothing=0.1)
    result, lrs = _lrs_of(lambda: train_trial(
        _model(), digits, TrialConfig(batch_size=32, learning_rate=3e-3), train_samples=2 * len(digits.train),
        checkpoints=eval_points(2 * len(digits.train), 2), device=CPU, recipe=recipe))
    assert {cls for cls, _ in lrs} == {torch.optim.AdamW}
    assert result.stop_reason == STOP_COMPLETED and result.final_metric > 0.8
    assert result.measured_peak_bytes > 0


def test_a_minimized_metric_is_recorded_with_its_direction(digits):
    from autobatch.recipe import TrainRecipe
    from autobatch.records import result_attrs

    result = train_trial(_model(), digits, TrialConfig(batch_size=32, learning_rate=0.1), train_samples=1200,
                         checkpoints=(400, 800, 1200), device=CPU, recipe=TrainRecipe(metric="val_loss"))
    assert (result.metric, result.direction) == ("val_loss", "minimize")
    values = [p.metric for p in result.curve]
    assert values == [p.loss for p in result.curve]  # val_loss is the recipe's loss
    assert result.best_metric == min(values) and result.final_metric == values[-1]
    attrs = result_attrs(result, train_size=len(digits.train))
    assert attrs["metric"] == "val_loss" and attrs["val_metric"] == values[-1] and "val_accuracy" not in attrs
    assert attrs["milestones"] == {}  # accuracy milestones mean nothing for a loss


def test_evaluate_is_the_whole_set_metric_at_any_chunk_size(digits):
    from torch.utils.data import Subset

    from autobatch.recipe import TrainRecipe
    from autobatch.train import evaluate

    model = _model().eval()
    x, y = digits.val.tensors
    with torch.no_grad():
        logits = model(x)
    accuracy = (logits.argmax(1) == y).double().mean().item()
    loss = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1).item()
    top3 = (logits.topk(3, 1).indices == y[:, None]).any(1).double().mean().item()
    recipe = TrainRecipe(label_smoothing=0.1)
    for chunk in (7, 64, len(y)):
        assert evaluate(model, digits.val, chunk, CPU, recipe) == pytest.approx((accuracy, loss), rel=1e-6)
        assert evaluate(model, digits.val, chunk, CPU, TrainRecipe(metric="top3_accuracy"))[0] == pytest.approx(top3)
    assert model.training  # evaluation puts the model back into training mode
    subset = Subset(digits.val, range(50))  # a dataset that is not a TensorDataset: the DataLoader path
    with torch.no_grad():
        expected = (model(x[:50]).argmax(1) == y[:50]).double().mean().item()
    assert evaluate(model, subset, 16, CPU)[0] == pytest.approx(expected)


def test_check_recipe_fails_before_anything_runs(digits):
    from autobatch.recipe import RecipeError, TrainRecipe
    from autobatch.train import check_recipe

    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_recipe(model, digits.val, CPU, TrainRecipe(optimizer="adamw", precision="bf16"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for recipe, option in ((TrainRecipe(metric="tests.recipe_userfns:text_metric"), "metric"),
                           (TrainRecipe(loss="tests.recipe_userfns:raising_loss"), "loss"),
                           (TrainRecipe(precision="fp16"), "precision")):
        with pytest.raises(RecipeError, match=f"^{option}: "):
            check_recipe(model, digits.val, CPU, recipe)
