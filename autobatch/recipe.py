"""The training recipe: what a trial trains with, besides the three tuned numbers.

A ``TrainRecipe`` names the optimizer and its settings, the lr schedule with its warm-up, the
loss, the metric and its direction, the precision and gradient clipping. It is stored with the
study (part of its identity on resume) and handed back with the answer, so that the user's
script trains exactly what the trials measured. Torch-free: ``autobatch.train`` builds the torch
objects from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from .errors import AutobatchError


@dataclass(frozen=True, kw_only=True)
class TrainRecipe:
    """The training recipe; the defaults are autobatch 0.1's fixed recipe."""

    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"
    warmup_fraction: float = 0.05
    precision: str = "fp32"
    loss: str = "cross_entropy"
    label_smoothing: float = 0.0
    metric: str = "accuracy"
    grad_clip_norm: Optional[float] = None

    @property
    def direction(self) -> str:
        """``"maximize"`` or ``"minimize"``: the Optuna study direction the metric needs."""
        return "minimize" if self.metric in ("val_loss", "mae", "rmse") else "maximize"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: Optional[dict[str, Any]]) -> "TrainRecipe":
        """The recipe stored in ``data``; missing keys take the defaults (a study stored before
        recipes existed reads back as today's recipe). An unknown key is an error."""
        data = dict(data or {})
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise AutobatchError(f"unknown recipe key(s): {', '.join(unknown)}")
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**data)
