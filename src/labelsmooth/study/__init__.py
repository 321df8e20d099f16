"""The ``labelsmooth study`` main job: train small models with and without label smoothing on real
data and measure, with confidence intervals, the four claims made for it.

Modules: :mod:`~labelsmooth.study.data` (datasets and splits), :mod:`~labelsmooth.study.methods` (the
method registry), :mod:`~labelsmooth.study.models`, :mod:`~labelsmooth.study.train` (one training),
:mod:`~labelsmooth.study.metrics`, :mod:`~labelsmooth.study.runner` (grid, workers, resume, atomic
results), :mod:`~labelsmooth.study.stats` (aggregation), :mod:`~labelsmooth.study.claims` (the
paragraphs), :mod:`~labelsmooth.study.figures` and :mod:`~labelsmooth.study.report`.

See ``docs/study.md``.
"""
