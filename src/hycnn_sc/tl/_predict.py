"""``hycnn_sc.tl.predict``: apply stored maps to control cells, in or out of sample."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from anndata.utils import make_index_unique

from .._docs import EXAMPLE_FITTED, doc_params
from .._validation import check_positive
from .._warnings import warn_user
from ..models._utils import resolve_device
from ..models.transport import TransportMap
from . import _inputs as inputs
from ._conditional import predict_source_cells
from ._schema import (
    HELD_OUT,
    PREDICTION_KEY,
    SOURCE_COLUMN,
    FitParams,
    cell_strata,
    decode_map,
    find_maps,
    fit_params,
    fitted_genes,
    fitted_targets,
    map_label,
    pca_projection,
    read_fitted,
    source_summary,
    split_key,
    stored_conditional,
)

#: Tolerated range of the ratio between the per-feature spread (median over features) of new
#: cells and of the fitted control cells. Wide at the low end: a single cell type or cell line
#: of the control population can be 5-7x narrower than the whole (seen on perturbseq_devel).
SPREAD_RANGE = (0.05, 5.0)
#: Fewest new cells for the spread check.
MIN_CELLS_SPREAD = 10
#: Largest tolerated typical distance of new cells from the fitted centre, relative to the
#: fitted control cells' root total variance.
DISTANCE_TOLERANCE = 10.0


def _select_cells(query: AnnData, params: FitParams, key: str, cells) -> np.ndarray:
    """Row indices of the cells to map."""
    groupby, source = params.groupby, params.source
    if cells is None:
        if groupby in query.obs:
            rows = np.flatnonzero(query.obs[groupby].astype(str).to_numpy() == source)
            if len(rows) == 0:
                raise ValueError(
                    f"No cells with obs[{groupby!r}] == {source!r} (the source label) to predict "
                    "from; pass cells= (a boolean mask, positions or obs names) to choose them."
                )
            return rows
        return np.arange(query.n_obs)
    if isinstance(cells, str):
        if cells != HELD_OUT:
            raise ValueError(
                f"cells={cells!r}: pass None, 'held_out', a boolean mask, positions or obs names."
            )
        return _held_out_cells(query, params, key)
    if isinstance(cells, pd.Series):
        cells = cells.to_numpy()
    cells = np.asarray(cells)
    if cells.ndim != 1:
        raise ValueError(f"cells must be one-dimensional, got shape {cells.shape}.")
    if cells.dtype == bool:
        if cells.shape != (query.n_obs,):
            raise ValueError(
                f"A boolean cells mask needs one entry per cell ({query.n_obs}), got {len(cells)}."
            )
        return np.flatnonzero(cells)
    if np.issubdtype(cells.dtype, np.integer):
        if cells.size and (cells.min() < 0 or cells.max() >= query.n_obs):
            raise IndexError(f"cells holds positions outside [0, {query.n_obs}).")
        return cells.astype(np.int64)
    index = query.obs_names.get_indexer(cells.astype(str))
    if (index < 0).any():
        missing = cells[index < 0][:5].tolist()
        raise KeyError(f"cells holds names not in obs_names, e.g. {missing}.")
    return index


def _held_out_cells(query: AnnData, params: FitParams, key: str) -> np.ndarray:
    """Rows of the held-out source cells (``cells="held_out"``)."""
    split = query.obs.get(split_key(key))
    if split is None:
        raise KeyError(
            f"cells='held_out' needs obs[{split_key(key)!r}], written by "
            "fit_transport on the fitted AnnData (not available for new cells)."
        )
    mask = (split.astype(str) == HELD_OUT).to_numpy()
    if params.groupby in query.obs:
        mask &= query.obs[params.groupby].astype(str).to_numpy() == params.source
    if not mask.any():
        raise ValueError(
            "cells='held_out' selects no cells: the maps were fitted with "
            "holdout_fraction=0; refit with holdout_fraction > 0 or pass cells=."
        )
    return np.flatnonzero(mask)


def check_compatible(query: AnnData, stored: dict[str, Any], values: np.ndarray) -> None:
    """Refuse data whose representation, genes or preprocessing differ from the fitted data."""
    n_features = fit_params(stored).n_features
    if values.shape[1] != n_features:
        raise ValueError(
            f"The representation of the new cells has {values.shape[1]} features, the maps were "
            f"fitted on {n_features}; compute it the same way (e.g. the same PCA)."
        )
    genes = fitted_genes(stored)
    shared = inputs.shared_genes(query.var_names, genes)
    if shared is not None:
        raise ValueError(
            f"var_names differ from the data the maps were fitted on (the new cells have "
            f"{query.n_vars} genes, the fitted data {len(genes)}, {shared} shared, or the "
            "order differs): the representation is not comparable. "
            "Subset and order the genes as at fit time (query[:, fitted_genes]) and recompute the "
            "representation with the fitted PCA."
        )
    fitted_mean, fitted_std = source_summary(stored)
    varying = fitted_std > 1e-6 * max(float(fitted_std.max()), 1e-12)
    if not varying.any():
        return
    fix = (
        "the preprocessing (normalisation, log1p, scaling, PCA) does not match the fitted data; "
        "compute the new cells' representation exactly as at fit time (for a PCA, project with "
        "the fitted adata.varm['PCs'])."
    )
    # Location: distance of the typical new cell from the fitted centre, in units of the fitted
    # cells' root total variance (about 1 for cells like the fitted ones, whatever the space).
    offsets = np.linalg.norm(values.astype(np.float64) - fitted_mean, axis=1)
    distance = float(np.median(offsets)) / float(np.sqrt(np.sum(fitted_std**2)))
    if distance > DISTANCE_TOLERANCE:
        raise ValueError(
            f"The new cells lie {distance:.3g}x farther from the fitted control cells' mean than "
            f"those cells do on average (median over cells; at most {DISTANCE_TOLERANCE:g}x is "
            f"expected): {fix}"
        )
    if len(values) < MIN_CELLS_SPREAD:
        return
    ratio = float(np.median(values[:, varying].std(axis=0) / fitted_std[varying]))
    low, high = SPREAD_RANGE
    if not low <= ratio <= high:
        raise ValueError(
            f"The new cells' representation is spread {ratio:.3g}x as wide as the fitted control "
            f"cells' (median over features; {low:g}x to {high:g}x is expected): {fix}"
        )


def _resolve_target(stored: dict[str, Any], target: str | None) -> str:
    """``target``, or the only fitted target when it is None."""
    if target is not None:
        return target
    known = fitted_targets(stored)
    if len(known) != 1:
        raise ValueError(f"Pass target=, one of the fitted targets {known}.")
    return known[0]


def query_groups(query: AnnData, params: FitParams, rows: np.ndarray) -> np.ndarray | None:
    """``obs[groups]`` of the cells to map, for maps fitted with ``groups`` (else None).

    Maps that work relative to each group (``frame_="group"``) move the cells of a group seen
    at fit time relative to its stored control mean, and a new group relative to the mean of
    its selected cells. Without the column, all selected cells count as one new group.
    """
    column = params.groups
    if column is None:
        return None
    if column not in query.obs:
        warn_user(
            f"The maps were fitted with groups={column!r} but the cells to predict from have no "
            f"obs[{column!r}]: all {len(rows)} selected cells are treated as one new group "
            f"(predicted relative to their own mean). Add the column if they come from several "
            "groups.",
            UserWarning,
        )
        return np.full(len(rows), "__new_group__", dtype=object)
    return inputs.group_labels(query, column, "groups").to_numpy()[rows]


def gene_space(stored: dict[str, Any], values: np.ndarray) -> np.ndarray | None:
    """Back-project representation values to genes through a stored scanpy PCA (or None)."""
    projection = pca_projection(stored)
    if projection is None:
        return None
    components, mean = projection
    return values @ components.T + mean


@doc_params(example_fitted=EXAMPLE_FITTED)
def predict(
    adata: AnnData,
    *,
    key: str = "hycnn",
    target: str | None = None,
    cells=None,
    query: AnnData | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    dose: float | None = None,
) -> AnnData:
    """Predict how control cells respond to a perturbation, with a map fitted by :func:`fit_transport`.

    Parameters
    ----------
    adata
        The AnnData the maps were fitted on (holds them in ``uns[key]``).
    key
        ``key_added`` of :func:`fit_transport`.
    target
        The perturbation (target label) to predict; may be left out when only one target was
        fitted.
    cells
        Which cells of ``query`` to map: ``None`` (all cells labelled as the source in
        ``obs[groupby]``, or all cells if that column is absent), ``"held_out"`` (held-out
        source cells), a boolean mask, integer positions or obs names.
    query
        Cells to predict from, when they are not in ``adata`` (out of sample). They must have
        the same ``var_names`` and the same representation (``obsm[use_rep]`` or the
        ``X``/layer values), checked before anything runs: a different number of features,
        other genes, or values spread or shifted far beyond the fitted control cells (another
        normalisation or scaling) raise a ``ValueError``. Backed AnnData are read in chunks.
    batch_size
        Cells per inference chunk (memory bound); default 32768.
    device
        Where to run the maps.
    dose
        For conditional maps fitted with ``dose_key``: the dose to predict at (required).

    Returns
    -------
    AnnData of the predicted cells: ``obsm[use_rep]`` (``obsm['X_input']`` when
    ``use_rep=None``) holds them in the representation; ``X`` holds them in gene space, with
    the fitted ``var_names``, when the representation is ``X`` (or a layer) itself or a
    scanpy PCA (``varm['PCs']``), else ``X`` is empty. ``obs['source_cell']`` names the cell
    each prediction came from (obs names are ``"<cell>-<target>"``, made unique),
    ``obs[groupby]`` the target label, ``obs[split_by]`` the stratum, and
    ``uns['hycnn_prediction']`` the ``key``, ``target`` and ``use_rep``. Neither ``adata``
    nor ``query`` is modified.

    Conditional maps (``fit_transport(..., conditional=True)``) predict any ``target`` whose
    singles were seen at fit time, unseen combinations included (``"KLF1+MAP2K6"``); each
    cell's context is read from ``query.obs[covariates]``, and a context never seen at fit
    time is encoded from the selected source cells of that context (at least 10), so pass
    all of a new cell line's or patient's control cells together.

    Maps fitted with ``groups`` (e.g. ``"patient_id"``) read each cell's group from
    ``query.obs[groups]``: a map that works relative to each group (``frame_="group"``)
    predicts a new patient from the mean of that patient's selected control cells, so pass
    all of them together (at least 10 per new group).

    Raises
    ------
    KeyError
        No maps under ``key`` (run :func:`fit_transport` first) or no map for ``target``
        (the message lists the fitted targets).
    ValueError
        Incompatible new cells, cells of a stratum without a map, or stored maps that are
        incomplete, tampered with or of a newer schema (refit or upgrade).

    Examples
    --------
    {example_fitted}
    >>> predicted = hs.tl.predict(adata, target="stimulated")
    >>> predicted.obs["source_cell"].iloc[0] in adata.obs_names
    True
    """
    stored = read_fitted(inputs.check_adata(adata), key)
    query = adata if query is None else inputs.check_adata(query)
    resolve_device(device)
    if batch_size is not None:
        check_positive(batch_size, "batch_size", integer=True)
    params = fit_params(stored)
    target = _resolve_target(stored, target)
    maps = {} if params.conditional else find_maps(stored, target)
    if not params.conditional and dose is not None:
        raise ValueError("dose= only applies to conditional maps fitted with dose_key.")

    rows = _select_cells(query, params, key, cells)
    if len(rows) == 0:
        raise ValueError("No cells selected to predict from.")
    inputs.get_matrix(query, params.use_rep, params.layer)
    values = inputs.read_rows(query, rows, params.use_rep, params.layer,
                              what="the cells to predict from")
    check_compatible(query, stored, values)
    if params.conditional:
        for column in params.covariates:
            inputs.group_labels(query, column, "covariates")  # present, no missing values
        predicted = predict_source_cells(
            stored_conditional(stored, device=device), values,
            cell_strata(query, params.strata_columns)[rows], np.arange(len(rows)), str(target),
            dose, params.covariates)
    else:
        assignments = _assign_maps(query, params, maps, rows, target)
        units = query_groups(query, params, rows)
        predicted = np.empty_like(values)
        for mid, positions in assignments.items():
            tmap = decode_map(maps[mid], device=device, name=mid)
            predicted[positions] = tmap.transport(
                values[positions], batch_size=batch_size,
                groups=None if units is None else units[positions],
            )
    return _prediction_anndata(query, stored, params, rows, predicted, key=key, target=target)


def _assign_maps(query: AnnData, params: FitParams, maps: dict[str, Any], rows: np.ndarray,
                 target: str) -> dict[str, np.ndarray]:
    """The positions in ``rows`` that each stored map moves: by stratum with ``split_by``."""
    split_by = params.split_by
    if split_by is None:
        return {next(iter(maps)): np.arange(len(rows))}
    if split_by not in query.obs:
        raise KeyError(
            f"The maps were fitted per obs[{split_by!r}]; the new cells lack that column "
            "(add it so each cell goes through the map of its stratum)."
        )
    strata = query.obs[split_by].astype(str).to_numpy()[rows]
    by_stratum = {map_label(entry)[1]: mid for mid, entry in maps.items()}
    unknown = sorted(set(strata) - set(by_stratum))
    if unknown:
        raise ValueError(
            f"No {target!r} map for {split_by} = {unknown}; fitted strata: {sorted(by_stratum)}. "
            "Select cells of fitted strata only."
        )
    return {by_stratum[s]: np.flatnonzero(strata == s) for s in np.unique(strata)}


def _prediction_anndata(query: AnnData, stored: dict[str, Any], params: FitParams,
                        rows: np.ndarray, predicted: np.ndarray, *, key: str,
                        target: str) -> AnnData:
    """The AnnData :func:`predict` returns (see its Returns section)."""
    names = query.obs_names[rows]
    obs = pd.DataFrame(
        {SOURCE_COLUMN: np.asarray(names), params.groupby: str(target)},
        # Unique names even when a cell is selected twice (positions may repeat).
        index=make_index_unique(pd.Index([f"{name}-{target}" for name in names])),
    )
    obs[params.groupby] = obs[params.groupby].astype("category")
    for column in ([params.split_by] if params.split_by is not None else []) + params.covariates:
        obs[column] = pd.Categorical(query.obs[column].astype(str).to_numpy()[rows])
    genes = predicted if params.use_rep is None else gene_space(stored, predicted)
    result = AnnData(
        X=genes,
        obs=obs,
        var=pd.DataFrame(index=fitted_genes(stored))
        if genes is not None else None,
    )
    result.obsm[params.use_rep or "X_input"] = predicted
    result.uns[PREDICTION_KEY] = {"key": key, "target": str(target),
                                  "use_rep": params.use_rep or ""}
    return result


@doc_params(example_fitted=EXAMPLE_FITTED)
def transport_map(adata: AnnData, *, key: str = "hycnn", target: str | None = None,
                  stratum: str | None = None, device: str = "auto") -> TransportMap:
    """The fitted :class:`~hycnn_sc.models.TransportMap` of one target, rebuilt from storage.

    For a conditional fit: the shared :class:`~hycnn_sc.models.ConditionalTransportMap` at
    that target's condition (``FixedConditionMap``, with ``transport``/``inverse``; its
    ``parent`` is the whole conditional map).

    Use it to see what the fit chose (``frame_``, ``shrinkage_``, ``residual_weight_`` and the
    held-out scores in ``selection_``), to apply the map to arrays, or to ``save`` it.

    Parameters
    ----------
    adata
        The AnnData the maps were fitted on.
    key
        ``key_added`` of :func:`fit_transport`.
    target
        The target label; may be left out when only one target was fitted.
    stratum
        With ``split_by`` maps, the stratum (required when the target has several).
    device
        Where to put the potentials.

    Examples
    --------
    {example_fitted}
    >>> tmap = hs.tl.transport_map(adata)
    >>> 0.0 <= tmap.residual_weight_ <= 1.0
    True
    """
    stored = read_fitted(inputs.check_adata(adata), key)
    target = _resolve_target(stored, target)
    maps = find_maps(stored, target)
    if stratum is not None:
        maps = {mid: e for mid, e in maps.items() if map_label(e)[1] == str(stratum)}
        if not maps:
            raise KeyError(f"No {target!r} map for stratum {stratum!r}.")
    if len(maps) > 1:
        strata = sorted(map_label(e)[1] for e in maps.values())
        raise ValueError(f"Target {target!r} has one map per stratum; pass stratum=, one of {strata}.")
    (mid, entry), = maps.items()
    return decode_map(entry, device=device, name=mid)
