"""``autobatch.tune``: the Python entry point for notebooks and scripts, on objects.

Takes the model factory, the data and optionally the step functions as Python objects, runs the
same pipeline as ``autobatch tune`` in this process (probe, plan, study, trials, answer) and
returns the ``Recommendation``. The objects are in scope for this call only
(``workloads.in_process``); the study stores their import paths (``module:qualname``), so a
separate ``autobatch worker`` can join when they live in an importable module, and not when
they were defined in a notebook (``python:...`` names): extra workers then need import paths.
"""

from __future__ import annotations

import copy
import inspect
import sys
from typing import Any, Callable, Optional, Sequence, Union

from ..errors import AutobatchError
from ..recipe import TrainRecipe
from ..recommender import Recommendation
from ..search import SearchSpace, TuneSettings
from ..units import parse_bytes, parse_duration
from ..workloads import in_process, object_name
from ._events import Callback
from ._progress import event_line
from ._tune import tune as tune_settings

Data = Union[str, tuple, Callable[[], tuple]]


def _model_factory(model: Any) -> Callable[..., Any]:
    """A factory called as ``factory(num_classes=..., input_shape=...)``: a model instance is
    deep-copied per trial (every trial starts from its weights); a callable gets the keyword
    arguments its signature takes."""
    import torch

    if isinstance(model, torch.nn.Module):
        instance = model
        return lambda **_: copy.deepcopy(instance)
    try:
        params = inspect.signature(model).parameters
    except (TypeError, ValueError):
        return model
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return model
    return lambda **kwargs: model(**{k: v for k, v in kwargs.items() if k in params})


def _name(obj: Any, kind: str, objects: dict[str, Any], wrap: Callable[[Any], Any] = lambda f: f) -> Optional[str]:
    """The name ``obj`` is stored under (a string passes as given), recorded in ``objects``."""
    if obj is None or isinstance(obj, str):
        return obj
    name = object_name(obj, kind)
    objects[name] = wrap(obj)
    return name


def _data_name(data: Data, objects: dict[str, Any]) -> str:
    if isinstance(data, str):
        return data
    if isinstance(data, (tuple, list)):
        if len(data) != 3:
            raise AutobatchError("data must be (train_dataset, val_dataset, num_classes), a function returning "
                                 "that, or a dataset name")
        splits = tuple(data)
        name = f"python:{type(splits[0]).__name__}-data"
        objects[name] = lambda: splits
        return name
    if callable(data):
        return _name(data, "data", objects)  # type: ignore[return-value]
    raise AutobatchError(f"data must be a (train, val, num_classes) tuple, a function or a name, "
                         f"got {type(data).__name__}")


def _print_progress(run: Any, event: Any) -> None:
    line = event_line(event)
    if line is not None:
        print(line, file=sys.stderr, flush=True)


def tune(model: Any, data: Data, *, recipe: Union[TrainRecipe, dict, None] = None,
         budget: Union[str, float, None] = "10m", n_trials: Optional[int] = None,
         storage: Optional[str] = None, study_name: Optional[str] = None,
         max_memory: Union[str, int, None] = None, device: str = "auto", seed: int = 0,
         step: Optional[Callable] = None, step_eval: Optional[Callable] = None,
         space: Union[SearchSpace, dict, None] = None, num_workers: Optional[int] = 0,
         workers: int = 1, verify_runs: Optional[int] = None, noise_probe: bool = True,
         callbacks: Sequence[Callback] = (), progress: bool = True) -> Recommendation:
    """Tune batch size, learning rate and accumulation steps for ``model`` on ``data``, in this
    process; returns the ``Recommendation``.

    ``model``: a function returning a fresh ``torch.nn.Module`` (called with ``num_classes`` and
    ``input_shape`` when it takes them), a module (copied per trial), or a name (``resnet18``,
    ``pkg.module:function``). ``data``: ``(train_dataset, val_dataset, num_classes)``, a function
    returning it, or a dataset name (``mnist1d``). ``step(model, batch) -> loss`` and
    ``step_eval(model, batches) -> metric`` replace the batch conventions (see the README).
    ``budget``: ``"10m"``, ``"90s"`` or seconds; ``storage``: a URL (default: the embedded SQLite
    file). ``num_workers`` defaults to 0 loader workers: notebooks' datasets are often defined in
    ``__main__``, which worker processes cannot always import. ``workers > 1`` starts extra
    processes, which need import paths (raises ``AutobatchError`` otherwise). ``verify_runs``:
    re-trainings of the answer, 0 to 5 (default: the plan's 1 or 2; 0: not verified, which the
    answer says); ``noise_probe=False`` skips the gradient-noise probe (the critical batch is
    not measured at the start). Raises
    ``AutobatchError`` for what the user can fix, including too few completed trials to answer.
    """
    objects: dict[str, Any] = {}
    model_name = _name(model, "model", objects, _model_factory)
    dataset_name = _data_name(data, objects)
    step_name, step_eval_name = _name(step, "step", objects), _name(step_eval, "step_eval", objects)
    if workers > 1:
        local = [n for n in (model_name, dataset_name, step_name, step_eval_name)
                 if n and (n.startswith("python:") or n.startswith("__main__:"))]
        if local:
            raise AutobatchError(f"workers={workers} starts processes that import what they train, but "
                                 f"{', '.join(local)} exist only in this process: give import paths "
                                 "(pkg.module:function) or use workers=1")
    if isinstance(recipe, dict):
        recipe = TrainRecipe.from_dict(recipe)
    if isinstance(space, dict):
        space = SearchSpace(**space)
    settings = TuneSettings(
        model=model_name, dataset=dataset_name, recipe=recipe or TrainRecipe(), space=space or SearchSpace(),
        budget_s=parse_duration(budget) if isinstance(budget, str) else budget, n_trials=n_trials,
        storage=storage, study_name=study_name, device=device, seed=seed, workers=workers,
        max_memory_bytes=parse_bytes(max_memory) if isinstance(max_memory, str) else max_memory,
        step=step_name, step_eval=step_eval_name, num_workers=num_workers, verify_runs=verify_runs,
        noise_probe=noise_probe)
    with in_process(objects):
        outcome = tune_settings(settings, callbacks=[*([_print_progress] if progress else []), *callbacks])
    answer = outcome.answer
    if "lr_multiplier" not in answer:  # the best trial, not a fitted recommendation
        best = (f"; best trial so far: batch {answer['batch_size']} x {answer['accumulation_steps']} at lr "
                f"{answer['learning_rate']:.4g}" if answer else "")
        raise AutobatchError(f"study {outcome.study_name!r} has too few completed trials for a recommendation"
                             f"{best}; give it more budget or trials (the study is kept: run again to resume)")
    return Recommendation.from_dict(answer)
