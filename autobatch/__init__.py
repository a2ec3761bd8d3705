"""autobatch: measured batch size, learning rate and accumulation steps for PyTorch training.

``from autobatch import recommend, Recommendation`` loads the recommender on first use, so
``import autobatch`` stays fast and never imports torch.
"""

import importlib
import os
import sys
import types

# The memory accounting uses torch's profiler, whose C++ side logs a start/stop line per
# window unless told otherwise before torch loads. A default only: the user's setting wins.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

__version__ = "0.1.0"
__all__ = ["Recommendation", "__version__", "recommend"]


class _Package(types.ModuleType):
    # ``recommend`` names both the submodule and the public function. Importing the submodule
    # binds it on the package; this property makes the name always mean the function, as an
    # eager ``from .recommend import recommend`` would (the submodule stays in sys.modules).
    @property
    def recommend(self):  # type: ignore[no-untyped-def]
        return importlib.import_module(f"{__name__}.recommend").recommend

    @recommend.setter
    def recommend(self, _module):  # type: ignore[no-untyped-def]
        pass


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    if name == "Recommendation":
        return importlib.import_module(f"{__name__}.recommend").Recommendation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


sys.modules[__name__].__class__ = _Package
