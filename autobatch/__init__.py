"""autobatch: measured batch size, learning rate and accumulation steps for PyTorch training.

``from autobatch import recommend, Recommendation`` loads the recommender on first use and
``autobatch.tune(model=..., data=...)`` (tuning on Python objects, in-process) the tuner (PEP 562
module ``__getattr__``), so ``import autobatch`` stays fast and imports no torch.
"""

import importlib
import os

# The memory accounting uses torch's profiler, whose C++ side logs a start/stop line per
# window unless told otherwise before torch loads. A default only: the user's setting wins.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

__version__ = "0.1.0"
__all__ = ["Recommendation", "__version__", "recommend", "tune"]

# Public name -> "module" (same name there) or "module:attribute", imported when first used.
_LAZY = {"recommend": "autobatch.recommender", "Recommendation": "autobatch.recommender",
         "tune": "autobatch.tuning:tune_objects"}


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    if name in _LAZY:
        module, _, attribute = _LAZY[name].partition(":")
        value = getattr(importlib.import_module(module), attribute or name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AutobatchAttributeError(name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def AutobatchAttributeError(name: str) -> AttributeError:  # noqa: N802 - builds the standard error
    return AttributeError(f"module {__name__!r} has no attribute {name!r}")
