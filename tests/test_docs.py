"""The examples in the public docstrings run and print what they say."""
import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["cnorm.lrn", "cnorm.batchnorm", "cnorm.layers",
                                    "cnorm.moments"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, result
