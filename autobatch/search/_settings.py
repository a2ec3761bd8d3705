"""Settings of a tuning run, built once at the edge: defaults < ``--config`` TOML < flags.

A study file holds top-level keys, a ``[space]`` table (``SearchSpace`` fields) and a
``[recipe]`` table (``TrainRecipe`` fields). An unknown key in a study file is an error, never
silently ignored. Flags override the file key by key, in ``[space]`` and ``[recipe]`` too.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import AutobatchError
from ..units import parse_bytes, parse_duration
from ..recipe import TrainRecipe
from ._space import SearchSpace

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_BUDGET_S = 600.0  # when neither --budget nor --n-trials is given


@dataclass(frozen=True, kw_only=True)
class TuneSettings:
    model: str = "resnet18"
    dataset: str = "digits"
    data_dir: Optional[Path] = None
    budget_s: Optional[float] = None
    n_trials: Optional[int] = None
    max_memory_bytes: Optional[int] = None
    storage: Optional[str] = None
    study_name: Optional[str] = None
    seed: int = 0
    device: str = "auto"
    space: SearchSpace = field(default_factory=SearchSpace)
    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    pruner: str = "median"
    n_evals: int = 4
    epochs: Optional[float] = None
    workers: int = 1
    baselines: bool = True
    create_only: bool = False
    step: Optional[str] = None         # pkg.module:function, step(model, batch) -> loss
    step_eval: Optional[str] = None    # pkg.module:function, evaluate(model, batches) -> metric
    num_workers: Optional[int] = None  # data loader workers per process (None: what fits the machine)

    def __post_init__(self) -> None:
        if self.step_eval and not self.step:
            raise AutobatchError("--step-eval needs --step (the evaluation function goes with a step function)")
        # With a step hook the metric is the evaluation function's value (named after it, maximised
        # unless the recipe names the same function with metric_direction "minimize"), or without
        # one the step's own validation loss (minimised).
        metric = self.step_eval or ("val_loss" if self.step else None)
        if metric is not None and self.recipe.metric != metric:
            object.__setattr__(self, "recipe", dataclasses.replace(self.recipe, metric=metric, metric_direction=None))
        if self.num_workers is not None and self.num_workers < 0:
            raise AutobatchError(f"--num-workers must be 0 or more, got {self.num_workers}")
        # An unset base lr / scaling rule follows the recipe's optimizer (fails here, at the
        # edge, for a user optimizer without them).
        object.__setattr__(self, "space", self.space.for_recipe(self.recipe))
        if self.n_trials is not None and self.n_trials < 1:
            raise AutobatchError(f"--n-trials must be at least 1, got {self.n_trials}")
        if self.workers < 1:
            raise AutobatchError(f"--workers must be at least 1, got {self.workers}")
        if self.n_evals < 1:
            raise AutobatchError("n_evals must be at least 1")
        if self.epochs is not None and self.epochs <= 0:
            raise AutobatchError("--epochs must be positive")
        from ._sampling import PRUNERS

        if self.pruner not in PRUNERS:
            raise AutobatchError(f"unknown pruner {self.pruner!r}; choose one of {', '.join(PRUNERS)}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise AutobatchError(f"unknown device {self.device!r}; use auto, cpu or cuda")


# Keys a study file may hold at its top level, and how each becomes a setting.
_TOP_LEVEL = {
    "model": ("model", str),
    "dataset": ("dataset", str),
    "data_dir": ("data_dir", Path),
    "budget": ("budget_s", parse_duration),
    "n_trials": ("n_trials", int),
    "max_memory": ("max_memory_bytes", parse_bytes),
    "storage": ("storage", str),
    "study_name": ("study_name", str),
    "seed": ("seed", int),
    "device": ("device", str),
    "pruner": ("pruner", str),
    "n_evals": ("n_evals", int),
    "epochs": ("epochs", float),
    "workers": ("workers", int),
    "baselines": ("baselines", bool),
    "step": ("step", str),
    "step_eval": ("step_eval", str),
    "num_workers": ("num_workers", int),
}
# Tables of a study file: name -> the keys it may hold (the fields of the dataclass it builds).
_TABLES = {"space": {f.name for f in dataclasses.fields(SearchSpace)},
           "recipe": {f.name for f in dataclasses.fields(TrainRecipe)}}


def load_config(path: Path) -> dict[str, Any]:
    """A study file as settings keyword arguments (``space`` and ``recipe`` as dicts)."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AutobatchError(f"config file {path} not found") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AutobatchError(f"config file {path}: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _TABLES:
            if not isinstance(value, dict):
                raise AutobatchError(f"config file {path}: [{key}] must be a table")
            unknown = sorted(set(value) - _TABLES[key])
            if unknown:
                raise AutobatchError(
                    f"config file {path}: unknown key(s) in [{key}]: {', '.join(unknown)} "
                    f"(known: {', '.join(sorted(_TABLES[key]))})")
            values[key] = dict(value)
        elif key in _TOP_LEVEL:
            name, convert = _TOP_LEVEL[key]
            try:
                values[name] = convert(value)
            except (TypeError, ValueError):
                raise AutobatchError(f"config file {path}: bad value for {key}: {value!r}") from None
        else:
            raise AutobatchError(
                f"config file {path}: unknown key {key!r} (known: {', '.join(sorted(_TOP_LEVEL))}, "
                f"{', '.join(_TABLES)})")
    return values


def build_settings(config: Optional[Path], overrides: dict[str, Any]) -> TuneSettings:
    """Defaults, then the study file, then the command-line ``overrides`` (None = not given;
    ``overrides["space"]`` and ``overrides["recipe"]`` are dicts merged key by key). Raises
    ``AutobatchError`` (``RecipeError`` for the recipe) naming the bad value."""
    values = load_config(config) if config else {}
    overrides = dict(overrides)
    tables = {}
    for name in _TABLES:
        tables[name] = dict(values.pop(name, {}))
        tables[name].update({k: v for k, v in (overrides.pop(name, None) or {}).items() if v is not None})
    values.update({k: v for k, v in overrides.items() if v is not None})
    space = tables["space"]
    if "accumulation_steps" in space:
        space["accumulation_steps"] = tuple(space["accumulation_steps"])
    if values.get("budget_s") is None and values.get("n_trials") is None:
        values["budget_s"] = DEFAULT_BUDGET_S
    return TuneSettings(space=SearchSpace(**space), recipe=TrainRecipe.from_dict(tables["recipe"]), **values)
