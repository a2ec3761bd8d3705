"""The recommender on studies generated from known laws.

Every study here is written the way the search module writes one (params, user attributes,
study attributes) from three known laws, so what the recommender should find is known:

- accuracy  = top - cb * (log2(batch * accumulation) - log2 e*)^2 - cm * ln(multiplier / m*)^2
              + N(0, noise), chance level where it diverges;
- seconds per sample = beta + alpha / batch + gamma / (batch * accumulation), x lognormal noise;
- peak bytes = fixed + per_sample * batch + N(0, 1 MiB).
"""

from __future__ import annotations

import json
import math

import pandas as pd
import subprocess
import sys
import uuid
from dataclasses import dataclass, replace

import numpy as np
import optuna
import pytest

from autobatch import records as R
from autobatch.errors import AutobatchError
from autobatch.recommender import (supported, MIN_TRIALS, PRIORITIES, SPEED_TOLERANCE, Recommendation,
                                 publish, recommend, recommend_from_frame, trials_frame)
from autobatch.storage import open_storage
from autobatch.search import StudySpec
from autobatch.recommender import AccuracyModel, divergence_blocked

optuna.logging.set_verbosity(optuna.logging.WARNING)
MIB = 2**20
SPEC = StudySpec(model="mlp", dataset="synthetic", train_size=20_000, num_classes=10)
DISTRIBUTIONS = {
    R.PARAM_BATCH_LOG2: optuna.distributions.IntDistribution(3, 8),
    R.PARAM_LR_MULTIPLIER: optuna.distributions.FloatDistribution(0.1, 10.0, log=True),
    R.PARAM_ACCUM_LOG2: optuna.distributions.IntDistribution(0, 3),
}


@dataclass(frozen=True)
class Law:
    top: float = 0.92
    best_log2_effective: float = 5.0   # optimum effective batch 32
    best_multiplier: float = 2.0
    curvature_batch: float = 0.006
    curvature_lr: float = 0.02
    noise: float = 0.004
    alpha: float = 2e-3                # s per micro-batch step
    beta: float = 1e-5                 # s per sample
    gamma: float = 1e-3                # s per optimizer step
    time_noise: float = 0.03
    fixed: float = 500 * MIB
    per_sample: float = 4 * MIB
    diverge_above: float = math.inf    # multiplier above which effective batches >= 128 diverge

    def accuracy(self, b, a, m):
        return (self.top - self.curvature_batch * (np.log2(b * a) - self.best_log2_effective) ** 2
                - self.curvature_lr * np.log(m / self.best_multiplier) ** 2)

    def throughput(self, b, a):
        return 1.0 / (self.beta + self.alpha / b + self.gamma / (a * b))

    def peak(self, b):
        return self.fixed + self.per_sample * b


def make_trials(law: Law, n: int, seed: int) -> list[optuna.trial.FrozenTrial]:
    rng = np.random.default_rng(seed)
    trials = []
    for i in range(n):
        k, j = int(rng.integers(3, 9)), int(rng.integers(0, 4))
        m = float(np.exp(rng.uniform(math.log(0.1), math.log(10))))
        b, a = 2**k, 2**j
        acc = float(np.clip(law.accuracy(b, a, m) + rng.normal(0, law.noise), 0, 1))
        thr = float(law.throughput(b, a) * np.exp(rng.normal(0, law.time_noise)))
        diverged = m > law.diverge_above and a * b >= 128
        pruned = i % 7 == 6 and not diverged        # pruner victims: partial curves
        attrs = {R.BATCH_SIZE: b, R.ACCUMULATION_STEPS: a, R.EFFECTIVE_BATCH_SIZE: a * b,
                 R.LEARNING_RATE: SPEC.space.learning_rate(m, a * b), R.THROUGHPUT: thr,
                 R.EPOCH_TIME_S: SPEC.train_size / thr, R.SAMPLES_SEEN: 40_000,
                 R.MEASURED_PEAK_BYTES: int(law.peak(b) + rng.normal(0, MIB)),
                 R.PREDICTED_PEAK_BYTES: int(law.peak(b)),
                 R.VAL_ACCURACY: 0.1 if diverged else acc, R.BEST_VAL_ACCURACY: acc,
                 R.CURVE: [[20_000, acc - 0.05, 0.8], [40_000, acc, 0.4]],
                 R.STOP_REASON: R.STOP_DIVERGED if diverged else
                 R.STOP_PRUNED if pruned else R.STOP_COMPLETED}
        if i == 0:
            attrs[R.BASELINE] = "folklore-32"
        state = optuna.trial.TrialState.PRUNED if diverged or pruned else optuna.trial.TrialState.COMPLETE
        trials.append(optuna.trial.create_trial(
            state=state, value=acc if state == optuna.trial.TrialState.COMPLETE else None,
            params={R.PARAM_BATCH_LOG2: k, R.PARAM_LR_MULTIPLIER: m, R.PARAM_ACCUM_LOG2: j},
            distributions=DISTRIBUTIONS, user_attrs=attrs))
    return trials


def make_study(law: Law = Law(), *, n: int = 40, seed: int = 0, storage=None, name=None,
               memory_model: dict | None = None) -> optuna.Study:
    study = optuna.create_study(direction="maximize", storage=storage,
                                study_name=name or f"test-{uuid.uuid4().hex[:8]}")
    study.set_user_attr(R.STUDY_SPEC, SPEC.to_dict())
    if memory_model is not None:
        study.set_user_attr(R.STUDY_MEMORY_MODEL, memory_model)
    study.add_trials(make_trials(law, n, seed))
    return study


@pytest.fixture(scope="module")
def frame():
    return trials_frame(make_study())


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'studies.db'}"


def _recommend(df, **kwargs) -> Recommendation:
    kwargs.setdefault("study_name", "s")
    return recommend_from_frame(df, SPEC, kwargs.pop("memory_model", None), **kwargs)


# --- reading trials ----------------------------------------------------------------------

def test_trials_frame_reads_back_what_was_written(sqlite_url):
    study = make_study(storage=sqlite_url, n=12)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))  # left out
    df = trials_frame(optuna.load_study(study_name=study.study_name, storage=sqlite_url))
    written = [t for t in make_trials(Law(), 12, 0)]
    assert list(df["number"]) == list(range(12))
    assert set(df["state"]) == {"COMPLETE", "PRUNED"}
    for (_, row), trial in zip(df.iterrows(), written):
        attrs = trial.user_attrs
        assert row["batch_size"] == attrs[R.BATCH_SIZE] == 2 ** trial.params[R.PARAM_BATCH_LOG2]
        assert row["accumulation_steps"] == attrs[R.ACCUMULATION_STEPS]
        assert row["effective_batch_size"] == attrs[R.EFFECTIVE_BATCH_SIZE]
        assert row["lr_multiplier"] == pytest.approx(trial.params[R.PARAM_LR_MULTIPLIER])
        assert row["learning_rate"] == pytest.approx(attrs[R.LEARNING_RATE])
        assert row["throughput"] == pytest.approx(attrs[R.THROUGHPUT])
        assert row["epoch_time_s"] == pytest.approx(attrs[R.EPOCH_TIME_S])
        assert row["measured_peak_bytes"] == attrs[R.MEASURED_PEAK_BYTES]
        assert row["predicted_peak_bytes"] == attrs[R.PREDICTED_PEAK_BYTES]
        assert row["val_accuracy"] == pytest.approx(attrs[R.VAL_ACCURACY])
        assert row["stop_reason"] == attrs[R.STOP_REASON]
        assert row["samples_seen"] == 40_000
        assert row["curve"] == attrs[R.CURVE]
        if trial.value is None:
            assert np.isnan(row["value"])
        else:
            assert row["value"] == pytest.approx(trial.value)
    assert df.loc[0, "baseline"] == "folklore-32"


def test_trials_frame_of_an_empty_study_has_the_columns():
    df = trials_frame(optuna.create_study())
    assert df.empty and {"number", "state", "stop_reason", "batch_size", "throughput"} <= set(df.columns)


# --- recovering the laws -----------------------------------------------------------------

def test_recovers_the_accuracy_optimum(frame):
    rec = _recommend(frame, priority="accuracy")
    # optimum: effective batch 32, multiplier 2, accuracy 0.92; grid steps are 2x and 1.21x
    assert abs(math.log2(rec.effective_batch_size) - 5) <= 1
    assert abs(math.log(rec.lr_multiplier / 2.0)) <= math.log(1.5)
    assert rec.predicted_accuracy == pytest.approx(0.92, abs=0.01)
    lo, hi = rec.accuracy_interval
    assert lo < rec.predicted_accuracy < hi and hi - lo < 0.05
    assert rec.learning_rate == pytest.approx(
        SPEC.space.learning_rate(rec.lr_multiplier, rec.effective_batch_size))
    best = frame[frame["stop_reason"] == R.STOP_COMPLETED]["val_accuracy"].idxmax()
    assert rec.best_trial == frame.loc[best, "number"]


def test_recovers_the_throughput_and_memory_laws(frame):
    law, rec = Law(), _recommend(frame, priority="speed")
    fitted = rec.diagnostics["throughput"]
    assert fitted["alpha_s"] == pytest.approx(law.alpha, rel=0.15)
    assert fitted["beta_s"] == pytest.approx(law.beta, rel=0.30)
    assert fitted["gamma_s"] == pytest.approx(law.gamma, rel=0.30)
    assert fitted["log_residual_sd"] == pytest.approx(law.time_noise, rel=0.5)
    true_epoch = SPEC.train_size / law.throughput(rec.batch_size, rec.accumulation_steps)
    assert rec.predicted_epoch_time_s == pytest.approx(true_epoch, rel=0.05)
    lo, hi = rec.epoch_time_interval
    assert lo < rec.predicted_epoch_time_s < hi
    memory = rec.diagnostics["memory"]
    assert memory["source"] == "fitted"
    assert memory["fixed_bytes"] == pytest.approx(law.fixed, rel=0.02)
    assert memory["per_sample_bytes"] == pytest.approx(law.per_sample, rel=0.02)
    assert rec.predicted_peak_bytes == pytest.approx(law.peak(rec.batch_size), rel=0.01)
    assert rec.peak_bytes_interval[0] < law.peak(rec.batch_size) < rec.peak_bytes_interval[1]


def test_stored_memory_model_is_used_and_checked(frame):
    law = Law()
    stored = {"fixed_bytes": law.fixed, "per_sample_bytes": law.per_sample * 0.9,  # 10% low
              "cap_bytes": int(1.0 * 2**30), "max_batch_size": 64}
    rec = _recommend(frame, memory_model=stored, priority="accuracy")
    memory = rec.diagnostics["memory"]
    assert memory["source"] == "stored" and memory["measured_peaks"] == len(frame)
    assert memory["form"] == "affine"  # a legacy {fixed, per_sample} dict reads as affine
    assert memory["residual_mean_bytes"] > 0  # the model under-predicts: reported
    # measured where trials measured: the trials' peak at this micro-batch, not the low model
    measured = frame[frame["batch_size"] == rec.batch_size]["measured_peak_bytes"].max()
    assert rec.predicted_peak_bytes == pytest.approx(measured)
    assert rec.peak_bytes_interval[0] <= law.peak(rec.batch_size) <= rec.peak_bytes_interval[1]
    assert rec.batch_size <= 64 and rec.constraints["memory_model_max_batch_size"] == 64


def test_memory_between_measured_sizes_comes_from_the_stored_estimate():
    from autobatch.recommender import fit_memory

    stored = {"form": "two_regime", "step_bytes": 9e6, "step_per_sample_bytes": 264.0,
              "fixed_bytes": 8.5e6, "per_sample_bytes": 64e3, "cap_bytes": 2**30, "max_batch_size": 99,
              "eval_model": {"form": "affine", "fixed_bytes": 8e6, "per_sample_bytes": 30e3},
              "eval_max_batch_size": 500}
    fit = fit_memory([8, 32], [9.2e6, 10.6e6], stored)
    assert fit.predict([8, 32]).tolist() == [9.2e6, 10.6e6]            # measured
    # not measured: max(training step, evaluation at min(4 x 16, 500))
    assert fit.predict([16])[0] == pytest.approx(max(9e6 + 264 * 16, 8.5e6 + 64e3 * 16, 8e6 + 30e3 * 64))
    assert fit.predict([256])[0] == pytest.approx(max(8.5e6 + 64e3 * 256, 8e6 + 30e3 * 500))
    lo, hi = fit.interval([1, 8, 32, 256])
    assert (lo >= 0).all() and (lo <= fit.predict([1, 8, 32, 256])).all()
    assert hi[3] / lo[3] > hi[2] / lo[2]                                # wider beyond what was measured


@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0])
def test_memory_interval_never_goes_below_zero(scale):
    from autobatch.recommender import fit_memory

    sizes = [8, 8, 16, 32, 64, 128]
    peaks = [scale * v for v in (1e5, 3e7, 2e5, 9e7, 1e6, 4e8)]      # wild: factors of 300 apart
    for stored in (None, {"fixed_bytes": 1e5, "per_sample_bytes": 10.0}):
        fit = fit_memory(sizes, peaks, stored)
        lo, hi = fit.interval(np.array([1, 8, 100, 128, 4096]))
        assert (lo >= 0).all() and (hi >= lo).all()
        for b, y in zip(sizes, peaks):
            low, high = fit.interval([b])
            assert low[0] <= y <= high[0]


# --- constraints and priorities ----------------------------------------------------------

@pytest.mark.parametrize("constraints", [
    {"max_memory": "700MiB"},
    {"max_memory": 600 * MIB},
    {"max_epoch_time": 0.6},
    {"max_epoch_time": "2s", "min_accuracy": 0.9},
    {"min_accuracy": 0.915},
    {"max_memory": "1GiB", "max_epoch_time": 1.5, "min_accuracy": 0.88},
])
def test_constraints_are_always_respected(frame, constraints):
    cap = {"700MiB": 700 * MIB, "1GiB": 2**30}.get(constraints.get("max_memory"),
                                                   constraints.get("max_memory"))
    max_time = {"2s": 2.0}.get(constraints.get("max_epoch_time"), constraints.get("max_epoch_time"))
    for priority in PRIORITIES:
        rec = _recommend(frame, priority=priority, **constraints)
        for point in (rec.to_dict(), *rec.pareto_front):
            if cap is not None:
                assert Law().fixed + Law().per_sample * point["batch_size"] < cap
            if max_time is not None:
                assert point["predicted_epoch_time_s"] <= max_time
            if "min_accuracy" in constraints:
                assert point["predicted_accuracy"] >= constraints["min_accuracy"]
        if cap is not None:
            assert rec.peak_bytes_interval[1] <= cap
        assert rec.constraints["feasible"] < rec.constraints["candidates"]


def test_impossible_constraints_say_what_is_achievable(frame):
    with pytest.raises(AutobatchError, match="no setting meets the constraints.*highest predicted accuracy"):
        _recommend(frame, min_accuracy=0.99)
    with pytest.raises(AutobatchError, match="no setting meets"):
        _recommend(frame, max_memory="100MiB")
    with pytest.raises(AutobatchError, match="malformed size"):
        _recommend(frame, max_memory="lots")
    with pytest.raises(AutobatchError, match="fraction"):
        _recommend(frame, min_accuracy=90)


@pytest.mark.parametrize("seed", range(5))
def test_priority_order_on_random_studies(seed):
    rng = np.random.default_rng(100 + seed)
    law = Law(top=rng.uniform(0.6, 0.98), best_log2_effective=rng.uniform(3, 9),
              best_multiplier=float(np.exp(rng.uniform(-1.5, 1.5))),
              curvature_batch=rng.uniform(0.001, 0.02), curvature_lr=rng.uniform(0.005, 0.05),
              noise=rng.uniform(0.002, 0.02), alpha=rng.uniform(1e-4, 1e-2),
              beta=rng.uniform(1e-6, 1e-4), gamma=rng.uniform(0, 5e-3),
              diverge_above=rng.choice([math.inf, 5.0]))
    df = trials_frame(make_study(law, n=int(rng.integers(MIN_TRIALS + 4, 50)), seed=seed))
    recs = {p: _recommend(df, priority=p) for p in PRIORITIES}
    speed, balanced, accuracy = (recs[p] for p in ("speed", "balanced", "accuracy"))
    assert speed.predicted_epoch_time_s <= balanced.predicted_epoch_time_s <= accuracy.predicted_epoch_time_s
    # settings rank by the lower end of the model's accuracy interval (RANK_BY); the interval
    # reported at the chosen setting is then calibrated for the selection (never narrower)
    low = {name: rec.diagnostics["calibration"]["model_interval"][0] for name, rec in recs.items()}
    for rec in recs.values():
        model_lo, model_hi = rec.diagnostics["calibration"]["model_interval"]
        assert rec.accuracy_interval[0] <= model_lo + 1e-12 and rec.accuracy_interval[1] >= model_hi - 1e-12
    assert low["accuracy"] >= low["balanced"] >= low["speed"]
    assert low["speed"] >= low["accuracy"] - SPEED_TOLERANCE
    front = [(p["predicted_epoch_time_s"], p["accuracy_interval"][0]) for p in accuracy.pareto_front]
    assert front == sorted(front) and all(a1 < a2 for (_, a1), (_, a2) in zip(front, front[1:]))


def test_the_answer_stays_inside_the_lr_range_the_trials_tested():
    """Trials that tested multipliers 1.0-1.3 only, on a surface whose optimum is far below
    (0.3): the slope pulls the model toward lower lrs, but no answer leaves the tested range
    (the rule once let one go a factor of 2 beyond it, where it re-trained at 0%)."""
    law = Law(best_multiplier=0.3, curvature_lr=0.05)
    df = trials_frame(make_study(law, n=30, seed=5)).copy()
    span = (np.log(df["lr_multiplier"]) - math.log(0.1)) / math.log(100)      # 0..1 over the drawn range
    df["lr_multiplier"] = 1.3 ** span
    df["learning_rate"] = [SPEC.space.learning_rate(m, e) for m, e in zip(df["lr_multiplier"], df["effective_batch_size"])]
    done = df["state"] == "COMPLETE"
    df.loc[done, "val_metric"] = np.clip(law.accuracy(df.loc[done, "batch_size"], df.loc[done, "accumulation_steps"],
                                                      df.loc[done, "lr_multiplier"]), 0, 1)
    tested = df.loc[done, "lr_multiplier"]
    for priority in PRIORITIES:
        rec = _recommend(df, priority=priority)
        assert tested.min() - 1e-12 <= rec.lr_multiplier <= tested.max() + 1e-12, (priority, rec.lr_multiplier)


def test_the_rationale_shows_the_pessimistic_ends_it_compared():
    """Settings are ranked by their interval's pessimistic end: the text shows that end beside
    each prediction, so a faster pick with a higher prediction does not read as a contradiction."""
    df = trials_frame(make_study(Law(), n=30, seed=2))
    recs = {p: _recommend(df, priority=p) for p in PRIORITIES}
    low = {p: r.diagnostics["calibration"]["model_interval"][0] for p, r in recs.items()}
    assert low["accuracy"] >= low["speed"]
    assert "at the interval's pessimistic end" in recs["accuracy"].rationale
    assert "compared at their intervals' pessimistic ends" in recs["speed"].rationale
    assert recs["speed"].rationale.count("pessimistic ") >= 2


def test_diverged_region_is_avoided():
    law = replace(Law(best_multiplier=4.0), diverge_above=5.0)   # optimum next to the cliff
    df = trials_frame(make_study(law, n=45, seed=3))
    assert (df["stop_reason"] == R.STOP_DIVERGED).sum() >= 3
    for priority in PRIORITIES:
        rec = _recommend(df, priority=priority)
        assert not (rec.lr_multiplier > 5.0 and rec.effective_batch_size >= 128)
        # never where no completed trial is near (no extrapolation)
        done = df[df["state"] == "COMPLETE"]
        assert supported(pd.DataFrame([{"effective_batch_size": rec.effective_batch_size,
                                        "accumulation_steps": rec.accumulation_steps,
                                        "lr_multiplier": rec.lr_multiplier}]), done)[0]
    assert rec.diagnostics["accuracy"]["diverged_trials"] == (df["stop_reason"] == R.STOP_DIVERGED).sum()
    best = _recommend(df, priority="accuracy")
    assert best.predicted_accuracy == pytest.approx(0.92, abs=0.01)
    assert abs(math.log(best.lr_multiplier / 4.0)) <= math.log(1.5)


def test_divergence_staircase():
    diverged = np.array([[128.0, 5.0]])
    completed = np.array([[512.0, 5.2], [32.0, 9.0]])
    blocked = divergence_blocked([128, 256, 1024, 64, 128], [6.0, 5.1, 5.5, 9.0, 4.0],
                                 diverged, completed)
    # beyond the diverged trial; covered by a completed run; beyond both; smaller batch, lr
    assert blocked.tolist() == [True, False, True, False, False]
    assert not divergence_blocked([512], [10.0], np.empty((0, 2)), completed).any()


def test_deterministic_and_round_trips(frame):
    first, second = _recommend(frame), _recommend(frame)
    assert first == second
    data = json.loads(json.dumps(first.to_dict()))
    assert Recommendation.from_dict(data) == first
    table = first.markdown()
    assert f"| micro-batch size | {first.batch_size} |" in table and first.rationale in table
    assert len(first.rationale.splitlines()) == 1


def test_time_to_target_read_off_a_curve(frame):
    rec = _recommend(frame, priority="speed", min_accuracy=0.85)
    hit = rec.time_to_target
    assert hit is not None and hit["target"] == 0.85
    trial = frame.set_index("number").loc[hit["trial"]]
    assert trial["effective_batch_size"] == rec.effective_batch_size
    assert hit["samples"] == next(s for s, a, _ in trial["curve"] if a >= 0.85)
    assert hit["seconds"] == pytest.approx(
        hit["samples"] / SPEC.train_size * rec.predicted_epoch_time_s)


# --- the public API on real storages -----------------------------------------------------

def test_recommend_and_publish_on_sqlite(sqlite_url):
    study = make_study(storage=sqlite_url, name="digits-mlp", n=30)
    rec = recommend("digits-mlp", storage=sqlite_url, max_memory="1GiB")
    assert rec.study_name == "digits-mlp" and rec.priority == "balanced"
    assert rec.trials and set(rec.trials) <= set(range(30))
    publish(study, rec)
    from optuna_dashboard import get_note
    reloaded = optuna.load_study(study_name="digits-mlp", storage=sqlite_url)
    assert Recommendation.from_dict(reloaded.user_attrs[R.STUDY_RECOMMENDATION]) == rec
    assert get_note(reloaded) == rec.markdown()


def test_missing_study_too_few_trials_and_bad_priority(sqlite_url):
    make_study(storage=sqlite_url, name="tiny", n=MIN_TRIALS - 1, seed=0)
    with pytest.raises(AutobatchError,
                       match=r"no study named 'nope' in sqlite:///.*existing studies: tiny"):
        recommend("nope", storage=sqlite_url)
    with pytest.raises(AutobatchError, match=rf"has {MIN_TRIALS - 1} completed trials; .* at least {MIN_TRIALS}"):
        recommend("tiny", storage=sqlite_url)
    with pytest.raises(AutobatchError, match="priority must be one of"):
        recommend("tiny", storage=sqlite_url, priority="fast")


def test_postgresql_study(postgres_url):
    url = postgres_url
    name = f"autobatch-test-{uuid.uuid4().hex[:12]}"
    storage = open_storage(url)
    make_study(storage=storage, name=name, n=20)
    try:
        rec = recommend(name, storage=url, priority="speed")
        assert rec.study_name == name and len(rec.trials) >= MIN_TRIALS
        publish(optuna.load_study(study_name=name, storage=storage), rec)
        stored = optuna.load_study(study_name=name, storage=storage).user_attrs
        assert stored[R.STUDY_RECOMMENDATION]["batch_size"] == rec.batch_size
    finally:
        optuna.delete_study(study_name=name, storage=storage)


# --- the estimator and the package -------------------------------------------------------

@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
def test_accuracy_model_is_a_scikit_learn_estimator():
    from sklearn.utils.estimator_checks import check_estimator

    # No optimizer restarts: the same code paths, a third of the time.
    check_estimator(AccuracyModel(n_restarts_optimizer=0))


def test_package_import_is_lazy_and_recommend_is_the_function():
    code = ("import sys, autobatch; assert autobatch.__version__ == '0.1.0'; "
            "assert not {'torch', 'sklearn', 'optuna'} & set(sys.modules), sorted(sys.modules); "
            "import autobatch.recommender; from autobatch import recommend, Recommendation; "
            "assert callable(recommend) and recommend.__name__ == 'recommend', recommend; "
            "assert Recommendation.__name__ == 'Recommendation'")
    subprocess.run([sys.executable, "-c", code], check=True)
