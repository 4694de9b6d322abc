"""``hycnn_sc.tl.fit_transport``: fit perturbation maps on an AnnData."""

from __future__ import annotations

import json
import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ..models.transport import TransportMap
from . import _inputs as inputs
from ._schema import SCHEMA_VERSION, encode_map, map_id


def _versions() -> dict[str, str]:
    found = {}
    for package in ("hycnn-sc", "torch", "numpy", "anndata", "scanpy"):
        try:
            found[package.replace("-", "_")] = version(package)
        except PackageNotFoundError:
            found[package.replace("-", "_")] = "not installed"
    return found


def _model_params(model: str, seed: int | None, model_kwargs: dict[str, Any]) -> dict[str, Any]:
    params = dict(model_kwargs)
    if "validation_fraction" in params:
        raise TypeError(
            "validation_fraction is fit_transport's own argument (cells held out for evaluate); "
            "the map's internal best-iterate split is set with selection_fraction=..."
        )
    if "selection_fraction" in params:
        params["validation_fraction"] = params.pop("selection_fraction")
    params.update(model=model, seed=seed)
    try:
        template = TransportMap(**params)
    except TypeError as error:
        valid = [p for p in TransportMap._param_names() if p not in ("model", "seed")]
        raise TypeError(
            f"Unknown model argument: {error}. fit_transport passes extra keywords to "
            f"TransportMap; valid ones are {valid} and selection_fraction."
        ) from None
    template._validate_params()
    return template.get_params()


def _pca_projection(adata: AnnData, use_rep: str | None, layer: str | None) -> dict[str, np.ndarray]:
    """PCA loadings and centre when ``use_rep`` is a scanpy PCA, for gene-space predictions."""
    if use_rep != "X_pca" or "PCs" not in adata.varm or "pca" not in adata.uns:
        return {}
    components = np.asarray(adata.varm["PCs"], dtype=np.float32)
    if components.shape[1] != adata.obsm["X_pca"].shape[1]:
        return {}
    mean = np.zeros(adata.n_vars, dtype=np.float64)
    for start in range(0, adata.n_obs, inputs.READ_CHUNK):
        block = adata.X[start : start + inputs.READ_CHUNK]
        mean += np.asarray(block.sum(axis=0), dtype=np.float64).ravel()
    mean = (mean / adata.n_obs).astype(np.float32)
    # scanpy centres with the mean of the cells it was run on; check it reproduces X_pca.
    rows = np.arange(min(adata.n_obs, 200))
    sample = inputs.read_rows(adata, rows, None, None)
    projected = (sample - mean) @ components
    observed = np.asarray(adata.obsm["X_pca"][rows], dtype=np.float32)
    error = np.linalg.norm(projected - observed) / max(np.linalg.norm(observed), 1e-12)
    if error > 0.05:
        warnings.warn(
            f"obsm['X_pca'] is not reproduced by projecting adata.X on varm['PCs'] (relative "
            f"error {error:.2f}; was PCA run on other data or a layer?); predictions will be "
            "stored in PCA space only, not in gene space.",
            UserWarning,
            stacklevel=3,
        )
        return {}
    return {"pca_components": components, "pca_mean": mean}


def fit_transport(
    adata: AnnData,
    *,
    groupby: str,
    source: str,
    target: str | list[str] | None = None,
    use_rep: str | None = "X_pca",
    layer: str | None = None,
    split_by: str | None = None,
    model: str = "hycnn",
    validation_fraction: float = 0.2,
    seed: int | None = 0,
    key_added: str = "hycnn",
    copy: bool = False,
    **model_kwargs: Any,
) -> AnnData | None:
    """Fit optimal-transport maps from control cells to perturbed cells.

    One :class:`~hycnn_sc.models.TransportMap` is fitted per target label (and per stratum of
    ``split_by``); all maps of one call train together as a single batched computation.
    A random ``validation_fraction`` of every group's cells is held out of training and
    marked in ``obs``, so that :func:`~hycnn_sc.tl.evaluate` can score the maps on cells
    they never saw.

    Parameters
    ----------
    adata
        Annotated data matrix.
    groupby
        ``obs`` column holding the condition labels.
    source
        Label of the control (unperturbed) cells.
    target
        One label, a list of labels, or ``None`` for every label other than ``source``.
    use_rep
        ``obsm`` key of the representation to transport in (``"X_pca"``, ``"X_scVI"``, ...),
        or ``None`` to use ``X`` (or ``layer``), dense or sparse.
    layer
        With ``use_rep=None``, the layer to use instead of ``X``.
    split_by
        ``obs`` column (e.g. ``"cell_type"``): fit separate maps per stratum, mapping cells
        only within their stratum. Strata lacking cells of the source or a target are skipped
        with a warning.
    model
        ``"hycnn"`` or ``"icnn"``.
    validation_fraction
        Fraction of every group's cells held out of training (for :func:`evaluate`); ``0``
        trains on all cells.
    seed
        Seed of the held-out split and of training; the same seed gives identical maps on CPU.
    key_added
        Key under which results are stored (see Returns).
    copy
        Return a modified copy instead of writing to ``adata``.
    **model_kwargs
        Passed to :class:`~hycnn_sc.models.TransportMap` (``hidden``, ``tau``, ``n_iters``,
        ``batch_size``, ``lr``, ``device``, ``warm_start``, ...). The map's own
        best-iterate split of the training cells is ``selection_fraction`` (default 0.1).

    Returns
    -------
    ``None``, or the modified copy with ``copy=True``. Sets:

    ``adata.uns[key_added]``
        ``'params'`` (all arguments, seed, package ``'versions'``, ``'model_params_json'``),
        ``'var_names'``, ``'representation'`` (per-feature mean and std of the fitted source
        cells; PCA loadings and centre when ``use_rep="X_pca"`` came from scanpy) and
        ``'maps'``: per map id (``target`` or ``"target|stratum"``) its ``'target'``,
        ``'stratum'``, training ``'history'``, ``'state_json'`` (fitted scalars such as
        ``w2_squared_``, ``best_iteration_``, ``converged_``) and the potentials' weights
        ``'f'``, ``'g'`` as plain arrays. Maps are rebuilt from these without retraining
        after ``write_h5ad``/``read_h5ad``; see :mod:`hycnn_sc.tl._schema`.
    ``adata.obsm[f"{key_added}_{target}"]``
        For every source cell (held-out ones included), its predicted perturbed state in the
        ``use_rep`` space; ``NaN`` for all other cells. One entry per target.
    ``adata.obs[f"{key_added}_split"]``
        ``"train"`` or ``"held_out"`` for cells of the fitted groups, missing otherwise.

    Examples
    --------
    >>> import scanpy as sc
    >>> import hycnn_sc as hs
    >>> adata = hs.datasets.kang_ifnb1k()
    >>> sc.pp.normalize_total(adata)
    >>> sc.pp.log1p(adata)
    >>> sc.pp.pca(adata, n_comps=20)
    >>> hs.tl.fit_transport(adata, groupby="condition", source="control", n_iters=20)
    >>> adata.obsm["hycnn_stimulated"].shape
    (832, 20)
    """
    inputs.check_adata(adata)
    if not isinstance(key_added, str) or not key_added or "/" in key_added:
        raise ValueError(f"key_added must be a non-empty string without '/', got {key_added!r}.")
    labels = inputs.group_labels(adata, groupby)
    targets = inputs.resolve_targets(labels, groupby, source, target)
    strata = inputs.group_labels(adata, split_by) if split_by is not None else None
    inputs.check_fraction(validation_fraction, "validation_fraction")
    matrix = inputs.get_matrix(adata, use_rep, layer)
    if matrix.shape[0] != adata.n_obs:
        raise ValueError(f"The representation has {matrix.shape[0]} rows for {adata.n_obs} cells.")
    params = _model_params(model, seed, model_kwargs)

    # Which cells form each (label, stratum) group, and which pairs get a map.
    label_values = labels.to_numpy()
    stratum_values = strata.to_numpy() if strata is not None else np.full(adata.n_obs, "")
    groups: dict[tuple[str, str], np.ndarray] = {}
    pairs: list[tuple[str, str]] = []
    skipped: list[str] = []
    for stratum in pd.unique(stratum_values):
        in_stratum = stratum_values == stratum
        source_rows = np.flatnonzero(in_stratum & (label_values == str(source)))
        for label in targets:
            target_rows = np.flatnonzero(in_stratum & (label_values == label))
            if len(target_rows) == 0 or len(source_rows) == 0:
                if split_by is None and len(target_rows) == 0:
                    raise ValueError(f"No cells with obs[{groupby!r}] == {label!r}.")
                skipped.append(f"{label!r} in {split_by}={stratum!r}")
                continue
            groups[(str(source), stratum)] = source_rows
            groups[(label, stratum)] = target_rows
            pairs.append((label, stratum))
    if not pairs:
        raise ValueError(
            f"No stratum of obs[{split_by!r}] holds both source and target cells; nothing to fit."
        )
    inputs.check_group_sizes({key: len(rows) for key, rows in groups.items()}, groupby, split_by)
    if skipped:
        warnings.warn(
            f"Skipped {len(skipped)} target/stratum pair(s) without source or target cells: "
            f"{', '.join(skipped[:10])}{' ...' if len(skipped) > 10 else ''}.",
            UserWarning,
            stacklevel=2,
        )

    split_seed = 0 if seed is None else int(seed)
    held_out = inputs.split_cells(groups, validation_fraction, split_seed)
    involved = np.unique(np.concatenate(list(groups.values())))
    position = np.full(adata.n_obs, -1)
    position[involved] = np.arange(len(involved))
    values = inputs.read_rows(adata, involved, use_rep, layer, what="the fitted groups")
    name = inputs.representation_name(use_rep, layer)
    inputs.warn_if_counts(values, use_rep, name)
    inputs.check_not_constant(values, name)

    train_arrays: dict[tuple[str, str], np.ndarray] = {
        key: values[position[rows[~held_out[key]]]] for key, rows in groups.items()
    }
    sources = [train_arrays[(str(source), stratum)] for _, stratum in pairs]
    targets_train = [train_arrays[(label, stratum)] for label, stratum in pairs]
    maps = TransportMap.fit_many(sources, targets_train, **params)

    # Everything is computed; only now is the AnnData touched (all or nothing).
    predictions: dict[str, np.ndarray] = {}
    entries: dict[str, Any] = {}
    for (label, stratum), tmap in zip(pairs, maps, strict=True):
        source_rows = groups[(str(source), stratum)]
        block = predictions.setdefault(
            label, np.full((adata.n_obs, values.shape[1]), np.nan, dtype=np.float32)
        )
        block[source_rows] = tmap.transport(values[position[source_rows]])
        entries[map_id(label, stratum or None)] = encode_map(tmap, label, stratum or None)

    split = pd.Series(pd.NA, index=adata.obs_names, dtype="object")
    for key, rows in groups.items():
        split.iloc[rows] = np.where(held_out[key], "held_out", "train")
    source_values = values[position[np.concatenate(
        [groups[(str(source), stratum)] for stratum in {s for _, s in pairs}]
    )]]
    representation = {
        "source_mean": source_values.mean(axis=0),
        "source_std": source_values.std(axis=0),
        **_pca_projection(adata, use_rep, layer),
    }
    stored = {
        "params": {
            "groupby": groupby,
            "source": str(source),
            "targets": np.asarray(targets, dtype=object),
            "use_rep": use_rep if use_rep is not None else "",
            "layer": layer if layer is not None else "",
            "split_by": split_by if split_by is not None else "",
            "model": model,
            "validation_fraction": float(validation_fraction),
            "seed": -1 if seed is None else int(seed),
            "n_features": int(values.shape[1]),
            "schema_version": SCHEMA_VERSION,
            "versions": _versions(),
            "model_params_json": json.dumps(
                {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}
            ),
        },
        "var_names": np.asarray(adata.var_names, dtype=object),
        "representation": representation,
        "maps": entries,
    }

    adata = adata.copy() if copy else adata
    previous = adata.uns.get(key_added)
    if isinstance(previous, dict) and "params" in previous:
        for old in list(adata.obsm.keys()):
            if old.startswith(f"{key_added}_"):
                del adata.obsm[old]
    adata.uns[key_added] = stored
    adata.obs[f"{key_added}_split"] = pd.Categorical(split, categories=["train", "held_out"])
    for label, block in predictions.items():
        adata.obsm[f"{key_added}_{label}"] = block
    return adata if copy else None
