import copy
import json
import random

import pytest
import torch
from torch.utils.data import TensorDataset
from torch import nn
from torch.profiler import ProfilerActivity, profile

from autobatch import memory
from autobatch.errors import AutobatchError
from autobatch.memory._measure import _cpu_allocations
from autobatch.memory._probe import _fit_points
from autobatch.recipe import TrainRecipe
from autobatch.train import step_runner
from autobatch.memory import (
    MemoryModel,
    ProbePoint,
    fit_memory_model,
    largest_power_of_two_at_most,
    measure_step_peak,
    probe,
    relative_error,
    running_peak,
)

MiB = 2**20
CPU = torch.device("cpu")
SHAPE = (3, 16, 16)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_cnn(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )


RECIPE = TrainRecipe(optimizer="sgd", momentum=0.9, nesterov=False, weight_decay=0.0)


def runner(model, shape=SHAPE, device=CPU, **kwargs):
    """Complete SGD training steps on a copy of ``model``, on batches of a small training set:
    what the probe measures."""
    gen = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.randn(64, *shape, generator=gen), torch.randint(0, 10, (64,), generator=gen))
    return step_runner(model, dataset=dataset, device=device, recipe=RECIPE, **kwargs)


def measure(model, batch_size, **kwargs):
    return measure_step_peak(runner(model, **kwargs), batch_size=batch_size, device=CPU)


def param_bytes(model):
    return sum(p.numel() * p.element_size() for p in model.parameters())


# --- Pure math ---------------------------------------------------------------------------

def test_fit_two_points_is_exact():
    m = fit_memory_model([(2, 1000 + 2 * 300), (8, 1000 + 8 * 300)])
    assert m.fixed_bytes == pytest.approx(1000)
    assert m.per_sample_bytes == pytest.approx(300)
    assert m.predict(32) == pytest.approx(1000 + 32 * 300)


def test_fit_exact_line_through_many_points():
    m = fit_memory_model([(b, 5e8 + 3e6 * b) for b in (1, 2, 4, 8, 16)])
    assert m.fixed_bytes == pytest.approx(5e8)
    assert m.per_sample_bytes == pytest.approx(3e6)


def test_fit_noisy_line_is_close():
    rng = random.Random(0)
    points = [(b, 5e8 + 3e6 * b + rng.gauss(0, 1e5)) for b in range(1, 65)]
    m = fit_memory_model(points)
    assert m.per_sample_bytes == pytest.approx(3e6, rel=0.01)
    assert m.fixed_bytes == pytest.approx(5e8, rel=0.001)


def test_fit_needs_two_distinct_sizes():
    with pytest.raises(AutobatchError):
        fit_memory_model([(4, 100.0), (4, 110.0)])
    with pytest.raises(AutobatchError):
        fit_memory_model([])


def test_fit_negative_slope_is_clamped_to_the_largest_peak():
    m = fit_memory_model([(2, 1010.0), (8, 1000.0)])
    assert m.per_sample_bytes == 0.0
    assert m.fixed_bytes == 1010.0


@pytest.mark.parametrize(
    "cap, expected",
    [
        (1000 + 10 * 300, 10),       # exactly on the line
        (1000 + 10 * 300 - 1, 9),    # one byte short
        (1000 + 10 * 300 + 299, 10),
        (1000 + 300, 1),
        (1000 + 299, 0),             # between fixed and predict(1)
        (999, 0),                    # cap below fixed
        (0, 0),
    ],
)
def test_max_batch_size_is_the_inverse(cap, expected):
    m = MemoryModel(fixed_bytes=1000, per_sample_bytes=300)
    assert m.max_batch_size(cap) == expected
    if expected:
        assert m.predict(expected) <= cap < m.predict(expected + 1)


def test_max_batch_size_float_rounding():
    m = MemoryModel(fixed_bytes=0.1, per_sample_bytes=0.2)
    b = m.max_batch_size(0.7)
    assert m.predict(b) <= 0.7 < m.predict(b + 1)


def test_max_batch_size_without_per_sample_growth_is_unbounded():
    m = MemoryModel(fixed_bytes=1000, per_sample_bytes=0)
    assert m.max_batch_size(2000) == memory.UNBOUNDED_BATCH_SIZE
    assert m.max_batch_size(999) == 0


def test_memory_model_round_trip_and_reading_a_probe_dict():
    m = MemoryModel(fixed_bytes=1.5e8, per_sample_bytes=4.5e5)
    assert MemoryModel.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert MemoryModel.from_dict({**m.to_dict(), "cap_bytes": 1, "device": "cpu"}) == m


def test_relative_error_is_signed():
    assert relative_error(110, 100) == pytest.approx(0.10)
    assert relative_error(90, 100) == pytest.approx(-0.10)
    with pytest.raises(ValueError):
        relative_error(1, 0)


@pytest.mark.parametrize("n, expected", [(0, 0), (1, 1), (2, 2), (3, 2), (63, 32), (64, 64), (65, 64)])
def test_largest_power_of_two_at_most(n, expected):
    assert largest_power_of_two_at_most(n) == expected


def test_running_peak_ignores_frees_from_before_the_window():
    events = [(1, -500), (2, 100), (3, 50), (2, -100), (4, 30), (5, -999), (3, -50)]
    assert running_peak(events) == 150
    assert running_peak([(9, -100)]) == 0
    assert running_peak([]) == 0


# --- CPU accounting through the profiler -------------------------------------------------

def window_peak(body):
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        body()
    return running_peak(_cpu_allocations(prof))


def test_profiler_accounting_of_a_known_allocation():
    before = torch.ones(2 * MiB // 4)        # allocated before the window, freed inside it
    holder = {}

    def body():
        nonlocal before
        before = None                        # a free the window must not count
        a = torch.empty(MiB)                 # 4 MiB of float32
        del a
        holder["b"] = torch.empty(MiB // 4)  # 1 MiB, still alive at the end
        holder["c"] = torch.empty(MiB // 4)  # 1 MiB

    assert window_peak(body) == 4 * MiB


def test_profiler_accounting_ignores_frees_of_earlier_windows():
    kept = {}
    window_peak(lambda: kept.setdefault("x", torch.empty(MiB)))  # 4 MiB from window 1

    def body():
        kept.clear()                        # freed in window 2 with a known size
        torch.empty(MiB // 4)
    assert window_peak(body) == 1 * MiB


# --- Measurement -------------------------------------------------------------------------

def test_peak_is_monotone_in_batch_size_and_counts_the_state():
    model = small_cnn()
    points = [measure(model, b) for b in (1, 2, 4, 8, 16)]
    peaks = [p.peak_bytes for p in points]
    assert all(p.fits and p.reserved_bytes is None for p in points)
    assert peaks == sorted(peaks)
    assert peaks[-1] > peaks[0]
    # the copy's parameters, its gradients and momentum, plus the batch itself
    floor = 3 * param_bytes(model) + 16 * 3 * 16 * 16 * 4
    assert peaks[-1] >= floor


def test_second_step_holds_the_optimizer_state():
    model = small_cnn()
    one, two, three = (measure(model, 4, steps=s).peak_bytes for s in (1, 2, 3))
    assert one < two == three


def test_probe_leaves_weights_optimizer_and_rng_untouched():
    model = small_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, *SHAPE)).sum().backward()
    optimizer.step()
    model.eval()
    weights = copy.deepcopy(model.state_dict())
    state = copy.deepcopy(optimizer.state_dict())
    grads = [p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()

    probe(runner(model), device=CPU, sizes=(2, 4), check_size=8)

    assert not model.training
    assert torch.equal(torch.get_rng_state(), rng)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)
    after = optimizer.state_dict()
    assert after["param_groups"] == state["param_groups"]
    for key, per_param in state["state"].items():
        for name, value in per_param.items():
            assert torch.equal(after["state"][key][name], value), (key, name)


def test_probe_fits_checks_and_inverts():
    model = small_cnn()
    result = probe(runner(model), device=CPU, cap_bytes=64 * MiB, sizes=(2, 8), check_size=32)
    assert [p.batch_size for p in result.points] == [2, 8]
    assert result.check is not None and result.check.batch_size == 32
    assert abs(result.check_error) < 0.05
    assert result.max_batch_size == result.model.max_batch_size(64 * MiB) > 32
    data = json.loads(json.dumps(result.to_dict()))
    assert data["sizes"] == [2, 8] and data["device"] == "cpu"
    assert MemoryModel.from_dict(data) == result.model


def test_cap_below_micro_batch_one_is_a_user_error():
    model = small_cnn()
    with pytest.raises(AutobatchError, match=r"micro-batch 1 needs \(measured .*\)"):
        probe(runner(model), device=CPU, cap_bytes=1000, check_size=None)


def fake_measure(limit, calls):
    """A device where sizes above ``limit`` run out of memory."""
    def measure_(size):
        calls.append(size)
        fits = size <= limit
        return ProbePoint(batch_size=size, peak_bytes=100 + size if fits else None,
                          reserved_bytes=None, fits=fits, seconds=0.0)
    return measure_


def test_sizes_that_do_not_fit_are_replaced_by_smaller_ones():
    calls = []
    points = _fit_points(fake_measure(5, calls), (2, 8), CPU)
    assert [p.batch_size for p in points] == [2, 4]
    assert calls == [2, 8, 4]


def test_nothing_fits_is_a_user_error():
    with pytest.raises(AutobatchError, match="does not fit"):
        _fit_points(fake_measure(1, []), (2, 8), CPU)


def test_default_cap_is_none_on_cpu():
    assert memory.default_cap(CPU) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_probe_and_out_of_memory():
    cuda = torch.device("cuda")
    model = small_cnn()
    small, large = (measure_step_peak(runner(model, device=cuda), batch_size=b, device=cuda) for b in (2, 64))
    assert small.fits and large.fits and small.peak_bytes < large.peak_bytes
    assert large.reserved_bytes >= 0
    before = torch.cuda.memory_allocated(cuda)
    huge = measure_step_peak(runner(model, shape=(3, 64, 64), device=cuda), batch_size=2**22, device=cuda)
    assert not huge.fits and huge.peak_bytes is None
    assert torch.cuda.memory_allocated(cuda) == before
    assert torch.cuda.max_memory_allocated(cuda) == before
    total = torch.cuda.get_device_properties(cuda).total_memory
    assert 0 < memory.default_cap(cuda) < total
