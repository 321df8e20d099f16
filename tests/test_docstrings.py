"""The runnable examples in the public docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = [
    "labelsmooth.targets",
    "labelsmooth.functional",
    "labelsmooth.modules",
    "labelsmooth.calibration",
    "labelsmooth.noise",
    "labelsmooth.plots",
    "labelsmooth.study.models",
    "labelsmooth.online",
    "labelsmooth.integrations.huggingface",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no runnable examples"
    assert result.failed == 0
