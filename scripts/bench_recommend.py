"""Benchmark of the recommender: are its intervals honest, and why these models.

    python scripts/bench_recommend.py [--quick] [--out DIR]

1. Calibration on synthetic studies drawn from known laws (accuracy over effective batch and
   lr multiplier, a throughput law, a memory line, each with noise; law parameters random per
   study): coverage of the 80% intervals on held-out settings, and at the recommended setting
   (fresh noisy draws there, what ``retrain_coverage`` will do with real training).
2. The accuracy model: Gaussian process against quantile gradient boosting, held-out error
   and coverage, on the synthetic studies and on a real SGD sweep (scikit-learn's
   ``MLPClassifier`` on the bundled digits, batch size x lr multiplier x seed, equal samples
   seen), which also times real training steps for the throughput law.

Returns a Markdown section for BENCHMARKS.md; raw numbers go to ``DIR/bench_recommend.json``.
Re-training the recommended setting with fresh seeds on real workloads is ``retrain_coverage``.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
import warnings
from typing import Any, Callable, Optional, Sequence

import numpy as np
import optuna
import pandas as pd

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from autobatch import records as R  # noqa: E402
from autobatch.recommender import Recommendation, recommend_from_frame  # noqa: E402
from autobatch.search import StudySpec  # noqa: E402
from autobatch.recommender import (COVERAGE, AccuracyModel, ThroughputModel,  # noqa: E402
                                accuracy_features, fit_tradeoff)

MIB = 2**20
SPEC = StudySpec(model="synthetic", dataset="synthetic", train_size=50_000, num_classes=10)


# --- re-training coverage (real workloads) -----------------------------------------------

def retrain_coverage(rec: Recommendation, train_fn: Callable[[int], dict[str, Any]],
                     seeds: Sequence[int]) -> dict[str, Any]:
    """Train the recommended setting once per seed; how often do the measurements fall inside
    the predicted intervals?

    ``train_fn(seed)`` trains ``rec``'s setting (batch size, learning rate, accumulation) for
    the study's samples per trial and returns ``{"val_accuracy", "epoch_time_s",
    "peak_bytes"}`` (``peak_bytes`` None where not measured). The goal is coverage >= the
    intervals' nominal 80%.
    """
    runs = [dict(train_fn(seed), seed=seed) for seed in seeds]

    def inside(key: str, interval: Optional[tuple[float, float]]) -> Optional[float]:
        values = [r[key] for r in runs if r.get(key) is not None]
        if interval is None or not values:
            return None
        return sum(interval[0] <= v <= interval[1] for v in values) / len(values)

    return {"runs": runs, "accuracy": inside("val_accuracy", rec.accuracy_interval),
            "epoch_time": inside("epoch_time_s", rec.epoch_time_interval),
            "peak_bytes": inside("peak_bytes", rec.peak_bytes_interval)}


def real_study_coverage(quick: bool, out_dir: pathlib.Path) -> dict[str, Any]:
    """A real study (small_cnn on digits), its recommendation, and ``retrain_coverage`` with
    fresh seeds through autobatch's own trainer: real accuracy, epoch time and peak memory."""
    import tempfile

    import torch

    from autobatch.recommender import recommend_study
    from autobatch.records import TrialConfig
    from autobatch.search import TuneSettings
    from autobatch.train import train_trial
    from autobatch.tuning import tune
    from autobatch.workloads import build_model, load_workload, split_holdout

    torch.set_num_threads(1)
    n_trials, seeds = (20, range(1000, 1005)) if quick else (40, range(1000, 1010))
    with tempfile.TemporaryDirectory() as tmp:
        storage = f"sqlite:///{tmp}/coverage.db"
        tune(TuneSettings(model="small_cnn", dataset="digits", n_trials=n_trials, epochs=2.0,
                          storage=storage, study_name="coverage", device="cpu"))
        study = optuna.load_study(study_name="coverage", storage=storage)
        rec = recommend_study(study, priority="balanced")
        spec = StudySpec.from_dict(study.user_attrs["autobatch_spec"])
    # the trials' validation samples (a held-out slice, if the study kept one, is verification's)
    workload, _ = split_holdout(load_workload(spec.dataset, seed=spec.seed), spec.verify_holdout, spec.seed)
    config = TrialConfig(batch_size=rec.batch_size, learning_rate=rec.learning_rate,
                         accumulation_steps=rec.accumulation_steps)

    def train_fn(seed: int) -> dict[str, Any]:
        torch.manual_seed(seed)
        model = build_model(spec.model, num_classes=spec.num_classes, input_shape=spec.input_shape)
        result = train_trial(model, workload, config, train_samples=spec.train_samples,
                             checkpoints=spec.eval_points, device=torch.device("cpu"), seed=seed)
        return {"val_accuracy": result.final_metric, "epoch_time_s": spec.train_size / result.throughput,
                "peak_bytes": result.measured_peak_bytes}

    coverage = retrain_coverage(rec, train_fn, list(seeds))
    return {"n_trials": n_trials, "recommendation": rec.to_dict(), **coverage}


# --- synthetic known-law studies ---------------------------------------------------------

def random_law(rng: np.random.Generator) -> dict[str, float]:
    return {"top": rng.uniform(0.6, 0.98), "best_e": rng.uniform(3, 9),
            "best_m": float(np.exp(rng.uniform(-1.5, 1.5))), "cb": rng.uniform(0.001, 0.02),
            "cm": rng.uniform(0.005, 0.05), "noise": rng.uniform(0.002, 0.02),
            "alpha": rng.uniform(1e-4, 1e-2), "beta": rng.uniform(1e-6, 1e-4),
            "gamma": rng.uniform(0, 5e-3), "time_noise": rng.uniform(0.01, 0.08),
            "fixed": rng.uniform(100, 2000) * MIB, "per_sample": rng.uniform(0.5, 20) * MIB,
            "mem_noise": rng.uniform(0.2, 5) * MIB}


def draw(law: dict[str, float], b, a, m, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One noisy outcome per setting (what training it with a fresh seed would measure)."""
    b, a, m = (np.asarray(v, dtype=float) for v in (b, a, m))
    acc = (law["top"] - law["cb"] * (np.log2(b * a) - law["best_e"]) ** 2
           - law["cm"] * np.log(m / law["best_m"]) ** 2 + rng.normal(0, law["noise"], b.shape))
    thr = np.exp(rng.normal(0, law["time_noise"], b.shape)) / (
        law["beta"] + law["alpha"] / b + law["gamma"] / (a * b))
    peak = law["fixed"] + law["per_sample"] * b + rng.normal(0, law["mem_noise"], b.shape)
    return {"val_accuracy": np.clip(acc, 0, 1), "epoch_time_s": SPEC.train_size / thr,
            "throughput": thr, "peak_bytes": peak}


def random_settings(n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    space = SPEC.space
    b = rng.choice(space.batch_sizes, n)
    a = rng.choice(space.accumulation_steps, n)
    m = np.exp(rng.uniform(math.log(space.lr_multiplier_min), math.log(space.lr_multiplier_max), n))
    return b, a, m


def synthetic_frame(law: dict[str, float], n: int, rng: np.random.Generator) -> pd.DataFrame:
    """A ``trials_frame`` table of ``n`` completed trials at random settings."""
    b, a, m = random_settings(n, rng)
    out = draw(law, b, a, m, rng)
    return pd.DataFrame({
        "number": np.arange(n), "state": "COMPLETE", "value": out["val_accuracy"],
        "batch_size": pd.array(b, dtype="Int64"), "accumulation_steps": pd.array(a, dtype="Int64"),
        "effective_batch_size": pd.array(a * b, dtype="Int64"),
        "learning_rate": [SPEC.space.learning_rate(x, e) for x, e in zip(m, a * b)],
        "lr_multiplier": m, "throughput": out["throughput"], "epoch_time_s": out["epoch_time_s"],
        "measured_peak_bytes": out["peak_bytes"], "predicted_peak_bytes": np.nan,
        "val_metric": out["val_accuracy"], "best_val_metric": out["val_accuracy"],
        "val_accuracy": out["val_accuracy"], "best_val_accuracy": out["val_accuracy"],
        "stop_reason": R.STOP_COMPLETED, "baseline": None,
        "samples_seen": pd.array([SPEC.train_size] * n, dtype="Int64"), "device": "cpu",
        "curve": [[] for _ in range(n)]}, columns=list(R.COLUMNS))  # the table read_trials gives


def inside(value: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    return float(np.mean((value >= low) & (value <= high)))


def calibration(studies: int, sizes: Sequence[int], held_out: int, reseeds: int) -> list[dict]:
    rows = []
    for n in sizes:
        for s in range(studies):
            rng = np.random.default_rng(1000 * n + s)
            law = random_law(rng)
            df = synthetic_frame(law, n, rng)
            fit = fit_tradeoff(df, SPEC, None)
            b, a, m = random_settings(held_out, rng)
            pred, out = fit.predict(b, a, m), draw(law, b, a, m, rng)
            rec = recommend_from_frame(df, SPEC, None, study_name="synthetic")
            again = draw(law, *([v] * reseeds for v in (rec.batch_size, rec.accumulation_steps,
                                                        rec.lr_multiplier)), rng)
            at_rec = retrain_coverage(rec, lambda seed: {k: float(again[k][seed]) for k in
                                                         ("val_accuracy", "epoch_time_s", "peak_bytes")},
                                      range(reseeds))
            rows.append({
                "trials": n, "study": s,
                "accuracy_rmse": float(np.sqrt(np.mean((pred["accuracy"] - out["val_accuracy"]) ** 2))),
                "accuracy_noise": law["noise"],
                "accuracy": inside(out["val_accuracy"], pred["accuracy_lo"], pred["accuracy_hi"]),
                "epoch_time": inside(out["epoch_time_s"], pred["epoch_time_lo"], pred["epoch_time_hi"]),
                "peak_bytes": inside(out["peak_bytes"], pred["peak_lo"], pred["peak_hi"]),
                "rec_accuracy": at_rec["accuracy"], "rec_epoch_time": at_rec["epoch_time"],
                "rec_peak_bytes": at_rec["peak_bytes"]})
    return rows


# --- the accuracy model: GP or quantile boosting -----------------------------------------

def compare_models(datasets: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> list[dict]:
    """Held-out RMSE, 80% coverage and fit time of both kinds on (name, Xtrain, ytrain, Xtest, ytest)."""
    rows = []
    for kind in ("gp", "quantile_gbm"):
        for name, Xtr, ytr, Xte, yte in datasets:
            start = time.perf_counter()
            model = AccuracyModel(kind=kind).fit(Xtr, ytr)
            seconds = time.perf_counter() - start
            low, high = model.predict_interval(Xte)
            rows.append({"kind": kind, "data": name, "trials": len(ytr),
                         "rmse": float(np.sqrt(np.mean((model.predict(Xte) - yte) ** 2))),
                         "median_abs_error": float(np.median(np.abs(model.predict(Xte) - yte))),
                         "coverage": inside(yte, low, high), "fit_s": seconds})
    return rows


def synthetic_datasets(studies: int, sizes: Sequence[int]) -> list[tuple]:
    out = []
    for n in sizes:
        for s in range(studies):
            rng = np.random.default_rng(7000 + 100 * n + s)
            law = random_law(rng)
            b, a, m = random_settings(n + 300, rng)
            y = draw(law, b, a, m, rng)["val_accuracy"]
            X = accuracy_features(b, m, a)
            out.append((f"synthetic n={n}", X[:n], y[:n], X[n:], y[n:]))
    return out


def digits_sweep(quick: bool) -> pd.DataFrame:
    """Real SGD runs: an MLP on digits per (batch, lr multiplier, seed), 8 epochs each, with
    the lr scaled linearly from 0.1 at batch 256; validation accuracy and samples per CPU
    second (process time, so that other jobs on shared cores do not masquerade as noise)."""
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    train, val = order[:1200], order[1200:]
    rows = []
    for b in (8, 16, 32, 64, 128, 256):
        for m in np.geomspace(0.1, 10, 5 if quick else 9):
            for seed in range(1 if quick else 2):
                clf = MLPClassifier(hidden_layer_sizes=(64,), solver="sgd", batch_size=b,
                                    learning_rate_init=SPEC.space.learning_rate(m, b),
                                    momentum=0.9, max_iter=8, n_iter_no_change=10**6, tol=0,
                                    random_state=seed)
                start = time.process_time()  # CPU time: this machine's cores are shared
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    clf.fit(X[train] / 16, y[train])
                seconds = time.process_time() - start
                rows.append({"batch_size": b, "lr_multiplier": float(m), "seed": seed,
                             "val_accuracy": float(clf.score(X[val] / 16, y[val])),
                             "throughput": 8 * len(train) / seconds})
    return pd.DataFrame(rows)


def digits_datasets(sweep: pd.DataFrame, sizes: Sequence[int], repeats: int) -> list[tuple]:
    X = accuracy_features(sweep["batch_size"], sweep["lr_multiplier"], np.ones(len(sweep)))
    y = sweep["val_accuracy"].to_numpy()
    out = []
    for n in sizes:
        for r in range(repeats):
            idx = np.random.default_rng(r).permutation(len(y))
            out.append((f"digits n={n}", X[idx[:n]], y[idx[:n]], X[idx[n:]], y[idx[n:]]))
    return out


def throughput_law(sweep: pd.DataFrame) -> dict[str, Any]:
    """The law on real timings: residual spread, and leave-one-batch-size-out error."""
    X = np.column_stack([sweep["batch_size"], np.ones(len(sweep))])
    y = sweep["throughput"].to_numpy()
    model = ThroughputModel().fit(X, y)
    held_out = {}
    for b in sorted(sweep["batch_size"].unique()):
        mask = sweep["batch_size"].to_numpy() == b
        part = ThroughputModel().fit(X[~mask], y[~mask])
        held_out[int(b)] = float(np.median(np.log(part.predict(X[mask]) / y[mask])))
    return {"alpha_s": model.alpha_, "beta_s": model.beta_, "log_residual_sd": model.log_sd_,
            "held_out_log_error": held_out}


# --- the section -------------------------------------------------------------------------

def _pct(x: Optional[float]) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f} %"


def render(calib: pd.DataFrame, models: pd.DataFrame, law: dict[str, Any], quick: bool) -> str:
    lines = ["## Recommender: interval calibration and model choice", "",
             f"{'Quick mode. ' if quick else ''}Nominal coverage of every interval: "
             f"{COVERAGE:.0%}. Synthetic studies: random known laws, trials at random settings.", "",
             "| trials | studies | accuracy RMSE (noise sd) | coverage: accuracy | epoch time "
             "| peak memory | at the recommendation: accuracy | epoch time | peak memory |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n, g in calib.groupby("trials"):
        lines.append(f"| {n} | {len(g)} | {g['accuracy_rmse'].mean():.4f} ({g['accuracy_noise'].mean():.4f}) "
                     f"| {_pct(g['accuracy'].mean())} | {_pct(g['epoch_time'].mean())} "
                     f"| {_pct(g['peak_bytes'].mean())} | {_pct(g['rec_accuracy'].mean())} "
                     f"| {_pct(g['rec_epoch_time'].mean())} | {_pct(g['rec_peak_bytes'].mean())} |")
    lines += ["", "Accuracy model, held-out settings (mean over splits):", "",
              "| data | model | RMSE | median abs. error | 80 % coverage | fit time |",
              "| --- | --- | --- | --- | --- | --- |"]
    columns = ["rmse", "median_abs_error", "coverage", "fit_s"]
    summary = models.groupby(["data", "kind"], sort=False)[columns].mean()
    for (data, kind), row in summary.iterrows():
        lines.append(f"| {data} | {kind} | {row['rmse']:.4f} | {row['median_abs_error']:.4f} "
                     f"| {_pct(row['coverage'])} | {row['fit_s'] * 1000:.0f} ms |")
    errors = ", ".join(f"{b}: {e:+.2f}" for b, e in law["held_out_log_error"].items())
    lines += ["", "Throughput law on the digits sweep's real timings (scikit-learn SGD, samples "
              f"per CPU second, short runs on shared cores): "
              f"alpha = {law['alpha_s'] * 1e3:.3f} ms/step, beta = {law['beta_s'] * 1e6:.2f} us/sample, "
              f"log residual sd {law['log_residual_sd']:.3f}; median log error of each batch size "
              f"left out of the fit: {errors}.", "",
              ""]
    return "\n".join(lines)


def render_retrain(real: dict[str, Any]) -> str:
    rec = real["recommendation"]
    runs = real["runs"]
    acc = [r["val_accuracy"] for r in runs]
    epoch = [r["epoch_time_s"] for r in runs]
    lo_a, hi_a = rec["accuracy_interval"]
    lo_t, hi_t = rec["epoch_time_interval"]
    lines = [
        "### Re-training the recommendation with fresh seeds", "",
        f"A real study (small_cnn on digits, {real['n_trials']} trials of 2 epochs, CPU, 1 thread); its "
        f"balanced recommendation (batch {rec['batch_size']} x {rec['accumulation_steps']}, "
        f"lr {rec['learning_rate']:.4g}) re-trained with {len(runs)} fresh seeds by autobatch's trainer.", "",
        "| metric | predicted | 80% interval | measured (min .. max over seeds) | inside the interval |",
        "| --- | --- | --- | --- | --- |",
        f"| val accuracy | {rec['predicted_accuracy']:.4f} | {lo_a:.4f} .. {hi_a:.4f} | "
        f"{min(acc):.4f} .. {max(acc):.4f} | {_pct(real['accuracy'])} |",
        f"| epoch time | {rec['predicted_epoch_time_s']:.3f} s | {lo_t:.3f} .. {hi_t:.3f} s | "
        f"{min(epoch):.3f} .. {max(epoch):.3f} s | {_pct(real['epoch_time'])} |",
    ]
    if rec.get("peak_bytes_interval") and real.get("peak_bytes") is not None:
        peaks = [r["peak_bytes"] for r in runs if r["peak_bytes"]]
        lo_p, hi_p = rec["peak_bytes_interval"]
        lines.append(f"| peak memory | {rec['predicted_peak_bytes'] / MIB:.2f} MiB | {lo_p / MIB:.2f} .. "
                     f"{hi_p / MIB:.2f} MiB | {min(peaks) / MIB:.2f} .. {max(peaks) / MIB:.2f} MiB | "
                     f"{_pct(real['peak_bytes'])} |")
    lines += ["", "Goal: at least 80% inside.", ""]
    return "\n".join(lines)


def run(quick: bool, out_dir: pathlib.Path) -> str:
    sizes = (15, 40) if quick else (12, 25, 50)
    calib = pd.DataFrame(calibration(studies=4 if quick else 20, sizes=sizes,
                                     held_out=200, reseeds=10 if quick else 20))
    sweep = digits_sweep(quick)
    models = pd.DataFrame(compare_models(
        synthetic_datasets(3 if quick else 10, sizes)
        + digits_datasets(sweep, (12, 25) if quick else (12, 25, 50), 5 if quick else 20)))
    law = throughput_law(sweep)
    real = real_study_coverage(quick, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep.to_csv(out_dir / "digits_sweep.csv", index=False)
    (out_dir / "bench_recommend.json").write_text(json.dumps(
        {"quick": quick, "calibration": calib.to_dict("records"),
         "models": models.to_dict("records"), "throughput_law": law, "retrain": real}, indent=2,
        default=str))
    return render(calib, models, law, quick) + render_retrain(real)


if __name__ == "__main__":
    from _bench_common import bench_main

    bench_main(run, __doc__)
