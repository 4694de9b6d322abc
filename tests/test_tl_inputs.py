"""Bad input to ``hycnn_sc.tl``: a clear error before any training, and the AnnData untouched.

Every failing call is checked for the exception type, a fragment of its message that names the
argument or value and the fix, and that ``adata`` (obs, obsm, uns, layers, X) is exactly as it
was. ``TransportMap.fit_many`` is replaced by a trap in those tests, so an error raised only
after training started fails the test. The last part checks the data kinds that must work:
sparse and dense, float32/float64/integer, views and backed AnnData.
"""

from __future__ import annotations

import hashlib
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import TINY_FIT

import hycnn_sc.tl._inputs as tl_inputs
from hycnn_sc.models.transport import TransportMap
from hycnn_sc.tl import evaluate, fit_transport, predict


# ------------------------------------------------------------------------------ snapshots
def _fingerprint(value):
    """A comparable summary of anything stored in an AnnData (arrays by content hash)."""
    if isinstance(value, dict) or (hasattr(value, "items") and not isinstance(value, pd.DataFrame)):
        return {str(k): _fingerprint(v) for k, v in value.items()}
    if isinstance(value, pd.DataFrame):
        return ("frame", hashlib.sha1(value.to_csv().encode()).hexdigest(), tuple(value.dtypes))
    if sp.issparse(value):
        value = value.tocsr()
        return ("sparse", value.shape, value.dtype.str,
                *(hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()
                  for a in (value.data, value.indices, value.indptr)))
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OUS":
            return ("text", value.shape, tuple(map(str, value.ravel())))
        return ("array", value.shape, value.dtype.str,
                hashlib.sha1(np.ascontiguousarray(value).tobytes()).hexdigest())
    return repr(value)


def _x(adata):
    if adata.X is None:
        return None
    if adata.isbacked:
        return adata.X[np.arange(adata.n_obs)]
    return adata.X


def snapshot(adata) -> dict:
    """Everything a tl call could modify: obs (columns, values, dtypes), obsm, uns, layers, X."""
    return {
        "obs": adata.obs.copy(deep=True),
        "fingerprint": {
            "shape": adata.shape,
            "is_view": adata.is_view,
            "obs_names": tuple(adata.obs_names),
            "var_names": tuple(adata.var_names),
            "obsm": {k: _fingerprint(np.asarray(v)) for k, v in adata.obsm.items()},
            "uns": _fingerprint(adata.uns),
            "layers": {k: _fingerprint(v) for k, v in adata.layers.items()},
            "X": _fingerprint(_x(adata)),
        },
    }


def assert_unchanged(adata, before: dict) -> None:
    pd.testing.assert_frame_equal(adata.obs, before["obs"])
    assert snapshot(adata)["fingerprint"] == before["fingerprint"]


@pytest.fixture
def no_training(monkeypatch):
    """Make any training attempt fail loudly: errors must come before it."""

    def trap(*args, **kwargs):
        raise AssertionError("TransportMap.fit_many was called: the error came after training began")

    monkeypatch.setattr(TransportMap, "fit_many", trap)


# ------------------------------------------------------------------------------ fit_transport
def _nan_rows(adata, n=3, value=np.nan):
    pca = np.array(adata.obsm["X_pca"], copy=True)
    pca[np.flatnonzero((adata.obs["condition"] == "control").to_numpy())[:n]] = value
    adata.obsm["X_pca"] = pca


def _relabel(adata, n):
    labels = adata.obs["condition"].astype(str).to_numpy().copy()
    labels[np.flatnonzero(labels == "stimulated")[:n]] = "tiny"
    adata.obs["condition"] = pd.Categorical(labels)


def _set_nan_labels(adata):
    labels = adata.obs["condition"].astype(object).to_numpy().copy()
    labels[:3] = np.nan
    adata.obs["condition"] = pd.Categorical(labels)


def _strings(adata):
    adata.obsm["X_text"] = np.full((adata.n_obs, 3), "a")


def _objects(adata):
    adata.obsm["X_obj"] = np.asarray(adata.obsm["X_pca"], dtype=object)


def _no_pca(adata):
    del adata.obsm["X_pca"]


def _add(column, values):
    def mutate(adata):
        adata.obs[column] = values(adata)
    return mutate


def _obsm(name, values):
    def mutate(adata):
        adata.obsm[name] = values(adata)
    return mutate


# id: (mutation of adata or None, fit_transport arguments, exception, message fragment regex)
FIT_CASES = {
    # groupby / labels
    "groupby missing": (None, dict(groupby="treatment"), KeyError,
                        r"groupby='treatment' is not a column of adata.obs; available: \["),
    "groupby continuous": (_add("score", lambda a: np.random.default_rng(0).normal(size=a.n_obs)),
                           dict(groupby="score"), ValueError,
                           r"groupby='score'.*looks continuous \(240 distinct float values.*astype"),
    "groupby NaN labels": (_set_nan_labels, {}, ValueError,
                           r"groupby='condition'.*3 missing \(NaN\) label.*notna\(\)"),
    "source absent": (None, dict(source="ctrl"), KeyError,
                      r"source='ctrl' is not a label of obs\['condition'\]; labels: \[.*'control'"),
    "target absent": (None, dict(target="IFNG"), KeyError,
                      r"target label\(s\) \['IFNG'\] not in obs\['condition'\]; labels"),
    "target is source": (None, dict(target="control"), ValueError,
                         r"target includes the source label 'control'.*leave it out"),
    "duplicate targets": (None, dict(target=["stimulated", "stimulated"]), ValueError,
                          r"target lists \['stimulated'\] more than once"),
    "empty target list": (None, dict(target=[]), ValueError, r"target is empty; pass a label"),
    "group of 1 cell": (lambda a: _relabel(a, 1), dict(target="tiny"), ValueError,
                        r"at least 4 cells.*'tiny' has 1\b"),
    "group of 3 cells": (lambda a: _relabel(a, 3), dict(target="tiny"), ValueError,
                         r"at least 4 cells.*'tiny' has 3\b.*target="),
    "split_by is groupby": (None, dict(split_by="condition"), ValueError,
                            r"split_by='condition' equals groupby"),
    "split_by missing": (None, dict(split_by="celltype"), KeyError,
                         r"split_by='celltype' is not a column"),
    # representation
    "use_rep missing": (_no_pca, {}, KeyError,
                        r"use_rep='X_pca' is not in adata.obsm.*Run scanpy.pp.pca\(adata\) first"),
    "layer missing": (None, dict(use_rep=None, layer="counts"), KeyError,
                      r"layer='counts' is not in adata.layers \(keys: \[\]\)"),
    "use_rep and layer": (None, dict(layer="counts"), ValueError,
                          r"not both.*pass use_rep=None, layer='counts'"),
    "representation NaN": (_nan_rows, {}, ValueError,
                           r"obsm\['X_pca'\] holds NaN or inf values in 3 of 240 cells"),
    "representation inf": (lambda a: _nan_rows(a, 2, np.inf), {}, ValueError,
                           r"NaN or inf values in 2 of 240 cells.*remove those cells"),
    "constant representation": (_obsm("X_const", lambda a: np.ones((a.n_obs, 4))),
                                dict(use_rep="X_const"), ValueError,
                                r"obsm\['X_const'\] is constant across the 240 cells"),
    "object obsm": (_objects, dict(use_rep="X_obj"), TypeError,
                    r"obsm\['X_obj'\] has dtype object; it must hold real numbers"),
    "string obsm": (_strings, dict(use_rep="X_text"), TypeError,
                    r"obsm\['X_text'\] has dtype <U1; it must hold real numbers"),
    "use_rep not a str": (None, dict(use_rep=["X_pca"]), TypeError, r"use_rep must be an obsm key"),
    # hyper-parameters (fit_transport's own and **model_kwargs)
    "hidden=(0,)": (None, dict(hidden=(0,)), ValueError,
                    r"hidden must hold positive integer widths, got \(0,\)"),
    "hidden=(-3,)": (None, dict(hidden=(-3,)), ValueError,
                     r"hidden must hold positive integer widths, got \(-3,\)"),
    "tau=-1": (None, dict(tau=-1), ValueError, r"tau must be >= 0, got -1"),
    "tau with icnn": (None, dict(model="icnn", tau=1.0), ValueError,
                      r"tau=1.0 only applies to model='hycnn'"),
    "n_iters=0": (None, dict(n_iters=0), ValueError, r"n_iters must be > 0, got 0"),
    "batch_size=0": (None, dict(batch_size=0), ValueError, r"batch_size must be > 0, got 0"),
    "model='foo'": (None, dict(model="foo"), ValueError,
                    r"Unknown model 'foo'; choose one of \['hycnn', 'icnn'\]"),
    "device='tpu'": (None, dict(device="tpu"), ValueError, r"Unknown device 'tpu': use 'auto', 'cpu'"),
    "typo n_iter": (None, dict(n_iter=5), TypeError,
                    r"'n_iter' \(did you mean 'n_iters'\?\).*valid ones are \[.*'hidden'"),
    "holdout_fraction=1.5": (None, dict(holdout_fraction=1.5), ValueError,
                             r"holdout_fraction must be a number in \[0, 1\), got 1.5"),
    "holdout_fraction=-0.1": (None, dict(holdout_fraction=-0.1), ValueError,
                              r"holdout_fraction must be a number in \[0, 1\), got -0.1"),
    "holdout_fraction='0.2'": (None, dict(holdout_fraction="0.2"), ValueError,
                               r"holdout_fraction must be a number in \[0, 1\), got '0.2'"),
    "holdout_fraction=True": (None, dict(holdout_fraction=True), ValueError,
                              r"holdout_fraction must be a number in \[0, 1\), got True"),
    "model_kwargs dict": (None, dict(model_kwargs={"selection_fraction": 0.1}), TypeError,
                          r"not as model_kwargs=\{...\}; holdout_fraction is fit_transport's own"),
    "selection_fraction=1.5": (None, dict(selection_fraction=1.5), ValueError,
                               r"selection_fraction must be a number in \[0, 1\), got 1.5"),
    "seed=-1": (None, dict(seed=-1), ValueError, r"seed must be a non-negative int or None, got -1"),
    "torch_compile='yes'": (None, dict(torch_compile="yes"), ValueError,
                            r"torch_compile must be True, False or 'auto', got 'yes'"),
    "torch_compile with tau_schedule": (None, dict(torch_compile=True, tau_schedule="cosine"),
                                        ValueError, r"torch_compile=True cannot be combined with tau_schedule"),
    "key_added with /": (None, dict(key_added="a/b"), ValueError,
                         r"key_added must be a non-empty string without '/'"),
}


@pytest.mark.parametrize("case", list(FIT_CASES), ids=list(FIT_CASES))
def test_fit_transport_bad_input(case, kang, no_training):
    mutate, arguments, error, fragment = FIT_CASES[case]
    if mutate is not None:
        mutate(kang)
    before = snapshot(kang)
    call = dict(groupby="condition", source="control", **TINY_FIT)
    call.update(arguments)
    with pytest.raises(error, match=fragment):
        fit_transport(kang, **call)
    assert_unchanged(kang, before)


def test_renamed_model_keywords_reach_the_map_under_their_new_names():
    from hycnn_sc.tl._fit import _model_params

    with pytest.warns(FutureWarning, match=r"validation_every=.*selection_every"):
        params = _model_params("hycnn", 0, {"validation_every": 5})
    assert params["selection_every"] == 5 and "validation_every" not in params
    # fit_transport takes validation_fraction as its own (deprecated) name; reaching the map's
    # arguments directly, it is refused with the two names that replace it.
    with pytest.raises(TypeError, match=r"former name of fit_transport's holdout_fraction.*"
                                        r"selection_fraction"):
        _model_params("hycnn", 0, {"validation_fraction": 0.2})


def test_refit_failure_keeps_previous_results(kang_fitted, no_training):
    adata = kang_fitted.copy()
    before = snapshot(adata)
    with pytest.raises(KeyError, match="IFNG"):
        fit_transport(adata, groupby="condition", source="control", target="IFNG", **TINY_FIT)
    with pytest.raises(ValueError, match="n_iters"):
        fit_transport(adata, groupby="condition", source="control", n_iters=0)
    assert_unchanged(adata, before)


def test_failure_while_writing_rolls_back(kang_fitted, monkeypatch):
    """A failure in the very last step (writing) restores the previous results."""
    import hycnn_sc.tl._fit as fit_module

    adata = kang_fitted.copy()
    adata.obs["group"] = np.where(adata.obs["condition"] == "control", "ctrl", "stim")
    before = snapshot(adata)
    original = pd.Categorical

    def failing_categorical(*args, **kwargs):
        if kwargs.get("categories") == ["train", "held_out"]:
            raise MemoryError("simulated failure while writing")
        return original(*args, **kwargs)

    monkeypatch.setattr(fit_module.pd, "Categorical", failing_categorical)
    with pytest.raises(MemoryError, match="simulated"):
        fit_transport(adata, groupby="group", source="ctrl", **TINY_FIT)
    monkeypatch.undo()
    assert_unchanged(adata, before)


# ------------------------------------------------------------------------------ predict
def _query(adata):
    return adata[(adata.obs["condition"] == "control").to_numpy()].copy()


def _tamper(path, action):
    def mutate(adata, query):
        *parents, last = path
        node = adata.uns
        for name in parents:
            node = node[name]
        if action == "delete":
            del node[last]
        else:
            node[last] = action
    return mutate


def _rename_genes(adata, query):
    query.var_names = [f"gene{i}" for i in range(query.n_vars)]


def _scale(factor):
    def mutate(adata, query):
        query.obsm["X_pca"] = np.asarray(query.obsm["X_pca"]) * factor
    return mutate


def _fewer_pcs(adata, query):
    query.obsm["X_pca"] = np.asarray(query.obsm["X_pca"])[:, :5]


MAPS = ("hycnn", "maps", "stimulated")
# id: (mutation of (adata, query) or None, use the query?, predict arguments, exception, regex)
PREDICT_CASES = {
    "unknown key": (None, False, dict(key="nope"), KeyError,
                    r"No fitted maps under adata.uns\['nope'\]: run hycnn_sc.tl.fit_transport"
                    r"\(adata, ..., key_added='nope'\) first \(fitted keys here: \['hycnn'\]\)"),
    "unknown target": (None, False, dict(target="IFNG"), KeyError,
                       r"No map for target 'IFNG'; fitted targets are \['stimulated'\]"),
    "query n features": (_fewer_pcs, True, {}, ValueError,
                         r"new cells has 5 features, the maps were fitted on 10"),
    "query var_names": (_rename_genes, True, {}, ValueError,
                        r"var_names differ .*have 14053 genes, the fitted data 14053, 0 shared.*"
                        r"query\[:, fitted_genes\]"),
    "query scaled 100x": (_scale(100.0), True, {}, ValueError,
                          r"farther from the fitted control cells' mean.*preprocessing"),
    "query scaled 0.01x": (_scale(0.01), True, {}, ValueError,
                           r"spread 0.01x as wide.*preprocessing \(normalisation"),
    "weight deleted": (_tamper((*MAPS, "f", "input_weight"), "delete"), False, {}, ValueError,
                       r"Stored map 'stimulated' is incomplete or corrupted \(ValueError: Error\(s\) "
                       r"in loading state_dict for HyCNN: Missing key\(s\) in state_dict: "
                       r"\"input_weight\"\); .*run hycnn_sc.tl.fit_transport again"),
    "state_json corrupt": (_tamper((*MAPS, "state_json"), "{not json"), False, {}, ValueError,
                           r"Stored map 'stimulated' is incomplete or corrupted \(JSONDecodeError"
                           r".*fit_transport again"),
    "state_json not a dict": (_tamper((*MAPS, "state_json"), "[1, 2]"), False, {}, ValueError,
                              r"state_json is not a JSON object\).*fit_transport again"),
    "schema_version 99": (_tamper(("hycnn", "params", "schema_version"), 99), False, {},
                          ValueError, r"schema_version 99, this hycnn_sc reads up to 1; upgrade"),
    "params entry deleted": (_tamper(("hycnn", "params", "n_features"), "delete"), False, {},
                             ValueError, r"incomplete or was modified \(missing \['n_features'\]\)"),
    "uns not ours": (_tamper(("hycnn",), {"foo": 1}), False, {}, ValueError,
                     r"adata.uns\['hycnn'\] was not written by hycnn_sc.tl.fit_transport"),
    "uns of scanpy": (None, False, dict(key="pca"), ValueError,
                      r"adata.uns\['pca'\] was not written by hycnn_sc"),
    "device='tpu'": (None, False, dict(device="tpu"), ValueError, r"Unknown device 'tpu'"),
    "batch_size=0": (None, False, dict(batch_size=0), ValueError, r"batch_size must be > 0"),
    "held_out out of sample": (lambda a, q: q.obs.drop(columns="hycnn_split", inplace=True),
                               True, dict(cells="held_out"), KeyError,
                               r"cells='held_out' needs obs\['hycnn_split'\]"),
    "mask length": (None, False, dict(cells=np.ones(5, bool)), ValueError,
                    r"boolean cells mask needs one entry per cell \(240\), got 5"),
    "unknown names": (None, False, dict(cells=["nope"]), KeyError,
                      r"cells holds names not in obs_names, e.g. \['nope'\]"),
    "no source cells": (None, True, dict(cells=None), ValueError, r"pass cells="),
}


@pytest.mark.parametrize("case", list(PREDICT_CASES), ids=list(PREDICT_CASES))
def test_predict_bad_input(case, kang_fitted):
    mutate, use_query, arguments, error, fragment = PREDICT_CASES[case]
    adata = kang_fitted.copy()
    query = _query(adata) if use_query else None
    if case == "no source cells":
        query = adata[(adata.obs["condition"] == "stimulated").to_numpy()].copy()
    if mutate is not None:
        mutate(adata, query)
    before = snapshot(adata)
    before_query = snapshot(query) if query is not None else None
    call = dict(target="stimulated", query=query)
    call.update(arguments)
    with pytest.raises(error, match=fragment):
        predict(adata, **call)
    assert_unchanged(adata, before)
    if query is not None:
        assert_unchanged(query, before_query)


def test_predict_needs_target_when_several_are_fitted(kang_fitted):
    adata = kang_fitted.copy()
    adata.uns["hycnn"]["maps"]["other"] = dict(adata.uns["hycnn"]["maps"]["stimulated"])
    adata.uns["hycnn"]["maps"]["other"]["target"] = "other"
    with pytest.raises(ValueError, match=r"Pass target=, one of the fitted targets \['other', "):
        predict(adata)


def test_evaluate_bad_input(kang_fitted):
    adata = kang_fitted.copy()
    before = snapshot(adata)
    with pytest.raises(KeyError, match=r"by='celltype' is not a column of adata.obs; available"):
        evaluate(adata, by="celltype")
    with pytest.raises(KeyError, match=r"No fitted maps under adata.uns\['nope'\]"):
        evaluate(adata, key="nope")
    with pytest.raises(ValueError, match=r"max_cells must be an int >= 2, got 1"):
        evaluate(adata, max_cells=1)
    del adata.obs["hycnn_split"]
    with pytest.raises(KeyError, match=r"obs\['hycnn_split'\] is missing"):
        evaluate(adata)
    adata.obs["hycnn_split"] = kang_fitted.obs["hycnn_split"]
    assert_unchanged(adata, before)


def test_batch_size_larger_than_data_and_no_held_out_cells(kang):
    """Batches are drawn with replacement, so they may exceed the groups; without held-out
    cells evaluate and cells='held_out' say how to get some."""
    fit_transport(kang, groupby="condition", source="control",
                  **{**TINY_FIT, "batch_size": 1000, "holdout_fraction": 0})
    assert np.isfinite(kang.obsm["hycnn_stimulated"][(kang.obs["condition"] == "control")]).all()
    assert set(kang.obs["hycnn_split"].dropna()) == {"train"}
    with pytest.raises(ValueError, match=r"Nothing to evaluate.*holdout_fraction=0.2.*holdout="):
        evaluate(kang)
    with pytest.raises(ValueError, match=r"cells='held_out' selects no cells.*holdout_fraction"):
        predict(kang, target="stimulated", cells="held_out")


# ------------------------------------------------------------------------------ data kinds
GENE_SPACE = dict(use_rep=None, warm_start="identity", seed=0, **TINY_FIT)


@pytest.fixture(scope="module")
def raw_counts(kang_hvg_base):
    """Integer UMI counts of the same cells and 50 genes as ``kang_hvg_base``."""
    from hycnn_sc.datasets import kang_ifnb1k

    raw = kang_ifnb1k()
    raw = raw[kang_hvg_base.obs_names, kang_hvg_base.var_names]
    return np.asarray(raw.X.toarray()).astype(np.int32)


def test_data_kinds_sparse_dense_float32_float64_integer(kang_hvg_base, raw_counts):
    kinds = {
        "dense float32": kang_hvg_base.X,
        "dense float64": kang_hvg_base.X.astype(np.float64),
        "csr float32": sp.csr_matrix(kang_hvg_base.X),
        "csr float64": sp.csr_matrix(kang_hvg_base.X.astype(np.float64)),
        "integer counts": raw_counts,
        "csr counts": sp.csr_matrix(raw_counts.astype(np.float32)),
    }
    predictions = {}
    for kind, matrix in kinds.items():
        adata = kang_hvg_base.copy()
        adata.X = matrix
        counts = "counts" in kind
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit_transport(adata, groupby="condition", source="control", **GENE_SPACE)
        raw_warnings = [w for w in caught if "looks like raw counts" in str(w.message)]
        assert len(raw_warnings) == int(counts), kind
        if counts:
            assert "scanpy.pp.log1p" in str(raw_warnings[0].message)
        predicted = predict(adata, target="stimulated")
        assert np.isfinite(predicted.X).all(), kind
        predictions[kind] = predicted.X
    # The representation is read as float32 whatever its storage: identical maps.
    for kind in ("dense float64", "csr float32", "csr float64"):
        np.testing.assert_array_equal(predictions[kind], predictions["dense float32"], err_msg=kind)
    np.testing.assert_array_equal(predictions["integer counts"], predictions["csr counts"])


def test_view_is_made_actual_and_parent_untouched(kang_base):
    parent = kang_base.copy()
    before_parent = snapshot(parent)
    keep = np.ones(parent.n_obs, bool)
    keep[:10] = False
    view = parent[keep]

    # A failing call leaves the view a view.
    before_view = snapshot(view)
    with pytest.raises(KeyError, match="source='ctrl'"):
        fit_transport(view, groupby="condition", source="ctrl", **TINY_FIT)
    assert_unchanged(view, before_view)

    # copy=True: the copy is an actual AnnData, the view stays a view.
    with warnings.catch_warnings():
        warnings.simplefilter("error", ad.ImplicitModificationWarning)
        copied = fit_transport(view, groupby="condition", source="control", copy=True, **TINY_FIT)
    assert not copied.is_view and "hycnn_stimulated" in copied.obsm
    assert_unchanged(view, before_view)

    # copy=False: documented warning, no ImplicitModificationWarning, results on the object.
    with warnings.catch_warnings():
        warnings.simplefilter("error", ad.ImplicitModificationWarning)
        with pytest.warns(UserWarning, match=r"received a view.*parent object is not changed"):
            assert fit_transport(view, groupby="condition", source="control", **TINY_FIT) is None
    assert not view.is_view and view.n_obs == parent.n_obs - 10
    assert "hycnn" in view.uns and "hycnn_split" in view.obs
    np.testing.assert_array_equal(view.obsm["hycnn_stimulated"], copied.obsm["hycnn_stimulated"])
    assert_unchanged(parent, before_parent)


def test_backed_anndata(kang_hvg_base, tmp_path, monkeypatch):
    in_memory = kang_hvg_base.copy()
    in_memory.X = sp.csr_matrix(in_memory.X)
    path = tmp_path / "backed.h5ad"
    in_memory.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    assert backed.isbacked

    # Refused before training, nothing written: copy=True, and views of backed objects.
    before = snapshot(backed)
    with pytest.raises(ValueError, match=r"copy=True cannot copy a backed AnnData.*to_memory\(\)"):
        fit_transport(backed, groupby="condition", source="control", copy=True, **GENE_SPACE)
    view = backed[:100]
    with pytest.raises(ValueError, match=r"cannot write to a view of a backed AnnData"):
        fit_transport(view, groupby="condition", source="control", **GENE_SPACE)
    assert_unchanged(backed, before)

    # copy=False works, reading X in chunks of rows; identical to the in-memory fit.
    monkeypatch.setattr(tl_inputs, "READ_CHUNK", 16)
    fit_transport(backed, groupby="condition", source="control", **GENE_SPACE)
    fit_transport(in_memory, groupby="condition", source="control", **GENE_SPACE)
    assert backed.isbacked
    np.testing.assert_array_equal(backed.obsm["hycnn_stimulated"], in_memory.obsm["hycnn_stimulated"])
    np.testing.assert_array_equal(
        predict(backed, target="stimulated").X, predict(in_memory, target="stimulated").X
    )
    # Repeated and unordered positions are read correctly from the h5 file too.
    control = np.flatnonzero((backed.obs["condition"] == "control").to_numpy())
    cells = control[[5, 1, 5, 0]]
    np.testing.assert_array_equal(
        predict(backed, target="stimulated", cells=cells).X,
        predict(in_memory, target="stimulated", cells=cells).X,
    )
    table = evaluate(backed)
    assert set(table["method"]) == {"hycnn", "identity", "mean_shift", "gaussian_ot", "observed"}
    # The results can be saved to a new file; the backed file itself is unchanged.
    backed.write_h5ad(tmp_path / "results.h5ad")
    assert "hycnn" in ad.read_h5ad(tmp_path / "results.h5ad").uns
    assert "hycnn" not in ad.read_h5ad(path).uns


@pytest.mark.parametrize("sparse", [False, True])
def test_mean_rows_matches_numpy_in_chunks(monkeypatch, sparse):
    """Chunked column means over chosen rows and columns equal numpy's, dense or sparse."""
    rng = np.random.default_rng(0)
    dense = rng.poisson(1.0, size=(23, 6)).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(dense) if sparse else dense)
    adata.layers["counts"] = dense * 2
    monkeypatch.setattr(tl_inputs, "READ_CHUNK", 5)
    rows, columns = np.array([7, 2, 19, 3, 11, 0, 22]), np.array([1, 4])
    np.testing.assert_allclose(tl_inputs.mean_rows(adata, None, None), dense.mean(0), rtol=1e-6)
    np.testing.assert_allclose(tl_inputs.mean_rows(adata, rows, None, columns),
                               dense[np.ix_(rows, columns)].mean(0), rtol=1e-6)
    np.testing.assert_allclose(tl_inputs.mean_rows(adata, rows, "counts"),
                               2 * dense[rows].mean(0), rtol=1e-6)
