"""Memory: the model forms of peak memory against the micro-batch size (affine, two-regime,
quadratic, piecewise), their fit and inverse under a cap, the adaptive probe plan, a study's
estimate (training and evaluation) refit from trials, the default cap (CUDA memory; on CPU the
memory available to the process), which errors mean out-of-memory, the measurement of peaks
(CPU tensor accounting, CUDA allocator statistics) and the probe.

The pure part imports without torch (the recommender uses it); the measuring part
(``PeakWindow``, ``TrialMeter``, ``probe``, ...) loads torch when first used.
"""

from importlib import import_module
from typing import Any

from ._cap import (available_cpu_memory, cpu_margin, default_cap, peak_resident_bytes, reset_peak_resident,
                   resident_bytes_now)
from ._estimate import EVAL_BATCH_FACTOR, MemoryEstimate, TrialPeaks, probe_estimate, refit, store_models
from ._fit import fit as fit_memory_model
from ._fit import prediction_interval
from ._forms import (FORMS, UNBOUNDED_BATCH_SIZE, Affine, MemoryModel, Piecewise, Quadratic, TwoRegime,
                     largest_power_of_two_at_most, relative_error)
from ._oom import is_out_of_memory
from ._plan import ProbeStep, plan_probe

_TORCH_NAMES = {
    "PeakWindow": "_measure", "TrialMeter": "_measure", "live_tensor_bytes": "_measure",
    "measure_cpu": "_measure", "measure_cuda": "_measure", "running_peak": "_measure",
    "OnPoint": "_probe", "ProbePoint": "_probe", "ProbeResult": "_probe", "StepRunner": "_probe",
    "measure_step_peak": "_probe", "probe": "_probe",
}


def __getattr__(name: str) -> Any:
    """The torch-dependent names, imported on first use (PEP 562)."""
    if name in _TORCH_NAMES:
        return getattr(import_module(f".{_TORCH_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Affine", "EVAL_BATCH_FACTOR", "FORMS", "MemoryEstimate", "MemoryModel", "Piecewise", "ProbeStep",
           "Quadratic", "TrialPeaks", "TwoRegime", "UNBOUNDED_BATCH_SIZE", "available_cpu_memory", "cpu_margin",
           "default_cap", "fit_memory_model", "is_out_of_memory", "largest_power_of_two_at_most",
           "peak_resident_bytes", "plan_probe", "prediction_interval", "probe_estimate", "refit",
           "relative_error", "reset_peak_resident", "resident_bytes_now", "store_models", *sorted(_TORCH_NAMES)]
