"""The evaluation engine: metrics of a model's predictions with bootstrap intervals, paired comparisons,
and the verdict rules and words that ``labelsmooth study`` and ``labelsmooth evaluate`` share, and
:func:`sweep`, the study's protocol run on a user's own training function.

Example:
    >>> import torch
    >>> from labelsmooth.evaluation import evaluate
    >>> result = evaluate(torch.randn(200, 5), torch.randint(0, 5, (200,)), n_bootstrap=50)
    >>> sorted(result.metrics)[:3]
    ['accuracy', 'aurc', 'brier']
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
from labelsmooth.evaluation.sweep import SweepResult, sweep

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
    "SweepResult",
    "aurc",
    "benjamini_hochberg",
    "compare",
    "decide",
    "evaluate",
    "holm",
    "sweep",
]
