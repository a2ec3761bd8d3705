"""The gradient noise scale math (McCandlish et al. 2018) on synthetic gradients of known G and Σ."""

import math

import numpy as np
import pytest

from autobatch.noise_scale import (ema, fit_steps, goodput, gradient_estimates, noise_scale, noise_scale_series,
                                   samples_needed, simple_noise_scale, statistical_efficiency, steps_needed)


def _norms(rng, *, G, sigma, b_small, b_big, draws):
    """Squared norms of mean gradients of ``b_small`` and ``b_big`` Gaussian per-sample gradients
    ``g_i ~ N(G, diag(sigma²))``, the small batch the first ``b_small`` of the big one (as a
    first micro-batch is part of its accumulated step)."""
    small, big = [], []
    for _ in range(draws):
        per_sample = G + sigma * rng.standard_normal((b_big, G.size))
        small.append(float(np.sum(per_sample[:b_small].mean(axis=0) ** 2)))
        big.append(float(np.sum(per_sample.mean(axis=0) ** 2)))
    return np.array(small), np.array(big)


@pytest.mark.parametrize("b_true", [12.0, 180.0])
def test_recovers_known_b_simple(b_true):
    """tr(Σ)/|G|² of Gaussian gradients is recovered within 15 %, with |G|² and tr(Σ) themselves
    unbiased; the naive ratio of norms (no correction for batch size) is far off."""
    rng = np.random.default_rng(0)
    d = 200
    G = rng.standard_normal(d)
    G *= 1.0 / np.linalg.norm(G)                      # |G|² = 1
    sigma = math.sqrt(b_true / d)                     # tr(Σ) = d σ² = b_true
    small, big = _norms(rng, G=G, sigma=sigma, b_small=8, b_big=64, draws=400)
    grad_sq, trace = gradient_estimates(small, big, b_small=8, b_big=64)
    assert grad_sq.mean() == pytest.approx(1.0, rel=0.15)
    assert trace.mean() == pytest.approx(b_true, rel=0.1)
    est = noise_scale(small, big, b_small=8, b_big=64)
    assert est.b_simple == pytest.approx(b_true, rel=0.15)
    lo, hi = est.interval
    assert lo < est.b_simple < hi and lo < b_true * 1.2 and hi > b_true / 1.2
    assert est.measurements == 400 and (est.b_small, est.b_big) == (8, 64)
    # a wrong formula (swapped batch sizes) is detectably wrong on the same data
    wrong_g, wrong_t = gradient_estimates(big, small, b_small=8, b_big=64)
    assert abs(simple_noise_scale(wrong_g.mean(), wrong_t.mean()) - b_true) > 0.5 * b_true


def test_interval_narrows_with_more_measurements():
    rng = np.random.default_rng(1)
    G = np.full(50, 1 / math.sqrt(50))
    small, big = _norms(rng, G=G, sigma=math.sqrt(40 / 50), b_small=4, b_big=32, draws=400)
    few = noise_scale(small[:20], big[:20], b_small=4, b_big=32).interval
    many = noise_scale(small, big, b_small=4, b_big=32).interval
    assert many[1] - many[0] < few[1] - few[0]
    assert noise_scale(small[:2], big[:2], b_small=4, b_big=32).interval is None


def test_ratio_of_emas_not_ema_of_ratios():
    """The series is the ratio of the two EMAs: with |G|² estimates swinging around a small mean
    (some negative), the ratio of averages stays finite and near the truth."""
    rng = np.random.default_rng(2)
    G = np.full(100, 0.1 / math.sqrt(100))          # |G|² = 0.01, tr(Σ) = 1: B_simple = 100
    small, big = _norms(rng, G=G, sigma=0.1, b_small=8, b_big=64, draws=600)
    series = noise_scale_series(small, big, b_small=8, b_big=64, decay=0.99)
    grad_sq, trace = gradient_estimates(small, big, b_small=8, b_big=64)
    assert (grad_sq < 0).any()                       # single estimates are that noisy
    assert series[-1] == pytest.approx(100, rel=0.35)
    assert np.allclose(series, ema(trace, 0.99) / ema(grad_sq, 0.99))


def test_ema_is_bias_corrected():
    assert ema([5.0]) == pytest.approx([5.0])
    assert ema([2.0, 2.0, 2.0], 0.5) == pytest.approx([2.0, 2.0, 2.0])
    assert ema([0.0, 4.0], 0.5)[-1] == pytest.approx(0.5 * 4.0 / (1 - 0.25))


def test_estimates_reject_bad_batch_sizes():
    with pytest.raises(ValueError):
        gradient_estimates(1.0, 0.5, b_small=8, b_big=8)
    with pytest.raises(ValueError):
        noise_scale([], [], b_small=8, b_big=64)
    assert simple_noise_scale(-1.0, 3.0) == math.inf


def test_steps_and_samples_model():
    assert steps_needed(100, s_min=10, b_noise=100) == pytest.approx(20)
    assert samples_needed(100, e_min=1000, b_noise=100) == pytest.approx(2000)
    # S E trade-off: (S/S_min − 1)(E/E_min − 1) = 1 at every batch (McCandlish et al. 2018, §2.3)
    for b in (3.0, 50.0, 700.0):
        s = steps_needed(b, s_min=10, b_noise=80) / 10
        e = samples_needed(b, e_min=800, b_noise=80) / 800
        assert (s - 1) * (e - 1) == pytest.approx(1.0)


def test_fit_recovers_s_min_and_b_noise():
    batches = np.array([8, 16, 32, 64, 128, 256, 512])
    exact = steps_needed(batches, s_min=40, b_noise=150)
    fit = fit_steps(batches, exact)
    assert fit.s_min == pytest.approx(40) and fit.b_noise == pytest.approx(150)
    assert fit.e_min == pytest.approx(6000) and fit.rms_relative_error < 1e-9 and fit.points == 7
    noisy = exact * np.random.default_rng(3).lognormal(0, 0.1, size=exact.size)
    rough = fit_steps(batches, noisy)
    assert rough.b_noise == pytest.approx(150, rel=0.35) and 0 < rough.rms_relative_error < 0.3


def test_fit_refuses_what_the_model_cannot_describe():
    with pytest.raises(ValueError):
        fit_steps([32, 32], [10, 12])
    with pytest.raises(ValueError):          # more steps at larger batches: B_noise < 0
        fit_steps([8, 64, 512], [10, 20, 40])


def test_goodput_peaks_where_throughput_stops_paying():
    """Throughput saturating at batch 64 and B_noise 100: goodput peaks between them, and the
    efficiency is 1 at the base batch and halves at B = B_noise (with M0 = 0)."""
    batches = np.array([8, 16, 32, 64, 128, 256, 512, 1024], dtype=float)
    throughput = 1000 * batches / (batches + 64)
    g = goodput(batches, throughput, b_noise=100)
    assert 32 <= batches[int(np.argmax(g))] <= 128
    assert statistical_efficiency(100, b_noise=100) == pytest.approx(0.5)
    assert statistical_efficiency(32, b_noise=100, base_batch=32) == pytest.approx(1.0)
    assert np.all(np.diff(statistical_efficiency(batches, b_noise=100)) < 0)


# --- measured in training: the step's hook and the trial's series -----------------------------

def _digits_model(seed=0):
    import torch

    from autobatch.workloads import build_model

    torch.manual_seed(seed)
    return build_model("small_cnn", num_classes=10, input_shape=(1, 8, 8))


def test_step_records_the_two_norms_exactly():
    """The hook's norms are those of the first micro-batch's gradient and of the whole batch's,
    as computed directly from the same weights and samples."""
    import copy

    import torch
    from torch import nn

    from autobatch.train import train_step

    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    model = _digits_model()
    reference = copy.deepcopy(model)
    loss = lambda m, batch: nn.functional.cross_entropy(m(batch[0]), batch[1])  # noqa: E731
    chunks = iter([(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)])
    norms = []
    train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), lambda: next(chunks), accumulation_steps=4,
               compute_loss=loss, grad_norms=norms)
    assert len(norms) == 1 and norms[0].shape == (2,)

    def grad_sq(batch):
        reference.zero_grad()
        loss(reference, batch).backward()
        return sum(float((p.grad ** 2).sum()) for p in reference.parameters())

    small, big = norms[0].tolist()
    assert small == pytest.approx(grad_sq((x[:8], y[:8])), rel=1e-4)
    assert big == pytest.approx(grad_sq((x, y)), rel=1e-4)
    assert small > big  # a smaller batch's gradient is noisier


def test_step_without_accumulation_records_nothing():
    import torch
    from torch import nn

    from autobatch.train import train_step

    model = _digits_model()
    batch = (torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    norms = []
    train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), lambda: batch, accumulation_steps=1,
               compute_loss=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), grad_norms=norms)
    assert norms == []


def test_trial_records_noise_scale_over_training():
    import torch

    from autobatch import records as R
    from autobatch.records import TrialConfig
    from autobatch.train import eval_points, train_trial
    from autobatch.workloads import load_workload

    digits = load_workload("digits", seed=0)
    points = eval_points(2400, 3)
    result = train_trial(_digits_model(), digits, TrialConfig(batch_size=8, accumulation_steps=4, learning_rate=0.1),
                         train_samples=2400, checkpoints=points, device=torch.device("cpu"))
    noise = result.noise_scale
    assert (noise["b_small"], noise["b_big"]) == (8, 32) and noise["steps"] == 75
    assert [row[0] for row in noise["series"]] == list(points)
    values = [row[1] for row in noise["series"]]
    assert all(v is not None and 0 < v < 10_000 for v in values)
    assert all(lo is not None and (hi is None or lo <= hi) for _, _, lo, hi in noise["series"])
    assert R.result_attrs(result, train_size=len(digits.train))[R.NOISE_SCALE] == noise
    plain = train_trial(_digits_model(), digits, TrialConfig(batch_size=32, learning_rate=0.1),
                        train_samples=320, checkpoints=(320,), device=torch.device("cpu"))
    assert plain.noise_scale is None and R.NOISE_SCALE not in R.result_attrs(plain, train_size=100)


def test_probe_measures_on_a_copy():
    """The probe leaves the model as it was, and gives a finite estimate inside its interval;
    two seeds agree within their intervals' reach (digits: B_simple of order 100)."""
    import torch

    from autobatch.train import probe_noise_scale
    from autobatch.workloads import load_workload

    digits = load_workload("digits", seed=0)
    model = _digits_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    estimates = [probe_noise_scale(model, digits, torch.device("cpu"), learning_rate=0.025, seed=s, steps=6)
                 for s in (0, 1)]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for est in estimates:
        lo, hi = est.interval
        assert 10 < est.b_simple < 2000 and lo <= est.b_simple <= hi
        assert (est.b_small, est.b_big, est.measurements) == (8, 128, 6)
    assert max(e.b_simple for e in estimates) / min(e.b_simple for e in estimates) < 3


def test_probe_with_a_parameter_the_loss_never_reaches():
    import torch
    from torch import nn

    from autobatch.train import probe_noise_scale
    from autobatch.workloads import load_workload

    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.unused = _digits_model(), nn.Linear(3, 3)

        def forward(self, x):
            return self.body(x)

    digits = load_workload("digits", seed=0)
    est = probe_noise_scale(WithUnused(), digits, torch.device("cpu"), learning_rate=0.025, steps=3)
    assert est.measurements == 3 and math.isfinite(est.grad_sq) and est.trace > 0
