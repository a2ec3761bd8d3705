"""Speed of the tuner's own parts: the trainer against a plain PyTorch loop, and how fast
``autobatch recommend`` starts and answers.

    python scripts/bench_speed.py [--quick] [--out DIR]
    python scripts/benchmark.py --only speed

Trainer: ``compare_throughput`` (``scripts/_bench_common.py``): training samples per CPU-second
of this thread (``time.thread_time``, one torch thread) for ``train_trial`` and for the loop
written out there, the same model, initialisation, data, optimizer, lr schedule and batch;
interleaved rounds, the plain loop run twice per round for the noise floor. ``recommend``:
``python -X importtime`` and the wall time of ``autobatch recommend`` on studies of 60 and 200
trials (real ``tune`` runs of a tiny model, copied up to the size), and the answer's own time
after imports. Returns a Markdown section; raw numbers go to ``DIR/bench_speed.json``.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402
from _bench_common import (PLAIN, PLAIN_AGAIN, TRAINER, TRAINER_MEASURED, Spread, bench_main,  # noqa: E402
                           compare_throughput, load_average, ratios)

from autobatch.workloads import load_workload  # noqa: E402

# (model, micro-batch, optimizer steps per run, lr): the three cases
TRAINER_CASES = (("small_cnn", 8, 360, 0.05), ("small_cnn", 128, 120, 0.2), ("resnet18", 32, 45, 0.05))
TRAINER_GOAL = 0.97


def trainer_rows(quick: bool) -> list[dict]:
    workload = load_workload("digits", seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for model, batch, steps, lr in TRAINER_CASES:
            steps = steps // 2 if quick and model == "resnet18" else steps
            raw = compare_throughput(model, workload, batch_size=batch, learning_rate=lr, steps=steps,
                                     rounds=8 if quick else 12)  # a multiple of the 4 loops: each order as often
            rows.append({"model": model, "batch_size": batch, "steps": steps, "raw": raw})
            print(f"  trainer {model} b={batch}: {statistics.median(ratios(raw, TRAINER)):.3f}",
                  file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(threads)
    return rows


def render_trainer(rows: list[dict]) -> list[str]:
    rounds = len(rows[0]["raw"][PLAIN]) if rows else 0
    lines = [
        "### Trainer against a plain PyTorch loop", "",
        f"Training samples per CPU-second of the training thread (`time.thread_time`, one torch thread), "
        f"{rounds} interleaved rounds after one untimed warm-up each (the order rotates each round); "
        "each run from a fresh model with the same initialisation; the whole call timed (set-up, "
        "loader, steps, the trainer's divergence checks). Plain loop: the loop written out in "
        "`scripts/_bench_common.py` (`make_optimizer`, `make_scheduler`, shuffled index batches from "
        "the same in-memory tensors, forward, `cross_entropy`, backward, step, zero_grad, schedule step). "
        "*autobatch*: `train_trial` with no evaluation checkpoints; *+ memory*: with the CPU memory "
        "accounting of its first 2 steps that `tune` runs (the profiler; kept out of the trial's "
        "training time, so it is tuner overhead, not trainer speed). Ratios per round against the "
        "same round's plain loop: median [min, max]. *Noise floor*: the plain loop against itself "
        "in the same round; a ratio within it is a tie.", "",
        "| task | micro-batch | steps / run | plain loop samples/CPU-s | autobatch / plain | "
        "noise floor (plain / plain) | autobatch + memory / plain | goal (≥97%) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in rows:
        raw = row["raw"]
        ours, floor, measured = (Spread.of(ratios(raw, name)) for name in (TRAINER, PLAIN_AGAIN, TRAINER_MEASURED))
        if ours.median >= TRAINER_GOAL:
            verdict = "met"
        elif ours.median >= floor.low:
            verdict = "tie with the plain loop (within the noise floor)"
        else:
            verdict = "not met"
        pct = "{:.1%}"
        lines.append(f"| {row['model']} / digits | {row['batch_size']} | {row['steps']} | "
                     f"{statistics.median(raw[PLAIN]):,.0f} | {ours.show(pct)} | {floor.show(pct)} | "
                     f"{measured.show(pct)} | {verdict} |")
    return lines


def run(quick: bool, out_dir: pathlib.Path) -> str:
    load = load_average()
    trainer = trainer_rows(quick)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_speed.json").write_text(json.dumps({"trainer": trainer}, indent=1))
    lines = ["## Speed: the trainer against a plain loop, and `recommend`'s start", "",
             f"`scripts/bench_speed.py`{' --quick' if quick else ''}; load average at the start: {load}.", ""]
    lines += render_trainer(trainer)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    bench_main(run, __doc__)
