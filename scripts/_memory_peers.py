"""Run the peers' batch-size finders on CPU, each in a fresh process, optionally under a real memory cap.

(The harness of the peer comparison, written for issue 14 beside the memory probe; used by
``bench_memory.py``.)

Peers (installed beside torch from PyPI; versions measured: lightning 2.6.6, accelerate 1.15.0):

- Lightning ``Tuner(trainer).scale_batch_size(model, mode=..., init_val=..., max_trials=...)``
  (``lightning/pytorch/tuner/tuning.py`` -> ``callbacks/batch_size_finder.py`` ->
  ``tuner/batch_size_scaling.py``): doubles the batch size from ``init_val``, running
  ``steps_per_trial`` (default 3) training steps per size, until an out-of-memory ``RuntimeError``
  (``utilities/memory.py::is_oom_error``), ``max_trials``, the dataset length or ``max_val`` (8192).
- accelerate ``find_executable_batch_size(function, starting_batch_size)``
  (``accelerate/utils/memory.py``): calls ``function(batch_size)``; on an exception that
  ``should_reduce_batch_size`` accepts it retries at ``int(0.9 * batch_size)``; it never grows.

Memory cap on CPU (no GPU here): the peer runs in a ``spawn`` subprocess that first imports
everything and builds model, data and (for Lightning) the ``Trainer``, then reads its own address
space size ``VmSize`` (``/proc/self/status``) and sets ``RLIMIT_AS`` (soft) to
``VmSize + max_memory_bytes``. Any allocation beyond that fails for real: torch's CPU allocator raises
``RuntimeError: [enforce fail at alloc_cpu.cpp:...] ... DefaultCPUAllocator: can't allocate memory:
you tried to allocate N bytes. Error code 12 (Cannot allocate memory)`` (one ``args`` element), a
Python allocation raises ``MemoryError``. The cap is *headroom over the post-setup address space*, not
an absolute limit: importing torch (CUDA build) alone maps ~3.1 GiB of address space. Unlike a GPU cap,
it also covers Python objects, checkpoint I/O buffers and the like, which is reported, not hidden.

Counting: ``steps`` are completed optimizer steps over the whole search (all trials), ``samples`` the
samples in those steps; ``wall_s`` and ``cpu_s`` (``time.process_time``, all threads of the child)
cover the search call only, not imports or model construction.

The Lightning wrapper (``_make_lightning_module``) is minimal: the user's ``nn.Module``, a
``batch_size`` attribute, ``train_dataloader()`` (``DataLoader(dataset, batch_size, shuffle=True)``),
``training_step`` = cross-entropy, ``configure_optimizers`` = the SGD below; no validation loop.
The accelerate training function builds a fresh model and optimizer on every attempt, as in
accelerate's own ``examples/by_feature/memory.py``, and runs ``steps_per_trial`` steps.
Both use SGD(lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4) (autobatch's default recipe).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import resource
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

__all__ = [
    "Trial",
    "PeerAnswer",
    "lightning_scale_batch_size",
    "accelerate_find_executable",
    "address_space_bytes",
]

DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True, kw_only=True)
class Trial:
    """One batch size the peer tried.

    batch_size: the requested micro-batch (samples); ok: whether its steps all completed;
    steps: completed optimizer steps at this size; samples: samples in those steps;
    largest_batch: the largest batch actually fed through a completed step (smaller than
    ``batch_size`` when the dataset is shorter; 0 when no step completed).
    """

    batch_size: int
    ok: bool
    steps: int
    samples: int
    largest_batch: int


@dataclass(frozen=True, kw_only=True)
class PeerAnswer:
    """What one peer returned and what it cost.

    peer: ``"lightning"`` or ``"accelerate"``; mode: ``"power"``/``"binsearch"`` (Lightning) or
    ``"x0.9"`` (accelerate's default reduction).
    answer: the batch size the peer returned (samples); ``None`` when it raised or the process died.
    wall_s, cpu_s: seconds of the search call (wall clock; process CPU time, all threads).
    steps: completed optimizer steps over all trials; samples: samples in those steps.
    stopped_by: why the search ended, in words (e.g. ``"OOM, halved"``, ``"dataset length"``,
    ``"max_trials"``, ``"first call ran (no OOM)"``, ``"crash: MemoryError"``).
    exception: ``"Type: message"`` of an exception that escaped the peer, else ``None``.
    trials: the batch sizes tried, in order.
    cap_bytes: address-space headroom granted above ``baseline_vm_bytes`` (``None``: uncapped).
    baseline_vm_bytes: the child's address space when the cap was set (bytes).
    peak_rss_bytes: the child's peak resident set size over its life (bytes, ``ru_maxrss``).
    exit_code: the child's exit code (0 normal; negative = killed by that signal). When the child
    dies, the trials it streamed are kept, ``wall_s`` runs to the death and ``cpu_s`` is NaN.
    leftover_files: files the peer left in its working directory after returning or dying (Lightning
    saves ``.scale_batch_size_<uuid>.ckpt`` there and deletes it only after a successful restore);
    the harness removes the directory afterwards.
    """

    peer: str
    mode: str
    answer: Optional[int]
    wall_s: float
    cpu_s: float
    steps: int
    samples: int
    stopped_by: str
    exception: Optional[str]
    trials: tuple[Trial, ...]
    cap_bytes: Optional[int]
    baseline_vm_bytes: int
    peak_rss_bytes: int
    exit_code: int
    leftover_files: int

    @property
    def largest_batch_run(self) -> int:
        """Largest batch actually fed through a completed step (samples)."""
        return max((t.largest_batch for t in self.trials), default=0)

    @property
    def answer_verified(self) -> Optional[bool]:
        """Whether a trial that completed all its steps fed batches at least as large as the answer
        (assumes memory grows with the batch); ``None`` when there is no answer."""
        if self.answer is None:
            return None
        return any(t.ok and t.largest_batch >= self.answer for t in self.trials)


def address_space_bytes() -> int:
    """This process's virtual address space size, ``VmSize`` from ``/proc/self/status`` (bytes).

    Raises ``OSError`` where ``/proc`` is unavailable (non-Linux).
    """
    with open("/proc/self/status") as f:
        m = re.search(r"^VmSize:\s+(\d+)\s+kB", f.read(), re.M)
    if m is None:
        raise OSError("VmSize not found in /proc/self/status")
    return int(m.group(1)) * 1024


# ----------------------------------------------------------------------------- public API


def lightning_scale_batch_size(
    model_factory: Callable[[], Any],
    dataset: Any,
    mode: str,
    init_val: int,
    max_trials: int,
    max_memory_bytes: Optional[int] = None,
    *,
    steps_per_trial: int = 3,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    env: Optional[Mapping[str, str]] = None,
) -> PeerAnswer:
    """Lightning's ``Tuner.scale_batch_size`` on CPU in a fresh subprocess.

    model_factory: picklable zero-argument callable returning an ``nn.Module`` (logits, 10 classes);
    dataset: picklable map-style dataset of ``(x, y)``; mode: ``"power"`` or ``"binsearch"``;
    init_val, max_trials, steps_per_trial: passed to Lightning unchanged (``margin``, ``max_val`` keep
    Lightning's defaults 0.05 and 8192); max_memory_bytes: address-space headroom (see module doc),
    ``None`` for no cap; timeout_s: the child is killed after this many seconds (reported as a crash);
    env: extra environment variables for the child (e.g. ``{"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"}``,
    read by libraries at start-up). Raises ``ValueError`` for an unknown mode or non-positive sizes.
    """
    if mode not in ("power", "binsearch"):
        raise ValueError(f"mode must be 'power' or 'binsearch', got {mode!r}")
    _check_positive(init_val=init_val, max_trials=max_trials, steps_per_trial=steps_per_trial)
    kwargs = dict(
        model_factory=model_factory,
        dataset=dataset,
        mode=mode,
        init_val=init_val,
        max_trials=max_trials,
        steps_per_trial=steps_per_trial,
    )
    return _run_isolated("lightning", mode, kwargs, max_memory_bytes, timeout_s, env)


def accelerate_find_executable(
    model_factory: Callable[[], Any],
    dataset: Any,
    starting_batch_size: int,
    max_memory_bytes: Optional[int] = None,
    *,
    steps_per_trial: int = 3,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    env: Optional[Mapping[str, str]] = None,
) -> PeerAnswer:
    """accelerate's ``find_executable_batch_size`` on CPU in a fresh subprocess.

    The decorated function trains ``steps_per_trial`` SGD steps at the batch size it is given with a
    fresh model; the peer's answer is the batch size of the first call that returns.
    Arguments as in :func:`lightning_scale_batch_size`. Raises ``ValueError`` for non-positive sizes.
    """
    _check_positive(starting_batch_size=starting_batch_size, steps_per_trial=steps_per_trial)
    kwargs = dict(
        model_factory=model_factory,
        dataset=dataset,
        starting_batch_size=starting_batch_size,
        steps_per_trial=steps_per_trial,
    )
    return _run_isolated("accelerate", "x0.9", kwargs, max_memory_bytes, timeout_s, env)


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")


# ----------------------------------------------------------------------------- parent side


def _run_isolated(
    peer: str, mode: str, kwargs: dict, max_memory_bytes: Optional[int], timeout_s: float,
    env: Optional[Mapping[str, str]] = None,
) -> PeerAnswer:
    if max_memory_bytes is not None and max_memory_bytes < 1:
        raise ValueError(f"max_memory_bytes must be >= 1 or None, got {max_memory_bytes}")
    ctx = mp.get_context("spawn")
    recv_end, send_end = ctx.Pipe(duplex=False)
    workdir = tempfile.mkdtemp(prefix=f"peers_{peer}_")  # the peer's files (Lightning's checkpoint)
    proc = ctx.Process(target=_child_main, args=(send_end, peer, kwargs, max_memory_bytes, workdir), daemon=True)
    saved = {k: os.environ.get(k) for k in (env or {})}
    try:  # a spawned child inherits os.environ as it is at start()
        os.environ.update(env or {})
        proc.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    send_end.close()
    result: Optional[dict] = None
    last_trials: list[dict] = []
    search_t0: Optional[float] = None
    why = ""
    deadline = time.perf_counter() + timeout_s
    try:
        while result is None:
            if not recv_end.poll(max(0.0, deadline - time.perf_counter())):
                why = "timeout"
                proc.kill()
                break
            kind, payload = recv_end.recv()
            if kind == "trials":
                last_trials = payload
            elif kind == "search_started":
                search_t0 = time.perf_counter()
            else:
                result = payload
    except EOFError:  # the child died without a result (segfault, killed): keep what it streamed
        pass
    finally:
        died_at = time.perf_counter()
        proc.join(30)
        recv_end.close()
    exit_code = proc.exitcode if proc.exitcode is not None else -9
    leftover = sum(len(files) for _, _, files in os.walk(workdir))
    shutil.rmtree(workdir, ignore_errors=True)
    if result is None:
        why = why or f"process died (exit code {exit_code})"
        trials = tuple(Trial(**t) for t in last_trials)
        return PeerAnswer(
            peer=peer, mode=mode, answer=None,
            wall_s=(died_at - search_t0) if search_t0 is not None else float("nan"), cpu_s=float("nan"),
            steps=sum(t.steps for t in trials), samples=sum(t.samples for t in trials),
            stopped_by=f"crash: {why}", exception=None, trials=trials,
            cap_bytes=max_memory_bytes, baseline_vm_bytes=0, peak_rss_bytes=0, exit_code=exit_code,
            leftover_files=leftover,
        )
    trials = tuple(Trial(**t) for t in result.pop("trials"))
    return PeerAnswer(peer=peer, mode=mode, trials=trials, cap_bytes=max_memory_bytes, exit_code=exit_code,
                      leftover_files=leftover,
                      steps=sum(t.steps for t in trials), samples=sum(t.samples for t in trials), **result)


# ----------------------------------------------------------------------------- child side


class _StepLog:
    """Trials and completed steps as seen from the training code (no peer internals touched).

    Every change is also sent to the parent, so a child that dies (segfault under the cap) still
    leaves its trial log behind.
    """

    def __init__(self, conn=None) -> None:
        self.trials: list[dict] = []
        self._conn = conn

    def _send(self) -> None:
        if self._conn is not None:
            try:
                self._conn.send(("trials", self.trials))
            except Exception:  # e.g. MemoryError under the cap; the final result still carries them
                pass

    def begin(self, batch_size: int) -> None:
        self.trials.append(dict(batch_size=int(batch_size), ok=False, steps=0, samples=0, largest_batch=0))
        self._send()

    def step_done(self, batch_size: int, n: int) -> None:
        if not self.trials or self.trials[-1]["batch_size"] != batch_size:
            self.begin(batch_size)
        t = self.trials[-1]
        t["steps"] += 1
        t["samples"] += int(n)
        t["largest_batch"] = max(t["largest_batch"], int(n))
        self._send()

    def finish(self, ok: bool) -> None:
        if self.trials:
            self.trials[-1]["ok"] = ok
            self._send()


def _sgd(params):
    import torch

    return torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)


def _child_main(conn, peer: str, kwargs: dict, max_memory_bytes: Optional[int], workdir: str) -> None:
    import faulthandler
    import warnings

    faulthandler.enable()  # a segfault under the cap prints the Python stack to stderr

    warnings.filterwarnings("ignore")
    out: dict[str, Any] = dict(answer=None, wall_s=0.0, cpu_s=0.0, stopped_by="crash: setup", exception=None,
                               trials=[], baseline_vm_bytes=0, peak_rss_bytes=0)
    log = _StepLog(conn)
    try:
        if peer == "lightning":
            runner = _prepare_lightning(log=log, workdir=workdir, **kwargs)
        else:
            runner = _prepare_accelerate(log=log, **kwargs)
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        out["baseline_vm_bytes"] = address_space_bytes()
        conn.send(("search_started", None))
        if max_memory_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (out["baseline_vm_bytes"] + int(max_memory_bytes), hard))
        try:
            w0, c0 = time.perf_counter(), time.process_time()
            try:
                answer, stopped_by, exc_text = runner()
            finally:
                w1, c1 = time.perf_counter(), time.process_time()
                if max_memory_bytes is not None:
                    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        except BaseException as e:  # the runner's own bookkeeping failed (e.g. MemoryError in it)
            answer, stopped_by, exc_text = None, f"crash: {type(e).__name__}", _exc_text(e)
        out.update(answer=answer, stopped_by=stopped_by, exception=exc_text, wall_s=w1 - w0, cpu_s=c1 - c0)
    except BaseException as e:
        out["exception"] = _exc_text(e) + "\n" + traceback.format_exc(limit=5)
    out["trials"] = log.trials
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    conn.send(("result", out))
    conn.close()


def _crash_reason(e: BaseException, peer_says_oom: Callable[[BaseException], bool]) -> str:
    """``"crash: Type"`` plus whether the peer's own predicate calls the exception out-of-memory."""
    verdict = "peer calls it OOM" if peer_says_oom(e) else "peer: not OOM"
    return f"crash: {type(e).__name__} ({verdict})"


def _exc_text(e: BaseException) -> str:
    """``"Type: message"`` plus where: the innermost 4 frames and, before them, the innermost frame
    in the peer's tuner code (``file:line function``, innermost first)."""
    tb = traceback.extract_tb(e.__traceback__)
    frames = tb[-4:]
    peer_frames = [f for f in tb[:-4] if "/lightning/pytorch/tuner/" in f.filename or "/accelerate/" in f.filename]
    frames = peer_frames[-1:] + frames
    where = " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames))
    text = f"{type(e).__name__}: {str(e)[:300]} [at {where}]"
    ctx = e.__cause__ or e.__context__
    if ctx is not None:
        text += f" (while handling {type(ctx).__name__}: {str(ctx)[:200]})"
    return text


def _prepare_accelerate(model_factory, dataset, starting_batch_size: int, steps_per_trial: int, log: _StepLog):
    import torch
    import torch.nn.functional as F
    from accelerate.utils import find_executable_batch_size
    from accelerate.utils.memory import should_reduce_batch_size
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    _sgd(model_factory().parameters())  # warm one-time lazy imports (torch._dynamo via optim) before timing/cap

    @find_executable_batch_size(starting_batch_size=starting_batch_size)
    def train(batch_size: int) -> int:
        log.begin(batch_size)
        model = model_factory()
        model.train()
        opt = _sgd(model.parameters())
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
        done = 0
        while done < steps_per_trial:
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                log.step_done(batch_size, len(x))
                done += 1
                if done >= steps_per_trial:
                    break
        log.finish(True)
        return batch_size

    def run():
        try:
            answer = train()
        except BaseException as e:
            if isinstance(e, RuntimeError) and "reached zero" in str(e):
                return None, "reached zero", _exc_text(e)
            return None, _crash_reason(e, should_reduce_batch_size), _exc_text(e)
        failures = sum(1 for t in log.trials if not t["ok"])
        if failures:
            return answer, f"OOM x0.9 back-off ({failures} failed calls)", None
        return answer, "first call ran (no OOM)", None

    return run


def _make_lightning_module(net, dataset, batch_size: int, log: _StepLog):
    """Minimal LightningModule around ``net``: ``batch_size`` attribute, ``train_dataloader``,
    cross-entropy ``training_step``, SGD in ``configure_optimizers``; no validation. Three observer
    hooks (``on_train_start``/``on_train_end``/``on_train_batch_end``) record trials and steps only."""
    import lightning.pytorch as pl
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    class Wrapper(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.batch_size = batch_size

        def train_dataloader(self):
            return DataLoader(dataset, batch_size=self.batch_size, shuffle=True)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def on_train_start(self) -> None:  # once per Lightning trial (each ``loop.run()``), before any batch
            log.begin(self.batch_size)

        def on_train_end(self) -> None:  # the trial's loop finished without an exception
            log.finish(True)

        def on_train_batch_end(self, outputs, batch, batch_idx) -> None:  # after the optimizer step
            log.step_done(self.batch_size, len(batch[0]))

        def configure_optimizers(self):
            return _sgd(self.parameters())

    return Wrapper()


def _list_handler():
    """A ``logging.Handler`` at INFO that keeps the formatted messages in ``.messages``."""
    import logging

    class ListHandler(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.INFO)
            self.messages: list[str] = []

        def emit(self, record) -> None:
            self.messages.append(record.getMessage())

    return ListHandler()


def _prepare_lightning(
    model_factory, dataset, mode: str, init_val: int, max_trials: int, steps_per_trial: int, log: _StepLog,
    workdir: str,
):
    import logging

    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.tuner import Tuner
    from lightning.pytorch.utilities.memory import is_oom_error

    torch.manual_seed(0)
    for name in ("lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = False
    handler = _list_handler()
    rz = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rz.setLevel(logging.INFO)
    rz.addHandler(handler)

    net = model_factory()
    _sgd(net.parameters())  # warm one-time lazy imports (torch._dynamo via optim) before timing/cap
    module = _make_lightning_module(net, dataset, init_val, log)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=workdir,
    )
    tuner = Tuner(trainer)

    def run():
        exc = None
        answer = None
        try:
            answer = tuner.scale_batch_size(
                module, mode=mode, init_val=init_val, max_trials=max_trials, steps_per_trial=steps_per_trial
            )
        except BaseException as e:
            exc = e
        if exc is not None:
            return None, _crash_reason(exc, is_oom_error), _exc_text(exc)
        return answer, _lightning_stop_reason(mode, handler.messages, log.trials), None

    return run


def _lightning_stop_reason(mode: str, messages: list[str], trials: list[dict]) -> str:
    """Why Lightning's search ended, from its own INFO messages and the trials' outcomes."""
    failed = any(not t["ok"] for t in trials)
    text = "\n".join(messages)
    if "Reached the maximum batch size limit" in text:
        return "max_val" + (" after OOM" if failed else "")
    if "greater or equal than the length of your dataset" in text:
        return "dataset length" + (" after OOM" if failed else "")
    if failed:
        return "OOM, halved" if mode == "power" else "OOM, bisected"
    return "max_trials"
