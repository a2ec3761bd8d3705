"""Training: torch objects from the recipe, the one training step, micro-batches, evaluation,
the trial loop, the throughput measurement and the probe's step runner."""

from ._batches import MicroBatches, index_stream
from ._build import (LossFn, lr_factor, make_compute_loss, make_loss, make_optimizer,
                     make_precision)
from ._device import resolve_device
from ._evaluate import evaluate
from ._probe_steps import step_runner
from ._step import FP32, Batch, ComputeLoss, Precision, train_step
from ._throughput import measure_throughput
from ._trial import (DIVERGENCE_FACTOR, EVAL_BATCH_FACTOR, OnEval, eval_points, resident_bytes, sync,
                     train_trial)

__all__ = ["Batch", "ComputeLoss", "DIVERGENCE_FACTOR", "EVAL_BATCH_FACTOR", "FP32", "LossFn",
           "MicroBatches", "OnEval", "Precision", "eval_points", "evaluate", "index_stream", "lr_factor",
           "make_compute_loss", "make_loss", "make_optimizer", "make_precision", "measure_throughput",
           "resident_bytes", "resolve_device", "step_runner", "sync", "train_step", "train_trial"]
