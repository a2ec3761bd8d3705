"""Settings of a tuning run, built once at the edge: defaults < ``--config`` TOML < flags.

A study file holds top-level keys, a ``[space]`` table (``SearchSpace`` fields) and a
``[recipe]`` table (``TrainRecipe`` fields). An unknown key in a study file is an error, never
silently ignored; values are checked by type (``_study_file``). Flags override the file key by
key, in ``[space]`` and ``[recipe]`` too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import AutobatchError
from ..recipe import TrainRecipe
from ._space import SearchSpace
from ._spec import StudySpec

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
    verify_runs: Optional[int] = None  # re-trainings of the answer with fresh seeds (None: the plan's 1 or 2; 0: none)
    noise_probe: bool = True           # measure the gradient noise scale (critical batch) before the search
    epochs: Optional[float] = None
    workers: int = 1
    baselines: bool = True
    create_only: bool = False
    step: Optional[str] = None         # pkg.module:function, step(model, batch) -> loss
    step_eval: Optional[str] = None    # pkg.module:function, evaluate(model, batches) -> metric
    num_workers: Optional[int] = None  # data loader workers per process (None: what fits the machine)
    # Identity settings given by a study file or a flag ("model", "dataset", "recipe", "step",
    # "step_eval", "space.KEY"): on resume the others are the stored study's own (``resumed_from``).
    given: frozenset[str] = frozenset()

    def resumed_from(self, spec: StudySpec) -> "TuneSettings":
        """These settings for resuming the study ``spec`` describes: model, dataset, recipe, step
        hooks and search-space bounds that were not given are the study's; those given are kept,
        so that a difference is found and named (``StudySpec.identity_difference``)."""
        space = {**dataclasses.asdict(spec.space),
                 **{k: getattr(self.space, k) for k in (g[6:] for g in self.given if g.startswith("space."))}}
        mine = lambda name: getattr(self, name) if name in self.given else getattr(spec, name)  # noqa: E731
        return dataclasses.replace(
            self, model=mine("model"), dataset=mine("dataset"), recipe=mine("recipe"), step=mine("step"),
            step_eval=mine("step_eval"),
            space=SearchSpace(**{**space, "accumulation_steps": tuple(space["accumulation_steps"])}))

    def __post_init__(self) -> None:
        if self.step_eval and not self.step:
            raise AutobatchError("--step-eval needs --step (the evaluation function goes with a step function)")
        # With a step hook the metric is the evaluation function's value (named after it, maximised
        # unless the recipe names the same function with metric_direction "minimize"), or without
        # one the step's own validation loss (minimised).
        metric = self.step_eval or ("val_loss" if self.step else None)
        if metric is not None and self.recipe.metric != metric:
            object.__setattr__(self, "recipe", dataclasses.replace(self.recipe, metric=metric, metric_direction=None))
        if self.seed < 0:
            raise AutobatchError(f"--seed must be 0 or more, got {self.seed}")
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
        if self.verify_runs is not None and not 0 <= self.verify_runs <= 5:
            raise AutobatchError(f"--verify-runs (verify_runs) must be 0 to 5, got {self.verify_runs}")
        if self.study_name is not None and not self.study_name.strip():
            raise AutobatchError("--study-name is empty: give a name (e.g. --study-name resnet18-digits) "
                                 "or leave the option out for MODEL-DATASET")
        if self.epochs is not None and self.epochs <= 0:
            raise AutobatchError("--epochs must be positive")
        from ._sampling import PRUNERS

        if self.pruner not in PRUNERS:
            raise AutobatchError(f"unknown pruner {self.pruner!r}; choose one of {', '.join(PRUNERS)}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise AutobatchError(f"unknown device {self.device!r}; use auto, cpu or cuda")


_TABLES = ("space", "recipe")  # tables of a study file, merged key by key with the flags


def load_config(path: Path) -> dict[str, Any]:
    """A study file as settings keyword arguments (``space`` and ``recipe`` as dicts), checked
    by type (``search._study_file``; pydantic is imported only when a study file is read)."""
    from ._study_file import load_study_file

    return load_study_file(path)


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
    given = ({k for k in ("model", "dataset", "step", "step_eval") if k in values}
             | ({"recipe"} if tables["recipe"] else set()) | {f"space.{k}" for k in space})
    return TuneSettings(space=SearchSpace(**space), recipe=TrainRecipe.from_dict(tables["recipe"]),
                        given=frozenset(given), **values)
