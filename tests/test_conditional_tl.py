"""``fit_transport(conditional=True)``: one network for all conditions, on AnnData."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from test_tl_inputs import assert_unchanged, snapshot

import hycnn_sc as hs
from hycnn_sc.models.conditional_transport import FixedConditionMap

FAST = dict(n_iters=20, warm_start_iters=10, hidden=(8, 8), batch_size=32)
SHIFTS = {"A": [1.5, 0, 0, 0], "B": [0, 1.5, 0, 0], "A+B": [1.5, 1.5, 0, 0], "C": [0, 0, 1.5, 0]}


def _perturbation_data(seed: int = 0) -> ad.AnnData:
    """Two cell lines; singles A, B, C, the double A+B in line L1 only; a dose column."""
    rng = np.random.default_rng(seed)
    blocks, obs = [], []
    for line, offset in (("L1", 0.0), ("L2", 2.0)):
        for label, shift in [("control", [0, 0, 0, 0]), *SHIFTS.items()]:
            if label == "A+B" and line == "L2":
                continue
            n = 60
            blocks.append(rng.normal(size=(n, 4)) + offset + np.asarray(shift))
            obs += [{"condition": label, "line": line, "dose": 0.0 if label == "control" else 1.0}] * n
    values = np.concatenate(blocks).astype(np.float32)
    obs = pd.DataFrame(obs, index=[f"cell{i}" for i in range(len(values))])
    adata = ad.AnnData(X=np.zeros((len(values), 3), np.float32), obs=obs)
    adata.obsm["X_rep"] = values
    return adata


@pytest.fixture(scope="module")
def fitted():
    adata = _perturbation_data()
    hs.tl.fit_transport(adata, groupby="condition", source="control", use_rep="X_rep",
                        conditional=True, covariates=["line"], holdout_fraction=0.2, **FAST)
    return adata


def test_fit_stores_one_network_and_every_condition(fitted, tmp_path):
    stored = fitted.uns["hycnn"]
    assert stored["params"]["conditional"] is True
    assert list(stored["params"]["covariates"]) == ["line"]
    assert "A+B|L1" in stored["maps"] and "A|L2" in stored["maps"]
    # Predictions for every control cell, both lines (the double too: a conditional map can).
    controls = (fitted.obs["condition"] == "control").to_numpy()
    assert np.isfinite(fitted.obsm["hycnn_A+B"][controls]).all()
    assert np.isnan(fitted.obsm["hycnn_A+B"][~controls]).all()
    path = tmp_path / "fitted.h5ad"
    fitted.write_h5ad(path)
    again = ad.read_h5ad(path)
    first = hs.tl.predict(fitted, target="A+B")
    second = hs.tl.predict(again, target="A+B")
    np.testing.assert_array_equal(first.obsm["X_rep"], second.obsm["X_rep"])
    assert list(first.obs["line"].unique()) == ["L1", "L2"]


def test_predict_unseen_combination_and_new_context(fitted):
    # B+C was never measured; its singles were: the order of singles does not matter.
    one = hs.tl.predict(fitted, target="B+C")
    two = hs.tl.predict(fitted, target="C+B")
    np.testing.assert_allclose(one.obsm["X_rep"], two.obsm["X_rep"], atol=1e-5)
    query = fitted[(fitted.obs["condition"] == "control") & (fitted.obs["line"] == "L2")].copy()
    query.obs["line"] = "L3"  # a line never seen: encoded from its own control cells
    predicted = hs.tl.predict(fitted, query=query, target="A")
    assert np.isfinite(predicted.obsm["X_rep"]).all()
    tiny = query[:5].copy()
    with pytest.warns(UserWarning, match="fewer than 10 source cells"):
        small = hs.tl.predict(fitted, query=tiny, target="A")
    assert np.isnan(small.obsm["X_rep"]).all()


def test_evaluate_transport_map_and_plots_on_conditional_maps(fitted):
    table = hs.tl.evaluate(fitted, target="A", gene_space_metrics=False)
    assert set(table["stratum"]) == {"L1", "L2"}
    assert {"hycnn", "mean_shift", "gaussian_ot"} <= set(table["method"])
    tmap = hs.tl.transport_map(fitted, target="A", stratum="L2")
    assert isinstance(tmap, FixedConditionMap) and tmap.linear_kind_ == "seen"
    hs.pl.training(fitted, target="A", show=False)
    hs.pl.transport(fitted, target="A+B", basis="X_rep", show=False)
    hs.pl.response(fitted, target="A", show=False)
    with pytest.raises(ValueError, match="holdout"):
        hs.tl.evaluate(fitted, holdout="line")


def test_doses():
    adata = _perturbation_data(1)
    hs.tl.fit_transport(adata, groupby="condition", source="control", use_rep="X_rep",
                        conditional=True, dose_key="dose", **FAST)
    assert adata.uns["hycnn"]["params"]["dose_key"] == "dose"
    assert np.isfinite(hs.tl.predict(adata, target="A", dose=1.0).obsm["X_rep"]).all()
    with pytest.raises(ValueError, match="pass dose="):
        hs.tl.predict(adata, target="A")


# ---------------------------------------------------------------------- bad input
def test_never_seen_single_is_named(fitted):
    before = snapshot(fitted)
    with pytest.raises(ValueError, match="'Z', which was never seen"):
        hs.tl.predict(fitted, target="A+Z")
    assert_unchanged(fitted, before)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"covariates": ["nope"]}, KeyError, "covariates='nope' is not a column"),
        ({"covariates": ["line"], "split_by": "line"}, ValueError, "cannot be combined with split_by"),
        ({"groups": "line"}, ValueError, "does not take groups"),
        ({"dose_key": "line"}, TypeError, "must be numeric"),
        ({"dose_key": "missing"}, KeyError, "dose_key='missing' is not a column"),
        ({"covariates": ["condition"]}, ValueError, "holds groupby"),
        ({"combination_sep": ""}, ValueError, "combination_sep must be a non-empty string"),
        ({"conditional": "yes"}, TypeError, "conditional must be True or False"),
        ({"n_iter": 3}, TypeError, "did you mean 'n_iters'"),
    ],
)
def test_bad_conditional_arguments(kwargs, error, match):
    adata = _perturbation_data()
    before = snapshot(adata)
    options = {"conditional": True, **kwargs}
    with pytest.raises(error, match=match):
        hs.tl.fit_transport(adata, groupby="condition", source="control", use_rep="X_rep", **options)
    assert_unchanged(adata, before)


def test_covariate_with_missing_values_and_nan_dose():
    adata = _perturbation_data()
    adata.obs["line"] = adata.obs["line"].astype(object)
    adata.obs.iloc[3, adata.obs.columns.get_loc("line")] = np.nan
    before = snapshot(adata)
    with pytest.raises(ValueError, match="missing"):
        hs.tl.fit_transport(adata, groupby="condition", source="control", use_rep="X_rep",
                            conditional=True, covariates=["line"])
    assert_unchanged(adata, before)
    adata = _perturbation_data()
    adata.obs.iloc[0, adata.obs.columns.get_loc("dose")] = np.nan
    before = snapshot(adata)
    with pytest.raises(ValueError, match="missing or infinite"):
        hs.tl.fit_transport(adata, groupby="condition", source="control", use_rep="X_rep",
                            conditional=True, dose_key="dose")
    assert_unchanged(adata, before)


def test_conditional_only_arguments_need_conditional():
    adata = _perturbation_data()
    before = snapshot(adata)
    with pytest.raises(ValueError, match="only apply to conditional=True"):
        hs.tl.fit_transport(adata, groupby="condition", source="control", use_rep="X_rep",
                            covariates=["line"])
    assert_unchanged(adata, before)


def test_query_without_covariate_column(fitted):
    query = fitted[fitted.obs["condition"] == "control"].copy()
    del query.obs["line"]
    with pytest.raises(KeyError, match="line"):
        hs.tl.predict(fitted, query=query, target="A")
    with pytest.raises(ValueError, match="only applies to conditional maps"):
        hs.tl.predict(_unconditional(), target="stimulated", dose=1.0)


def _unconditional():
    adata = _perturbation_data()
    adata = adata[adata.obs["condition"].isin(["control", "A"])].copy()
    adata.obs["condition"] = adata.obs["condition"].replace({"A": "stimulated"})
    hs.tl.fit_transport(adata, groupby="condition", source="control", use_rep="X_rep", **FAST)
    return adata
