"""Shared fixtures: small, preprocessed real data and one fitted map, built once per session.

Torch runs single-threaded (tiny networks train fastest that way, and the test machines have
few cores) and matplotlib draws off-screen.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

#: Smallest settings that still run the whole pipeline (warm start, minimax, validation).
TINY = dict(
    selection_fraction=0.2, n_iters=10, inner_steps=2, hidden=(8,), warm_start_iters=10, batch_size=64, device="cpu"
)
#: TINY for hycnn_sc.tl.fit_transport: 20 % of the cells held out for evaluate, and the maps'
#: own selection split at its default.
TINY_FIT = {**{k: v for k, v in TINY.items() if k != "selection_fraction"},
            "holdout_fraction": 0.2}
#: Cells of the Kang subset and principal components used throughout.
N_KANG = 240
N_PCS = 10


@pytest.fixture(scope="session")
def tiny() -> dict:
    """Model keywords for a tiny, fast map (a fresh dict: tests may update it)."""
    return dict(TINY)


@pytest.fixture(scope="session")
def kang_base():
    """240 random cells of ``kang_ifnb1k``: normalised, log1p, 10 PCs. Never modify it."""
    import scanpy as sc

    from hycnn_sc.datasets import kang_ifnb1k

    adata = kang_ifnb1k()
    rng = np.random.default_rng(0)
    adata = adata[np.sort(rng.choice(adata.n_obs, N_KANG, replace=False))].copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=N_PCS, random_state=0)
    return adata


@pytest.fixture
def kang(kang_base):
    """A private copy of :func:`kang_base`, free to modify."""
    return kang_base.copy()


@pytest.fixture(scope="session")
def kang_fitted(kang_base):
    """:func:`kang_base` with one tiny control -> stimulated map under ``uns['hycnn']``.

    Shared by many tests: never modify it (take ``.copy()``).
    """
    from hycnn_sc.tl import fit_transport

    adata = kang_base.copy()
    fit_transport(adata, groupby="condition", source="control", seed=0, **TINY_FIT)
    return adata


@pytest.fixture(scope="session")
def kang_hvg_base(kang_base):
    """:func:`kang_base` on its 50 most variable genes, dense float32 ``X``. Never modify it."""
    import scanpy as sc

    adata = kang_base.copy()
    sc.pp.highly_variable_genes(adata, n_top_genes=50)
    adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    adata.X = np.asarray(adata.X.toarray(), dtype=np.float32)
    del adata.obsm["X_pca"], adata.varm["PCs"], adata.uns["pca"]
    return adata


def with_pre_rename_names(state: dict) -> dict:
    """A saved estimator state as hycnn_sc wrote it before 0.3 (``validation_*`` parameter and
    history names), to test that old states still load."""
    renames = {"selection_fraction": "validation_fraction", "selection_every": "validation_every",
               "history/selection_iteration": "history/validation_iteration",
               "history/selection_energy": "history/validation_energy"}
    return {**state,
            "params": {renames.get(k, k): v for k, v in state["params"].items()},
            "arrays": {renames.get(k, k): v for k, v in state["arrays"].items()}}


def exact_softplus(values: torch.Tensor, beta: float = 1.0, threshold: float = 20.0) -> torch.Tensor:
    """softplus without torch's linear cut-off above 20 (exact first and second derivatives),
    for comparing the explicit gradient with double backward."""
    negative = torch.log1p(torch.exp(values.clamp(max=0.0)))
    positive = values + torch.log1p(torch.exp(-values.clamp(min=0.0)))
    return torch.where(values < 0, negative, positive)
