"""The ``hycnn-sc demo`` command line: progress bars only on a terminal."""

from __future__ import annotations

import sys

import anndata
import numpy as np
import pytest
import scanpy as sc
import torch

import hycnn_sc
from hycnn_sc.__main__ import main


class _Stop(Exception):
    """Ends the demo once fit_transport is reached (the fit itself is tested elsewhere)."""


@pytest.fixture
def fit_calls(monkeypatch):
    """Run the demo up to fit_transport on a tiny object, recording the call's keywords."""
    calls = []

    def fit_transport(adata, **kwargs):
        calls.append(kwargs)
        raise _Stop

    tiny = anndata.AnnData(np.ones((4, 3), dtype=np.float32))
    monkeypatch.setattr(hycnn_sc.datasets, "kang_ifnb1k", lambda: tiny)
    for module, name in [(sc.pp, "normalize_total"), (sc.pp, "log1p"),
                         (sc.pp, "highly_variable_genes"), (sc.pp, "pca"),
                         (sc.pp, "neighbors"), (sc.tl, "umap")]:
        monkeypatch.setattr(module, name, lambda *args, **kwargs: None)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # keep the test process's
    monkeypatch.setattr(hycnn_sc.tl, "fit_transport", fit_transport)
    return calls


@pytest.mark.parametrize(
    ("tty", "flag", "expected"),
    [
        (False, [], False),  # a log file: no carriage-return redraws
        (True, [], True),
        (False, ["--progress"], True),
        (True, ["--no-progress"], False),
    ],
)
def test_demo_progress_bars_follow_the_terminal(
    fit_calls, tmp_path, monkeypatch, capsys, tty, flag, expected
):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)  # capsys: a patchable stream
    with pytest.raises(_Stop):
        main(["demo", "--out", str(tmp_path), "--n-iters", "2", *flag])
    assert fit_calls[0]["progress"] is expected
