"""A study file (``tune --config``, TOML), validated by type with pydantic.

Strict types: ``"8"`` is not a number, ``1.9`` not a whole number, ``"no"`` not a boolean,
``4`` not a list; every mistake is one line naming the file, the option, the value and how to
write it. Unknown keys are errors. ``[recipe]`` is a nested table whose keys are checked here and
whose values ``TrainRecipe.from_dict`` checks once the flags are merged in.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, ValidationError

from ..errors import AutobatchError
from ..recipe import TrainRecipe
from ..units import parse_bytes, parse_duration
from ._sampling import PRUNERS
from ._space import SCALING_RULES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class _Table(BaseModel):
    """A table of a study file: exact TOML types (strict), unknown keys refused."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class SpaceTable(_Table):
    """``[space]``: bounds of the search (``SearchSpace`` checks powers of two and order)."""

    batch_size_min: Optional[PositiveInt] = None
    batch_size_max: Optional[PositiveInt] = None
    lr_multiplier_min: Optional[PositiveFloat] = None
    lr_multiplier_max: Optional[PositiveFloat] = None
    accumulation_steps: Optional[list[PositiveInt]] = Field(default=None, min_length=1)
    base_lr: Optional[PositiveFloat] = None
    reference_batch_size: Optional[PositiveInt] = None
    scaling_rule: Optional[Literal[SCALING_RULES]] = None  # type: ignore[valid-type]


class StudyFile(_Table):
    """A study file (``tune --config``). Durations and sizes are strings (``"10m"``, ``"4GiB"``)
    or plain numbers of seconds and bytes. ``[recipe]`` is ``TrainRecipe.from_dict``'s to check."""

    model: Optional[str] = None
    dataset: Optional[str] = None
    data_dir: Optional[str] = None
    budget: Optional[Union[str, PositiveFloat]] = None
    n_trials: Optional[PositiveInt] = None
    max_memory: Optional[Union[str, PositiveInt]] = None
    storage: Optional[str] = None
    study_name: Optional[str] = None
    seed: Optional[NonNegativeInt] = None
    device: Optional[str] = None
    pruner: Optional[Literal[PRUNERS]] = None  # type: ignore[valid-type]
    n_evals: Optional[PositiveInt] = None
    verify_runs: Optional[NonNegativeInt] = None
    noise_probe: Optional[bool] = None
    epochs: Optional[PositiveFloat] = None
    workers: Optional[PositiveInt] = None
    baselines: Optional[bool] = None
    step: Optional[str] = None
    step_eval: Optional[str] = None
    num_workers: Optional[NonNegativeInt] = None
    space: Optional[SpaceTable] = None
    recipe: Optional[dict[str, Any]] = None


# How to write each option right, for the one-line error.
_EXAMPLES = {
    "budget": 'budget = "10m"', "max_memory": 'max_memory = "4GiB"', "n_trials": "n_trials = 30",
    "seed": "seed = 0", "n_evals": "n_evals = 4", "verify_runs": "verify_runs = 1 (0: no verification)",
    "epochs": "epochs = 2.5", "workers": "workers = 2", "baselines": "baselines = false",
    "noise_probe": "noise_probe = false", "pruner": f'pruner = "median" (one of {", ".join(PRUNERS)})',
    "batch_size_min": "batch_size_min = 8", "batch_size_max": "batch_size_max = 256",
    "lr_multiplier_min": "lr_multiplier_min = 0.1", "lr_multiplier_max": "lr_multiplier_max = 10.0",
    "accumulation_steps": "accumulation_steps = [1, 2, 4]", "base_lr": "base_lr = 0.1",
    "reference_batch_size": "reference_batch_size = 256",
    "scaling_rule": f'scaling_rule = "linear" (one of {", ".join(SCALING_RULES)})',
    "space": "a [space] table", "recipe": "a [recipe] table", "num_workers": "num_workers = 2",
    "step": 'step = "pkg.module:function"', "step_eval": 'step_eval = "pkg.module:function"',
}
# Top-level keys -> TuneSettings fields, with the conversion of strings and numbers.
_RENAMED = {"budget": ("budget_s", parse_duration), "max_memory": ("max_memory_bytes", parse_bytes),
            "data_dir": ("data_dir", Path)}


def load_study_file(path: Path) -> dict[str, Any]:
    """A study file as settings keyword arguments (``space`` and ``recipe`` as dicts). Raises
    ``AutobatchError`` with one line naming the file, the option, the value and how to write
    it; an unknown key is an error, never ignored."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AutobatchError(f"config file {path} not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AutobatchError(f"config file {path}: {exc}") from None
    try:
        parsed = StudyFile.model_validate(raw)
    except ValidationError as exc:
        raise AutobatchError(_one_line(path, exc)) from None
    values: dict[str, Any] = {}
    for key, value in parsed.model_dump(exclude_none=True, exclude={"space", "recipe"}).items():
        name, convert = _RENAMED.get(key, (key, None))
        try:
            values[name] = convert(value) if convert else value
        except AutobatchError as exc:
            raise AutobatchError(f"config file {path}: {key} = {_toml(value)}: {exc}; "
                                 f"write e.g. {_EXAMPLES[key]}") from None
    if parsed.space is not None:
        values["space"] = parsed.space.model_dump(exclude_none=True)
    if parsed.recipe is not None:  # values are TrainRecipe.from_dict's to check, after the flags
        known = {f.name for f in dataclasses.fields(TrainRecipe)}
        unknown = sorted(set(parsed.recipe) - known)
        if unknown:
            raise AutobatchError(f"config file {path}: unknown key(s) in [recipe]: {', '.join(unknown)} "
                                 f"(known: {', '.join(sorted(known))})")
        values["recipe"] = dict(parsed.recipe)
    return values


def _one_line(path: Path, exc: ValidationError) -> str:
    """The first validation error as one line: where, what was written, why, how to write it."""
    error = exc.errors()[0]
    loc = error["loc"]
    nested = loc[0] == "space" and len(loc) > 1
    key, rest = (loc[1], loc[2:]) if nested else (loc[0], loc[1:])
    where = f"[space] {key}" if nested else str(key)
    if error["type"] == "extra_forbidden":
        known = ", ".join(sorted((SpaceTable if nested else StudyFile).model_fields))
        return f"config file {path}: unknown key {where!r} (known{' in [space]' if nested else ''}: {known})"
    where += "".join(f"[{part}]" for part in rest if isinstance(part, int))  # a list's element
    if any(isinstance(part, str) for part in rest):  # one of several allowed types
        why = "not a valid value"
    else:
        why = error["msg"][0].lower() + error["msg"][1:]
    fix = _EXAMPLES.get(str(key))
    return (f"config file {path}: {where} = {_toml(error['input'])}: {why}"
            + (f"; write e.g. {fix}" if fix else ""))


def _toml(value: Any) -> str:
    """``value`` as it is written in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)
