"""What a study is: its identity (model, dataset, search space, recipe) and what every worker
needs to run its trials.

A ``StudySpec`` is built once at the edge (CLI flags over a TOML file over defaults), stored
with the study as a user attribute, and compared on resume: a study is only resumed with the
same model, dataset, search space and training recipe.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from ..recipe import TrainRecipe
from ._space import SearchSpace


@dataclass(frozen=True, kw_only=True)
class StudySpec:
    """The identity of a study plus what every worker needs to run its trials."""

    model: str
    dataset: str
    space: SearchSpace = field(default_factory=SearchSpace)
    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    train_samples: int = 0            # training samples per trial (planned from the budget)
    eval_points: tuple[int, ...] = ()  # samples-seen checkpoints, identical for every trial
    train_size: int = 0               # samples in the training split
    val_size: int = 0
    num_classes: int = 0
    input_shape: tuple[int, ...] = ()
    max_memory_bytes: Optional[int] = None
    pruner: str = "median"
    seed: int = 0
    step: Optional[str] = None        # the user's step(model, batch) -> loss, replacing the conventions
    step_eval: Optional[str] = None   # the user's evaluate(model, batches) -> metric (with ``step``)
    verify_runs: int = 0              # re-trainings of the answer with fresh seeds after the search
    verify_holdout: int = 0           # validation samples held out of the trials, scored by verification only

    # Fields that must match for a study to be resumed.
    IDENTITY = ("model", "dataset", "recipe", "space", "step", "step_eval")  # the recipe first: it moves the space's lr defaults

    def __post_init__(self) -> None:
        # The stored space always holds the base lr and scaling rule it searched with: those
        # left unset follow the recipe's optimizer (a spec stored before recipes: SGD's 0.1, linear).
        object.__setattr__(self, "space", self.space.for_recipe(self.recipe))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["space"]["accumulation_steps"] = list(self.space.accumulation_steps)
        data["recipe"] = self.recipe.to_dict()
        data["eval_points"] = list(self.eval_points)
        data["input_shape"] = list(self.input_shape)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StudySpec":
        data = dict(data)
        space = dict(data.pop("space"))
        space["accumulation_steps"] = tuple(space["accumulation_steps"])
        data["eval_points"] = tuple(data.get("eval_points", ()))
        data["input_shape"] = tuple(data.get("input_shape", ()))
        recipe = TrainRecipe.from_dict(data.pop("recipe", None))  # stored before recipes: 0.1's
        return cls(space=SearchSpace(**space), recipe=recipe, **data)

    def code_paths(self) -> list[tuple[str, str]]:
        """The (what, path) pairs of code and data this study names by path: a
        ``pkg.module:function`` model, dataset or recipe entry (optimizer, loss, metric, step,
        ...) and an ``imagefolder:PATH``. A worker runs them only if it was given them."""
        found = []
        if ":" in self.model:
            found.append(("model", self.model))
        if ":" in self.dataset and not self.dataset.startswith("synthetic"):
            found.append(("dataset", self.dataset))
        for key, value in self.recipe.to_dict().items():
            if isinstance(value, str) and ":" in value:
                found.append((f"recipe {key}", value))
        for key in ("step", "step_eval"):
            if getattr(self, key):
                found.append((key, getattr(self, key)))
        return found

    def identity_difference(self, wanted: "StudySpec") -> Optional[str]:
        """A sentence naming the first identity field in which ``wanted`` (what a run asks for)
        differs from this spec (the stored study's), or None. The study's value comes first:
        ``model is 'mlp' there, 'small_cnn' here``."""
        stored, asked = self.to_dict(), wanted.to_dict()
        for key in self.IDENTITY:
            if key in ("space", "recipe"):
                label = "search space" if key == "space" else "recipe"
                for sub in sorted(set(stored[key]) | set(asked[key])):
                    if stored[key].get(sub) != asked[key].get(sub):
                        return f"{label} {sub} is {stored[key].get(sub)!r} there, {asked[key].get(sub)!r} here"
            elif stored[key] != asked[key]:
                return f"{key} is {stored[key]!r} there, {asked[key]!r} here"
        return None
