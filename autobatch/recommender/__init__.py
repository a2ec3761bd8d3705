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
"""

from ._accuracy import ACCURACY_KINDS, AccuracyModel, accuracy_features
from ._api import (MIN_TRIALS, PRIORITIES, RANDOM_STATE, publish, recommend, recommend_from_frame,
                   recommend_study, same_setting, trials_frame, with_stored_verification)
from ._exports import (EXPORT_FORMATS, TrainingSetup, export_text, hf_training_arguments,
                       lightning_configure_optimizers, lightning_export, lightning_trainer_kwargs,
                       optimizer_description, to_json, to_toml)
from ._confidence import LOW_TRIALS, batchnorm_note, confidence_note
from ._choice import (N_LR_MULTIPLIERS, RANK_BY, SPEED_TOLERANCE, SUPPORT_DOUBLINGS, SUPPORT_LR_FACTOR, TIE,
                      candidates, pareto_front, supported)
from ._fit import (TradeoffFit, accuracy_rows, divergence_blocked, diverged_rows, fit_tradeoff, memory_rows,
                   throughput_rows, train_size_of)
from ._intervals import COVERAGE
from ._memory_fit import MemoryFit, fit_memory
from ._recommendation import Recommendation
from ._throughput import DEFAULT_LOG_SD, ThroughputModel

__all__ = ["same_setting", "with_stored_verification", "LOW_TRIALS", "batchnorm_note", "confidence_note", "ACCURACY_KINDS", "AccuracyModel", "COVERAGE", "DEFAULT_LOG_SD", "EXPORT_FORMATS", "MIN_TRIALS",
           "MemoryFit", "TrainingSetup", "export_text", "hf_training_arguments", "lightning_configure_optimizers",
           "lightning_export", "lightning_trainer_kwargs", "optimizer_description", "to_json", "to_toml",
           "N_LR_MULTIPLIERS", "PRIORITIES", "RANDOM_STATE", "RANK_BY", "Recommendation", "SPEED_TOLERANCE",
           "SUPPORT_DOUBLINGS", "SUPPORT_LR_FACTOR", "TIE", "ThroughputModel", "TradeoffFit",
           "accuracy_features", "accuracy_rows", "candidates", "divergence_blocked", "diverged_rows",
           "fit_memory", "fit_tradeoff", "memory_rows", "pareto_front", "publish", "recommend",
           "recommend_from_frame", "recommend_study", "supported", "throughput_rows", "train_size_of", "trials_frame"]
