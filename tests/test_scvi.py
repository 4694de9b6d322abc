"""scVI latent in, genes out: tl.scvi_latent, tl.decode and evaluate(scvi_model=...).

Tiny scVI models (a few epochs) on the shipped Kang 832 cells: these tests check plumbing,
library sizes, batches and refusals, not model quality.
"""

from __future__ import annotations

import sys

import anndata as ad
import numpy as np
import pytest
from conftest import TINY_FIT

scvi = pytest.importorskip("scvi")

import hycnn_sc as hs  # noqa: E402
from hycnn_sc.tl import decode, evaluate, fit_transport, predict, scvi_latent  # noqa: E402

N_LATENT = 6


def _train(adata, *, n_latent=N_LATENT, seed=0, epochs=4):
    scvi.settings.seed = seed
    scvi.model.SCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    model = scvi.model.SCVI(adata, n_latent=n_latent, n_hidden=32, n_layers=1)
    model.train(max_epochs=epochs, accelerator="cpu", enable_progress_bar=False,
                enable_model_summary=False, logger=False, enable_checkpointing=False)
    return model


def _kang():
    import scanpy as sc

    adata = hs.datasets.kang_ifnb1k()
    sc.pp.filter_genes(adata, min_cells=40)
    adata.layers["counts"] = adata.X.copy()
    # Two pseudo-batches, to check that each prediction decodes in its source cell's batch.
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2 == 0, "b1", "b2")
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


@pytest.fixture(scope="module")
def scvi_fitted():
    """Kang 832 cells with a tiny scVI model, its latent (recorded) and a tiny map on it.

    Shared: never modify the AnnData (take ``.copy()``).
    """
    adata = _kang()
    model = _train(adata)
    scvi_latent(adata, scvi_model=model)
    fit_transport(adata, groupby="condition", source="control", use_rep="X_scVI", seed=0, **TINY_FIT)
    return adata, model


def _snapshot(adata):
    return (adata.X.copy(), {k: v.copy() for k, v in adata.layers.items()},
            {k: np.array(v) for k, v in adata.obsm.items()}, sorted(adata.uns.keys()),
            adata.obs.copy())


def _assert_untouched(adata, snapshot):
    x, layers, obsm, uns, obs = snapshot
    assert (adata.X != x).nnz == 0
    assert set(adata.layers) == set(layers)
    assert all((adata.layers[k] != v).nnz == 0 for k, v in layers.items())
    assert set(adata.obsm) == set(obsm)
    assert all(np.array_equal(adata.obsm[k], v, equal_nan=True) for k, v in obsm.items())
    assert sorted(adata.uns.keys()) == uns
    assert adata.obs.equals(obs)


def test_scvi_latent_records_the_model_and_survives_h5ad(scvi_fitted, tmp_path):
    adata, model = scvi_fitted
    assert adata.obsm["X_scVI"].shape == (adata.n_obs, N_LATENT)
    record = adata.uns["hycnn_scvi"]["X_scVI"]
    assert record["n_latent"] == N_LATENT and record["layer"] == "counts"
    assert list(record["var_names"]) == list(adata.var_names)
    assert len(record["fingerprint"]) == 64
    path = tmp_path / "scvi.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert back.uns["hycnn_scvi"]["X_scVI"]["fingerprint"] == record["fingerprint"]
    # The reread AnnData still decodes (the record is checked against the model).
    genes = decode(back[:3], scvi_model=model)
    assert genes.shape == (3, adata.n_vars)


def test_decode_predictions_uses_source_library_and_batch(scvi_fitted):
    adata, model = scvi_fitted
    before = _snapshot(adata)
    predicted = predict(adata, target="stimulated")
    genes = decode(predicted, scvi_model=model, adata=adata)
    _assert_untouched(adata, before)

    assert genes.shape == (predicted.n_obs, adata.n_vars)
    assert list(genes.var_names) == list(adata.var_names)
    np.testing.assert_array_equal(genes.obsm["X_scVI"], predicted.obsm["X_scVI"])
    assert list(genes.obs["source_cell"]) == list(predicted.obs["source_cell"])
    np.testing.assert_allclose(genes.layers["normalized"].sum(axis=1), 1e4, rtol=1e-4)
    np.testing.assert_allclose(genes.X, np.log1p(genes.layers["normalized"]), rtol=1e-5)
    # Library size: the expected counts of each prediction add up to its source cell's counts.
    sources = adata.obs_names.get_indexer(predicted.obs["source_cell"])
    library = np.asarray(adata.layers["counts"][sources].sum(axis=1)).ravel()
    np.testing.assert_allclose(genes.layers["expected_counts"].sum(axis=1), library, rtol=1e-3)
    record = genes.uns["hycnn_decode"]
    assert record["use_rep"] == "X_scVI" and record["layer"] == "counts"
    assert record["fingerprint"] == adata.uns["hycnn_scvi"]["X_scVI"]["fingerprint"]

    # Batch: by default each cell decodes in its source cell's batch.
    in_b1 = (adata.obs["batch"].to_numpy()[sources] == "b1")
    fixed = decode(predicted, scvi_model=model, adata=adata, batch="b1")
    np.testing.assert_allclose(fixed.X[in_b1], genes.X[in_b1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(fixed.X[~in_b1], genes.X[~in_b1])


def test_decode_matches_scvi_public_normalised_expression(scvi_fitted):
    """Decoding cells' own posterior means agrees with get_normalized_expression (which
    averages the decoder over posterior samples, so only approximately)."""
    adata, model = scvi_fitted
    cells = np.arange(30)
    ours = decode(adata[cells], scvi_model=model).layers["normalized"]
    public = model.get_normalized_expression(adata, indices=cells, n_samples=200,
                                             library_size=1e4, return_numpy=True)
    r = np.corrcoef(np.log1p(ours).ravel(), np.log1p(public).ravel())[0, 1]
    assert r > 0.95


def test_evaluate_with_scvi_model_reports_gene_space_metrics(scvi_fitted):
    adata, model = scvi_fitted
    adata = adata.copy()
    table = evaluate(adata, by="cell_type", scvi_model=model)
    assert set(table["space"]) == {"rep", "gene"}
    gene = table[(table["space"] == "gene") & (table["group"] == "all")].set_index("method")
    assert list(gene.index) == ["hycnn", "identity", "mean_shift", "gaussian_ot", "observed"]
    assert np.isfinite(gene.loc["hycnn", ["pearson_delta", "mse_mean", "mae_mean",
                                           "overlap_at_N"]].to_numpy(float)).all()
    # The unmoved control decodes to the decoded controls: no change, no DE genes.
    assert gene.loc["identity", "n_de_predicted"] == 0
    assert table[table["space"] == "rep"]["pearson_delta"].isna().all()
    assert set(table["group"]) - {"all"} <= set(adata.obs["cell_type"].astype(str))
    # Without the model, an scVI latent has no gene space.
    assert set(evaluate(adata)["space"]) == {"rep"}


# ------------------------------------------------------------------------------ bad input
def test_model_trained_on_other_genes_is_refused(scvi_fitted):
    adata, _ = scvi_fitted
    other = _kang()[:, :300].copy()
    other_model = _train(other, n_latent=N_LATENT, epochs=1)
    before = _snapshot(adata)
    predicted = predict(adata, target="stimulated")
    with pytest.raises(ValueError, match="trained on 300 genes"):
        decode(predicted, scvi_model=other_model, adata=adata)
    with pytest.raises(ValueError, match="trained on 300 genes"):
        evaluate(adata, scvi_model=other_model)
    _assert_untouched(adata, before)


def test_latent_of_another_width_and_another_model_are_refused(scvi_fitted):
    adata, model = scvi_fitted
    before = _snapshot(adata)
    predicted = predict(adata, target="stimulated")
    narrow = adata.copy()
    del narrow.uns["hycnn_scvi"]
    narrow_model = _train(narrow, n_latent=3, epochs=1)
    with pytest.raises(ValueError, match=r"width 6.*3 dimensions"):
        decode(predicted, scvi_model=narrow_model, adata=adata)
    with pytest.raises(ValueError, match=r"6 dimensions.*has 3"):
        evaluate(adata, scvi_model=narrow_model)
    # Same genes and width, other weights: not the model the latent came from.
    retrained = _train(adata.copy(), seed=1, epochs=1)
    with pytest.raises(ValueError, match="not the model obsm\\['X_scVI'\\] came from"):
        decode(predicted, scvi_model=retrained, adata=adata)
    _assert_untouched(adata, before)
    # Without a record only width and genes can be checked: a warning says so.
    with pytest.warns(UserWarning, match="No record of the scVI model"):
        decode(narrow[:3], scvi_model=model)


def test_missing_scvi_tools_names_the_extra(scvi_fitted, monkeypatch):
    adata, model = scvi_fitted
    before = _snapshot(adata)
    monkeypatch.setitem(sys.modules, "scvi", None)  # `import scvi` now raises ImportError
    with pytest.raises(ImportError, match=r'hycnn-sc\[scvi\]'):
        decode(adata[:3], scvi_model=model)
    with pytest.raises(ImportError, match=r'hycnn-sc\[scvi\]'):
        scvi_latent(adata, scvi_model=model)
    with pytest.raises(ImportError, match=r'hycnn-sc\[scvi\]'):
        evaluate(adata, scvi_model=model)
    _assert_untouched(adata, before)


def test_missing_count_layer_is_refused(scvi_fitted):
    adata, model = scvi_fitted
    predicted = predict(adata, target="stimulated")
    without = adata.copy()
    del without.layers["counts"]
    before = _snapshot(without)
    with pytest.raises(KeyError, match="layers\\['counts'\\] is missing"):
        decode(predicted, scvi_model=model, adata=without)
    # X holds log1p-normalised values, not counts: no library sizes there either.
    with pytest.raises(ValueError, match="does not hold raw counts"):
        decode(predicted, scvi_model=model, adata=without, layer=None)
    _assert_untouched(without, before)


def test_decode_input_errors(scvi_fitted):
    adata, model = scvi_fitted
    predicted = predict(adata, target="stimulated")
    with pytest.raises(ValueError, match="pass adata="):
        decode(predicted, scvi_model=model)
    with pytest.raises(KeyError, match="obsm\\['X_other'\\] is missing"):
        decode(predicted, scvi_model=model, adata=adata, use_rep="X_other")
    with pytest.raises(TypeError, match=r"trained scvi\.model\.SCVI"):
        decode(predicted, scvi_model="model", adata=adata)
    with pytest.raises(ValueError, match="not a batch of the scVI model"):
        decode(predicted, scvi_model=model, adata=adata, batch="b9")
    with pytest.raises(ValueError, match="target_sum"):
        decode(predicted, scvi_model=model, adata=adata, target_sum=0)
