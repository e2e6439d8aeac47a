"""Every docstring example in gymbox runs as written: the public API's documentation cannot rot.

Examples that need a Docker engine or the embedded model are marked ``# doctest: +SKIP`` in
their module; everything else runs here.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import gymbox

MODULES = ["gymbox", *sorted(m.name for m in pkgutil.walk_packages(gymbox.__path__, "gymbox."))]
LAYERS = sorted(m.name for m in pkgutil.iter_modules(gymbox.__path__, "gymbox.") if m.ispkg)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


@pytest.mark.parametrize("layer", LAYERS)
def test_every_layer_documents_its_api_with_examples(layer):
    finder = doctest.DocTestFinder()
    examples = sum(len(test.examples) for name in MODULES if name.startswith(f"{layer}.")
                   for test in finder.find(importlib.import_module(name)))
    assert examples > 0
