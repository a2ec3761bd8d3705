"""Memory: the pure memory model and its inverse under a cap, the measurement of peak memory
(CPU tensor accounting, CUDA allocator statistics), and the probe that fits the model to
measured training steps."""

from ._measure import PeakWindow, measure_cpu, measure_cuda, running_peak
from ._model import (UNBOUNDED_BATCH_SIZE, MemoryModel, fit_memory_model, largest_power_of_two_at_most,
                     relative_error)
from ._probe import ProbePoint, ProbeResult, StepRunner, default_cap, measure_step_peak, probe

__all__ = ["MemoryModel", "PeakWindow", "ProbePoint", "ProbeResult", "StepRunner", "UNBOUNDED_BATCH_SIZE",
           "default_cap", "fit_memory_model", "largest_power_of_two_at_most", "measure_cpu", "measure_cuda",
           "measure_step_peak", "probe", "relative_error", "running_peak"]
