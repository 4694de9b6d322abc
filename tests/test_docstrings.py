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
def test_examples_run(name):
    import scanpy as sc

    # scanpy's settings are class properties without a deleter, so monkeypatch
    # cannot undo them; save and restore by hand.
    autoshow = sc.settings.autoshow
    sc.settings.autoshow = False
    try:
        module = importlib.import_module(name)
        result = doctest.testmod(
            module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
        )
    finally:
        sc.settings.autoshow = autoshow
    assert result.failed == 0, f"{result.failed} doctest failure(s) in {name}"
