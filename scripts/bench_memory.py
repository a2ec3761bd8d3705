"""Benchmark of the memory probe on a zoo of models: prediction error at the largest micro-batch
used, probe sizes and time, each model's short trial against its cap, and the peers' answers.

    python scripts/bench_memory.py [--quick] [--out DIR]

For every model of the zoo (torchvision resnet18, mobilenet_v3_small, efficientnet_b0; the
registry's small_cnn and mlp; and, written here, a 1-D CNN, a GRU over token ids and a model
whose memory is quadratic in the batch) the probe of ``autobatch tune`` runs as tune runs it
(``autobatch.memory.probe`` with the study's step and evaluation runners, a cap, the space's
largest micro-batch and the data set's size). Then, independently of the probe:

- the peak is measured again at the boundary (the largest micro-batch the study will try) and at
  the largest power of two below it that the probe did not measure (held out), and compared with
  the fitted prediction;
- one short trial (``train_trial``: 2 optimizer steps and one evaluation, at the largest power of
  two the study may train, with the evaluation batch the probe chose) runs under the cap: its
  measured peak against the prediction and the cap ("over" would be a trial over its cap);
- Lightning's ``Tuner.scale_batch_size`` (power mode) and accelerate's
  ``find_executable_batch_size`` run on the same model in a subprocess capped with ``RLIMIT_AS``
  at the same number of bytes above its post-setup address space (``_memory_peers.py``): their
  answer and cost beside the probe's.

Recipes: SGD (momentum 0.9, Nesterov, weight decay 5e-4) and AdamW, fp32 and bf16 (CPU autocast);
quick mode runs SGD fp32 and AdamW bf16. The cap of each run is the model's peak at micro-batch 2
under that recipe (measured first) plus a headroom per model, so that the limit falls inside the
space. CPU, one thread. Returns a Markdown section for
BENCHMARKS.md; raw numbers go to ``DIR/bench_memory.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import sys
import time
from typing import Callable, Optional

import torch
from torch import nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from autobatch.memory import largest_power_of_two_at_most, measure_step_peak, probe, relative_error  # noqa: E402
from autobatch.recipe import TrainRecipe  # noqa: E402
from autobatch.records import TrialConfig  # noqa: E402
from autobatch.train import eval_runner, step_runner, train_trial  # noqa: E402
from autobatch.workloads import Workload, build_model  # noqa: E402

KiB, MiB = 2**10, 2**20
CPU = torch.device("cpu")
NUM_CLASSES = 10


# --- models the registry lacks ------------------------------------------------------------

class Conv1dNet(nn.Sequential):
    """A 1-D CNN over signals of shape (1, L) (MNIST-1D: L = 40)."""

    def __init__(self, length: int = 40) -> None:
        super().__init__(nn.Conv1d(1, 64, 5, padding=2), nn.ReLU(), nn.Conv1d(64, 64, 5, padding=2), nn.ReLU(),
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(64, NUM_CLASSES))


class TokenGRU(nn.Module):
    """Embedding + GRU over sequences of token ids (int64, shape (L,)), classifying from the last
    hidden state."""

    def __init__(self, vocab: int = 1000, width: int = 128) -> None:
        super().__init__()
        self.vocab = vocab
        self.embed, self.gru = nn.Embedding(vocab, 64), nn.GRU(64, width, batch_first=True)
        self.head = nn.Linear(width, NUM_CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.embed(ids))
        return self.head(out[:, -1])


class BatchAttention(nn.Module):
    """Attention across the samples of a batch (8 heads): score matrices of b x b per head, so
    activation memory grows with the square of the micro-batch."""

    def __init__(self, features: int = 64, heads: int = 8) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.head = nn.Linear(features, 3 * features), nn.Linear(features, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        q, k, v = (t.reshape(b, self.heads, -1).transpose(0, 1) for t in self.qkv(x).chunk(3, dim=-1))
        scores = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)   # (heads, b, b)
        return self.head((scores @ v).transpose(0, 1).reshape(b, -1))


def _registry_model(name: str, shape: tuple[int, ...]) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, num_classes=NUM_CLASSES, input_shape=shape)


def _own_model(cls: type) -> nn.Module:
    torch.manual_seed(0)
    return cls()


# Factories are partials of module-level functions: picklable, for the peers' subprocesses.
def registry(name: str, shape: tuple[int, ...]) -> Callable[[], nn.Module]:
    return functools.partial(_registry_model, name, shape)


def own(cls: type) -> Callable[[], nn.Module]:
    return functools.partial(_own_model, cls)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], nn.Module]
    shape: tuple[int, ...]
    headroom: int            # bytes: the cap is the peak at micro-batch 2 (per recipe) plus this
    space_max: int           # the study's largest micro-batch
    quick_space_max: int
    train_size: int = 1024
    val_size: int = 256
    vocab: int = 0             # > 0: inputs are token ids in [0, vocab)
    peer_cap: int = 384 * MiB  # address-space headroom for the peers (SGD fp32; a process maps more than tensors)


# Headrooms put each model's limit inside its quick space under SGD fp32 (mlp's makes field case
# c20's 320 KiB cap).
ZOO = (
    Case("resnet18", registry("resnet18", (3, 32, 32)), (3, 32, 32), 21 * MiB, 256, 64),
    Case("mobilenet_v3_small", registry("mobilenet_v3_small", (3, 32, 32)), (3, 32, 32), 26 * MiB, 256, 128),
    Case("efficientnet_b0", registry("efficientnet_b0", (3, 32, 32)), (3, 32, 32), 45 * MiB, 256, 32),
    Case("small_cnn", registry("small_cnn", (3, 32, 32)), (3, 32, 32), 63 * MiB, 1024, 512),
    Case("mlp (digits)", registry("mlp", (1, 8, 8)), (1, 8, 8), 144 * KiB, 1024, 1024, train_size=1437,
         val_size=360, peer_cap=320 * KiB),
    Case("cnn1d (mnist1d)", own(Conv1dNet), (1, 40), 15 * MiB, 1024, 512),
    Case("gru (token ids)", own(TokenGRU), (32,), 30 * MiB, 1024, 256, vocab=1000),
    Case("batch attention (quadratic)", own(BatchAttention), (64,), 16 * MiB, 4096, 1024),
)
RECIPES = {"sgd fp32": TrainRecipe(), "adamw fp32": TrainRecipe(optimizer="adamw"),
           "sgd bf16": TrainRecipe(precision="bf16"), "adamw bf16": TrainRecipe(optimizer="adamw", precision="bf16")}
QUICK_RECIPES = ("sgd fp32", "adamw bf16")
PEERS_QUICK = ("mobilenet_v3_small", "mlp (digits)")


def workload(case: Case) -> Workload:
    gen = torch.Generator().manual_seed(0)
    def split(n: int) -> TensorDataset:
        inputs = (torch.randint(0, case.vocab, (n, *case.shape), generator=gen) if case.vocab
                  else torch.randn(n, *case.shape, generator=gen))
        return TensorDataset(inputs, torch.randint(0, NUM_CLASSES, (n,), generator=gen))
    return Workload(case.name, split(case.train_size), split(case.val_size), NUM_CLASSES, case.shape,
                    vocab_size=case.vocab or None)


def probe_case(case: Case, recipe_name: str, quick: bool) -> dict:
    model, data, recipe = case.make(), workload(case), RECIPES[recipe_name]
    kw = dict(dataset=data.train, device=CPU, recipe=recipe)
    space_max = case.quick_space_max if quick else case.space_max
    cap = measure_step_peak(step_runner(model, **kw), batch_size=2, device=CPU).peak_bytes + case.headroom
    result = probe(step_runner(model, **kw), device=CPU, cap_bytes=cap, space_max=space_max,
                   dataset_max=len(data.train), eval_space_max=len(data.val),
                   run_eval=eval_runner(model, dataset=data.val, device=CPU, recipe=recipe))
    est, boundary = result.estimate, result.boundary
    row = {"model": case.name, "recipe": recipe_name, "cap": cap, "space_max": space_max, "form": result.model.form,
           "model_text": result.model.describe(), "sizes": [p.batch_size for p in result.points],
           "fits": [p.fits for p in result.points], "eval_sizes": [p.batch_size for p in result.eval_points],
           "boundary": boundary, "max_batch_size": result.max_batch_size, "converged": result.converged,
           "validation_error": result.validation_error, "probe_s": result.seconds,
           "train_probe_s": sum(p.seconds for p in result.points),
           "eval_max": est.eval_max_batch_size, "per_sample_at_boundary": result.per_sample_bytes}
    # Independent measurements: the boundary again, and a held-out size below it.
    again = measure_step_peak(step_runner(model, **kw), batch_size=boundary, device=CPU)
    row.update(boundary_predicted=est.train.predict(boundary), boundary_measured=again.peak_bytes,
               boundary_error=relative_error(est.train.predict(boundary), again.peak_bytes),
               boundary_rss=again.rss_bytes)
    held = largest_power_of_two_at_most(boundary)
    while held in row["sizes"] and held > 1:
        held //= 2
    if held >= 1 and held not in row["sizes"]:
        point = measure_step_peak(step_runner(model, **kw), batch_size=held, device=CPU)
        row.update(held_out=held, held_out_error=relative_error(est.train.predict(held), point.peak_bytes))
    # One short trial at the largest power of two the study may train, under the cap.
    b = largest_power_of_two_at_most(min(space_max, result.max_batch_size or space_max))
    config = TrialConfig(batch_size=b, learning_rate=0.01)
    trial = train_trial(case.make(), data, config, train_samples=2 * b, checkpoints=(2 * b,), device=CPU,
                        recipe=recipe, eval_batch_size=est.eval_batch(b), memory_cap=cap)
    row.update(trial_batch=b, trial_eval_batch=est.eval_batch(b), trial_predicted=est.predict(b),
               trial_measured=trial.measured_peak_bytes, trial_rss=trial.peaks.rss_bytes,
               trial_stop=trial.stop_reason, trial_over_cap=bool(trial.measured_peak_bytes
                                                                 and trial.measured_peak_bytes > cap))
    return row


def peers_case(case: Case, quick: bool) -> tuple[dict, list[dict]]:
    """The peers at ``case.peer_cap``, and the probe's own answer at that cap (training part)."""
    import _memory_peers as peers

    model, data = case.make(), workload(case).train
    ours = probe(step_runner(model, dataset=data, device=CPU), device=CPU,
                 cap_bytes=case.peer_cap, space_max=len(data), dataset_max=len(data))
    mine = {"model": case.name, "cap": case.peer_cap, "answer": ours.max_batch_size, "boundary": ours.boundary,
            "tried": " ".join(f"{p.batch_size}{'+' if p.fits and p.peak_bytes <= case.peer_cap else '-'}"
                              for p in ours.points),
            "steps": 2 * len(ours.points), "wall_s": ours.seconds,
            "stopped_by": ours.reason if ours.converged else f"unconverged: {ours.reason}"}
    cap = case.peer_cap
    runs = [("lightning", lambda: peers.lightning_scale_batch_size(case.make, data, "power", 2, 25, cap))]
    if not quick:
        runs.append(("lightning-binsearch",
                     lambda: peers.lightning_scale_batch_size(case.make, data, "binsearch", 2, 25, cap)))
    runs.append(("accelerate", lambda: peers.accelerate_find_executable(case.make, data, len(data), cap)))
    out = []
    for label, call in runs:
        a = call()
        out.append({"model": case.name, "peer": label, "answer": a.answer, "verified": a.answer_verified,
                    "largest_run": a.largest_batch_run, "steps": a.steps, "samples": a.samples,
                    "wall_s": a.wall_s, "stopped_by": a.stopped_by,
                    "tried": " ".join(f"{t.batch_size}{'+' if t.ok else '-'}" for t in a.trials)})
    return mine, out


def _mib(n: Optional[float]) -> str:
    return "–" if n is None else f"{n / MiB:.2f}" if n < 10 * MiB else f"{n / MiB:.0f}"


def _pct(x: Optional[float]) -> str:
    return "–" if x is None else f"{100 * x:+.1f}%"


def render(rows: list[dict], our_rows: list[dict], peer_rows: list[dict], quick: bool, seconds: float) -> str:
    lines = [
        "## Memory: the probe on a zoo of models",
        "",
        f"CPU, 1 thread, torch {torch.__version__}; mode: {'quick' if quick else 'full'}; recipes "
        f"{', '.join(QUICK_RECIPES if quick else RECIPES)} (SGD: momentum 0.9, Nesterov, weight decay 5e-4; "
        "bf16: CPU autocast). Cap: the run's peak at micro-batch 2 plus a headroom per model. Peaks are "
        "exact tensor bytes (profiler allocation events) of 2 complete training steps on real batches "
        "on a copy. *Boundary*: the largest micro-batch the study will try, min(space max, training "
        "set, predicted limit under the cap). Errors are (predicted - measured) / measured of a fresh "
        "measurement, positive = safe side; *validation* is the newest probe point against the fit of "
        "the points before it (large where the plan ran out of sizes while the fit was still moving); "
        "*held out*: the largest power of two below the boundary the probe did "
        "not measure. *Trial*: 2 steps + 1 evaluation at the largest power of two under the limit, "
        "with the evaluation batch the probe chose, its measured peak against the cap; RSS: the "
        "process's peak resident set during that trial (interpreter and libraries included). MiB throughout.",
        "",
        "| model | recipe | cap | space max | probe sizes (eval sizes) | form | boundary "
        "| predicted / measured at boundary "
        "| error | validation | held out | probe s (train) | trial b (eval b): predicted / measured (RSS) | over cap |",
        "| --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        sizes = ", ".join(f"{b}{'' if ok else '✗'}" for b, ok in zip(r["sizes"], r["fits"]))
        held = f"{r['held_out']}: {_pct(r['held_out_error'])}" if r.get("held_out") else "–"
        lines.append(
            f"| {r['model']} | {r['recipe']} | {_mib(r['cap'])} | {r['space_max']} "
            f"| {sizes} ({', '.join(map(str, r['eval_sizes']))}) "
            f"| {r['form']} | {r['boundary']} | {_mib(r['boundary_predicted'])} / {_mib(r['boundary_measured'])} "
            f"| {_pct(r['boundary_error'])} | {_pct(r['validation_error'])} | {held} "
            f"| {r['probe_s']:.1f} ({r['train_probe_s']:.1f}) | {r['trial_batch']} ({r['trial_eval_batch']}): "
            f"{_mib(r['trial_predicted'])} / {_mib(r['trial_measured'])} (RSS {_mib(r['trial_rss'])}) "
            f"| {'**yes**' if r['trial_over_cap'] else 'no'} |")
    worst = max(rows, key=lambda r: abs(r["boundary_error"]))
    over = sum(r["trial_over_cap"] for r in rows)
    lines += ["", f"Largest error at the boundary: {_pct(worst['boundary_error'])} ({worst['model']}); "
              f"most probe sizes: {max(len(r['sizes']) for r in rows)}; "
              f"longest probe {max(r['probe_s'] for r in rows):.1f} s "
              f"(5% of a 10-minute budget is 30 s); trials over their cap: {over} of {len(rows)}. "
              "Fitted forms: " + "; ".join(f"{r['model']} ({r['recipe']}): {r['model_text']}" for r in rows) + "."]
    if peer_rows:
        lines += ["", "### The peers on the same models", "",
                  "Each peer runs in a fresh process whose address space may grow by the cap over what it "
                  "holds after setup (`RLIMIT_AS`): a real allocation failure past it, counting everything "
                  "the process allocates (libraries' buffers too), not only tensors; so the caps here are "
                  "larger than the tensor caps above, and autobatch's probe is run again at the same number "
                  "(its tensor accounting), with the training set as the largest micro-batch, as the peers "
                  "have it. Lightning doubles from 2 with 3 steps per size (`power` mode); accelerate starts "
                  "at the data set's size and retries at 0.9x on an out-of-memory error. Sizes tried: + ran "
                  "(autobatch: and measured under the cap), - failed.", "",
                  "| model | cap MiB | who | answer | sizes tried | steps | wall s | stopped by |",
                  "| --- | ---: | --- | ---: | --- | ---: | ---: | --- |"]
        for mine in our_rows:
            lines.append(f"| {mine['model']} | {_mib(mine['cap'])} | autobatch | {mine['answer']} | {mine['tried']} "
                         f"| {mine['steps']} | {mine['wall_s']:.1f} | {mine['stopped_by']} |")
            for p in (p for p in peer_rows if p["model"] == mine["model"]):
                lines.append(f"| | | {p['peer']} | {p['answer'] if p['answer'] is not None else '–'} | {p['tried']} "
                             f"| {p['steps']} | {p['wall_s']:.1f} | {p['stopped_by']} |")
    lines += ["", f"_Memory section computed in {seconds:.0f} s._"]
    return "\n".join(lines) + "\n"


def run(quick: bool, out_dir: pathlib.Path) -> str:
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = []
        for case in ZOO:
            for recipe_name in QUICK_RECIPES if quick else RECIPES:
                print(f"   memory: {case.name} {recipe_name}", file=sys.stderr, flush=True)
                rows.append(probe_case(case, recipe_name, quick))
        our_rows, peer_rows = [], []
        for case in ZOO:
            if not quick or case.name in PEERS_QUICK:
                print(f"   memory peers: {case.name}", file=sys.stderr, flush=True)
                mine, theirs = peers_case(case, quick)
                our_rows.append(mine)
                peer_rows += theirs
    finally:
        torch.set_num_threads(threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_memory.json").write_text(json.dumps(
        {"rows": rows, "autobatch_at_peer_caps": our_rows, "peers": peer_rows, "quick": quick}, indent=2, default=str))
    return render(rows, our_rows, peer_rows, quick, time.perf_counter() - started)


if __name__ == "__main__":
    from _bench_common import bench_main

    bench_main(run, __doc__)
