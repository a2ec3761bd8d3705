import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.data import TensorDataset
from torch import nn
from torch.profiler import ProfilerActivity, profile

from autobatch import memory
from autobatch.errors import AutobatchError, UserCodeError
from autobatch.memory._measure import _cpu_allocations
from autobatch.recipe import TrainRecipe
from autobatch.train import eval_runner, step_runner
from autobatch.memory import (
    MemoryEstimate,
    MemoryModel,
    fit_memory_model,
    is_out_of_memory,
    largest_power_of_two_at_most,
    measure_step_peak,
    probe,
    running_peak,
)
from tests import userland
from tests.conftest import REPO

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


def eval_run(model, shape=SHAPE, device=CPU):
    """An evaluation at a batch size beside the training state: what the probe measures for it."""
    gen = torch.Generator().manual_seed(1)
    dataset = TensorDataset(torch.randn(64, *shape, generator=gen), torch.randint(0, 10, (64,), generator=gen))
    return eval_runner(model, dataset=dataset, device=device, recipe=RECIPE)


def measure(model, batch_size, **kwargs):
    return measure_step_peak(runner(model, **kwargs), batch_size=batch_size, device=CPU)


def param_bytes(model):
    return sum(p.numel() * p.element_size() for p in model.parameters())


# --- Pure helpers ------------------------------------------------------------------------

def test_fit_needs_two_distinct_sizes():
    with pytest.raises(ValueError):
        fit_memory_model([(4, 100.0), (4, 110.0)])
    with pytest.raises(ValueError):
        fit_memory_model([])


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

    probe(runner(model), device=CPU, space_max=8)

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


def test_probe_measures_at_the_boundary_and_inverts():
    model = small_cnn()
    seen = []
    result = probe(runner(model), device=CPU, cap_bytes=8 * MiB, space_max=1024,
                   run_eval=eval_run(model),
                   eval_space_max=300, on_point=lambda point, step: seen.append((point, step)))
    sizes = [p.batch_size for p in result.points]
    assert len(sizes) <= 5 and sizes[:2] == [2, 8] and result.converged
    assert result.boundary == result.max_batch_size == result.model.max_batch_size(8 * MiB)
    assert 32 < result.boundary < 1024 and result.boundary in sizes   # measured where it is used
    assert 0 <= result.boundary_error <= 0.05
    # the limit holds for real: the boundary fits, one sample more does not (or barely)
    assert measure(model, result.boundary).peak_bytes <= 8 * MiB
    assert [p for p, _ in seen] == [*result.points, *result.eval_points]
    assert all(p.rss_bytes is not None and p.phase == "train" for p in result.points)
    assert seen[len(result.points) - 1][1].done and seen[-1][1].done
    # evaluation: measured up to 4x the largest micro-batch, at most the validation set, under the cap
    e = result.estimate
    assert e.eval is not None and [p.phase for p in result.eval_points] == ["eval"] * len(result.eval_points)
    assert max(p.batch_size for p in result.eval_points) == e.eval_max_batch_size <= 300
    assert e.eval.predict(e.eval_max_batch_size) <= 8 * MiB
    data = json.loads(json.dumps(result.to_dict()))
    assert data["sizes"] == sizes and data["device"] == "cpu" and data["form"] == result.model.form
    assert MemoryModel.from_dict(data) == result.model
    assert MemoryEstimate.from_dict(data) == e


def test_evaluation_peak_grows_with_its_batch_and_holds_the_training_state():
    model = small_cnn()
    run = eval_run(model)
    small, large = (measure_step_peak(run, batch_size=b, device=CPU, phase="eval") for b in (8, 512))
    assert small.fits and large.peak_bytes > small.peak_bytes
    assert small.peak_bytes >= 2 * param_bytes(model)            # parameters + momentum
    # no activations kept for backward: evaluation at 4x the batch costs less than 4x training
    assert large.peak_bytes - small.peak_bytes < 4 * (measure(model, 128).peak_bytes - measure(model, 2).peak_bytes)


class Blowup(nn.Module):
    """A layer whose activation is absurdly large above ``limit`` samples: the CPU allocator
    really fails to allocate it (a PiB), as it fails for a real model past the machine's memory."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit

    def forward(self, x):
        if x.shape[0] > self.limit:
            x = x + x.new_empty(2**48)[: 1].sum()
        return x


def test_cpu_allocation_failure_is_out_of_memory_and_bisected():
    model = nn.Sequential(Blowup(20), small_cnn())
    point = measure(model, 64)
    assert not point.fits and point.peak_bytes is None
    result = probe(runner(model), device=CPU, cap_bytes=2**40, space_max=256)
    sizes = [p.batch_size for p in result.points]
    assert sizes[:3] == [2, 8, 32] and not result.points[2].fits and len(sizes) <= 5
    assert 8 <= result.max_batch_size <= 20 and result.estimate.too_big <= 32
    assert result.boundary == result.max_batch_size and result.boundary in sizes  # measured, not guessed
    assert all(p.fits for p in result.points if p.batch_size <= 20)


def test_a_size_the_users_code_refuses_bounds_the_probe_like_out_of_memory():
    model = userland.SizeLimited(3 * 16 * 16, 10, limit=20)
    result = probe(runner(model), device=CPU, cap_bytes=2**40, space_max=256, run_eval=eval_run(model))
    sizes = [p.batch_size for p in result.points]
    assert sizes[:3] == [2, 8, 32] and result.points[2].peak_bytes is None and len(sizes) <= 5
    refused = result.refused
    assert refused is not None and refused.batch_size > 20 and not refused.fits
    assert refused.refused == ("forward of SizeLimited raised RuntimeError: "
                               "batch too big for my custom kernel (> 20)")  # the first line only
    assert 8 <= result.max_batch_size <= 20 and result.estimate.too_big <= refused.batch_size
    assert all(p.fits for p in result.points if p.batch_size <= 20)
    assert result.estimate.eval_max_batch_size <= 20 and result.eval_refused is not None  # evaluation too
    stored = MemoryEstimate.from_dict(result.to_dict())  # the study attribute keeps why
    assert stored.refused_batch_size == refused.batch_size and stored.refused_reason == refused.refused
    assert stored.refusal(refused.batch_size - 1) is None
    assert refused.refused in stored.refusal(256)
    refit_data = memory.refit(result.to_dict(), [memory.TrialPeaks(batch_size=8, train_bytes=1.0)])
    assert MemoryEstimate.from_dict(refit_data).refused_batch_size == refused.batch_size


def test_a_model_that_fails_at_the_first_size_still_raises_its_one_line():
    model = userland.SizeLimited(3 * 16 * 16, 10, limit=1)
    with pytest.raises(UserCodeError, match="batch too big for my custom kernel"):
        probe(runner(model), device=CPU, cap_bytes=2**40, space_max=256)


def test_a_size_too_small_for_the_model_is_a_lower_bound_and_the_probe_moves_up():
    # raises below 4 samples (a statistic over the batch): 2 is too small, not the end of the probe
    model = userland.MinBatch(3 * 16 * 16, 10, least=4)
    result = probe(runner(model), device=CPU, cap_bytes=2**40, space_max=256, run_eval=eval_run(model))
    first, second = result.points[:2]
    assert first.batch_size == 2 and first.too_small and not first.fits and first.peak_bytes is None
    assert first.refused == "forward of MinBatch raised RuntimeError: need at least 4 samples per batch, got 2"
    assert second.batch_size == 4 and second.fits                   # the next size up
    assert result.too_small == first and result.refused is None      # a lower bound, not an upper one
    assert result.boundary == 256 and result.estimate.too_big is None and result.converged
    assert MemoryEstimate.from_dict(result.to_dict()).refused_batch_size is None
    assert result.eval_points and all(p.fits for p in result.eval_points) and result.eval_note is None
    # a searched range from 8: nothing below it is measured
    inside = probe(runner(model), device=CPU, cap_bytes=2**40, space_min=8, space_max=256)
    assert inside.points[0].batch_size == 8 and all(p.fits for p in inside.points)
    # too small below 4 and out of memory from 4 on: nothing runs, both bounds in one line
    with pytest.raises(AutobatchError, match=r"^micro-batch 3 is too small for this model \(forward of Sequential "
                                             r"raised RuntimeError: need at least 4 .*\) and 4 does not fit in cpu"):
        probe(runner(nn.Sequential(Blowup(3), model)), device=CPU, cap_bytes=2**40, space_max=256)


def test_out_of_memory_classifier():
    with pytest.raises(RuntimeError) as cpu:
        torch.empty(2**50, dtype=torch.uint8)
    assert is_out_of_memory(cpu.value)
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1.2 GB)"))
    assert is_out_of_memory(RuntimeError("XPU out of memory."))
    assert not is_out_of_memory(ValueError("Expected more than 1 value per channel when training"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"))
    try:
        try:
            raise cpu.value
        except RuntimeError as inner:
            raise RuntimeError("could not create a primitive") from inner
    except RuntimeError as wrapped:
        assert is_out_of_memory(wrapped)


def test_cap_below_micro_batch_one_is_a_user_error():
    model = small_cnn()
    with pytest.raises(AutobatchError, match=r"below what micro-batch 1 needs \(measured .*\)"):
        probe(runner(model), device=CPU, cap_bytes=1000)


def test_default_cap_on_cpu_is_the_available_memory_less_a_margin():
    available = memory.available_cpu_memory()
    cap = memory.default_cap(CPU)
    assert 0 < cap < available["available"] <= available["mem_available"]
    # MemAvailable moves between the two readings (other processes): equal within 2%
    assert cap == pytest.approx(available["available"] - memory.cpu_margin(available["available"]), rel=0.02)
    assert memory.cpu_margin(10 * 2**30) == 2 * 2**30 and memory.cpu_margin(300 * MiB) == 150 * MiB


def test_default_cap_follows_an_address_space_limit():
    code = ("import resource, torch; from autobatch import memory; "
            "from autobatch.memory._cap import address_space_headroom; "
            "soft = memory.available_cpu_memory(); "
            "vm = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024; "
            "resource.setrlimit(resource.RLIMIT_AS, (vm + 600 * 2**20, resource.RLIM_INFINITY)); "
            "a = memory.available_cpu_memory(); print(a['address_space'], a['available'], memory.default_cap('cpu'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    headroom, available, cap = map(int, done.stdout.split())
    assert 500 * MiB < headroom <= 600 * MiB and available == headroom
    assert cap == headroom - memory.cpu_margin(headroom)


def test_cgroup_headroom_v1_and_v2(tmp_path):
    from autobatch.memory._cap import cgroup_headroom

    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "memory.max").write_text("1073741824\n")
    (tmp_path / "job" / "memory.current").write_text("73741824\n")
    (tmp_path / "cg").write_text("0::/job\n")
    assert cgroup_headroom(tmp_path, tmp_path / "cg") == 10**9
    (tmp_path / "job" / "memory.max").write_text("max\n")
    assert cgroup_headroom(tmp_path, tmp_path / "cg") is None
    (tmp_path / "memory" / "box").mkdir(parents=True)
    (tmp_path / "memory" / "box" / "memory.limit_in_bytes").write_text(str(2**31))
    (tmp_path / "memory" / "box" / "memory.usage_in_bytes").write_text(str(2**30))
    (tmp_path / "cg1").write_text("4:memory:/box\n1:cpu:/\n")
    assert cgroup_headroom(tmp_path, tmp_path / "cg1") == 2**30
    (tmp_path / "memory" / "box" / "memory.limit_in_bytes").write_text("9223372036854771712")
    assert cgroup_headroom(tmp_path, tmp_path / "cg1") is None


def test_trial_meter_counts_what_is_alive_and_what_the_phase_allocates():
    meter = memory.TrialMeter(CPU)
    kept = torch.ones(MiB // 4)                       # 1 MiB alive before the phase
    with meter.phase("train", lambda: memory.live_tensor_bytes([kept, kept[:10]])):
        scratch = torch.empty(MiB)                    # 4 MiB inside it
        del scratch
    assert meter.peaks["train"] == 5 * MiB and meter.peak_bytes() == 5 * MiB
    assert meter.rss_bytes is None or meter.rss_bytes > 0


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_probe_measures_at_the_boundary_and_the_trial_meter_keeps_the_whole_peak():
    cuda = torch.device("cuda")
    model = small_cnn()
    result = probe(runner(model, device=cuda), device=cuda, cap_bytes=64 * MiB, space_max=8192)
    assert result.boundary in [p.batch_size for p in result.points]
    assert result.boundary_error is not None and 0 <= result.boundary_error <= 0.05
    again = measure_step_peak(runner(model, device=cuda), batch_size=result.boundary, device=cuda)
    assert again.peak_bytes <= 64 * MiB
    meter = memory.TrialMeter(cuda)
    with meter.phase("train", lambda: 0):
        torch.empty(16 * MiB, dtype=torch.uint8, device=cuda)
    with meter.phase("eval", lambda: 0):
        torch.empty(4 * MiB, dtype=torch.uint8, device=cuda)
    assert meter.peaks["train"] >= 16 * MiB > meter.peaks["eval"] >= 4 * MiB
    assert meter.peak_bytes() >= 16 * MiB                  # the whole trial's peak survives the reset
