"""Does encoding the micro-batch and accumulation as categorical powers of two (readable in
optuna-dashboard) cost TPE anything against the log2 integers it used before?

A synthetic accuracy surface over (log2 micro-batch, log lr multiplier, log2 accumulation) with
its optimum inside the space, the study's own sampler (``search.make_sampler``: multivariate
TPE, 8 start-up trials), N trials, many seeds; prints the mean and spread of the simple regret
(best possible minus best found) after each budget, for both encodings. CPU only, seconds.

    python scripts/bench_param_encoding.py [--seeds 40] [--trials 30]
"""

from __future__ import annotations

import argparse
import math
import statistics

import optuna

from autobatch.search import make_sampler

BATCHES = [8, 16, 32, 64, 128, 256]
ACCUM = [1, 2, 4, 8]


def surface(batch: int, multiplier: float, accum: int, seed: int) -> float:
    """A smooth bowl: best near effective batch 64 and multiplier ~1.5 (shifted per seed)."""
    shift = (seed % 5) - 2
    eff = math.log2(batch * accum)
    return 0.95 - 0.02 * (eff - (6 + 0.5 * shift)) ** 2 - 0.05 * (math.log(multiplier) - 0.4) ** 2 \
        - 0.01 * math.log2(accum)


def best_possible(seed: int) -> float:
    grid = [math.exp(x / 50) for x in range(-115, 116)]
    return max(surface(b, m, a, seed) for b in BATCHES for a in ACCUM for m in grid)


def run(encoding: str, seed: int, trials: int) -> list[float]:
    study = optuna.create_study(direction="maximize", sampler=make_sampler(seed))
    found = []
    for _ in range(trials):
        t = study.ask()
        if encoding == "log2":
            b = 2 ** t.suggest_int("batch_size_log2", 3, 8)
            a = 2 ** t.suggest_int("accumulation_steps_log2", 0, 3)
        else:
            b = t.suggest_categorical("batch_size", BATCHES)
            a = t.suggest_categorical("accumulation_steps", ACCUM)
        m = t.suggest_float("lr_multiplier", 0.1, 10.0, log=True)
        value = surface(b, m, a, seed)
        study.tell(t, value)
        found.append(max(value, found[-1]) if found else value)
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--trials", type=int, default=30)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    checkpoints = [c for c in (10, 15, 20, 30, 50) if c <= args.trials]
    regrets = {"log2": {c: [] for c in checkpoints}, "categorical": {c: [] for c in checkpoints}}
    for seed in range(args.seeds):
        top = best_possible(seed)
        for encoding in ("log2", "categorical"):  # interleaved, same seeds
            found = run(encoding, seed, args.trials)
            for c in checkpoints:
                regrets[encoding][c].append(top - found[c - 1])
    print(f"simple regret (accuracy points), mean ± sd over {args.seeds} seeds")
    print("trials  " + "  ".join(f"{e:>22}" for e in regrets) + "   categorical - log2 (paired, ± s.e.)")
    for c in checkpoints:
        cells = [f"{100 * statistics.mean(r[c]):8.3f} ± {100 * statistics.stdev(r[c]):6.3f}" for r in regrets.values()]
        diff = [x - y for x, y in zip(regrets["categorical"][c], regrets["log2"][c])]
        paired = f"{100 * statistics.mean(diff):+.3f} ± {100 * statistics.stdev(diff) / math.sqrt(len(diff)):.3f}"
        print(f"{c:6d}  " + "  ".join(f"{x:>22}" for x in cells) + f"   {paired:>18}")


if __name__ == "__main__":
    main()
