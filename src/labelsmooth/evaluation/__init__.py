"""The evaluation engine: metrics of a model's predictions with bootstrap intervals, paired comparisons,
and the verdict rules and words that ``labelsmooth study`` and ``labelsmooth evaluate`` share.

>>> from labelsmooth.evaluation import evaluate, compare, EvaluationResult, Comparison
"""

from labelsmooth.evaluation.multiplicity import (
    ALPHA,
    COMPARATOR_OUTCOMES,
    OUTCOMES,
    PAIRED_OUTCOMES,
    benjamini_hochberg,
    decide,
    holm,
)
from labelsmooth.evaluation.result import (
    METRICS,
    Comparison,
    Difference,
    Estimate,
    EvaluationResult,
    aurc,
    compare,
    evaluate,
)

__all__ = [
    "ALPHA",
    "COMPARATOR_OUTCOMES",
    "METRICS",
    "OUTCOMES",
    "PAIRED_OUTCOMES",
    "Comparison",
    "Difference",
    "Estimate",
    "EvaluationResult",
    "aurc",
    "benjamini_hochberg",
    "compare",
    "decide",
    "evaluate",
    "holm",
]
