"""The user's recipe end to end through the CLI: bad input, resuming old studies, another metric,
the README's training script against the trials, and the exports built into real objects."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import tomllib
import warnings
from pathlib import Path

import optuna
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from autobatch import records as R
from autobatch.recipe import TrainRecipe
from autobatch.recommender import Recommendation, recommend
from autobatch.records import TrialConfig
from autobatch.search import StudySpec
from autobatch.train import train_trial
from autobatch.workloads import build_model, load_workload
from autobatch.cli import main
from tests.conftest import LEAN, REPO, run_cli

CPU = torch.device("cpu")
SMALL = ("--model", "small_cnn", "--dataset", "digits")
RECIPE = ("--optimizer", "adamw", "--precision", "bf16", "--grad-clip", "1.0", "--label-smoothing", "0.1",
          "--schedule", "linear", "--warmup", "0.1")


@pytest.fixture(scope="module")
def recipe_study(tmp_path_factory) -> str:
    """A real AdamW + bf16 study made by the CLI; returns its storage URL (study "recipe")."""
    where = tmp_path_factory.mktemp("recipe")
    url = f"sqlite:///{where / 'studies.db'}"
    done = run_cli("tune", *SMALL, *RECIPE, *LEAN, "--epochs", "0.5", "--n-trials", "6", "--seed", "1",
                   "--storage", url, "--study-name", "recipe", cwd=where)
    assert done.returncode == 0, done.stderr
    return url


# --- bad input: exit 2, one line naming the option and the fix, nothing stored -----------------

BAD = [
    (("tune", "--optimizer", "lamb"), "optimizer: unknown 'lamb'; choose sgd, adam, adamw or pkg.module:function"),
    (("tune", "--precision", "fp16", "--device", "cpu"), "precision: fp16 needs a CUDA device"),
    (("probe", "--precision", "fp16", "--device", "cpu"), "precision: fp16 needs a CUDA device"),
    (("tune", "--loss", "tests.recipe_userfns:raising_loss"),
     "loss: 'tests.recipe_userfns:raising_loss' raised ValueError: no such column; fix the function"),
    (("tune", "--loss", "no_such_module_xyz:loss"), "loss: cannot import 'no_such_module_xyz'"),
    (("tune", "--metric", "tests.recipe_userfns:text_metric"),
     "metric: 'tests.recipe_userfns:text_metric' returned str, not a number; return the batch mean"),
    (("tune", "--optimizer", "tests.recipe_userfns:rmsprop"),
     "base_lr: optimizer 'tests.recipe_userfns:rmsprop' has no default learning rate; set --base-lr"),
    (("tune", "--optimizer", "tests.recipe_userfns:not_an_optimizer", "--base-lr", "0.01", "--scaling-rule", "linear"),
     "optimizer: 'tests.recipe_userfns:not_an_optimizer' returned list, not a torch.optim.Optimizer"),
    (("tune", "--betas", "0.9"), "betas: (0.9,) is not two numbers in [0, 1)"),
    (("tune", "--label-smoothing", "0.1", "--loss", "mse"), "label_smoothing: applies to cross_entropy only"),
]


def _bad_args(args: tuple, url: str) -> tuple:
    return (*args, *SMALL, "--n-trials", "1", "--storage", url) if args[0] == "tune" else (*args, *SMALL)


@pytest.mark.parametrize("args, message", BAD)
def test_bad_recipe_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    """In-process (the CLI's own ``main``), so the whole table stays fast."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    assert main(list(_bad_args(args, url))) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"autobatch: error: {message}"), lines
    if (tmp_path / "studies.db").exists():
        assert optuna.get_all_study_names(url) == []  # refused before anything was stored


@pytest.mark.parametrize("case", [1, 3])  # fp16 on CPU, a loss function that raises
def test_bad_recipe_input_from_the_command_line(tmp_path, case):
    args, message = BAD[case]
    done = run_cli(*_bad_args(args, f"sqlite:///{tmp_path / 'studies.db'}"), cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith(f"autobatch: error: {message}") and "Traceback" not in done.stderr


def test_bad_recipe_table_in_a_study_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "study.toml"
    config.write_text('model = "small_cnn"\ndataset = "digits"\n[recipe]\noptimiser = "adamw"\n')
    assert main(["tune", "--config", str(config), "--n-trials", "1"]) == 2
    assert "unknown key(s) in [recipe]: optimiser" in capsys.readouterr().err


# --- defaults reproduce today's studies: an old study resumes ---------------------------------

def test_a_study_stored_without_a_recipe_resumes(tmp_path, sqlite_url):
    args = (*SMALL, *LEAN, "--epochs", "0.2", "--n-trials", "1", "--storage", sqlite_url, "--study-name", "old")
    made = run_cli("tune", *args, "--create-only", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    study = optuna.load_study(study_name="old", storage=sqlite_url)
    stored = dict(study.user_attrs[R.STUDY_SPEC])
    assert stored["recipe"] == TrainRecipe().to_dict()
    assert (stored["space"]["base_lr"], stored["space"]["scaling_rule"]) == (0.1, "linear")
    del stored["recipe"]  # as autobatch 0.1 stored it
    study.set_user_attr(R.STUDY_SPEC, stored)

    resumed = run_cli("tune", *args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming study 'old'" in resumed.stderr and "trial 0:" in resumed.stderr
    other = run_cli("tune", *args, "--optimizer", "adamw", cwd=tmp_path)
    assert other.returncode == 2 and "another setup (recipe optimizer is 'sgd' there, 'adamw' here)" in other.stderr


# --- another metric: the study minimizes it, stores it and recommends on it -------------------

def test_a_val_loss_study_minimizes_and_recommends_on_the_loss(tmp_path, sqlite_url):
    done = run_cli("tune", *SMALL, *LEAN, "--metric", "val_loss", "--epochs", "0.3", "--n-trials", "5",
                   "--storage", sqlite_url, "--study-name", "loss", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="loss", storage=sqlite_url)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE and study.metric_names == ["val_loss"]
    completed = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(completed) >= 4
    for trial in completed:
        a = trial.user_attrs
        assert a[R.METRIC] == "val_loss" and a[R.VAL_METRIC] == trial.value == a[R.CURVE][-1][1] == a[R.VAL_LOSS]
        assert a[R.BEST_VAL_METRIC] == min(p[1] for p in a[R.CURVE]) and R.VAL_ACCURACY not in a
    assert study.best_trial.value == min(t.value for t in completed)
    rec = json.loads(run_cli("recommend", "--study-name", "loss", "--storage", sqlite_url, "--format", "json",
                             cwd=tmp_path).stdout)
    assert rec["metric"] == "val_loss" and rec["metric_direction"] == "minimize"
    assert rec["predicted_accuracy"] is None and rec["predicted_metric"] > 0
    lo, hi = rec["metric_interval"]
    assert lo < rec["predicted_metric"] < hi and "validation loss" in rec["rationale"]
    refused = run_cli("recommend", "--study-name", "loss", "--storage", sqlite_url, "--min-accuracy", "0.5",
                      cwd=tmp_path)
    assert refused.returncode == 2 and "min_accuracy needs an accuracy metric" in refused.stderr


# --- the README's training script trains what the trials trained -------------------------------

def _readme_script() -> str:
    text = (REPO / "README.md").read_text()
    return re.search(r"### In a training script.*?```python\n(.*?)```", text, re.S).group(1)


def _record(model: torch.nn.Module, run) -> list[tuple]:  # type: ignore[no-untyped-def]
    """What training did, in order: ("forward", micro-batch, autocast dtype or None, output dtype)
    for each training forward of ``model``, ("step", optimizer class, its hyperparameters, lr,
    gradient norm) for each optimizer step (torch's global optimizer hook: any optimizer)."""
    events: list[tuple] = []

    def forward(module, inputs, output):  # type: ignore[no-untyped-def]
        if module.training:
            dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
            events.append(("forward", inputs[0].shape[0], dtype, output.dtype))

    def step(optimizer, args, kwargs):  # type: ignore[no-untyped-def]
        group = optimizer.param_groups[0]
        settings = {k: group[k] for k in ("momentum", "nesterov", "weight_decay", "betas", "eps") if k in group}
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
        events.append(("step", type(optimizer), settings, group["lr"], norm))

    handles = [model.register_forward_hook(forward), register_optimizer_step_pre_hook(step)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return events


def _steps(events: list[tuple]) -> list[tuple]:
    """Per optimizer step: (micro-batches since the last step, their sizes, autocast dtypes,
    optimizer class, hyperparameters, lr)."""
    out, forwards = [], []
    for event in events:
        if event[0] == "forward":
            forwards.append(event)
        else:
            out.append((len(forwards), {f[1] for f in forwards}, {(f[2], f[3]) for f in forwards}, *event[1:4]))
            forwards = []
    return out


def test_readme_training_script_trains_what_the_trials_trained(recipe_study):
    script = _readme_script()
    assert "recommend(" in script and "rec.build_optimizer" in script
    script = re.sub(r"recommend\([^)]*\)", f'recommend("recipe", storage={recipe_study!r})', script, count=1)
    rec = recommend("recipe", storage=recipe_study)
    spec = StudySpec.from_dict(optuna.load_study(study_name="recipe", storage=recipe_study).user_attrs[R.STUDY_SPEC])
    assert rec.recipe == spec.recipe and rec.recipe.optimizer == "adamw" and rec.recipe.precision == "bf16"
    assert rec.train_samples == spec.train_samples and rec.device == "cpu"
    workload = load_workload("digits", seed=0)

    def model():  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        return build_model("small_cnn", num_classes=10, input_shape=(1, 8, 8))

    trial_model, script_model = model(), model()
    config = TrialConfig(batch_size=rec.batch_size, accumulation_steps=rec.accumulation_steps,
                         learning_rate=rec.learning_rate)
    trial = _record(trial_model, lambda: train_trial(
        trial_model, workload, config, train_samples=spec.train_samples, checkpoints=(spec.train_samples,),
        device=CPU, recipe=spec.recipe))
    script_run = _record(script_model, lambda: exec(script, {"model": script_model, "train_set": workload.train,
                                                             "device": CPU}))
    assert _steps(script_run) == _steps(trial)  # micro-batches, precision, optimizer, lr: step by step
    steps = _steps(trial)
    assert len(steps) == rec.optimizer_steps
    assert all(s[0] == rec.accumulation_steps and s[1] == {rec.batch_size} for s in steps)
    assert all(s[2] == {(torch.bfloat16, torch.bfloat16)} for s in steps)  # bf16 autocast, as the recipe says
    assert steps[0][3] is torch.optim.AdamW and steps[0][4]["weight_decay"] == 0.01
    lrs = [s[5] for s in steps]
    assert max(lrs) == pytest.approx(rec.learning_rate)  # warmed up to the tuned lr
    if len(lrs) >= 3:  # then a decay to see (at 2 optimizer steps the linear schedule reaches zero after the last)
        assert lrs[-1] < lrs[len(lrs) // 2]
    for events in (trial, script_run):  # clipped to the recipe's max norm before every step
        assert all(e[4] <= 1.0 + 1e-4 for e in events if e[0] == "step")


# --- exports: the real objects ---------------------------------------------------------------

def _export(url: str, fmt: str, where: Path) -> str:
    """``autobatch recommend --format fmt``: as a subprocess for ``hf``, in-process (the CLI's
    own ``main``, faster) for the others."""
    args = ["recommend", "--study-name", "recipe", "--storage", url, "--format", fmt]
    if fmt == "hf":
        done = run_cli(*args, cwd=where)
        assert done.returncode == 0, done.stderr
        return done.stdout
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(args) == 0
    return buffer.getvalue()


def test_export_hf_builds_real_training_arguments(recipe_study, tmp_path):
    transformers = pytest.importorskip("transformers")
    kwargs = json.loads(_export(recipe_study, "hf", tmp_path))
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), report_to="none", **kwargs)
    rec = recommend("recipe", storage=recipe_study)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (rec.batch_size,
                                                                                     rec.accumulation_steps)
    assert args.learning_rate == rec.learning_rate and args.max_steps == rec.optimizer_steps
    assert args.optim == "adamw_torch" and args.bf16 and not args.fp16 and args.use_cpu
    assert args.max_grad_norm == 1.0 and args.weight_decay == 0.01 and args.label_smoothing_factor == 0.1
    assert args.lr_scheduler_type == "linear" and args.warmup_steps == max(1, int(0.1 * rec.optimizer_steps))


def test_export_lightning_builds_a_real_trainer(recipe_study, tmp_path):
    lightning = pytest.importorskip("lightning")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    data = json.loads(_export(recipe_study, "lightning", tmp_path))
    trainer = lightning.Trainer(**data["trainer"], devices=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    rec = recommend("recipe", storage=recipe_study)
    assert trainer.precision == "bf16-mixed" and trainer.accumulate_grad_batches == rec.accumulation_steps
    assert trainer.gradient_clip_val == 1.0 and trainer.max_steps == rec.optimizer_steps
    assert data["dataloader"] == {"batch_size": rec.batch_size}
    assert data["optimizer"]["class"] == "torch.optim.AdamW" and data["optimizer"]["lr"] == rec.learning_rate
    assert data["scheduler"]["schedule"] == "linear" and data["scheduler"]["interval"] == "step"


def test_export_json_and_toml_round_trip(recipe_study, tmp_path):
    rec = recommend("recipe", storage=recipe_study)
    as_json = json.loads(_export(recipe_study, "json", tmp_path))
    assert Recommendation.from_dict(as_json).recipe == rec.recipe
    assert (as_json["optimizer_steps"], as_json["train_samples"]) == (rec.optimizer_steps, rec.train_samples)
    as_toml = tomllib.loads(_export(recipe_study, "toml", tmp_path))
    assert TrainRecipe.from_dict(as_toml["recipe"]) == rec.recipe
    assert (as_toml["micro_batch_size"], as_toml["accumulation_steps"]) == (rec.batch_size, rec.accumulation_steps)
    assert as_toml["learning_rate"] == rec.learning_rate and as_toml["optimizer_steps"] == rec.optimizer_steps
