"""The AnnData API of ``hycnn_sc.tl`` works: fit_transport, predict, evaluate and their storage.

Real data only (the shipped Kang 2018 and Perturb-seq subsets), tiny maps (see conftest.TINY_FIT):
these tests check plumbing, storage and reproducibility, not map quality.
"""

from __future__ import annotations

import json
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import N_PCS, TINY_FIT

from hycnn_sc.models import TransportMap
from hycnn_sc.tl import evaluate, fit_transport, predict
from hycnn_sc.tl._holdout import _refit_arguments
from hycnn_sc.tl._schema import FitParams, decode_map

EVALUATION_COLUMNS = [
    "target", "stratum", "group", "space", "method", "n_predicted", "n_observed",
    "mmd", "energy_distance", "r2_mean", "signature_l2",
    "pearson_delta", "mse_mean", "mae_mean", "overlap_at_N", "overlap_at_50",
    "de_direction_match", "n_de_observed", "n_de_predicted",
]
METHODS = {"hycnn", "identity", "mean_shift", "gaussian_ot", "observed"}


def _arrays(tree, prefix=""):
    """Every ndarray in a nested dict, keyed by path (to compare stored weights)."""
    out = {}
    for name, value in tree.items():
        if isinstance(value, dict):
            out.update(_arrays(value, f"{prefix}{name}/"))
        elif isinstance(value, np.ndarray):
            out[f"{prefix}{name}"] = value
    return out


def _control(adata) -> np.ndarray:
    return (adata.obs["condition"] == "control").to_numpy()


# ------------------------------------------------------------------------------ fit_transport
def test_fit_transport_writes_documented_fields(kang_fitted):
    adata = kang_fitted
    stored = adata.uns["hycnn"]
    assert set(stored) == {"params", "var_names", "representation", "maps"}
    params = stored["params"]
    assert params["groupby"] == "condition" and params["source"] == "control"
    assert list(params["targets"]) == ["stimulated"]
    assert params["use_rep"] == "X_pca" and params["layer"] == "" and params["split_by"] == ""
    assert params["seed"] == 0 and params["n_features"] == N_PCS
    assert params["holdout_fraction"] == 0.2 and params["schema_version"] == 1
    assert "validation_fraction" not in params
    assert {"torch", "numpy", "anndata", "scanpy", "hycnn_sc"} <= set(params["versions"])
    model_params = json.loads(params["model_params_json"])
    assert model_params["n_iters"] == TINY_FIT["n_iters"] and model_params["hidden"] == [8]
    assert model_params["selection_fraction"] == 0.1  # the map's own split, at its default
    assert "validation_fraction" not in model_params and "validation_every" not in model_params
    assert model_params["seed"] == 0
    np.testing.assert_array_equal(stored["var_names"], adata.var_names)
    representation = stored["representation"]
    assert representation["source_mean"].shape == (N_PCS,)
    assert representation["pca_components"].shape == (adata.n_vars, N_PCS)
    assert set(stored["maps"]) == {"stimulated"}
    entry = stored["maps"]["stimulated"]
    assert entry["target"] == "stimulated" and entry["stratum"] == ""
    assert {"f", "g", "center", "history", "state_json"} <= set(entry)

    predicted = adata.obsm["hycnn_stimulated"]
    control = _control(adata)
    assert predicted.shape == (adata.n_obs, N_PCS)
    assert np.isfinite(predicted[control]).all()
    assert np.isnan(predicted[~control]).all()

    split = adata.obs["hycnn_split"]
    assert isinstance(split.dtype, pd.CategoricalDtype)
    assert set(split.cat.categories) == {"train", "held_out"}
    assert split.notna().all()  # both labels are fitted groups
    for label in ("control", "stimulated"):
        held = (split[adata.obs["condition"] == label] == "held_out").mean()
        assert 0.1 < held < 0.3


def test_fit_transport_returns_none_copy_leaves_original_and_is_reproducible(kang, kang_fitted):
    before = (list(kang.obs.columns), list(kang.obsm.keys()), list(kang.uns.keys()))
    result = fit_transport(kang, groupby="condition", source="control", seed=0, copy=True, **TINY_FIT)
    assert isinstance(result, ad.AnnData) and result is not kang
    assert (list(kang.obs.columns), list(kang.obsm.keys()), list(kang.uns.keys())) == before
    assert "hycnn" in result.uns and "hycnn_stimulated" in result.obsm

    # Same seed on CPU: bit-identical predictions and stored weights.
    np.testing.assert_array_equal(
        result.obsm["hycnn_stimulated"], kang_fitted.obsm["hycnn_stimulated"]
    )
    assert result.obs["hycnn_split"].equals(kang_fitted.obs["hycnn_split"])
    first, second = _arrays(kang_fitted.uns["hycnn"]), _arrays(result.uns["hycnn"])
    assert set(first) == set(second) and any(k.startswith("maps/stimulated/f/") for k in first)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)

    assert fit_transport(kang, groupby="condition", source="control", seed=None, **TINY_FIT) is None
    drawn = kang.uns["hycnn"]["params"]["seed"]
    assert isinstance(drawn, int) and drawn >= 0  # seed=None stores the seed it drew
    again = fit_transport(kang, groupby="condition", source="control", seed=drawn, copy=True,
                          **TINY_FIT)
    np.testing.assert_array_equal(again.obsm["hycnn_stimulated"], kang.obsm["hycnn_stimulated"])


def test_refit_under_same_key_replaces_previous_results(kang_fitted):
    adata = kang_fitted.copy()
    adata.obsm["hycnn_umap"] = np.zeros((adata.n_obs, 2))  # not ours: must survive
    adata.obs["group"] = np.where(_control(adata), "ctrl", "stim")
    fit_transport(adata, groupby="group", source="ctrl", **TINY_FIT)
    assert "hycnn_stimulated" not in adata.obsm  # stale target of the previous fit
    assert {"hycnn_stim", "hycnn_umap"} <= set(adata.obsm)


# ------------------------------------------------------------------------------ round trip
def test_h5ad_round_trip_gives_identical_predictions(kang_fitted, tmp_path):
    adata = kang_fitted.copy()
    path = tmp_path / "fitted.h5ad"
    adata.write_h5ad(path)
    read = ad.read_h5ad(path)
    original = predict(adata, target="stimulated")
    reloaded = predict(read, target="stimulated")
    np.testing.assert_array_equal(original.obsm["X_pca"], reloaded.obsm["X_pca"])
    np.testing.assert_array_equal(original.X, reloaded.X)
    assert list(original.obs_names) == list(reloaded.obs_names)

    table = evaluate(read, gene_space_metrics=False)
    assert set(table["method"]) == METHODS
    pd.testing.assert_frame_equal(table, evaluate(adata, gene_space_metrics=False))
    read.write_h5ad(tmp_path / "evaluated.h5ad")
    stored = ad.read_h5ad(tmp_path / "evaluated.h5ad").uns["hycnn"]["evaluation"]
    pd.testing.assert_frame_equal(stored.reset_index(drop=True), table, check_dtype=False)



def test_fit_params_record_round_trip_survives_h5ad(kang_fitted, tmp_path):
    record = FitParams.from_uns(kang_fitted.uns["hycnn"]["params"])
    assert record.use_rep == "X_pca" and record.layer is None and record.split_by is None
    assert record.targets == ["stimulated"] and record.holdout_fraction == 0.2
    assert record.model_params["n_iters"] == TINY_FIT["n_iters"] and not record.conditional
    # the estimator's tuple arguments come back as tuples (JSON stores lists), ready to refit
    arguments = _refit_arguments(record, "cpu")
    assert isinstance(arguments["betas"], tuple) and arguments["betas"] == TransportMap().betas
    TransportMap(**arguments)._validate_params()
    # to_uns writes what fit_transport stored (same keys, same values).
    again = record.to_uns()
    stored = kang_fitted.uns["hycnn"]["params"]
    assert list(again) == list(stored)
    for name, value in stored.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(again[name], value)
        else:
            assert again[name] == value, name
    adata = ad.AnnData(np.zeros((2, 1), np.float32))
    adata.uns["params"] = again
    adata.write_h5ad(tmp_path / "params.h5ad")
    assert FitParams.from_uns(ad.read_h5ad(tmp_path / "params.h5ad").uns["params"]) == record


def test_uns_written_before_the_holdout_rename_still_works(kang_fitted):
    adata = kang_fitted.copy()
    params = dict(adata.uns["hycnn"]["params"])
    params["validation_fraction"] = params.pop("holdout_fraction")  # as hycnn_sc 0.2 wrote it
    model_params = json.loads(params["model_params_json"])
    model_params["validation_fraction"] = model_params.pop("selection_fraction")
    params["model_params_json"] = json.dumps(model_params)
    adata.uns["hycnn"] = {**adata.uns["hycnn"], "params": params}
    record = FitParams.from_uns(params)
    assert record.holdout_fraction == 0.2 and record.model_params["selection_fraction"] == 0.1
    np.testing.assert_array_equal(predict(adata, target="stimulated").obsm["X_pca"],
                                  predict(kang_fitted, target="stimulated").obsm["X_pca"])
    pd.testing.assert_frame_equal(evaluate(adata, gene_space_metrics=False),
                                  evaluate(kang_fitted.copy(), gene_space_metrics=False))


def test_validation_fraction_is_a_deprecated_name_of_holdout_fraction(kang, kang_fitted):
    call = {k: v for k, v in TINY_FIT.items() if k != "holdout_fraction"}
    with pytest.warns(FutureWarning, match=r"validation_fraction=.*deprecated.*holdout_fraction=0.2"):
        fit_transport(kang, groupby="condition", source="control", seed=0,
                      validation_fraction=0.2, **call)
    assert kang.uns["hycnn"]["params"]["holdout_fraction"] == 0.2
    np.testing.assert_array_equal(kang.obsm["hycnn_stimulated"],
                                  kang_fitted.obsm["hycnn_stimulated"])
    with pytest.raises(TypeError, match="Pass holdout_fraction only"):
        fit_transport(kang, groupby="condition", source="control", validation_fraction=0.2,
                      **{**call, "holdout_fraction": 0.3})


# ------------------------------------------------------------------------------ predict
def test_predict_default_cells_and_gene_space(kang_fitted):
    adata = kang_fitted
    control = _control(adata)
    result = predict(adata, target="stimulated")
    assert result.n_obs == control.sum()
    np.testing.assert_array_equal(result.obs["source_cell"], adata.obs_names[control])
    assert (result.obs["condition"] == "stimulated").all()
    # The in-sample predictions written at fit time are the same map applied to the same cells.
    np.testing.assert_allclose(
        result.obsm["X_pca"], adata.obsm["hycnn_stimulated"][control], rtol=1e-5, atol=1e-5
    )
    # Gene space: back-projected through the scanpy PCA, with the fitted genes.
    assert list(result.var_names) == list(adata.var_names)
    representation = adata.uns["hycnn"]["representation"]
    expected = result.obsm["X_pca"] @ representation["pca_components"].T
    np.testing.assert_allclose(result.X, expected + representation["pca_mean"], atol=1e-4)
    assert result.uns["hycnn_prediction"]["target"] == "stimulated"
    # Only one target was fitted, so target may be left out.
    np.testing.assert_array_equal(predict(adata).obsm["X_pca"], result.obsm["X_pca"])


def test_predict_cell_selections(kang_fitted):
    adata = kang_fitted
    full = predict(adata, target="stimulated")
    by_cell = pd.DataFrame(full.obsm["X_pca"], index=full.obs["source_cell"].to_numpy())
    control = _control(adata)
    held = (adata.obs["hycnn_split"] == "held_out").to_numpy() & control
    names = list(adata.obs_names[control][:5])
    selections = {
        "held_out": ("held_out", adata.obs_names[held]),
        "mask": (held, adata.obs_names[held]),
        "names": (names, names),
        "positions": (np.flatnonzero(control)[:3], adata.obs_names[control][:3]),
    }
    for label, (cells, expected) in selections.items():
        result = predict(adata, target="stimulated", cells=cells)
        assert list(result.obs["source_cell"]) == list(expected), label
        np.testing.assert_allclose(
            result.obsm["X_pca"], by_cell.loc[list(expected)].to_numpy(), rtol=1e-5, atol=1e-5,
            err_msg=label,
        )


def test_predict_out_of_sample_query_matches_in_sample(kang_fitted):
    adata = kang_fitted
    control = _control(adata)
    in_sample = predict(adata, target="stimulated")
    # Only the control cells, in a separate object.
    query = adata[control].copy()
    out = predict(adata, target="stimulated", query=query)
    np.testing.assert_allclose(out.obsm["X_pca"], in_sample.obsm["X_pca"], rtol=1e-5, atol=1e-5)
    assert list(out.obs["source_cell"]) == list(in_sample.obs["source_cell"])
    # Without the groupby column every cell of the query is mapped.
    bare = ad.AnnData(
        X=query.X, obs=pd.DataFrame(index=query.obs_names), var=query.var,
        obsm={"X_pca": query.obsm["X_pca"]},
    )
    np.testing.assert_allclose(
        predict(adata, target="stimulated", query=bare).obsm["X_pca"], in_sample.obsm["X_pca"],
        rtol=1e-5, atol=1e-5,
    )


# ------------------------------------------------------------------------------ gene space
def test_use_rep_none_dense_sparse_and_layer_agree(kang_hvg_base):
    # In gene space some genes are constant among the control cells, so the default Gaussian
    # warm start cannot be used (test_tl_inputs checks the error); start from the identity.
    dense = kang_hvg_base.copy()
    sparse = kang_hvg_base.copy()
    sparse.X = sp.csr_matrix(sparse.X)
    layered = kang_hvg_base.copy()
    layered.layers["logcounts"] = layered.X.copy()
    layered.X = np.zeros_like(layered.X)
    results = {}
    for label, adata, layer in (("dense", dense, None), ("sparse", sparse, None),
                                ("layer", layered, "logcounts")):
        fit_transport(adata, groupby="condition", source="control", use_rep=None, layer=layer,
                      seed=0, warm_start="identity", **TINY_FIT)
        assert adata.uns["hycnn"]["params"]["layer"] == (layer or "")
        predicted = predict(adata, target="stimulated")
        assert list(predicted.var_names) == list(adata.var_names)
        np.testing.assert_array_equal(predicted.X, predicted.obsm["X_input"])
        results[label] = predicted.X
    np.testing.assert_array_equal(results["dense"], results["sparse"])
    np.testing.assert_array_equal(results["dense"], results["layer"])
    table = evaluate(sparse)
    assert set(table["space"]) == {"rep"} and set(table["method"]) == METHODS


# ------------------------------------------------------------------------------ split_by
def test_split_by_maps_within_strata(kang_fitted):
    adata = kang_fitted.copy()
    fit_transport(adata, groupby="condition", source="control", split_by="cell_type",
                  key_added="typed", warm_start="identity", **TINY_FIT)
    stored = adata.uns["typed"]
    strata = sorted(adata.obs["cell_type"].astype(str).unique())
    assert sorted(entry["stratum"] for entry in stored["maps"].values()) == strata
    assert {entry["target"] for entry in stored["maps"].values()} == {"stimulated"}
    assert set(stored["maps"]) == {f"stimulated|{s}" for s in strata}

    control = _control(adata)
    cell_type = adata.obs["cell_type"].astype(str).to_numpy()
    first, second = strata[0], strata[1]
    cells = np.flatnonzero(control & (cell_type == first))
    result = predict(adata, key="typed", target="stimulated", cells=cells)
    assert (result.obs["cell_type"] == first).all()
    values = adata.obsm["X_pca"][cells]
    own = decode_map(stored["maps"][f"stimulated|{first}"], device="cpu").transport(values)
    other = decode_map(stored["maps"][f"stimulated|{second}"], device="cpu").transport(values)
    np.testing.assert_allclose(result.obsm["X_pca"], own, rtol=1e-5, atol=1e-5)
    assert not np.allclose(result.obsm["X_pca"], other, atol=1e-3)
    np.testing.assert_allclose(adata.obsm["typed_stimulated"][cells], own, rtol=1e-5, atol=1e-5)

    query = adata[control].copy()
    query.obs["cell_type"] = query.obs["cell_type"].astype(str)
    query.obs.iloc[0, query.obs.columns.get_loc("cell_type")] = "Platelet"
    with pytest.raises(ValueError, match=r"No 'stimulated' map for cell_type = \['Platelet'\]"):
        predict(adata, key="typed", target="stimulated", query=query)

    with pytest.warns(UserWarning, match=r"Not evaluated: .*cell_type=.*larger holdout_fraction"):
        table = evaluate(adata, key="typed", gene_space_metrics=False)
    assert set(table["stratum"]) <= set(strata) and len(set(table["stratum"])) >= 2


# ------------------------------------------------------------------------------ Perturb-seq
def test_perturbseq_all_targets_in_one_call():
    import scanpy as sc

    from hycnn_sc.datasets import perturbseq_devel

    adata = perturbseq_devel()
    sc.pp.pca(adata, n_comps=N_PCS, random_state=0)
    perturbations = sorted(set(adata.obs["condition"].astype(str)) - {"control"})
    assert len(perturbations) == 33
    start = time.perf_counter()
    fit_transport(adata, groupby="condition", source="control", seed=0, **TINY_FIT)
    elapsed = time.perf_counter() - start
    assert elapsed < 30, f"fitting 33 tiny maps took {elapsed:.1f} s"
    assert sorted(adata.uns["hycnn"]["params"]["targets"]) == perturbations
    assert len(adata.uns["hycnn"]["maps"]) == 33
    assert sum(k.startswith("hycnn_") for k in adata.obsm) == 33
    # The control cells of one cell line are much narrower than all controls: still accepted.
    k562 = ((adata.obs["condition"] == "control") & (adata.obs["cell_type"] == "k562")).to_numpy()
    predicted = predict(adata, target="KLF1", cells=k562)
    assert predicted.n_obs == k562.sum() and list(predicted.var_names) == list(adata.var_names)
    table = evaluate(adata, gene_space_metrics=False)
    assert sorted(table["target"].unique()) == perturbations
    per_target = table.groupby("target")["method"].apply(set)
    assert all(methods == METHODS for methods in per_target)


# ------------------------------------------------------------------------------ evaluate
def test_evaluate_table_groups_and_storage(kang_fitted, tmp_path):
    adata = kang_fitted.copy()
    table = evaluate(adata, by="cell_type")
    assert list(table.columns) == EVALUATION_COLUMNS
    assert set(table["method"]) == METHODS
    assert set(table["space"]) == {"rep", "gene"}
    assert "all" in set(table["group"]) and len(set(table["group"])) > 2
    assert set(table["group"]) - {"all"} <= set(adata.obs["cell_type"].astype(str))
    overall = table[(table["group"] == "all") & (table["space"] == "rep")]
    assert list(overall["method"]) == ["hycnn", "identity", "mean_shift", "gaussian_ot", "observed"]
    metrics = table[["mmd", "energy_distance", "r2_mean", "signature_l2"]].to_numpy()
    assert np.isfinite(metrics).all()
    held = (adata.obs["hycnn_split"] == "held_out").to_numpy()
    n_held_target = int((held & ~_control(adata)).sum())
    assert (overall["n_observed"] == n_held_target).all()
    pd.testing.assert_frame_equal(adata.uns["hycnn"]["evaluation"], table)

    adata.write_h5ad(tmp_path / "evaluated.h5ad")
    stored = ad.read_h5ad(tmp_path / "evaluated.h5ad").uns["hycnn"]["evaluation"]
    pd.testing.assert_frame_equal(stored.reset_index(drop=True), table, check_dtype=False)


def test_gaussian_warm_start_works_in_gene_space_and_small_strata():
    """Fewer cells than features (and constant genes) no longer break the default warm start."""
    import scanpy as sc

    import hycnn_sc as hs

    adata = hs.datasets.kang_ifnb1k()[::3].copy()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=300)
    adata = adata[:, adata.var["highly_variable"]].copy()
    hs.tl.fit_transport(adata, groupby="condition", source="control", use_rep=None,
                        n_iters=5, hidden=(8,), warm_start_iters=5, seed=0)
    predicted = adata.obsm["hycnn_stimulated"]
    rows = (adata.obs["condition"] == "control").to_numpy()
    assert np.isfinite(predicted[rows]).all()


def test_transport_map_accessor_returns_the_stored_map(kang_fitted):
    from hycnn_sc.tl import transport_map

    tmap = transport_map(kang_fitted)
    stored = predict(kang_fitted, target="stimulated")
    np.testing.assert_array_equal(
        tmap.transport(kang_fitted.obsm["X_pca"][(kang_fitted.obs["condition"] == "control").to_numpy()]),
        stored.obsm["X_pca"],
    )
    assert tmap.frame_ == "global" and 0 <= tmap.residual_weight_ <= 1
    assert "linear_score_global_0" in tmap.selection_
    with pytest.raises(KeyError, match=r"No map for target 'nope'; fitted targets are \['stimulated'\]"):
        transport_map(kang_fitted, target="nope")
    with pytest.raises(KeyError, match=r"No 'stimulated' map for stratum 'B'"):
        transport_map(kang_fitted, stratum="B")
    with pytest.raises(KeyError, match=r"No fitted maps under adata.uns\['other'\]"):
        transport_map(kang_fitted, key="other")
