"""Batch conventions: inputs of any structure, shape and dtype; targets of any kind; outputs
beyond a logits tensor; models that compute their own loss; the user's errors named."""

import pytest
import torch
from torch import nn

from autobatch.errors import AutobatchError, UserCodeError
from autobatch.recipe import TrainRecipe
from autobatch.train import evaluate, make_compute_loss
from autobatch.workloads import prediction_of, split_batch, user_code
from tests import userland

F = nn.functional


@pytest.mark.parametrize("kind", ["tensor", "tuple", "list", "dict", "ordered", "object"])
def test_outputs_become_the_prediction(kind):
    torch.manual_seed(0)
    model = userland.Outputs(6, 3, kind)
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 1, 0])
    expected = F.cross_entropy(model.linear(x), y)
    assert torch.allclose(make_compute_loss()(model, (x, y)), expected)


def test_an_output_without_a_prediction_is_one_clear_error():
    model = userland.Outputs(6, 3, "string")
    with pytest.raises(AutobatchError, match="returned str.*--step"):
        make_compute_loss()(model, (torch.randn(2, 6), torch.tensor([0, 1])))


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8])
def test_class_indices_of_any_integer_dtype(dtype):
    torch.manual_seed(0)
    model, x = nn.Linear(6, 3), torch.randn(4, 6)
    y = torch.tensor([0, 2, 1, 2])
    assert torch.allclose(make_compute_loss()(model, (x, y.to(dtype))), F.cross_entropy(model(x), y))


def test_one_hot_and_soft_targets_train_and_score_against_the_argmax():
    torch.manual_seed(0)
    model, x = nn.Linear(6, 3), torch.randn(4, 6)
    y = torch.tensor([0, 2, 1, 2])
    one_hot = F.one_hot(y, 3).float()
    assert torch.allclose(make_compute_loss()(model, (x, one_hot)), F.cross_entropy(model(x), y))
    soft = 0.8 * one_hot + 0.2 / 3
    assert torch.allclose(make_compute_loss()(model, (x, soft)), F.cross_entropy(model(x), soft))
    data = torch.utils.data.TensorDataset(x, soft)
    accuracy, _ = evaluate(model, data, 2, torch.device("cpu"))
    assert accuracy == pytest.approx((model(x).argmax(1) == y).float().mean().item())


def test_multi_hot_and_regression_targets_reach_the_recipes_loss():
    torch.manual_seed(0)
    model, x = nn.Linear(6, 3), torch.randn(4, 6)
    multi_hot = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]], dtype=torch.int32)
    bce = make_compute_loss(TrainRecipe(loss="bce", metric="val_loss"))(model, (x, multi_hot))
    assert torch.allclose(bce, F.binary_cross_entropy_with_logits(model(x), multi_hot.float()))
    one = nn.Linear(6, 1)
    regression = torch.randn(4)
    mse = make_compute_loss(TrainRecipe(loss="mse", metric="mae"))(one, (x, regression))
    assert torch.allclose(mse, F.mse_loss(one(x).squeeze(1), regression))


def test_tuple_and_dict_inputs_call_the_model_with_positional_or_keyword_arguments():
    torch.manual_seed(0)
    left, right, y = torch.randn(4, 6), torch.randn(4, 2), torch.tensor([0, 1, 2, 0])
    two = userland.TwoInputs(3)
    assert torch.allclose(make_compute_loss()(two, ((left, right), y)), F.cross_entropy(two(left, right), y))
    kw = userland.KeywordInputs(3)
    batch = ({"signal": left, "extra": right}, y)
    assert torch.allclose(make_compute_loss()(kw, batch), F.cross_entropy(kw(signal=left, extra=right), y))


def test_hugging_face_samples_and_a_model_that_computes_its_own_loss():
    train, _, _ = userland.hf_dataset()
    batch = torch.utils.data.default_collate([train[i] for i in range(8)])
    inputs, targets, key = split_batch(batch)
    assert key == "labels" and set(inputs) == {"input_ids", "attention_mask"}
    model = userland.hf_style(3, (12,))
    calls = []
    model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(sorted(kwargs)), with_kwargs=True)
    loss = make_compute_loss(TrainRecipe(label_smoothing=0.0))(model, batch)
    assert calls == [["attention_mask", "input_ids", "labels"]]  # its forward names labels: passed
    expected = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"]).loss
    assert torch.allclose(loss, expected)


def test_split_batch_refuses_what_it_cannot_read():
    with pytest.raises(AutobatchError, match="'labels' or 'label'"):
        split_batch({"input_ids": torch.zeros(2, 3)})
    with pytest.raises(AutobatchError, match=r"\(inputs, target\)"):
        split_batch((torch.zeros(2), torch.zeros(2), torch.zeros(2)))


def test_the_users_errors_are_named_and_out_of_memory_passes_through():
    with pytest.raises(UserCodeError, match="forward of BrokenForward raised ValueError: shapes do not match"):
        make_compute_loss()(userland.BrokenForward(), (torch.randn(2, 6), torch.tensor([0, 1])))
    # labels out of range surface from the loss as the user's error, with the loss named
    with pytest.raises(UserCodeError, match="loss cross_entropy"):
        make_compute_loss()(nn.Linear(6, 3), (torch.randn(2, 6), torch.tensor([0, 7])))
    with pytest.raises(torch.OutOfMemoryError):
        with user_code("forward"):
            raise torch.OutOfMemoryError("CUDA out of memory")


def test_prediction_of_a_tensor_is_itself():
    t = torch.randn(2, 3)
    assert prediction_of(t) is t
