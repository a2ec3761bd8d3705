"""Data in the box and data checked at load: shapes as samples have them, clear words for what
is wrong, conversions said once."""

import pytest
import torch
from torch.utils.data import TensorDataset

from autobatch.errors import AutobatchError, UserCodeError
from autobatch.workloads import build_model, check_data, load_workload
from tests import userland


def test_mnist1d_is_generated_offline_with_the_papers_split(monkeypatch):
    import numpy as np

    import mnist1d.data

    monkeypatch.setattr(mnist1d.data.requests, "get", lambda *a, **k: pytest.fail("downloaded"))
    before = np.random.get_state()[1].copy()
    w = load_workload("mnist1d")
    assert (len(w.train), len(w.val), w.num_classes, w.input_shape) == (4000, 1000, 10, (40,))
    assert w.train.tensors[0].dtype == torch.float32 and w.train.tensors[1].dtype == torch.int64
    assert np.array_equal(np.random.get_state()[1], before)  # the generator's global seeding is undone
    assert torch.bincount(w.train.tensors[1]).min() > 350  # 10 balanced classes
    model = build_model("cnn1d", num_classes=10, input_shape=w.input_shape)
    assert model(w.train.tensors[0][:5]).shape == (5, 10)


@pytest.mark.parametrize("name, features, classes", [("wine", 13, 3), ("breast_cancer", 30, 2)])
def test_sklearn_tables_by_name(name, features, classes):
    w = load_workload(name, seed=1)
    assert w.input_shape == (features,) and w.num_classes == classes
    x = w.train.tensors[0]
    assert torch.allclose(x.mean(0), torch.zeros(features), atol=1e-5)  # standardised on train
    assert build_model("mlp", num_classes=classes, input_shape=w.input_shape)(x[:3]).shape == (3, classes)


def test_factories_get_the_samples_own_shape_and_image_models_say_what_they_need():
    seen = {}

    def spy(num_classes, input_shape):
        seen["shape"] = input_shape
        return userland.linear(num_classes, input_shape)

    from autobatch.workloads import in_process

    with in_process({"tests:spy": spy}):
        build_model("tests:spy", num_classes=3, input_shape=(2, 40))
    assert seen["shape"] == (2, 40)
    with pytest.raises(AutobatchError, match=r"needs image inputs \(C, H, W\).*\(40,\).*cnn1d"):
        build_model("resnet18", num_classes=10, input_shape=(40,))
    assert build_model("cnn1d", num_classes=4, input_shape=(2, 40))(torch.randn(3, 2, 40)).shape == (3, 4)


def test_token_ids_give_a_vocabulary_and_the_gru_classifier_embeds_them():
    w = load_workload("tests.userland:tokens_dataset")
    assert w.input_shape == (userland.LENGTH,) and w.vocab_size == userland.VOCAB
    model = build_model("gru", num_classes=3, input_shape=w.input_shape, vocab_size=w.vocab_size)
    assert isinstance(model.embed, torch.nn.Embedding)
    assert model(w.train.tensors[0][:4]).shape == (4, 3)
    with pytest.raises(AutobatchError, match="token-id inputs"):
        build_model("gru", num_classes=3, input_shape=(6,), vocab_size=None)


def test_float64_inputs_are_trained_as_float32_and_integer_labels_cast():
    w = load_workload("tests.userland:float64_int16_dataset")
    assert w.train.tensors[0].dtype == torch.float32 and w.train.tensors[1].dtype == torch.int64
    assert w.notes == ("dataset tests.userland:float64_int16_dataset: float64 inputs are trained as float32",)


def test_labels_outside_the_classes_name_the_largest():
    with pytest.raises(AutobatchError, match=r"label 11 is outside \[0, 3\) \(largest label 11"):
        load_workload("tests.userland:bad_labels_dataset")
    x, y = userland.blobs(40)
    items = [(x[i], int(y[i]) + 5 * (i == 3)) for i in range(40)]  # a plain list of pairs, scanned
    with pytest.raises(AutobatchError, match="largest label"):
        check_data("plain", items, items, 3)


def test_an_empty_split_and_mismatched_target_width_are_refused():
    with pytest.raises(AutobatchError, match="validation split is empty"):
        load_workload("tests.userland:empty_val_dataset")
    x, y = userland.blobs(20)
    one_hot = torch.nn.functional.one_hot(y, 4).float()
    with pytest.raises(AutobatchError, match="4 values per sample but num_classes is 3"):
        check_data("onehot", TensorDataset(x, one_hot), TensorDataset(x, one_hot), 3)


def test_a_dataset_factory_or_item_that_raises_is_the_users_error():
    from autobatch.workloads import in_process

    def broken():
        raise FileNotFoundError("data/train.csv")

    with in_process({"mine:broken": broken}), pytest.raises(UserCodeError, match="dataset factory mine:broken raised"):
        load_workload("mine:broken")

    class Bad(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            raise IndexError("row 0 is corrupt")

    with pytest.raises(UserCodeError, match="item 0.*row 0 is corrupt"):
        check_data("bad", Bad(), Bad(), 2)


def test_targets_that_are_not_numbers_are_named_with_their_type():
    """A dataset whose targets are strings (class names) is one error line naming the type and
    what to do, not an AttributeError from inside the checks."""

    class Names(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.zeros(4), ("cat", "dog")[i % 2]

    with pytest.raises(AutobatchError, match=r"target of type str \('cat'\).*class indices"):
        check_data("names", Names(), Names(), 2)
    ints = [(torch.zeros(4), i % 2) for i in range(8)]  # plain Python ints stay accepted
    check_data("ints", ints, ints, 2)


# --- targets against the recipe's loss and metric: refused before anything trains --------------

REG = ("--model", "tests.userland:regression_model")
TARGETS_REFUSED = [
    ((*REG, "--dataset", "tests.userland:regression_dataset"),
     "loss: the targets are real values (from "),
    (("--model", "tests.userland:linear", "--dataset", "tests.userland:regression_column_dataset"),
     "loss: the targets are real values (from "),
    ((*REG, "--dataset", "tests.userland:regression_dataset", "--loss", "tests.recipe_userfns:l1_loss",
      "--metric", "accuracy"), "metric: accuracy needs class targets, these are real values"),
    (("--model", "tests.userland:linear", "--dataset", "tests.userland:unbounded_multi_hot_dataset", "--loss", "bce"),
     "loss: bce (binary cross-entropy) needs targets in [0, 1], these range from -0.5 to 1.5"),
]


@pytest.mark.parametrize("args, message", TARGETS_REFUSED)
def test_targets_the_loss_cannot_learn_are_refused_before_training(tmp_path, capsys, args, message):
    """Regression targets without ``--loss mse`` (before: the metric raised IndexError on the
    prediction, or a one-column target trained cross-entropy over one class: loss 0, accuracy
    100 %), and bce on targets outside [0, 1] (before: trained, with a negative loss): one line,
    exit 2, before the probe and before anything is stored."""
    from autobatch.cli import main

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    assert main(["tune", *args, "--n-trials", "1", "--storage", url]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"autobatch: error: {message}"), err
    assert "--loss mse" in lines[-1] or "--metric" in lines[-1]
    if (tmp_path / "studies.db").exists():
        import optuna

        assert optuna.get_all_study_names(url) == []  # refused before anything was stored


def test_regression_targets_refused_from_the_command_line_with_the_fix(tmp_path):
    from tests.conftest import run_cli

    done = run_cli("tune", *REG, "--dataset", "tests.userland:regression_dataset", "--n-trials", "1", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("autobatch: error: loss: the targets are real values")
    assert "pass --loss mse" in done.stderr


def test_targets_that_fit_the_loss_pass_the_check():
    from autobatch.recipe import TrainRecipe
    from autobatch.train import check_recipe

    cpu = torch.device("cpu")
    reg = load_workload("tests.userland:regression_dataset")
    assert reg.targets.floating and not reg.targets.whole and reg.targets.low < 0 and reg.targets.shape == ()
    check_recipe(userland.regression_model(1, (6,)), reg.val, cpu, TrainRecipe(loss="mse"), targets=reg.targets)
    blobs = load_workload("tests.userland:blobs_dataset")
    assert blobs.targets.whole and (blobs.targets.low, blobs.targets.high) == (0, 2)
    check_recipe(userland.linear(3, (6,)), blobs.val, cpu, TrainRecipe(), targets=blobs.targets)
    x, y = userland.blobs(40)
    as_floats = check_data("floats", TensorDataset(x, y.float()), TensorDataset(x, y.float()), 3)  # class ids as floats
    check_recipe(userland.linear(3, (6,)), as_floats.val, cpu, TrainRecipe(), targets=as_floats.targets)
    soft = torch.nn.functional.one_hot(y, 3).float() * 0.8 + 0.2 / 3  # probabilities, for cross-entropy and bce
    facts = check_data("soft", TensorDataset(x, soft), TensorDataset(x, soft), 3)
    for recipe in (TrainRecipe(), TrainRecipe(loss="bce")):
        check_recipe(userland.linear(3, (6,)), facts.val, cpu, recipe, targets=facts.targets)


def test_multi_hot_targets_are_refused_with_cross_entropy_and_train_with_bce(tmp_path, capsys):
    """Rows of 0/1 summing to more than 1 (class 0 always on) are not probabilities: before, they
    trained with cross-entropy and every trial scored accuracy 1.0 (the argmax of each row is
    class 0). Now one line and exit 2 before anything is stored, naming the fix (--loss bce);
    with bce the same targets pass the check. Integer multi-hot rows, all-zero rows and rows off
    1 by more than float error are refused too, and so is an accuracy with a user's loss."""
    from autobatch.cli import main
    from autobatch.recipe import RecipeError, TrainRecipe
    from autobatch.train import check_recipe

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    args = ["tune", "--model", "tests.userland:linear", "--dataset", "tests.userland:multi_hot_dataset",
            "--n-trials", "1", "--storage", url]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(
        "autobatch: error: loss: the targets are float vectors whose rows sum from 1 to 2, not probabilities"), lines
    assert "non-negative and sum to 1" in lines[-1] and "pass --loss bce" in lines[-1]
    assert not any("error" in line or "Traceback" in line for line in lines[:-1]), lines
    if (tmp_path / "studies.db").exists():
        import optuna

        assert optuna.get_all_study_names(url) == []

    multi, cpu, model = load_workload("tests.userland:multi_hot_dataset"), torch.device("cpu"), userland.linear(3, (6,))
    assert multi.targets.row_sums == (1.0, 2.0) and not multi.targets.probability_rows
    check_recipe(model, multi.val, cpu, TrainRecipe(loss="bce"), targets=multi.targets)
    with pytest.raises(RecipeError, match=r"^metric: accuracy needs class targets, these are float vectors"):
        check_recipe(model, multi.val, cpu, TrainRecipe(loss="tests.recipe_userfns:l1_loss", metric="accuracy"),
                     targets=multi.targets)
    x, y = userland.blobs(40)
    one_hot = torch.nn.functional.one_hot(y, 3)
    for targets, words in [(one_hot | torch.tensor([1, 0, 0]), "integer vectors whose rows sum from 1 to 2"),
                           (one_hot.float() * (y[:, None] != 0), "rows sum from 0 to 1"),
                           (one_hot.float() * 0.99 + 0.02 / 3, "rows sum to 1.01")]:
        facts = check_data("rows", TensorDataset(x, targets), TensorDataset(x, targets), 3)
        with pytest.raises(RecipeError, match=f"^loss: the targets are .*{words}.*--loss bce"):
            check_recipe(model, facts.val, cpu, TrainRecipe(), targets=facts.targets)


@pytest.mark.parametrize("form", ["int64", "bool", "float64", "soft", "soft float error", "soft smoothed", "scanned"])
def test_one_hot_and_probability_rows_pass_the_check(form):
    """One-hot targets of any dtype, soft labels (with label smoothing, and rows summing to 1
    only within float error) are probabilities: cross-entropy and accuracy take them."""
    from autobatch.recipe import TrainRecipe
    from autobatch.train import check_recipe

    x, y = userland.blobs(60)
    one_hot, g = torch.nn.functional.one_hot(y, 3), torch.Generator().manual_seed(0)
    targets = {"int64": one_hot, "bool": one_hot.bool(), "float64": one_hot.double(),
               "soft": one_hot * 0.8 + 0.2 / 3, "soft smoothed": one_hot * 0.8 + 0.2 / 3,
               "soft float error": torch.softmax(torch.randn(60, 3, generator=g), 1) * (1 + 2e-4 * torch.randn(60, 1, generator=g)),
               "scanned": one_hot.float()}[form]
    train = val = TensorDataset(x, targets)
    if form == "scanned":  # item by item, as any map-style dataset is checked
        train = val = [(x[i], targets[i]) for i in range(len(x))]
    facts = check_data(form, train, val, 3)
    assert facts.targets.probability_rows and facts.targets.shape == (3,)
    recipe = TrainRecipe(label_smoothing=0.1 if form == "soft smoothed" else 0.0)
    check_recipe(userland.linear(3, (6,)), facts.val, torch.device("cpu"), recipe, targets=facts.targets)


def test_numpy_items_are_read_as_the_default_collate_makes_them_tensors():
    """Items of NumPy arrays (float64 inputs, numpy int64 labels; float64 soft labels) are
    batched as tensors by PyTorch's default collate, as the README says: the check at load takes
    them (before: "inputs must be tensors ..., got ndarray"), float64 is trained as float32 as
    for tensors, and the loader's batches and the recipe's check work on them."""
    import numpy as np

    from autobatch.recipe import TrainRecipe
    from autobatch.train import check_recipe, sample_batch

    w = load_workload("tests.userland:numpy_items_dataset")
    assert w.input_shape == (6,) and w.vocab_size is None
    assert w.notes == ("dataset tests.userland:numpy_items_dataset: float64 inputs are trained as float32",)
    assert w.targets.whole and (w.targets.low, w.targets.high) == (0, 2) and w.targets.shape == ()
    x, y = sample_batch(w.train, 8)
    assert x.dtype == torch.float32 and x.shape == (8, 6) and y.dtype == torch.int64
    check_recipe(userland.linear(3, (6,)), w.val, torch.device("cpu"), TrainRecipe(), targets=w.targets)

    xs, ys = userland.blobs(30)
    soft = (torch.nn.functional.one_hot(ys, 3).double() * 0.9 + 0.1 / 3).numpy()
    items = [(xs[i].numpy(), soft[i]) for i in range(30)]
    facts = check_data("numpy soft", items, items, 3)
    assert facts.targets.shape == (3,) and facts.targets.probability_rows
    check_recipe(userland.linear(3, (6,)), facts.val, torch.device("cpu"), TrainRecipe(), targets=facts.targets)
    strings = [(np.array(["a", "b"]), 0)] * 4  # not numbers: still refused, naming the type
    with pytest.raises(AutobatchError, match="inputs must be tensors .*got ndarray"):
        check_data("strings", strings, strings, 2)


def test_the_recipe_check_runs_a_model_that_needs_more_samples_than_its_first_batch():
    """The check evaluates 4 validation samples; a model whose minimum batch is larger (16) is
    checked again on up to 64 (here the 60 the validation set has) and passes (the probe then
    finds its smallest micro-batch); one that fails there too gets the first failure's line."""
    from autobatch.recipe import TrainRecipe
    from autobatch.train import check_recipe

    blobs, cpu = load_workload("tests.userland:blobs_dataset"), torch.device("cpu")
    assert 16 <= len(blobs.val) <= 64
    check_recipe(userland.MinBatch(6, 3, least=16), blobs.val, cpu, TrainRecipe(), targets=blobs.targets)
    with pytest.raises(UserCodeError, match="need at least 1000 samples per batch, got 4$"):
        check_recipe(userland.MinBatch(6, 3, least=1000), blobs.val, cpu, TrainRecipe(), targets=blobs.targets)
