"""The recommender: from a study's trials to one recommended setting. Torch-free at import.

The trade-off models, each fitted to the trials and predicting with an interval (``COVERAGE``,
two-sided):

- ``AccuracyModel``: validation accuracy over (log2 effective batch, log lr multiplier,
  log2 accumulation steps), a Gaussian process by default.
- ``ThroughputModel``: training samples/s of a micro-batch size and accumulation, a
  three-parameter physical law fitted with non-negative least squares.
- ``MemoryFit``: peak bytes of a micro-batch, the probe's stored line checked against the
  measured peaks, or a line fitted to them.

``fit_tradeoff`` fits all three to a trials table; the choice (``_choice``) predicts the search
grid, applies the constraints and picks by priority; ``recommend`` does it for a stored study.
The ``Recommendation`` carries the study's training recipe and trial length, builds the
training script's optimizer, scheduler, loss, autocast and DataLoader, and exports the setting
(``_exports``: JSON, TOML, Hugging Face ``TrainingArguments``, Lightning ``Trainer``).

Every public name is imported from its module when first used (PEP 562 module ``__getattr__``,
as ``autobatch`` itself does), so ``autobatch recommend`` answering with a stored answer
(``_stored``) never loads scikit-learn, SciPy or pandas.
"""

import importlib

# Public name -> the private module defining it.
_LAZY = {
    "ACCURACY_KINDS": "_accuracy", "AccuracyModel": "_accuracy", "accuracy_features": "_accuracy",
    "MIN_TRIALS": "_answer", "PRIORITIES": "_question", "RANDOM_STATE": "_answer", "publish": "_api",
    "recommend": "_api", "recommend_study": "_api", "same_setting": "_api", "trials_frame": "_api",
    "with_stored_verification": "_api", "confirmed_key": "_api",
    "answer_key": "_api",
    "recommend_from_frame": "_answer",
    "EXPORT_FORMATS": "_exports", "TrainingSetup": "_exports", "export_text": "_exports",
    "hf_training_arguments": "_exports", "lightning_configure_optimizers": "_exports",
    "lightning_export": "_exports", "lightning_trainer_kwargs": "_exports",
    "optimizer_description": "_exports", "to_json": "_exports", "to_toml": "_exports",
    "LOW_TRIALS": "_confidence", "batchnorm_note": "_confidence", "confidence_note": "_confidence",
    "N_LR_MULTIPLIERS": "_choice", "RANK_BY": "_choice", "SPEED_TOLERANCE": "_choice",
    "SUPPORT_DOUBLINGS": "_choice", "SUPPORT_LR_FACTOR": "_choice", "TIE": "_choice", "candidates": "_choice",
    "pareto_front": "_choice", "supported": "_choice",
    "TradeoffFit": "_fit", "accuracy_rows": "_fit", "divergence_blocked": "_fit", "diverged_rows": "_fit",
    "fit_tradeoff": "_fit", "memory_rows": "_fit", "throughput_rows": "_fit", "train_size_of": "_fit",
    "COVERAGE": "_intervals",
    "MemoryFit": "_memory_fit", "fit_memory": "_memory_fit",
    "Recommendation": "_recommendation",
    "DEFAULT_LOG_SD": "_throughput", "ThroughputModel": "_throughput",
}

__all__ = ["answer_key", "confirmed_key", "same_setting", "with_stored_verification", "LOW_TRIALS", "batchnorm_note", "confidence_note", "ACCURACY_KINDS", "AccuracyModel", "COVERAGE", "DEFAULT_LOG_SD", "EXPORT_FORMATS", "MIN_TRIALS",
           "MemoryFit", "TrainingSetup", "export_text", "hf_training_arguments", "lightning_configure_optimizers",
           "lightning_export", "lightning_trainer_kwargs", "optimizer_description", "to_json", "to_toml",
           "N_LR_MULTIPLIERS", "PRIORITIES", "RANDOM_STATE", "RANK_BY", "Recommendation", "SPEED_TOLERANCE",
           "SUPPORT_DOUBLINGS", "SUPPORT_LR_FACTOR", "TIE", "ThroughputModel", "TradeoffFit",
           "accuracy_features", "accuracy_rows", "candidates", "divergence_blocked", "diverged_rows",
           "fit_memory", "fit_tradeoff", "memory_rows", "pareto_front", "publish", "recommend",
           "recommend_from_frame", "recommend_study", "supported", "throughput_rows", "train_size_of", "trials_frame"]


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
