"""The study's verdicts: :mod:`labelsmooth.evaluation.verdicts`, re-exported under the study's name.

The verdict object and its multiplicity rule live with the evaluation engine, which the study, ``sweep``
and ``labelsmooth evaluate`` share; this module keeps the name the study's code and records use.
"""

from labelsmooth.evaluation.verdicts import (
    ALPHA,
    COMPARATOR_OUTCOMES,
    MIN_SEEDS,
    OUTCOMES,
    Verdict,
    adjust,
    benjamini_hochberg,
    holm,
    power,
)

__all__ = [
    "ALPHA",
    "COMPARATOR_OUTCOMES",
    "MIN_SEEDS",
    "OUTCOMES",
    "Verdict",
    "adjust",
    "benjamini_hochberg",
    "holm",
    "power",
]
