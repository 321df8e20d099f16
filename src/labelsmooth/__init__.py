"""labelsmooth: exact, fast label-smoothing losses for PyTorch, and tools to measure whether smoothing helps.

The public API is flat::

    import labelsmooth as ls
    loss = ls.cross_entropy(logits, target, label_smoothing=0.1)
"""

from types import ModuleType

from labelsmooth import calibration, noise
from labelsmooth._validate import ArgumentError, ArgumentTypeError
from labelsmooth.evaluation import compare, evaluate, sweep
from labelsmooth.functional import binary_cross_entropy_with_logits, cross_entropy
from labelsmooth.linear import LinearCrossEntropyLoss, linear_cross_entropy
from labelsmooth.modules import BCEWithLogitsLoss, CrossEntropyLoss
from labelsmooth.online import OnlineLabelSmoothing
from labelsmooth.targets import class_prior, smooth_binary_labels, smooth_labels

__version__ = "0.1.0"


def __getattr__(name: str) -> ModuleType:
    # plots needs matplotlib, an optional dependency: import it only when asked for.
    if name == "plots":
        import importlib

        return importlib.import_module("labelsmooth.plots")
    raise AttributeError(f"module 'labelsmooth' has no attribute {name!r}")


__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "LinearCrossEntropyLoss",
    "OnlineLabelSmoothing",
    "binary_cross_entropy_with_logits",
    "calibration",
    "class_prior",
    "compare",
    "cross_entropy",
    "evaluate",
    "linear_cross_entropy",
    "noise",
    "smooth_binary_labels",
    "smooth_labels",
    "sweep",
]
