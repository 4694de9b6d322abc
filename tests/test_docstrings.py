"""Every Examples section in the package runs (doctest)."""

import doctest
import importlib
import pkgutil

import matplotlib
import pytest

import hycnn_sc

matplotlib.use("Agg")
MODULES = sorted(
    info.name for info in pkgutil.walk_packages(hycnn_sc.__path__, "hycnn_sc.")
    if info.name != "hycnn_sc.__main__"
)


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name, monkeypatch):
    import scanpy as sc

    monkeypatch.setattr(sc.settings, "autoshow", False)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False)
    assert result.failed == 0, f"{result.failed} doctest failure(s) in {name}"
