"""The benchmark protocol's pieces (scripts/bench_tuning/protocol.py, data.py): disjoint seeds,
grid lr points off the recommender's candidates, distinct runs only, CPU-second budgets, ties,
and tuners never seeing the test split. Fast: no benchmark runs here."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from bench_tuning import data  # noqa: E402
from bench_tuning.protocol import (  # noqa: E402
    Meter,
    SeedPlan,
    candidate_gap,
    canonical_key,
    compare,
    distinct,
    first_reaching,
    kendall_tau,
    noise_floor,
    offset_multipliers,
    should_stop,
)
from bench_tuning.autobatch_run import planned_trials  # noqa: E402
from bench_tuning.methods import Context, goodput_batch  # noqa: E402
from bench_tuning.tasks import AUTOBATCH, SEARCHES, Config, tasks  # noqa: E402
import benchmark  # noqa: E402

from autobatch.recipe import TrainRecipe  # noqa: E402
from autobatch.recommender import _choice  # noqa: E402
from autobatch.records import TrialConfig  # noqa: E402
from autobatch.train import train_trial  # noqa: E402
from autobatch.workloads import build_model, load_workload  # noqa: E402


@pytest.mark.parametrize("mode", ["smoke", "quick", "full"])
def test_seed_roles_are_disjoint_and_full_mode_has_five_tuner_seeds(mode):
    for task in tasks(mode):
        task.seeds.check()
        assert len(task.seeds.fresh) >= 3
    # resnet18 (3-12 CPU ms a sample here) runs 3 tuner seeds to fit the hour; its section says so
    assert all(len(t.seeds.tuners) >= 5 for t in tasks("full") if t.model != "resnet18")
    assert all(set(t.searches) <= set(SEARCHES) and AUTOBATCH in t.searches for t in tasks("full"))


def test_a_shared_seed_is_refused():
    plan = SeedPlan(grid=(0, 1), tuners=(10_000,), fresh=(1,), long=(950_000,))
    with pytest.raises(ValueError, match="grid and fresh"):
        plan.check()
    with pytest.raises(ValueError, match="tuners"):
        SeedPlan(grid=(10_005,), tuners=(10_000,), fresh=(900_000,), long=(950_000,)).check()


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_grid_multipliers_avoid_the_recommenders_candidates_and_one(n):
    assert _choice.N_LR_MULTIPLIERS == 25  # the candidates the offset is computed against
    low, high = 0.1, 10.0
    grid = offset_multipliers(low, high, n)
    candidates = np.geomspace(low, high, _choice.N_LR_MULTIPLIERS)
    assert len(grid) == n and all(low <= m <= high for m in grid)
    assert candidate_gap(grid, low, high) >= 0.2            # a fifth of a candidate step at least
    assert min(abs(math.log(m / c)) for m in grid for c in candidates) > 0.03
    assert min(abs(math.log(m)) for m in grid) > 0.03        # not multiplier 1 (the rules)


def test_every_task_grid_is_offset():
    for task in tasks("full"):
        assert candidate_gap(task.multipliers, task.space.lr_multiplier_min, task.space.lr_multiplier_max) >= 0.2


def test_distinct_keeps_one_run_per_effective_batch_without_batchnorm():
    cells = [Config(b, a, m) for b in (8, 16, 32) for a in (1, 2, 4) for m in (0.5, 2.0)]
    kept = distinct(cells, has_batchnorm=False, max_effective=10_000)
    assert sorted({(c.effective, c.multiplier) for c in kept}) == sorted({(c.effective, c.multiplier) for c in cells})
    assert len(kept) == 5 * 2  # effective 8, 16, 32, 64, 128
    assert all(c.batch_size == min(c.effective, 32) for c in kept)  # the largest micro-batch of equals
    assert len(distinct(cells, has_batchnorm=True, max_effective=10_000)) == len(cells)
    assert all(c.effective <= 64 for c in distinct(cells, has_batchnorm=False, max_effective=64))
    assert canonical_key(8, 2, 1.0, has_batchnorm=False) == canonical_key(16, 1, 1.0, has_batchnorm=False)
    assert canonical_key(8, 2, 1.0, has_batchnorm=True) != canonical_key(16, 1, 1.0, has_batchnorm=True)


def test_micro_batch_times_accumulation_is_the_same_run_without_batchnorm():
    """What ``distinct`` rests on: small_cnn (no BatchNorm) at 8 x 2 and 16 x 1 ends in the same weights."""
    workload = load_workload("digits", seed=0)
    weights = []
    for batch, accumulation in ((8, 2), (16, 1)):
        torch.manual_seed(3)
        model = build_model("small_cnn", num_classes=10, input_shape=workload.input_shape)
        config = TrialConfig(batch_size=batch, accumulation_steps=accumulation, learning_rate=0.05)
        train_trial(model, workload, config, train_samples=96, checkpoints=(96,), device=torch.device("cpu"),
                    recipe=TrainRecipe(), seed=5, num_workers=0)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(weights[0], weights[1], atol=1e-5)


def test_budget_accounting_counts_cpu_and_stops_within_half_a_trial():
    meter = Meter()
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    assert 0.04 <= meter.cpu and meter.wall >= 0.04
    assert not should_stop(0.0, 10.0, [])
    assert not should_stop(9.0, 10.0, [1.0] * 9)        # a typical trial is 1 s: 1 s left, go on
    assert should_stop(9.6, 10.0, [1.2, 1.2, 5.0])      # 0.4 s left < half of the median 1.2 s
    assert not should_stop(6.0, 9.0, [1.0])             # setup outside the trials does not inflate a trial
    assert should_stop(11.0, 10.0, [1.0])


def test_noise_floor_and_ties():
    rows = [[0.90, 0.92], [0.50, 0.70], [0.91, 0.91]]
    assert noise_floor(rows, top=2) == pytest.approx(100 * np.std([0.90, 0.92], ddof=1) / 2)
    with pytest.raises(ValueError):
        noise_floor([[0.9]], top=1)
    assert compare(0.2, 0.5, 0.4) == "tie"
    assert compare(0.2, 1.0, 0.4) == "better"
    assert compare(1.0, 0.2, 0.4) == "worse"


def test_ranking_and_time_to_target():
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0
    assert kendall_tau([1, 2, 3], [30, 20, 10]) == -1.0
    assert first_reaching([(1.0, 0.5), (2.0, 0.95), (3.0, 0.97)], 0.94) == 2.0
    assert math.isinf(first_reaching([(1.0, 0.5)], 0.94))


@pytest.mark.parametrize("name", ["digits", "mnist1d"])
def test_tuners_never_see_the_test_split(name):
    scoring = data.scoring(name)
    test = {tuple(row.tolist()) for row in scoring.val.tensors[0].flatten(1)}
    pool = {tuple(row.tolist()) for row in scoring.train.tensors[0].flatten(1)}
    for seed in (10_000, 11_000):
        train, val, classes = data.tuning_split(name, seed)
        seen = {tuple(row.tolist()) for t in (train, val) for row in t.tensors[0].flatten(1)}
        assert classes == 10 and not seen & test and seen <= pool
    a, b = data.tuning_split(name, 10_000), data.tuning_split(name, 11_000)
    assert not torch.equal(a[1].tensors[0], b[1].tensors[0])  # tuner seeds split differently
    assert data.spec(name, 10_000) == f"bench_tuning.data:tune__{name}__10000"
    assert torch.equal(data.tune__digits__10000()[1].tensors[0], data.tuning_split("digits", 10_000)[1].tensors[0])


def test_goodput_pick_trades_throughput_for_statistical_efficiency():
    sizes, throughput = [16, 64, 256], [1000.0, 3000.0, 5000.0]
    # B_noise 100: goodput = thr x 116 / (100 + M): 1000, 2121, 1611 -> 64
    batch, scores = goodput_batch(sizes, throughput, 100.0)
    assert batch == 64 and scores == pytest.approx([1000.0, 3000 * 116 / 164, 5000 * 116 / 356])
    assert goodput_batch(sizes, throughput, 1e6)[0] == 256     # no noise penalty: the fastest
    assert goodput_batch(sizes, throughput, 1.0)[0] == 16      # all noise-bound: the smallest
    assert goodput_batch(sizes, throughput, math.inf)[0] == 256  # not resolved: throughput alone
    assert goodput_batch(sizes, throughput, math.nan)[1] == throughput


def test_autobatch_is_told_the_trials_its_budget_buys():
    ctx = Context(task=tasks("smoke")[0], repeat=0, tuner_seed=10_000, budgets_s=(5.0, 10.0), train_samples=100,
                  studies=None, progress=print, grid_run_s=1.5)
    assert planned_trials(ctx, 0, 0.0, 5.0, []) == 7            # the largest budget at a grid run's cost
    assert planned_trials(ctx, 3, 8.0, 10.0, [0.5, 1.0, 2.0]) == 5   # 2 s left at 1 s a trial: 2 more
    assert planned_trials(ctx, 3, 9.9, 10.0, [1.0]) == 4         # at least one more
    assert planned_trials(ctx.__class__(**{**ctx.__dict__, "grid_run_s": 100.0}), 0, 0.0, 5.0, []) == 4


def test_benchmarks_header_names_each_sections_own_run(tmp_path):
    old = ("# Benchmarks\n\nRegenerated by `python scripts/benchmark.py --quick` (`make bench-quick`) on "
           "2026-11-30, commit 459d1c6.\n\n<!-- section:tuning -->\nT\n\n<!-- section:memory -->\nM\n")
    sections = benchmark._sections(old)
    assert (sections["memory"].mode, sections["memory"].date, sections["memory"].commit) == (
        "quick", "2026-11-30", "459d1c6")
    sections["tuning"] = benchmark.Section("T2\n", "full", "2026-12-01", "abc1234")
    target = tmp_path / "BENCHMARKS.md"
    benchmark._write(target, sections)
    text = target.read_text()
    assert "| tuning | full | 2026-12-01 | abc1234 |" in text and "| memory | quick | 2026-11-30 | 459d1c6 |" in text
    assert benchmark._sections(text) == sections                 # read back unchanged, no blank lines gained
