"""Benchmark: does the 80% accuracy interval at the recommended setting hold 80% of fresh seeds?

    OMP_NUM_THREADS=1 python scripts/bench_coverage.py [--quick] [--out DIR]

For each task (small_cnn on digits, cnn1d on MNIST-1D, mlp on breast_cancer) and each of several
tune seeds, ``autobatch.tune`` runs a small study (with its verification runs, whose cost as a
share of the tune's wall time is recorded). From the same trials (the verification runs are
not trials) the recommendation is computed twice, with calibration off
(``recommend_from_frame(calibrate=False)``: the GP's own interval, as before issue 18) and on
(the seed-noise floor and the selective conformal width, ``recommender._calibration``). Each
recommended setting is then re-trained with ``RETRAIN_SEEDS`` fresh seeds on the study's recipe
and trial length and scored on the samples the trials were scored on (the interval's quantity);
coverage is inside/total over every (answer, seed). Also checked: no memory or epoch-time
interval end below zero.

Writes ``DIR/bench_coverage.md`` (a Markdown table for BENCHMARKS.md) and
``DIR/bench_coverage.json`` (every run). Single process; small budgets (``--quick``: a few
minutes on one CPU core).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time
from typing import Any

import optuna
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from autobatch import records as R  # noqa: E402
from autobatch.recommender import Recommendation, recommend_from_frame, trials_frame  # noqa: E402
from autobatch.records import TrialConfig  # noqa: E402
from autobatch.search import SearchSpace, StudySpec, TuneSettings  # noqa: E402
from autobatch.train import train_trial  # noqa: E402
from autobatch.tuning import tune  # noqa: E402
from autobatch.workloads import build_model, load_workload, split_holdout  # noqa: E402

RETRAIN_SEEDS = 3
SEED_BASE = 7_000_001   # re-training seeds: no trial's, no verification run's
TASKS = (("digits", "small_cnn", 1.0), ("mnist1d", "cnn1d", 0.5), ("breast_cancer", "mlp", 2.0))  # data, model, epochs


def retrain(spec: StudySpec, rec: Recommendation, seeds: list[int]) -> list[float]:
    """The recommended setting trained once per seed, scored on the trials' validation samples."""
    workload, _ = split_holdout(load_workload(spec.dataset, seed=spec.seed), spec.verify_holdout, spec.seed)
    config = TrialConfig(batch_size=rec.batch_size, learning_rate=rec.learning_rate,
                         accumulation_steps=rec.accumulation_steps)
    values = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = build_model(spec.model, num_classes=spec.num_classes, input_shape=spec.input_shape)
        result = train_trial(model, workload, config, train_samples=spec.train_samples, checkpoints=spec.eval_points,
                             device=torch.device("cpu"), recipe=spec.recipe, seed=seed)
        values.append(float(result.final_metric))
    return values


def one_study(dataset: str, model: str, epochs: float, seed: int, n_trials: int, tmp: str) -> dict[str, Any]:
    storage, name = f"sqlite:///{tmp}/{dataset}-{seed}.db", f"{dataset}-{seed}"
    started = time.perf_counter()
    outcome = tune(TuneSettings(model=model, dataset=dataset, n_trials=n_trials, epochs=epochs, seed=seed,
                                storage=storage, study_name=name, device="cpu", num_workers=0,
                                space=SearchSpace(batch_size_min=8, batch_size_max=128)))
    wall = time.perf_counter() - started
    study = optuna.load_study(study_name=name, storage=storage)
    spec = StudySpec.from_dict(study.user_attrs[R.STUDY_SPEC])
    verification = study.user_attrs.get(R.STUDY_VERIFICATION) or {}
    df = trials_frame(study)   # the verification runs are not trials: the prediction they checked is these trials'
    memory = study.user_attrs.get(R.STUDY_MEMORY_MODEL)
    row: dict[str, Any] = {"task": f"{model} on {dataset}", "seed": seed, "wall_s": wall,
                           "verify_s": verification.get("seconds") or 0.0,
                           "verify_runs": len(verification.get("values") or ()),
                           "answer": outcome.answer.get("verification")}
    for label, calibrate in (("before", False), ("after", True)):
        rec = recommend_from_frame(df, spec, memory, study_name=name, calibrate=calibrate)
        measured = retrain(spec, rec, [SEED_BASE + 101 * seed + i for i in range(RETRAIN_SEEDS)])
        lo, hi = rec.metric_interval
        row[label] = {"setting": [rec.batch_size, rec.accumulation_steps, rec.lr_multiplier],
                      "predicted": rec.predicted_metric, "interval": [lo, hi], "measured": measured,
                      "inside": sum(lo <= v <= hi for v in measured), "total": len(measured),
                      "nonnegative": min(rec.epoch_time_interval) >= 0
                      and (rec.peak_bytes_interval is None or min(rec.peak_bytes_interval) >= 0)}
        print(f"{row['task']} seed {seed} {label}: predicted {rec.predicted_metric:.4f} [{lo:.4f}, {hi:.4f}], "
              f"measured {', '.join(f'{v:.4f}' for v in measured)}", flush=True)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| task | answers | fresh seeds each | before: inside/total | after: inside/total | "
             "mean width before / after (points) | verification, share of tune wall time |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    totals = {"before": [0, 0], "after": [0, 0]}
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        cells = []
        for label in ("before", "after"):
            inside, total = sum(r[label]["inside"] for r in mine), sum(r[label]["total"] for r in mine)
            totals[label][0] += inside
            totals[label][1] += total
            cells.append(f"{inside}/{total} ({inside / total:.0%})")
        width = {label: 100 * sum(r[label]["interval"][1] - r[label]["interval"][0] for r in mine) / len(mine)
                 for label in ("before", "after")}
        share = sum(r["verify_s"] for r in mine) / sum(r["wall_s"] for r in mine)
        lines.append(f"| {task} | {len(mine)} | {RETRAIN_SEEDS} | {cells[0]} | {cells[1]} | "
                     f"{width['before']:.2f} / {width['after']:.2f} | {share:.0%} |")
    b, a = totals["before"], totals["after"]
    lines.append(f"| **all** | {len(rows)} | {RETRAIN_SEEDS} | {b[0]}/{b[1]} ({b[0] / b[1]:.0%}) | "
                 f"{a[0]}/{a[1]} ({a[0] / a[1]:.0%}) | | |")
    return "\n".join(lines) + "\n"


def run(quick: bool, out_dir: pathlib.Path) -> str:
    """``scripts/benchmark.py``'s entry (section "coverage"): the table and the raw runs in ``out_dir``."""
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seeds, n_trials = (range(2), 12) if quick else (range(5), 24)
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for dataset, model, epochs in TASKS:
            for seed in seeds:
                rows.append(one_study(dataset, model, epochs, seed, n_trials, tmp))
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = table(rows)
    negative = [r["task"] for r in rows for k in ("before", "after") if not r[k]["nonnegative"]]
    text += (f"\n{'quick' if quick else 'full'} mode: {len(seeds)} tune seeds x {n_trials} trials per task, "
             f"{time.perf_counter() - started:.0f} s; memory/time intervals below zero: "
             f"{', '.join(negative) if negative else 'none'}.\n")
    (out_dir / "bench_coverage.md").write_text(text)
    (out_dir / "bench_coverage.json").write_text(json.dumps(rows, indent=1, default=float))
    return ("## Coverage: does the 80% accuracy interval at the answer hold fresh seeds?\n\n"
            "`scripts/bench_coverage.py`: per task, small `tune` studies; the answer computed from the same "
            "trials with calibration off (before issue 18) and on; each answer re-trained with fresh seeds "
            "on the study's recipe and trial length, scored on the trials' validation samples.\n\n" + text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 tune seeds x 12 trials per task")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench_out"))
    args = parser.parse_args()
    print(run(args.quick, args.out))


if __name__ == "__main__":
    main()
