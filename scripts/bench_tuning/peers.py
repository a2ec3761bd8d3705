"""The peers' batch-size finders on the task's model and pool (``scripts/_memory_peers.py``),
uncapped: on CPU no out-of-memory error can be raised, so what each does then is the finding."""
from __future__ import annotations

import functools

from autobatch.workloads import build_model


def run_peers(task, workload, quick: bool) -> list[dict]:
    """Lightning's ``Tuner.scale_batch_size`` (power, binsearch: init 2, max_trials 25) and
    accelerate's ``find_executable_batch_size`` (starting at the pool size), each in a fresh
    process with 3 steps per trial (their defaults). Returns answer, wall/CPU seconds, steps,
    samples, why it stopped and the sizes it tried."""
    import _memory_peers as peers

    make = functools.partial(build_model, task.model, num_classes=workload.num_classes,
                             input_shape=workload.input_shape)
    data = workload.train
    runs = [("lightning power", lambda: peers.lightning_scale_batch_size(make, data, "power", 2, 25)),
            ("lightning binsearch", lambda: peers.lightning_scale_batch_size(make, data, "binsearch", 2, 25)),
            ("accelerate", lambda: peers.accelerate_find_executable(make, data, len(data)))]
    out = []
    for name, call in runs:
        try:
            answer = call()
        except Exception as exc:  # a peer that cannot run here is reported, not hidden
            out.append({"peer": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        out.append({"peer": name, "answer": answer.answer, "wall_s": answer.wall_s, "cpu_s": answer.cpu_s,
                    "steps": answer.steps, "samples": answer.samples, "stopped_by": answer.stopped_by,
                    "tried": [t.batch_size for t in answer.trials], "exception": answer.exception})
    return out
