"""Benchmark of the memory model: prediction error at micro-batch sizes not used in the fit.

    python scripts/bench_memory.py [--quick] [--out DIR]

Fits ``peak(b) = fixed + per_sample * b`` from probes at (2, 8) for torchvision models at
two input sizes, then measures held-out sizes and reports the relative error of the
prediction, with probe times. A second part checks whether the probed peak drifts when the
same probe is repeated in one process around unrelated training (fragmentation, leaks).
Returns a Markdown section for BENCHMARKS.md; raw numbers go to ``DIR/bench_memory.json``.
"""

from __future__ import annotations

import json
import pathlib
import platform
import sys
import time

import torch
import torchvision
from torch.utils.data import TensorDataset

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from autobatch.memory import (  # noqa: E402
    fit_memory_model,
    measure_step_peak,
    relative_error,
)
from autobatch.recipe import TrainRecipe  # noqa: E402
from autobatch.train import step_runner  # noqa: E402

MiB = 2**20
FIT_SIZES = (2, 8)
STEPS = 2
MODELS = ("resnet18", "mobilenet_v3_small")
RESOLUTIONS = (32, 64)


SGD = TrainRecipe(optimizer="sgd", momentum=0.9, nesterov=False, weight_decay=0.0)


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, num_classes=10)


def measure(model, batch_size: int, resolution: int):
    cpu = torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    images = TensorDataset(torch.randn(64, 3, resolution, resolution, generator=gen),
                           torch.randint(0, 10, (64,), generator=gen))
    runner = step_runner(model, dataset=images, device=cpu, recipe=SGD, steps=STEPS)
    return measure_step_peak(runner, batch_size=batch_size, device=cpu)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def accuracy_rows(held_out: tuple[int, ...]) -> list[dict]:
    rows = []
    for name in MODELS:
        model = build(name)
        for resolution in RESOLUTIONS:
            fit = [measure(model, b, resolution) for b in FIT_SIZES]
            line = fit_memory_model([(p.batch_size, p.peak_bytes) for p in fit])
            for point in fit + [measure(model, b, resolution) for b in held_out]:
                predicted = line.predict(point.batch_size)
                rows.append({
                    "model": name, "resolution": resolution, "batch_size": point.batch_size,
                    "fit": point.batch_size in FIT_SIZES,
                    "fixed_bytes": line.fixed_bytes, "per_sample_bytes": line.per_sample_bytes,
                    "predicted_bytes": predicted, "measured_bytes": point.peak_bytes,
                    "error": relative_error(predicted, point.peak_bytes),
                    "seconds": point.seconds,
                })
    return rows


def drift(train_steps: int, repeats: int) -> dict:
    """Probe, train another model for ``train_steps``, repeat the probe ``repeats`` times."""
    probed = build("resnet18")
    first = measure(probed, 8, 32).peak_bytes
    rss_before = rss_bytes()
    other = build("mobilenet_v3_small")
    optimizer = torch.optim.Adam(other.parameters(), lr=1e-3)
    keep = []  # hold a little state across steps, as a training loop's logging does
    for step in range(train_steps):
        batch = torch.randn(16 + step % 3 * 8, 3, 32, 32)  # varying shapes fragment more
        loss = torch.nn.functional.cross_entropy(other(batch), torch.randint(0, 10, (len(batch),)))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 50 == 0:
            keep.append(loss.detach())
    rss_after = rss_bytes()
    after = [measure(probed, 8, 32).peak_bytes for _ in range(repeats)]
    return {"first_bytes": first, "after_bytes": after, "train_steps": train_steps,
            "rss_before_training": rss_before, "rss_after_training": rss_after,
            "rss_after_probes": rss_bytes()}


def plain_step_seconds(name: str, batch_size: int, resolution: int) -> float:
    """The same ``STEPS`` training steps without the profiler, for its overhead."""
    model = build(name)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    start = time.perf_counter()
    for _ in range(STEPS):
        x = torch.randn(batch_size, 3, resolution, resolution)
        torch.nn.functional.cross_entropy(model(x), torch.randint(0, 10, (batch_size,))).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
    return time.perf_counter() - start


def render(rows: list[dict], drift_result: dict, overhead: dict, quick: bool) -> str:
    lines = [
        "## Memory model: prediction error at held-out micro-batch sizes",
        "",
        f"Device: CPU ({platform.processor() or platform.machine()}, 1 thread), torch "
        f"{torch.__version__}, torchvision {torchvision.__version__}; mode: "
        f"{'quick' if quick else 'full'}. Peak = exact tensor bytes from the profiler's "
        f"allocation events over {STEPS} complete training steps (SGD, momentum 0.9), on a "
        f"deep copy. Fit from micro-batches {FIT_SIZES}; error = (predicted - measured) / "
        "measured, positive = over-predicted.",
        "",
        "| model | input | fixed MiB | per sample KiB | micro-batch | predicted MiB | "
        "measured MiB | error | probe s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        error = "fit" if r["fit"] else f"{100 * r['error']:+.3f}%"
        lines.append(
            f"| {r['model']} | {r['resolution']}x{r['resolution']} | {r['fixed_bytes'] / MiB:.1f} | "
            f"{r['per_sample_bytes'] / 1024:.1f} | {r['batch_size']} | "
            f"{r['predicted_bytes'] / MiB:.1f} | {r['measured_bytes'] / MiB:.1f} | {error} | "
            f"{r['seconds']:.2f} |"
        )
    held = [r for r in rows if not r["fit"]]
    worst = max(held, key=lambda r: abs(r["error"]))
    lines += ["", f"Largest held-out error: {100 * abs(worst['error']):.3f}% "
              f"({abs(worst['predicted_bytes'] - worst['measured_bytes']):.0f} B) over "
              f"{len(held)} held-out points."]
    for (name, b, res), (probed, plain) in overhead.items():
        lines.append(f"Profiler overhead, {name} {res}x{res} micro-batch {b}: probe {probed:.2f} s"
                     f" vs {plain:.2f} s for the same {STEPS} steps unprofiled.")
    d = drift_result
    after = d["after_bytes"]
    lines += [
        "",
        "### Drift of the probed peak within one process",
        "",
        f"resnet18 32x32 micro-batch 8 probed once ({d['first_bytes']} B), then "
        f"mobilenet_v3_small trained {d['train_steps']} steps (Adam, varying batch shapes), then "
        f"the same probe repeated {len(after)} times: min {min(after)} B, max {max(after)} B, "
        f"largest difference from the first {max(abs(a - d['first_bytes']) for a in after)} B. "
        f"Process RSS over the training: {d['rss_before_training'] / MiB:.0f} MiB -> "
        f"{d['rss_after_training'] / MiB:.0f} MiB (what an RSS-based probe would have mixed in), "
        f"{d['rss_after_probes'] / MiB:.0f} MiB after the repeated probes.",
    ]
    return "\n".join(lines) + "\n"


def run(quick: bool, out_dir: pathlib.Path) -> str:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = accuracy_rows((4, 16, 32) if quick else (4, 12, 16, 24, 32, 64))
        drift_result = drift(train_steps=200, repeats=3 if quick else 10)
        overhead = {}
        for r in rows:
            if r["batch_size"] == 32 and r["resolution"] == 64:
                overhead[(r["model"], 32, 64)] = (r["seconds"], plain_step_seconds(r["model"], 32, 64))
    finally:
        torch.set_num_threads(threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_memory.json").write_text(json.dumps(
        {"rows": rows, "drift": drift_result, "quick": quick, "device": "cpu"}, indent=2))
    return render(rows, drift_result, overhead, quick)


if __name__ == "__main__":
    from _bench_common import bench_main

    bench_main(run, __doc__)
