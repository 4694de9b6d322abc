"""``hycnn_sc.tl.predict``: apply stored maps to control cells, in or out of sample."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from . import _inputs as inputs
from ._schema import decode_map, find_maps, read_fitted

#: Largest tolerated ratio between the per-feature spread of new cells and of the fitted cells.
SCALE_TOLERANCE = 5.0


def _select_cells(query: AnnData, params: dict[str, Any], cells) -> np.ndarray:
    """Row indices of the cells to map."""
    groupby, source = str(params["groupby"]), str(params["source"])
    if cells is None:
        if groupby in query.obs:
            rows = np.flatnonzero(query.obs[groupby].astype(str).to_numpy() == source)
            if len(rows) == 0:
                raise ValueError(f"No cells with obs[{groupby!r}] == {source!r} to predict from.")
            return rows
        return np.arange(query.n_obs)
    if isinstance(cells, str):
        if cells != "held_out":
            raise ValueError(f"cells={cells!r}: pass None, 'held_out', a boolean mask or obs names.")
        split = query.obs.get(f"{params['key']}_split")
        if split is None:
            raise KeyError("cells='held_out' needs the obs split column written by fit_transport.")
        mask = (split.astype(str) == "held_out").to_numpy()
        if groupby in query.obs:
            mask &= query.obs[groupby].astype(str).to_numpy() == source
        return np.flatnonzero(mask)
    cells = np.asarray(cells)
    if cells.dtype == bool:
        if cells.shape != (query.n_obs,):
            raise ValueError(f"A boolean cells mask needs {query.n_obs} entries, got {cells.shape}.")
        return np.flatnonzero(cells)
    if np.issubdtype(cells.dtype, np.integer):
        if cells.size and (cells.min() < 0 or cells.max() >= query.n_obs):
            raise IndexError(f"cells holds positions outside [0, {query.n_obs}).")
        return cells
    index = query.obs_names.get_indexer(cells.astype(str))
    if (index < 0).any():
        missing = cells[index < 0][:5].tolist()
        raise KeyError(f"cells holds names not in obs_names, e.g. {missing}.")
    return index


def check_compatible(query: AnnData, stored: dict[str, Any], values: np.ndarray) -> None:
    """Refuse data whose representation, genes or preprocessing differ from the fitted data."""
    params = stored["params"]
    n_features = int(params["n_features"])
    if values.shape[1] != n_features:
        raise ValueError(
            f"The representation of the new cells has {values.shape[1]} features, the maps were "
            f"fitted on {n_features}; compute it the same way (e.g. the same PCA)."
        )
    fitted_genes = np.asarray(stored["var_names"]).astype(str)
    genes = np.asarray(query.var_names).astype(str)
    if len(genes) != len(fitted_genes) or not np.array_equal(genes, fitted_genes):
        shared = len(np.intersect1d(genes, fitted_genes))
        raise ValueError(
            f"var_names differ from the data the maps were fitted on ({len(genes)} genes vs "
            f"{len(fitted_genes)}, {shared} shared): the representation is not comparable. "
            "Subset and order the genes as at fit time (adata[:, fitted_genes]) and recompute it "
            "with the fitted PCA."
        )
    if len(values) < 2:
        return
    fitted_std = np.asarray(stored["representation"]["source_std"], dtype=np.float64)
    ratio = np.median(values.std(axis=0) / np.maximum(fitted_std, 1e-12))
    if not 1 / SCALE_TOLERANCE <= ratio <= SCALE_TOLERANCE:
        raise ValueError(
            f"The new cells' representation is spread {ratio:.2g}x as wide as the fitted control "
            "cells': the preprocessing (normalisation, log1p, scaling, PCA) does not match."
        )


def gene_space(stored: dict[str, Any], values: np.ndarray) -> np.ndarray | None:
    """Back-project representation values to genes through a stored scanpy PCA (or None)."""
    representation = stored["representation"]
    if "pca_components" not in representation:
        return None
    components = np.asarray(representation["pca_components"], dtype=np.float32)
    return values @ components.T + np.asarray(representation["pca_mean"], dtype=np.float32)


def predict(
    adata: AnnData,
    *,
    key: str = "hycnn",
    target: str,
    cells=None,
    query: AnnData | None = None,
    batch_size: int | None = None,
    device: str = "auto",
) -> AnnData:
    """Predict how control cells respond to a perturbation, with a map fitted by :func:`fit_transport`.

    Parameters
    ----------
    adata
        The AnnData the maps were fitted on (holds them in ``uns[key]``).
    key
        ``key_added`` of :func:`fit_transport`.
    target
        The perturbation (target label) to predict.
    cells
        Which cells of ``query`` to map: ``None`` (all cells labelled as the source in
        ``obs[groupby]``, or all cells if that column is absent), ``"held_out"`` (held-out
        source cells), a boolean mask, integer positions or obs names.
    query
        Cells to predict from, when they are not in ``adata`` (out of sample). They must have
        the same ``var_names`` and the same representation (``obsm[use_rep]`` or the
        ``X``/layer values), checked before anything runs.
    batch_size
        Cells per inference chunk (memory bound); default 32768.
    device
        Where to run the maps.

    Returns
    -------
    AnnData of the predicted cells: ``obsm[use_rep]`` holds them in the representation; ``X``
    holds them in gene space when the representation is ``X`` itself or a scanpy PCA
    (``varm['PCs']``), else ``X`` is empty. ``obs['source_cell']`` names the cell each
    prediction came from, ``obs[groupby]`` the target label, ``obs[split_by]`` the stratum.

    Examples
    --------
    >>> import scanpy as sc
    >>> import hycnn_sc as hs
    >>> adata = hs.datasets.kang_ifnb1k()
    >>> sc.pp.normalize_total(adata)
    >>> sc.pp.log1p(adata)
    >>> sc.pp.pca(adata, n_comps=20)
    >>> hs.tl.fit_transport(adata, groupby="condition", source="control", n_iters=20)
    >>> predicted = hs.tl.predict(adata, target="stimulated")
    >>> predicted.obs["source_cell"].iloc[0] in adata.obs_names
    True
    """
    stored = read_fitted(inputs.check_adata(adata), key)
    query = adata if query is None else inputs.check_adata(query)
    params = dict(stored["params"])
    params["key"] = key
    maps = find_maps(stored, target)
    use_rep = str(params["use_rep"]) or None
    layer = str(params["layer"]) or None
    split_by = str(params["split_by"]) or None
    groupby = str(params["groupby"])

    rows = _select_cells(query, params, cells)
    if len(rows) == 0:
        raise ValueError("No cells selected to predict from.")
    inputs.get_matrix(query, use_rep, layer)
    values = inputs.read_rows(query, rows, use_rep, layer, what="the cells to predict from")
    check_compatible(query, stored, values)

    if split_by is None:
        assignments = {next(iter(maps)): np.arange(len(rows))}
    else:
        if split_by not in query.obs:
            raise KeyError(f"The maps were fitted per obs[{split_by!r}]; the new cells lack that column.")
        strata = query.obs[split_by].astype(str).to_numpy()[rows]
        by_stratum = {str(entry["stratum"]): mid for mid, entry in maps.items()}
        unknown = sorted(set(strata) - set(by_stratum))
        if unknown:
            raise ValueError(
                f"No {target!r} map for {split_by} = {unknown}; fitted strata: {sorted(by_stratum)}. "
                "Select cells of fitted strata only."
            )
        assignments = {by_stratum[s]: np.flatnonzero(strata == s) for s in np.unique(strata)}

    predicted = np.empty_like(values)
    for mid, positions in assignments.items():
        tmap = decode_map(maps[mid], device=device)
        predicted[positions] = tmap.transport(values[positions], batch_size=batch_size)

    obs = pd.DataFrame(
        {"source_cell": np.asarray(query.obs_names[rows]), groupby: str(target)},
        index=pd.Index([f"{name}-{target}" for name in query.obs_names[rows]], name=None),
    )
    obs[groupby] = obs[groupby].astype("category")
    if split_by is not None:
        obs[split_by] = pd.Categorical(query.obs[split_by].astype(str).to_numpy()[rows])
    genes = predicted if use_rep is None else gene_space(stored, predicted)
    result = AnnData(
        X=genes,
        obs=obs,
        var=pd.DataFrame(index=np.asarray(stored["var_names"]).astype(str))
        if genes is not None else None,
    )
    result.obsm[use_rep or "X_input"] = predicted
    result.uns["hycnn_prediction"] = {"key": key, "target": str(target), "use_rep": use_rep or ""}
    return result
