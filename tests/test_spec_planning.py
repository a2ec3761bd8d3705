import math

import pytest

from autobatch.errors import AutobatchError
from autobatch.search import MAX_EPOCHS, fit_reserve, plan_train_samples, seconds_per_sample
from autobatch.search import build_settings, load_config
from autobatch.search import SearchSpace, StudySpec, scaled_lr


def test_scaled_lr_rules():
    assert scaled_lr(base_lr=0.1, multiplier=2.0, effective_batch_size=512,
                     reference_batch_size=256, rule="linear") == pytest.approx(0.4)
    assert scaled_lr(base_lr=0.1, multiplier=1.0, effective_batch_size=1024,
                     reference_batch_size=256, rule="sqrt") == pytest.approx(0.2)
    assert scaled_lr(base_lr=0.1, multiplier=1.0, effective_batch_size=8,
                     reference_batch_size=256, rule="none") == pytest.approx(0.1)


def test_multiplier_inverts_learning_rate():
    space = SearchSpace()
    lr = space.learning_rate(3.0, 64)
    assert space.multiplier_for(lr, 64) == pytest.approx(3.0)


@pytest.mark.parametrize("kwargs", [
    {"batch_size_min": 12}, {"batch_size_min": 64, "batch_size_max": 32},
    {"accumulation_steps": (1, 3)}, {"scaling_rule": "cubic"}, {"lr_multiplier_min": 0},
])
def test_space_rejects(kwargs):
    with pytest.raises(AutobatchError):
        SearchSpace(**kwargs)


def test_spec_roundtrip_and_identity():
    spec = StudySpec(model="resnet18", dataset="digits", eval_points=(10, 20), input_shape=(1, 8, 8))
    assert StudySpec.from_dict(spec.to_dict()) == spec
    other = StudySpec(model="resnet18", dataset="digits", space=SearchSpace(batch_size_max=128))
    assert "batch_size_max" in spec.identity_difference(other)
    assert spec.identity_difference(StudySpec(model="resnet18", dataset="digits")) is None
    assert "model" in spec.identity_difference(StudySpec(model="vgg11", dataset="digits"))


def test_seconds_per_sample_weights_small_batches():
    # 1/thr = a/b + c through (8, 400/s) and (256, 2500/s)
    mean = seconds_per_sample([(8, 400.0), (256, 2500.0)], [8, 256])
    assert mean == pytest.approx((1 / 400 + 1 / 2500) / 2)
    assert seconds_per_sample([(32, 1000.0)], [8, 16]) == pytest.approx(1e-3)


def test_plan_rule():
    # 300 s over 30 trials = 10 s a trial; 1 ms a sample -> 10,000 samples
    assert plan_train_samples(seconds_left=300, seconds_per_sample=1e-3, train_size=1000) == 10_000
    # clamped to the maximum epochs
    assert plan_train_samples(seconds_left=1e6, seconds_per_sample=1e-3, train_size=1000) == MAX_EPOCHS * 1000
    # explicit epochs win; no budget means the default length
    assert plan_train_samples(seconds_left=None, seconds_per_sample=1e-3, train_size=1000, epochs=2) == 2000
    # fewer trials requested: longer trials
    assert plan_train_samples(seconds_left=100, seconds_per_sample=1e-3, train_size=1000, n_trials=5) == 20_000
    assert fit_reserve(60) == 3.0 and fit_reserve(36000) == 360.0


def test_config_and_overrides(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('model = "mlp"\nbudget = "2m"\n[space]\nbatch_size_max = 64\n')
    assert load_config(path)["budget_s"] == 120
    settings = build_settings(path, {"model": "small_cnn", "budget_s": None, "space": {"batch_size_min": 16}})
    assert settings.model == "small_cnn" and settings.budget_s == 120
    assert settings.space.batch_size_max == 64 and settings.space.batch_size_min == 16


@pytest.mark.parametrize("text,word", [
    ('modle = "x"\n', "modle"), ('[space]\nbatch_max = 3\n', "batch_max"), ("model = \n", "s.toml"),
])
def test_config_errors(tmp_path, text, word):
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(AutobatchError, match=word):
        load_config(path)


def test_shipped_study_files_load():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[1] / "studies").glob("*.toml")):
        settings = build_settings(path, {})
        assert settings.model == "resnet18" and math.isfinite(settings.budget_s)


# --- the recipe in settings and spec -------------------------------------------------------

def test_lr_scaling_rule_follows_the_optimizer_unless_set():
    from autobatch.recipe import TrainRecipe

    sgd = SearchSpace().for_recipe(TrainRecipe())
    adamw = SearchSpace().for_recipe(TrainRecipe(optimizer="adamw"))
    assert (sgd.base_lr, sgd.scaling_rule) == (0.1, "linear")
    assert (adamw.base_lr, adamw.scaling_rule) == (1e-3, "sqrt")
    assert adamw.learning_rate(1.0, 1024) == pytest.approx(2e-3)  # 1e-3 * sqrt(1024 / 256)
    mine = SearchSpace(base_lr=3e-4, scaling_rule="linear").for_recipe(TrainRecipe(optimizer="adam"))
    assert (mine.base_lr, mine.scaling_rule) == (3e-4, "linear")
    assert SearchSpace().learning_rate(1.0, 512) == pytest.approx(0.2)  # no recipe: the default (SGD)
    spec = StudySpec(model="m", dataset="d", recipe=TrainRecipe(optimizer="adam"))
    assert (spec.space.base_lr, spec.space.scaling_rule) == (1e-3, "sqrt")


def test_recipe_table_and_flags(tmp_path):
    from autobatch.recipe import RecipeError, TrainRecipe

    path = tmp_path / "s.toml"
    path.write_text('model = "mlp"\n[recipe]\noptimizer = "adamw"\nweight_decay = 0.05\nbetas = [0.8, 0.99]\n'
                    '[space]\nbatch_size_max = 64\n')
    assert load_config(path)["recipe"] == {"optimizer": "adamw", "weight_decay": 0.05, "betas": [0.8, 0.99]}
    settings = build_settings(path, {"recipe": {"precision": "bf16", "metric": None}, "space": {}})
    assert settings.recipe == TrainRecipe(optimizer="adamw", weight_decay=0.05, betas=(0.8, 0.99), precision="bf16")
    assert (settings.space.base_lr, settings.space.scaling_rule) == (1e-3, "sqrt")
    # a flag's optimizer re-resolves what the file left to the default (its weight decay)
    path.write_text('[recipe]\noptimizer = "adamw"\n')
    assert build_settings(path, {"recipe": {"optimizer": "sgd"}}).recipe == TrainRecipe()
    assert build_settings(None, {}).recipe == TrainRecipe()
    path.write_text('[recipe]\nmomentum = "high"\n')
    with pytest.raises(RecipeError, match="^momentum: 'high' is not in"):
        build_settings(path, {})
    with pytest.raises(RecipeError, match="^base_lr: .* set --base-lr"):
        build_settings(None, {"recipe": {"optimizer": "pkg.mod:make"}})
    assert build_settings(None, {"recipe": {"optimizer": "pkg.mod:make"},
                                 "space": {"base_lr": 0.01, "scaling_rule": "none"}}).space.base_lr == 0.01


def test_a_spec_stored_without_a_recipe_is_todays_study():
    from autobatch.recipe import TrainRecipe

    today = StudySpec(model="resnet18", dataset="digits", train_samples=100)
    stored = today.to_dict()
    del stored["recipe"]  # as autobatch 0.1 stored it
    old = StudySpec.from_dict(stored)
    assert old == today and old.recipe == TrainRecipe() and old.identity_difference(today) is None
    other = StudySpec(model="resnet18", dataset="digits", recipe=TrainRecipe(optimizer="adamw"))
    assert old.identity_difference(other) == "recipe optimizer is 'sgd' there, 'adamw' here"


def test_resume_command_never_prints_a_password_and_never_names_an_unset_variable(monkeypatch):
    from autobatch.search import resume_command

    url = "postgresql://postgres:hunter2@db.example:5432/studies"
    monkeypatch.delenv("AUTOBATCH_STORAGE", raising=False)
    cmd = resume_command("s", url, "--n-trials", "8")
    assert "hunter2" not in cmd and "postgres:***@db.example:5432/studies" in cmd and "$AUTOBATCH" not in cmd
    monkeypatch.setenv("AUTOBATCH_STORAGE", url)
    assert '--storage "$AUTOBATCH_STORAGE"' in resume_command("s", url)
    assert "--storage sqlite:///x.db --n-trials 8" in resume_command("s", "sqlite:///x.db", "--n-trials", "8")
