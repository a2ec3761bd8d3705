"""TrainRecipe: defaults, per-optimizer defaults, None resolution, validation, (de)serialisation."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from autobatch.errors import AutobatchError
from autobatch.recipe import (REFERENCE_BATCH_SIZE, RecipeError, TrainRecipe, default_base_lr,
                              default_scaling_rule, default_weight_decay, is_user_function, topk)

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_autobatch_0_1s_recipe():
    r = TrainRecipe()
    assert (r.optimizer, r.momentum, r.nesterov, r.weight_decay) == ("sgd", 0.9, True, 5e-4)
    assert (r.schedule, r.warmup_fraction, r.precision) == ("cosine", 0.05, "fp32")
    assert (r.loss, r.label_smoothing, r.metric, r.direction) == ("cross_entropy", 0.0, "accuracy", "maximize")
    assert r.grad_clip_norm is None


def test_keyword_only_and_frozen():
    with pytest.raises(TypeError):
        TrainRecipe("adamw")
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainRecipe().optimizer = "adam"


@pytest.mark.parametrize("opt, lr, rule, wd", [("sgd", 0.1, "linear", 5e-4), ("adam", 1e-3, "sqrt", 0.0),
                                               ("adamw", 1e-3, "sqrt", 0.01)])
def test_per_optimizer_defaults(opt, lr, rule, wd):
    assert REFERENCE_BATCH_SIZE == 256
    assert (default_base_lr(opt), default_scaling_rule(opt), default_weight_decay(opt)) == (lr, rule, wd)
    assert TrainRecipe(optimizer=opt).weight_decay == wd
    assert TrainRecipe(optimizer=opt, weight_decay=None).weight_decay == wd
    assert TrainRecipe(optimizer=opt, weight_decay=0.3).weight_decay == 0.3


def test_user_optimizer_has_no_defaults_and_takes_no_weight_decay():
    r = TrainRecipe(optimizer="pkg.mod:make")
    assert r.weight_decay is None
    for fn, option in ((default_base_lr, "base_lr"), (default_scaling_rule, "scaling_rule")):
        with pytest.raises(RecipeError, match=f"^{option}: "):
            fn("pkg.mod:make")
    with pytest.raises(RecipeError, match="^weight_decay: "):
        TrainRecipe(optimizer="pkg.mod:make", weight_decay=0.1)


def test_resolution_is_stored_so_equal_recipes_compare_equal():
    assert TrainRecipe(optimizer="adamw") == TrainRecipe(optimizer="adamw", weight_decay=0.01)
    assert TrainRecipe(loss="mse") == TrainRecipe(loss="mse", metric="rmse", metric_direction="minimize")


def test_with_changes_re_resolves_what_the_change_invalidates():
    sgd = TrainRecipe()
    assert dataclasses.replace(sgd, optimizer="adamw").weight_decay == 5e-4  # the documented caveat
    assert sgd.with_changes(optimizer="adamw").weight_decay == 0.01
    assert sgd.with_changes(optimizer="adamw", weight_decay=0.1).weight_decay == 0.1
    mse = sgd.with_changes(loss="mse")
    assert (mse.metric, mse.direction) == ("rmse", "minimize")
    assert sgd.with_changes(metric="val_loss").direction == "minimize"


@pytest.mark.parametrize("metric, direction, name", [
    ("accuracy", "maximize", "accuracy"), ("top5_accuracy", "maximize", "top-5 accuracy"),
    ("top3_accuracy", "maximize", "top-3 accuracy"), ("val_loss", "minimize", "validation loss"),
    ("mae", "minimize", "MAE"), ("rmse", "minimize", "RMSE"), ("mymetrics.f:f1", "maximize", "f1")])
def test_direction_and_display_name_follow_the_metric(metric, direction, name):
    loss = "mse" if metric in ("mae", "rmse") else "cross_entropy"
    r = TrainRecipe(metric=metric, loss=loss)
    assert (r.direction, r.metric_name) == (direction, name)


def test_user_metric_direction_can_be_set():
    assert TrainRecipe(metric="m:error_rate", metric_direction="minimize").direction == "minimize"
    with pytest.raises(RecipeError, match="^metric_direction: accuracy is always maximized; drop"):
        TrainRecipe(metric="accuracy", metric_direction="minimize")


@pytest.mark.parametrize("loss, metric", [("cross_entropy", "accuracy"), ("bce", "val_loss"),
                                          ("mse", "rmse"), ("my.losses:focal", "val_loss")])
def test_default_metric_follows_the_loss(loss, metric):
    assert TrainRecipe(loss=loss).metric == metric


@pytest.mark.parametrize("kwargs, option", [
    ({"optimizer": "adamx"}, "optimizer"), ({"optimizer": "torch.optim.SGD"}, "optimizer"),
    ({"betas": (0.9,)}, "betas"), ({"betas": (0.9, 1.0)}, "betas"), ({"betas": "0.9,0.99"}, "betas"),
    ({"momentum": 1.5}, "momentum"), ({"momentum": 0.0}, "nesterov"), ({"nesterov": "yes"}, "nesterov"),
    ({"weight_decay": -1e-4}, "weight_decay"), ({"schedule": "step"}, "schedule"),
    ({"warmup_fraction": 1.0}, "warmup_fraction"), ({"precision": "fp8"}, "precision"),
    ({"loss": "hinge"}, "loss"), ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"loss": "mse", "label_smoothing": 0.1}, "label_smoothing"), ({"metric": "f1"}, "metric"),
    ({"metric": "top0_accuracy"}, "metric"), ({"loss": "mse", "metric": "accuracy"}, "metric"),
    ({"metric_direction": "up"}, "metric_direction"), ({"grad_clip_norm": -1.0}, "grad_clip_norm"),
    ({"grad_clip_norm": float("nan")}, "grad_clip_norm"), ({"momentum": True}, "momentum")])
def test_bad_values_raise_one_line_naming_the_option_and_a_fix(kwargs, option):
    with pytest.raises(RecipeError) as info:
        TrainRecipe(**kwargs)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, AutobatchError)  # CLI: exit 2
    assert message.startswith(f"{option}: ") and "\n" not in message and "; " in message


def test_fp16_is_accepted_here_and_checked_against_the_device_later():
    assert TrainRecipe(precision="fp16").precision == "fp16"


def test_zero_clip_means_no_clipping():
    assert TrainRecipe(grad_clip_norm=0).grad_clip_norm is None
    assert TrainRecipe(grad_clip_norm=1).grad_clip_norm == 1


def test_user_function_strings():
    for ok in ("m:f", "pkg.mod:f", "pkg.mod:Cls.method", "_p.m2:_f"):
        assert is_user_function(ok)
    for bad in ("m", "m:", ":f", "pkg.mod:f(x)", "pkg..mod:f", "1pkg:f", None):
        assert not is_user_function(bad)
    assert [topk(m) for m in ("accuracy", "top5_accuracy", "top12_accuracy", "val_loss")] == [1, 5, 12, None]


def test_dict_round_trip_through_json():
    r = TrainRecipe(optimizer="adamw", betas=(0.85, 0.98), schedule="onecycle", precision="bf16",
                    label_smoothing=0.1, metric="top5_accuracy", grad_clip_norm=1.0)
    data = json.loads(json.dumps(r.to_dict()))
    assert data["betas"] == [0.85, 0.98]
    assert TrainRecipe.from_dict(data) == r


def test_from_dict_of_nothing_or_missing_keys_gives_todays_defaults():
    assert TrainRecipe.from_dict({}) == TrainRecipe.from_dict(None) == TrainRecipe()
    assert TrainRecipe.from_dict({"precision": "bf16"}) == TrainRecipe(precision="bf16")
    assert TrainRecipe.from_dict({"optimizer": "adamw"}).weight_decay == 0.01


def test_from_dict_rejects_unknown_keys_and_bad_values():
    with pytest.raises(RecipeError, match=r"^recipe: unknown key\(s\) lr, optimiser; use only optimizer, "):
        TrainRecipe.from_dict({"optimiser": "adamw", "lr": 0.1})
    with pytest.raises(RecipeError, match="^optimizer: "):
        TrainRecipe.from_dict({"optimizer": "lamb"})


def test_recipe_and_exports_import_without_torch():
    code = ("import sys, autobatch.recipe; from autobatch.recommender import TrainingSetup, hf_training_arguments; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_metric_is_fraction():
    assert TrainRecipe().metric_is_fraction and TrainRecipe(metric="top3_accuracy").metric_is_fraction
    assert not TrainRecipe(metric="val_loss").metric_is_fraction
    assert not TrainRecipe(loss="mse").metric_is_fraction


def test_main_0_1_stored_recipe_reads_back_as_the_default():
    """The recipe dict the re-housed 0.1 stored (12 keys, no metric_direction) is today's recipe."""
    stored = {"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "betas": [0.9, 0.999],
              "schedule": "cosine", "warmup_fraction": 0.05, "precision": "fp32", "loss": "cross_entropy",
              "label_smoothing": 0.0, "metric": "accuracy", "grad_clip_norm": None}
    assert TrainRecipe.from_dict(stored) == TrainRecipe()
