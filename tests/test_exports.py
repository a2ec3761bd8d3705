"""Exports: JSON/TOML text and the real Hugging Face and Lightning objects built from them."""

import json
import logging
import math
import tomllib
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from autobatch.recipe import RecipeError, TrainRecipe
from autobatch.recommender import (TrainingSetup, hf_training_arguments, lightning_configure_optimizers,
                                   lightning_export, lightning_trainer_kwargs, to_json, to_toml)
from autobatch.train import LRFactor
from autobatch.train import make_loss as build_loss

transformers = pytest.importorskip("transformers")
lightning = pytest.importorskip("lightning")
logging.getLogger("lightning").setLevel(logging.ERROR)
warnings.filterwarnings("ignore")


def setup_for(recipe=TrainRecipe(), device="cpu", **kw):
    values = dict(micro_batch_size=32, accumulation_steps=4, learning_rate=0.2, train_samples=20_000,
                  dataset_size=5_000)
    return TrainingSetup(recipe=recipe, device=device, **{**values, **kw})


def test_setup_counts_steps_as_the_trial_loop():
    s = setup_for()
    assert (s.effective_batch_size, s.optimizer_steps, s.warmup_steps, s.epochs) == (128, 157, 7, 4.0)
    with pytest.raises(RecipeError, match="^accumulation_steps: "):
        setup_for(accumulation_steps=0)
    with pytest.raises(RecipeError, match="^precision: fp16 needs a CUDA device"):
        setup_for(TrainRecipe(precision="fp16"), device="cpu")


@pytest.mark.parametrize("recipe", [TrainRecipe(), TrainRecipe(optimizer="adamw", precision="bf16", grad_clip_norm=1.0,
                                                               metric="tests.recipe_userfns:error_rate",
                                                               metric_direction="minimize")])
def test_json_and_toml_round_trip(recipe):
    s = setup_for(recipe)
    for data in (json.loads(to_json(s)), tomllib.loads(to_toml(s))):
        assert TrainRecipe.from_dict(data["recipe"]) == recipe
        assert (data["micro_batch_size"], data["accumulation_steps"], data["learning_rate"]) == (32, 4, 0.2)
        assert (data["optimizer_steps"], data["train_samples"], data["epochs"]) == (157, 20_000, 4.0)
    assert "grad_clip_norm" not in tomllib.loads(to_toml(setup_for()))["recipe"]  # TOML has no null
    assert "[recipe]" in to_toml(s)


def _training_args(tmp_path, kwargs):
    return transformers.TrainingArguments(output_dir=str(tmp_path), report_to="none", **kwargs)


@pytest.mark.parametrize("recipe, optim", [
    (TrainRecipe(), "sgd"), (TrainRecipe(optimizer="adamw", betas=(0.8, 0.95), precision="bf16"), "adamw_torch"),
    (TrainRecipe(optimizer="adam", schedule="linear", grad_clip_norm=2.0), "adamw_torch"),
    (TrainRecipe(schedule="constant", label_smoothing=0.1, nesterov=False), "sgd")])
def test_hf_training_arguments_are_real_and_round_trip(tmp_path, recipe, optim):
    kwargs = hf_training_arguments(setup_for(recipe))
    args = _training_args(tmp_path, kwargs)
    for key, value in kwargs.items():
        assert getattr(args, key) == value, key
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.max_steps) == (32, 4, 157)
    assert args.optim == optim and args.bf16 == (recipe.precision == "bf16") and not args.fp16
    assert args.max_grad_norm == (recipe.grad_clip_norm or 0.0)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear, self.norm = nn.Linear(4, 3), nn.LayerNorm(3)

    def forward(self, x):
        return self.norm(self.linear(x))


@pytest.mark.parametrize("recipe", [TrainRecipe(), TrainRecipe(optimizer="adamw", schedule="linear"),
                                    TrainRecipe(optimizer="adam", schedule="constant")])
def test_hf_trainer_builds_the_recipes_optimizer_and_schedule(tmp_path, recipe):
    s = setup_for(recipe)
    trainer = transformers.Trainer(model=_Net(), args=_training_args(tmp_path, hf_training_arguments(s)))
    trainer.create_optimizer_and_scheduler(num_training_steps=trainer.args.max_steps)
    opt = trainer.optimizer
    expected_cls = torch.optim.SGD if recipe.optimizer == "sgd" else torch.optim.AdamW
    assert type(opt) is expected_cls and opt.defaults["lr"] == 0.2
    if recipe.optimizer == "sgd":
        assert (opt.defaults["momentum"], opt.defaults["nesterov"]) == (0.9, True)
    else:
        assert opt.defaults["betas"] == recipe.betas and opt.defaults["eps"] == 1e-8
    # HF decays the Linear weight only (not biases nor LayerNorm): a documented difference.
    assert [(g["weight_decay"], len(g["params"])) for g in opt.param_groups] == [(recipe.weight_decay, 1), (0.0, 3)]
    ours, w = LRFactor(recipe.schedule, s.optimizer_steps, recipe.warmup_fraction), s.warmup_steps
    hf = []
    for _ in range(s.optimizer_steps):
        hf.append(opt.param_groups[0]["lr"])
        opt.step(), trainer.lr_scheduler.step()
    assert hf[w:] == [0.2 * ours(step) for step in range(w, s.optimizer_steps)]  # exact after warm-up
    assert hf[:w] == [0.2 * ours(step - 1) if step else 0.0 for step in range(w)]  # one step behind


@pytest.mark.parametrize("recipe, what", [
    (TrainRecipe(schedule="onecycle"), "schedule 'onecycle'"),
    (TrainRecipe(optimizer="adam", weight_decay=1e-4), "optimizer 'adam' with weight_decay > 0"),
    (TrainRecipe(optimizer="tests.recipe_userfns:rmsprop"), "optimizer 'tests.recipe_userfns:rmsprop'")])
def test_hf_refuses_what_it_cannot_spell(recipe, what):
    with pytest.raises(RecipeError, match=f"^format hf: {what} has no TrainingArguments spelling; pass Trainer"):
        hf_training_arguments(setup_for(recipe))


@pytest.mark.parametrize("precision, spelled", [("fp32", "32-true"), ("bf16", "bf16-mixed")])
def test_lightning_trainer_is_real_and_round_trips(precision, spelled):
    s = setup_for(TrainRecipe(precision=precision, grad_clip_norm=1.5))
    kwargs = lightning_trainer_kwargs(s)
    trainer = lightning.Trainer(**kwargs, devices=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    assert trainer.precision == spelled == kwargs["precision"]
    assert (trainer.accumulate_grad_batches, trainer.gradient_clip_val, trainer.max_steps) == (4, 1.5, 157)
    assert trainer.gradient_clip_algorithm == "norm"
    export = lightning_export(s)
    assert export["dataloader"] == {"batch_size": 32}
    assert export["optimizer"] == {"class": "torch.optim.SGD", "lr": 0.2, "momentum": 0.9, "nesterov": True,
                                   "weight_decay": 5e-4}
    assert export["scheduler"]["total_steps"] == 157 and export["scheduler"]["interval"] == "step"


def test_lightning_16_mixed_spelling():
    assert lightning_trainer_kwargs(setup_for(TrainRecipe(precision="fp16"), device="cuda"))["precision"] == "16-mixed"


class _Module(lightning.LightningModule):
    def __init__(self, setup):
        super().__init__()
        self.net, self.export, self.lrs = nn.Linear(4, 3), setup, []
        self.loss = build_loss(setup.recipe)

    def training_step(self, batch, _):
        x, y = batch
        return self.loss(self.net(x), y)

    def on_before_optimizer_step(self, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])

    def configure_optimizers(self):
        return lightning_configure_optimizers(self.export, self.parameters())


@pytest.mark.parametrize("recipe", [TrainRecipe(), TrainRecipe(optimizer="adamw", precision="bf16", schedule="onecycle",
                                                               warmup_fraction=0.3, grad_clip_norm=1.0)])
def test_lightning_fit_steps_the_schedule_per_optimizer_step(recipe):
    s = setup_for(recipe, micro_batch_size=4, accumulation_steps=3, train_samples=120, learning_rate=0.05)
    assert s.optimizer_steps == 10
    data = TensorDataset(torch.randn(200, 4), torch.randint(0, 3, (200,)))
    module = _Module(s)
    trainer = lightning.Trainer(**lightning_trainer_kwargs(s), devices=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(data, **lightning_export(s)["dataloader"]))
    assert trainer.global_step == s.optimizer_steps
    if recipe.schedule == "cosine":
        assert module.lrs == [0.05 * LRFactor("cosine", 10, 0.05)(step) for step in range(10)]
    else:
        assert module.lrs.index(max(module.lrs)) == 2 and math.isclose(max(module.lrs), 0.05)
        assert type(trainer.optimizers[0]) is torch.optim.AdamW


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_exports_build_real_objects_on_cuda(tmp_path):
    s = setup_for(TrainRecipe(optimizer="adamw", precision="fp16"), device="cuda")
    args = _training_args(tmp_path, hf_training_arguments(s))
    assert args.fp16 and not args.bf16 and "use_cpu" not in hf_training_arguments(s)
    trainer = lightning.Trainer(**lightning_trainer_kwargs(s), devices=1, logger=False, enable_checkpointing=False)
    assert trainer.precision == "16-mixed"
