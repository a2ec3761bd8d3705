"""The question a recommendation answers: a priority and constraints (memory, epoch time,
accuracy). Light: the stored answer's key (``_stored``) and the fit (``_answer``) both read it."""

from __future__ import annotations

from typing import Any, Optional, Union

from ..errors import AutobatchError
from ..units import parse_bytes, parse_duration

PRIORITIES = ("balanced", "accuracy", "speed")


def check_priority(priority: str) -> None:
    """Raises ``AutobatchError`` unless ``priority`` is one of ``PRIORITIES``."""
    if priority not in PRIORITIES:
        raise AutobatchError(f"priority must be one of {', '.join(PRIORITIES)}; got {priority!r}")


def question(*, max_memory: Union[int, str, None] = None, max_epoch_time: Union[float, str, None] = None,
             min_accuracy: Optional[float] = None, priority: str = "balanced") -> dict[str, Any]:
    """The question a recommendation answers, as stored in its key: ``priority``,
    ``max_memory_bytes`` (int), ``max_epoch_time_s`` and ``min_accuracy`` (floats), None where
    not asked. Raises ``AutobatchError`` for a size or duration that does not parse."""
    if isinstance(max_epoch_time, str):
        max_epoch_time = parse_duration(max_epoch_time)
    return {"priority": priority, "max_memory_bytes": None if max_memory is None else int(parse_bytes(max_memory)),
            "max_epoch_time_s": None if max_epoch_time is None else float(max_epoch_time),
            "min_accuracy": None if min_accuracy is None else float(min_accuracy)}


def asked(key_question: dict[str, Any]) -> dict[str, Any]:
    """``recommend_study``'s keywords for a stored ``question``."""
    return {"priority": key_question["priority"], "max_memory": key_question["max_memory_bytes"],
            "max_epoch_time": key_question["max_epoch_time_s"], "min_accuracy": key_question["min_accuracy"]}
