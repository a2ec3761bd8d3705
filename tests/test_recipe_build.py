"""autobatch.train's torch objects from the recipe, checked against autobatch 0.1's fixed recipe and torch."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from autobatch.recipe import RecipeError, TrainRecipe
from autobatch.train import (LRFactor, autocast, check_device, clip_gradients, make_grad_scaler, make_loss,
                             make_metric, make_optimizer, make_precision, make_scheduler, warmup_steps)


def build_optimizer(recipe, params, lr):
    return make_optimizer(params, lr, recipe)


def build_scheduler(recipe, optimizer, total):
    return make_scheduler(optimizer, total, recipe)


build_loss, build_metric, build_grad_scaler = make_loss, make_metric, make_grad_scaler


# autobatch 0.1 (commit ba3a7a2, autobatch/trainer.py), verbatim: the reference the defaults reproduce.
MOMENTUM, WEIGHT_DECAY, WARMUP_FRACTION = 0.9, 5e-4, 0.05


def todays_optimizer(params, lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)


def lr_factor(step: int, total_steps: int) -> float:
    warmup = max(1, int(WARMUP_FRACTION * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def lrs(recipe, total, lr=0.1, steps=None):
    """The lr of each optimizer step, stepping the scheduler as a training loop does."""
    opt = build_optimizer(recipe, [nn.Parameter(torch.zeros(3))], lr)
    sched, out = build_scheduler(recipe, opt, total), []
    for _ in range(total if steps is None else steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("total", [1, 2, 7, 19, 20, 21, 40, 97, 100, 256, 1000, 4321])
@pytest.mark.parametrize("lr", [0.1, 0.0375, 3.2])
def test_default_schedule_is_todays_lr_factor_exactly(total, lr):
    expected = [lr * lr_factor(step, total) for step in range(total + 3)]
    assert lrs(TrainRecipe(), total, lr, steps=total + 3) == expected  # bit for bit, and past the end


@pytest.mark.parametrize("total", [10, 50, 333])
def test_linear_and_constant_schedules(total):
    w = warmup_steps(total, TrainRecipe())
    for schedule in ("linear", "constant"):
        got = lrs(TrainRecipe(schedule=schedule), total, lr=1.0)
        assert got[:w] == [(s + 1) / w for s in range(w)]
        assert got[w] == 1.0 and all(0 < x <= 1 for x in got)
    assert lrs(TrainRecipe(schedule="constant"), total, 1.0)[w:] == [1.0] * (total - w)
    linear = lrs(TrainRecipe(schedule="linear"), total, 1.0)[w:]
    assert all(a > b for a, b in zip(linear, linear[1:])) and linear[-1] == pytest.approx(1 / (total - w))
    assert lrs(TrainRecipe(schedule="constant", warmup_fraction=0.0), total, 0.5) == [0.5] * total


def test_onecycle_is_torchs_with_the_recipes_warmup_fraction():
    got = lrs(TrainRecipe(schedule="onecycle", warmup_fraction=0.3), 100, lr=2.0)
    assert got.index(max(got)) == 29 and max(got) == pytest.approx(2.0)
    assert got[0] == pytest.approx(2.0 / 25) and got[-1] == pytest.approx(2.0 / 25 / 1e4, rel=0.05)


def test_scheduler_state_survives_a_checkpoint():
    opt = build_optimizer(TrainRecipe(), [nn.Parameter(torch.zeros(1))], 0.1)
    sched = build_scheduler(TrainRecipe(), opt, 50)
    for _ in range(7):
        opt.step(), sched.step()
    fresh_opt = build_optimizer(TrainRecipe(), [nn.Parameter(torch.zeros(1))], 0.1)
    fresh = build_scheduler(TrainRecipe(schedule="constant"), fresh_opt, 10)
    fresh.load_state_dict(sched.state_dict())
    assert fresh.lr_lambdas[0] == LRFactor("cosine", 50, 0.05)


def _step_todays(model, batches, lr, total, k):
    opt = todays_optimizer(model.parameters(), lr)
    for step in range(total):
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(step, total)
        for x, y in batches[step * k:(step + 1) * k]:
            (F.cross_entropy(model(x), y) / k).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _step_recipe(model, batches, lr, total, k, recipe):
    opt = build_optimizer(recipe, model.parameters(), lr)
    sched, loss_fn = build_scheduler(recipe, opt, total), build_loss(recipe)
    scaler = build_grad_scaler(recipe, "cpu")
    for step in range(total):
        for x, y in batches[step * k:(step + 1) * k]:
            with autocast(recipe, "cpu"):
                loss = loss_fn(model(x), y) / k
            scaler.scale(loss).backward()
        clip_gradients(recipe, model.parameters(), optimizer=opt, scaler=scaler)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sched.step()


def test_default_recipe_trains_bit_for_bit_like_autobatch_0_1():
    torch.manual_seed(0)
    batches = [(torch.randn(8, 5), torch.randint(0, 3, (8,))) for _ in range(24)]
    a = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    b = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    b.load_state_dict(a.state_dict())
    _step_todays(a, batches, 0.3, 12, 2)
    _step_recipe(b, batches, 0.3, 12, 2, TrainRecipe())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a[0].weight, nn.Sequential(nn.Linear(5, 16))[0].weight)


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_adam_family_optimizers(name, cls):
    opt = build_optimizer(TrainRecipe(optimizer=name, betas=(0.8, 0.95)), [nn.Parameter(torch.zeros(2))], 1e-3)
    assert type(opt) is cls
    assert opt.defaults["betas"] == (0.8, 0.95) and opt.defaults["weight_decay"] == {"adam": 0.0, "adamw": 0.01}[name]


def test_user_optimizer_function():
    opt = build_optimizer(TrainRecipe(optimizer="tests.recipe_userfns:rmsprop"), [nn.Parameter(torch.zeros(2))], 0.01)
    assert type(opt) is torch.optim.RMSprop and opt.defaults["lr"] == 0.01
    for ref, match in (("tests.recipe_userfns:not_an_optimizer", "returned list, not a torch.optim.Optimizer"),
                       ("tests.recipe_userfns:missing", "has no callable 'missing'"),
                       ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'")):
        with pytest.raises(RecipeError, match=f"^optimizer: .*{match}"):
            build_optimizer(TrainRecipe(optimizer=ref), [nn.Parameter(torch.zeros(2))], 0.01)
    with pytest.raises(RecipeError, match="^lr: "):
        build_optimizer(TrainRecipe(), [nn.Parameter(torch.zeros(2))], 0.0)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8])
def test_cross_entropy_takes_any_integer_targets_and_one_hot(dtype):
    logits, y = torch.randn(6, 4), torch.tensor([0, 3, 1, 2, 2, 0])
    for smoothing in (0.0, 0.1):
        loss = build_loss(TrainRecipe(label_smoothing=smoothing))
        expected = F.cross_entropy(logits, y, label_smoothing=smoothing)
        assert torch.equal(loss(logits, y.to(dtype)), expected)
        assert loss(logits, F.one_hot(y, 4).float()) == pytest.approx(expected.item(), abs=1e-6)
        assert loss(logits, F.one_hot(y, 4).to(dtype)) == pytest.approx(expected.item(), abs=1e-6)
        assert build_metric(TrainRecipe())(logits, F.one_hot(y, 4).to(dtype)) == (logits.argmax(1) == y).sum()
    soft = torch.softmax(torch.randn(6, 4), 1)
    assert build_loss(TrainRecipe())(logits, soft) == pytest.approx(-(soft * logits.log_softmax(1)).sum(1).mean().item(), rel=1e-6)


def test_bce_and_mse():
    logits, multi_hot = torch.randn(5, 3), torch.randint(0, 2, (5, 3))
    assert torch.equal(build_loss(TrainRecipe(loss="bce"))(logits, multi_hot),
                       F.binary_cross_entropy_with_logits(logits, multi_hot.float()))
    out, target = torch.randn(5, 1), torch.randn(5)
    assert torch.equal(build_loss(TrainRecipe(loss="mse"))(out, target), F.mse_loss(out, target[:, None]))
    with pytest.raises(RecipeError, match=r"^loss: outputs \(5, 1\) and targets \(4,\) do not match"):
        build_loss(TrainRecipe(loss="mse"))(out, target[:4])


def test_user_loss_and_its_failures():
    out, target = torch.randn(4, 2, requires_grad=True), torch.randn(4, 2)
    value = build_loss(TrainRecipe(loss="tests.recipe_userfns:l1_loss"))(out, target)
    value.backward()
    assert value.item() == pytest.approx((out - target).abs().mean().item()) and out.grad is not None
    with pytest.raises(RecipeError, match=r"^loss: 'tests.recipe_userfns:raising_loss' raised ValueError: no such column; fix the function or use a built-in$"):
        build_loss(TrainRecipe(loss="tests.recipe_userfns:raising_loss"))(out, target)
    with pytest.raises(RecipeError, match="^loss: .* returned list, not a scalar float tensor"):
        build_loss(TrainRecipe(loss="tests.recipe_userfns:list_loss"))(out, target)


def _evaluate(metric, outputs, targets, batch):
    total = sum(metric(outputs[i:i + batch], targets[i:i + batch]) for i in range(0, len(targets), batch))
    return metric.reduce(total, len(targets))


def test_metrics_accumulate_over_batches_to_the_full_set_value():
    torch.manual_seed(1)
    logits, y = torch.randn(103, 7), torch.randint(0, 7, (103,))
    acc = (logits.argmax(1) == y).double().mean().item()
    top5 = (logits.topk(5, 1).indices == y[:, None]).any(1).float().mean().item()
    ce = F.cross_entropy(logits, y).item()
    for batch in (1, 10, 103):
        assert _evaluate(build_metric(TrainRecipe()), logits, y, batch) == pytest.approx(acc, abs=1e-12)
        assert _evaluate(build_metric(TrainRecipe()), logits, F.one_hot(y, 7).float(), batch) == pytest.approx(acc)
        assert _evaluate(build_metric(TrainRecipe(metric="top5_accuracy")), logits, y, batch) == pytest.approx(top5)
        assert _evaluate(build_metric(TrainRecipe(metric="val_loss")), logits, y, batch) == pytest.approx(ce, rel=1e-6)
    assert 0 < acc < top5 < 1
    out, target = torch.randn(50, 2), torch.randn(50, 2)
    mse_recipe = TrainRecipe(loss="mse")
    assert _evaluate(build_metric(mse_recipe), out, target, 7) == pytest.approx((out - target).pow(2).mean().sqrt().item())
    assert _evaluate(build_metric(mse_recipe.with_changes(metric="mae")), out, target, 7) == pytest.approx(
        (out - target).abs().mean().item())
    with pytest.raises(RecipeError, match="^metric: top5_accuracy needs at least 5 classes"):
        build_metric(TrainRecipe(metric="top5_accuracy"))(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


def test_user_metrics():
    logits, y = torch.randn(40, 3), torch.randint(0, 3, (40,))
    acc = (logits.argmax(1) == y).float().mean().item()
    err = build_metric(TrainRecipe(metric="tests.recipe_userfns:error_rate", metric_direction="minimize"))
    assert (err.direction, err.name) == ("minimize", "error_rate")
    assert _evaluate(err, logits, y, 9) == pytest.approx(1 - acc)
    assert _evaluate(build_metric(TrainRecipe(metric="tests.recipe_userfns:Namespace.tensor_metric")),
                     logits, y, 9) == pytest.approx(acc)
    with pytest.raises(RecipeError, match="^metric: 'tests.recipe_userfns:text_metric' returned str, not a number"):
        build_metric(TrainRecipe(metric="tests.recipe_userfns:text_metric"))(logits, y)


def test_precision_contexts_on_cpu():
    layer, x = nn.Linear(4, 4), torch.randn(2, 4)
    with autocast(TrainRecipe(), "cpu"):
        assert layer(x).dtype == torch.float32
    with autocast(TrainRecipe(precision="bf16"), torch.device("cpu")):
        assert layer(x).dtype == torch.bfloat16
    assert not build_grad_scaler(TrainRecipe(precision="bf16"), "cpu").is_enabled()
    for call in (autocast, build_grad_scaler, check_device, lambda r, d: make_precision(r, d)):
        with pytest.raises(RecipeError, match="^precision: fp16 needs a CUDA device .*; use bf16 or fp32 on cpu$"):
            call(TrainRecipe(precision="fp16"), "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_on_cuda_scales_and_clips():
    recipe = TrainRecipe(precision="fp16", grad_clip_norm=0.5)
    model = nn.Linear(8, 3).cuda()
    opt = build_optimizer(recipe, model.parameters(), 0.1)
    scaler = build_grad_scaler(recipe, "cuda")
    with autocast(recipe, "cuda"):
        out = model(torch.randn(4, 8, device="cuda"))
        loss = build_loss(recipe)(out, torch.tensor([0, 1, 2, 0], device="cuda"))
    assert out.dtype == torch.float16 and scaler.is_enabled()
    scaler.scale(loss * 100).backward()
    clip_gradients(recipe, model.parameters(), optimizer=opt, scaler=scaler)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norm.item() == pytest.approx(0.5, rel=1e-3)
    scaler.step(opt), scaler.update()


def test_clipping_helper():
    model = nn.Linear(3, 3)
    (model(torch.randn(2, 3)).sum() * 100).backward()
    assert clip_gradients(TrainRecipe(), model.parameters()) is None
    before = clip_gradients(TrainRecipe(grad_clip_norm=0.25), model.parameters())
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert before.item() > 0.25 and after.item() == pytest.approx(0.25, rel=1e-5)


def test_a_step_that_returns_one_loss_per_sample_is_told_to_reduce_it():
    from autobatch.errors import AutobatchError
    from autobatch.train._build import _step_hook

    compute = _step_hook("tests.userland:per_sample_step")
    model = torch.nn.Linear(4, 3)
    with pytest.raises(AutobatchError, match=r"shape \(5,\) \(reduce it, e\.g\. \.mean\(\)"):
        compute(model, (torch.randn(5, 4), torch.randint(0, 3, (5,))))
