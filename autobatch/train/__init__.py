"""Training: torch objects from the recipe, the one training step, micro-batches, evaluation,
the trial loop, the throughput measurement, the probe's step runner and the noise-scale probe."""

from ._batches import MicroBatches, copy_to, default_num_workers, eval_batches, index_stream, sample_batch
from ._build import (LossFn, LRFactor, Metric, autocast, check_device, clip_gradients, load_function,
                     make_compute_loss, make_grad_scaler, make_loss, make_metric, make_optimizer, make_precision,
                     make_scheduler, warmup_steps)
from ._check import check_recipe
from ._device import resolve_device
from ._divergence import DIVERGENCE_FACTOR, LOSS_READ_EVERY, LossTrend
from ._evaluate import Predict, evaluate, predict_batch
from ._noise_probe import MIN_PROBE_STEPS, PROBE_ACCUMULATION, PROBE_MICRO_BATCH, PROBE_STEPS, probe_noise_scale
from ._probe_steps import eval_runner, step_runner
from ._step import FP32, Batch, ComputeLoss, Precision, train_step
from ._throughput import measure_throughput
from ._trial import EVAL_BATCH_FACTOR, MEASURED_STEPS, OnEval, eval_points, resident_bytes, sync, train_trial

__all__ = ["Batch", "ComputeLoss", "DIVERGENCE_FACTOR", "EVAL_BATCH_FACTOR", "FP32", "LOSS_READ_EVERY", "LRFactor",
           "LossFn", "LossTrend", "MEASURED_STEPS", "MIN_PROBE_STEPS", "Metric", "MicroBatches", "OnEval",
           "PROBE_ACCUMULATION", "PROBE_MICRO_BATCH", "PROBE_STEPS",
           "Precision", "Predict", "autocast", "check_device", "check_recipe", "clip_gradients", "copy_to",
           "default_num_workers", "eval_batches", "eval_points", "eval_runner", "evaluate", "index_stream",
           "load_function", "make_compute_loss", "make_grad_scaler", "make_loss", "make_metric", "make_optimizer",
           "make_precision", "make_scheduler", "measure_throughput", "predict_batch", "probe_noise_scale",
           "resident_bytes", "resolve_device", "sample_batch", "step_runner", "sync", "train_step", "train_trial",
           "warmup_steps"]
