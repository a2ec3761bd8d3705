import pytest
import torch
from torch.utils.data import TensorDataset

from autobatch.errors import AutobatchError
from autobatch.workloads import build_model, check_model_name, list_models, load_workload


def _factory_model(num_classes, input_shape):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], num_classes))


def _factory_wrong(num_classes, input_shape):
    return "not a model"


def _dataset_factory():
    x = torch.randn(40, 1, 4, 4)
    y = torch.arange(40) % 2
    return TensorDataset(x[:30], y[:30]), TensorDataset(x[30:], y[30:]), 2


def _dataset_wrong():
    return [1, 2, 3]


def test_digits_split_is_deterministic_for_a_seed():
    a, b, c = load_workload("digits", seed=1), load_workload("digits", seed=1), load_workload("digits", seed=2)
    assert len(a.train) + len(a.val) == 1797 and a.num_classes == 10 and a.input_shape == (1, 8, 8)
    assert torch.equal(a.val.tensors[1], b.val.tensors[1])
    assert not torch.equal(a.val.tensors[1], c.val.tensors[1])


@pytest.mark.parametrize("spec", ["synthetic:abc", "synthetic:64x3x32", "synthetic:", "synthetic:64x3x32x32x1"])
def test_a_malformed_synthetic_spec_names_the_expected_form(spec):
    with pytest.raises(AutobatchError) as caught:
        load_workload(spec)
    message = str(caught.value)
    assert f"dataset {spec!r}: write synthetic:NxCxHxW" in message and "e.g. synthetic:2048x3x32x32" in message
    assert "\n" not in message and "did you mean" not in message


def test_synthetic_shape_seed_and_learnable():
    w = load_workload("synthetic:200x3x16x16", seed=3)
    assert w.input_shape == (3, 16, 16) and len(w.train) + len(w.val) == 200
    assert torch.equal(w.train.tensors[0], load_workload("synthetic:200x3x16x16", seed=3).train.tensors[0])
    # class-dependent: a nearest-class-mean classifier beats chance by far
    x, y = w.train.tensors
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    vx, vy = w.val.tensors
    pred = torch.cdist(vx.flatten(1), means.flatten(1)).argmin(1)
    assert (pred == vy).float().mean() > 0.5


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "small_cnn", "mlp"])
def test_models_adapt_to_digits(name):
    model = build_model(name, num_classes=10, input_shape=(1, 8, 8)).train()
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_model_needing_a_larger_input_is_adapted():
    model = build_model("squeezenet1_1", num_classes=7, input_shape=(1, 8, 8)).train()
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 7)


def test_all_torchvision_classification_models_are_listed():
    names = list_models()
    assert {"resnet18", "vit_b_16", "convnext_tiny", "small_cnn"} <= set(names)


def test_unknown_model_lists_close_matches():
    with pytest.raises(AutobatchError, match="resnet18"):
        check_model_name("resnet81")


def test_user_model_factory():
    model = build_model("tests.test_workloads:_factory_model", num_classes=3, input_shape=(1, 4, 4))
    assert model(torch.zeros(2, 1, 4, 4)).shape == (2, 3)
    with pytest.raises(AutobatchError, match="not a torch.nn.Module"):
        build_model("tests.test_workloads:_factory_wrong", num_classes=3, input_shape=(1, 4, 4))
    with pytest.raises(AutobatchError, match="cannot import"):
        build_model("no_such_pkg.mod:fn", num_classes=3, input_shape=(1, 4, 4))
    with pytest.raises(AutobatchError, match="no callable"):
        build_model("tests.test_workloads:missing", num_classes=3, input_shape=(1, 4, 4))


def test_user_dataset_factory():
    w = load_workload("tests.test_workloads:_dataset_factory")
    assert w.num_classes == 2 and w.input_shape == (1, 4, 4) and len(w.val) == 10
    with pytest.raises(AutobatchError, match="must return"):
        load_workload("tests.test_workloads:_dataset_wrong")


def test_dataset_errors(tmp_path):
    with pytest.raises(AutobatchError, match="digits"):
        load_workload("digit")
    with pytest.raises(AutobatchError, match="cifar-10-batches-py"):
        load_workload("cifar10", data_dir=tmp_path)
    with pytest.raises(AutobatchError, match="not a directory"):
        load_workload(f"imagefolder:{tmp_path / 'nope'}")


def test_imagefolder_loads_real_image_files(tmp_path):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(5):
            Image.new("RGB", (20, 30), color=(i * 40, 0, 0)).save(tmp_path / label / f"{i}.png")
    w = load_workload(f"imagefolder:{tmp_path}", seed=0)
    assert w.num_classes == 2 and len(w.train) == 8 and len(w.val) == 2
    x, y = w.train[0]
    assert tuple(x.shape) == w.input_shape == (3, 64, 64)
