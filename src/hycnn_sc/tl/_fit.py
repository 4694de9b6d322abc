"""``hycnn_sc.tl.fit_transport``: fit perturbation maps on an AnnData."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._docs import EXAMPLE_FITTED, doc_params
from .._validation import check_seed
from .._warnings import warn_user
from ..models._estimator import RENAMED_PARAMS
from ..models._options import Potential
from ..models.conditional_transport import ConditionalTransportMap
from ..models.transport import MIN_GROUP_POINTS, TransportMap
from . import _conditional as conditional_fits
from . import _inputs as inputs
from ._schema import (
    HELD_OUT,
    TRAIN,
    FitParams,
    cell_strata,
    encode_map,
    fitted_uns,
    map_id,
    obsm_key,
    previous_targets,
    split_key,
)


def _model_params(model: str, seed: int, model_kwargs: dict[str, Any],
                  estimator: type = TransportMap) -> dict[str, Any]:
    """The full, validated estimator arguments (raises before anything is read or trained).

    Renamed estimator keywords (``validation_every``) pass through with the estimator's
    ``FutureWarning`` and are returned under their new names.
    """
    params = dict(model_kwargs)
    own = ("model", "seed", "combination_sep", *RENAMED_PARAMS)
    signature = list(inspect.signature(estimator.__init__).parameters)[1:]  # without self
    valid = [p for p in signature if p not in own]
    if "model_kwargs" in params:
        raise TypeError(
            "Pass model arguments as keywords of fit_transport, e.g. fit_transport(adata, ..., "
            "n_iters=500, hidden=(32, 32)), not as model_kwargs={...}; holdout_fraction is "
            "fit_transport's own argument (cells held out for evaluate) and the map's internal "
            f"best-iterate split is selection_fraction. Valid model arguments: {valid}."
        )
    if "validation_fraction" in params:  # only reachable through a direct call
        raise TypeError(
            "validation_fraction is the former name of fit_transport's holdout_fraction (cells "
            "held out for evaluate); the map's internal best-iterate split is set with "
            "selection_fraction=..."
        )
    unknown = [name for name in params if name not in valid and name not in RENAMED_PARAMS]
    if unknown:
        hints = [
            f"{name!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(name, valid, 1))
            else repr(name)
            for name in unknown
        ]
        raise TypeError(
            f"Unknown model argument(s) {', '.join(hints)}: fit_transport passes extra keywords "
            f"to {estimator.__name__}; valid ones are {valid}."
        )
    if "selection_fraction" in params:
        inputs.check_fraction(
            params["selection_fraction"], "selection_fraction",
            " It is the share of each training group the map holds out to pick its best iterate.",
        )
    params.update(model=model, seed=seed)
    template = estimator(**params)
    template._validate_params()
    resolved = template._resolved_params()
    return {name: resolved[name] for name in signature if name in resolved}  # signature order


def _pca_projection(adata: AnnData, use_rep: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    """PCA loadings and centre when ``use_rep`` is a scanpy PCA, for gene-space predictions.

    Anything unexpected (no ``X``, NaN in ``X``, a PCA of other data) only skips gene-space
    output with a warning: the maps themselves do not depend on it.
    """
    if use_rep != "X_pca" or "PCs" not in adata.varm or "pca" not in adata.uns:
        return None
    components = np.asarray(adata.varm["PCs"], dtype=np.float32)
    if components.shape[1] != adata.obsm["X_pca"].shape[1] or adata.X is None:
        return None
    try:
        mean = inputs.mean_rows(adata, None, None).astype(np.float32)
        # scanpy centres with the mean of the cells it was run on; check it reproduces X_pca.
        rows = np.arange(min(adata.n_obs, 200))
        sample = inputs.read_rows(adata, rows, None, None, what="the PCA check")
        projected = (sample - mean) @ components
        observed = np.asarray(adata.obsm["X_pca"][rows], dtype=np.float32)
        error = np.linalg.norm(projected - observed) / max(np.linalg.norm(observed), 1e-12)
        reason = (
            f"obsm['X_pca'] is not reproduced by projecting adata.X on varm['PCs'] (relative "
            f"error {error:.2f}; was PCA run on other cells, other data or a layer?)"
        )
    except (ValueError, TypeError) as problem:
        error, reason = np.inf, f"adata.X cannot be projected on varm['PCs'] ({problem})"
    if not error <= 0.05:
        warn_user(
            f"{reason}; predictions will be stored in PCA space only, not in gene space.",
            UserWarning,
        )
        return None
    return components, mean


def _check_groups(adata: AnnData, groups: str | None, groupby: str,
                  split_by: str | None) -> np.ndarray | None:
    """The ``groups`` labels of every cell (or None), after checking the column makes sense."""
    if groups is None:
        return None
    if groups in (groupby, split_by):
        which = "groupby" if groups == groupby else "split_by"
        raise ValueError(
            f"groups={groups!r} equals {which}: groups names the units a prediction should "
            "generalise to (patients, samples, cell lines), which must contain cells of the "
            "source and the target. Pass another obs column, e.g. groups='patient_id'."
        )
    return inputs.group_labels(adata, groups, "groups").to_numpy()


def _check_enough_units(unit_labels: np.ndarray, cell_groups: dict[tuple[str, str], np.ndarray],
                        held_out: dict[tuple[str, str], np.ndarray],
                        pairs: list[tuple[str, str]], source: str, groups: str) -> None:
    """Every map needs two groups with training cells of both the source and its target."""
    for label, stratum in pairs:
        units = [set(unit_labels[cell_groups[key][~held_out[key]]])
                 for key in ((source, stratum), (label, stratum))]
        shared = sorted(units[0] & units[1])
        if len(shared) < 2:
            where = f" in stratum {stratum!r}" if stratum else ""
            raise ValueError(
                f"groups={groups!r}: target {label!r}{where} has source and target cells in "
                f"{len(shared)} group(s) of obs[{groups!r}] ({shared}); at least 2 are needed to "
                "choose a map that generalises to new groups. Use another column, or groups=None."
            )


def _transport_source_cells(tmap: TransportMap, values: np.ndarray, units: np.ndarray | None,
                            groups: str | None, label: str) -> np.ndarray:
    """Predictions for every source cell; NaN (with a warning) for cells that cannot be moved.

    A ``"group"``-frame map moves a group it was not fitted on (one without target cells)
    relative to the mean of that group's cells, which needs ``MIN_GROUP_POINTS`` of them.
    """
    out = np.full(values.shape, np.nan, dtype=np.float32)
    movable = np.ones(len(values), dtype=bool)
    if units is not None and tmap.frame_ == "group":
        names, counts = np.unique(units, return_counts=True)
        small = [str(n) for n, c in zip(names, counts, strict=True)
                 if n not in tmap.group_means_ and c < MIN_GROUP_POINTS]
        if small:
            movable = ~np.isin(units, small)
            warn_user(
                f"Target {label!r}: the map works relative to each group's control cells, and "
                f"group(s) {small[:10]} of obs[{groups!r}] have fewer than {MIN_GROUP_POINTS} "
                "source cells and no target cells: their predictions are left NaN.",
                UserWarning,
            )
    if movable.any():
        out[movable] = tmap.transport(values[movable],
                                      groups=None if units is None else units[movable])
    return out


@doc_params(example_fitted=EXAMPLE_FITTED)
def fit_transport(
    adata: AnnData,
    *,
    groupby: str,
    source: str,
    target: str | list[str] | None = None,
    use_rep: str | None = "X_pca",
    layer: str | None = None,
    split_by: str | None = None,
    groups: str | None = None,
    model: Potential = "hycnn",
    holdout_fraction: float = 0.0,
    conditional: bool = False,
    covariates: str | list[str] | None = None,
    combination_sep: str = "+",
    dose_key: str | None = None,
    seed: int | None = 0,
    key_added: str = "hycnn",
    copy: bool = False,
    **model_kwargs: Any,
) -> AnnData | None:
    """Fit optimal-transport maps from control cells to perturbed cells.

    One :class:`~hycnn_sc.models.TransportMap` is fitted per target label (and per stratum of
    ``split_by``); all maps of one call train together as a single batched computation.
    Each map is a linear part (the Gaussian OT map shrunk towards the mean shift) plus a
    HyCNN residual, and both are chosen on cells held out inside the fit: with little data
    or a linear response the map is (close to) the linear map, with a nonlinear response it
    departs from it (see :class:`~hycnn_sc.models.TransportMap`). All cells are used by
    default; pass ``holdout_fraction`` to hold cells out for :func:`~hycnn_sc.tl.evaluate`,
    or use ``evaluate(..., holdout=...)`` to measure generalisation to new patients.

    Every input is checked before anything is trained, and ``adata`` is only written once
    all maps are fitted: a call that raises leaves ``adata`` exactly as it was.

    Parameters
    ----------
    adata
        Annotated data matrix. A **view** (``adata[mask]``) is accepted: with ``copy=False``
        it is turned into an actual AnnData in place (with a warning, as scanpy does; the
        parent is not changed) and the results are written to it. A **backed** AnnData
        (``read_h5ad(path, backed="r")``) is accepted with ``copy=False``: ``X`` (or the
        layer) is read in chunks of rows and the results are added in memory (save them with
        ``adata.write_h5ad(new_path)``; the backed file is not changed). ``copy=True`` and
        views of backed objects are refused, before training, since anndata cannot copy them
        without a file name (use ``adata.to_memory()``).
    groupby
        ``obs`` column holding the condition labels (categorical, strings or integers; no
        missing values).
    source
        Label of the control (unperturbed) cells.
    target
        One label, a list of distinct labels, or ``None`` for every label other than
        ``source``. Each (label, stratum) group needs at least 4 cells.
    use_rep
        ``obsm`` key of the representation to transport in (``"X_pca"``, ``"X_scVI"``, ...),
        or ``None`` to use ``X`` (or ``layer``), dense or sparse (only the rows of the fitted
        groups are densified). It must be numeric and finite on the fitted cells. Integer
        counts in gene space trigger a warning (fit on log-normalised data or a PCA).
    layer
        With ``use_rep=None``, the layer to use instead of ``X``.
    split_by
        ``obs`` column (e.g. ``"cell_type"``): fit separate maps per stratum, mapping cells
        only within their stratum. Strata lacking cells of the source or a target are skipped
        with a warning.
    groups
        ``obs`` column of the units a prediction should generalise to (patient, sample, cell
        line, donor, cell type). Every map then chooses its linear part by leave-one-group-out
        and its network on held-out whole groups, may work relative to each group's own
        control cells (``frame_="group"``: a new patient is predicted from its own control
        cells), and uses only groups that have both source and target cells. Needs at least
        two such groups per map. ``None``: cells are held out at random.
    model
        ``"hycnn"`` or ``"icnn"``.
    holdout_fraction
        Fraction of every (label, stratum) group's cells held out of training and marked in
        ``obs`` for :func:`evaluate`. ``0`` (default): the maps use every cell (their own
        selection split is ``selection_fraction`` of the training cells). Formerly
        ``validation_fraction``, still accepted for one release with a ``FutureWarning``.
    conditional
        Fit one :class:`~hycnn_sc.models.ConditionalTransportMap` for every target (and
        covariate value, and dose) present instead of one map per target: a single network
        ``f(x, c)``, convex in ``x`` for every condition ``c``, trained on all conditions
        together. It predicts any combination whose singles were seen
        (``predict(target="A+B")``) and a context (cell line, patient) never seen, from its
        control cells. ``split_by`` and ``groups`` do not apply (pass those columns as
        ``covariates``); model arguments are those of ``ConditionalTransportMap``.
    covariates
        With ``conditional=True``: ``obs`` column(s) of the context (cell type, cell line,
        patient; labels, no missing values). Each context's cells are mapped from its own
        control cells; stored map entries are named ``"<target>|<value>"``.
    combination_sep
        With ``conditional=True``: the separator of singles in a combination label
        (``"KLF1+MAP2K6"``).
    dose_key
        With ``conditional=True``: numeric ``obs`` column (e.g. log-dose; finite for every
        cell, controls included) that enters the condition. Every (target, covariates, dose)
        gets a condition; ``obsm`` holds predictions at each target's largest dose (others:
        ``predict(..., dose=)``).
    seed
        Seed of the held-out split and of training; the same seed gives bit-identical maps
        and predictions on CPU. ``None`` draws a seed, which is stored in
        ``uns[key_added]['params']['seed']``.
    key_added
        Key under which results are stored (see Returns). Refitting under the same key
        replaces the earlier results (its ``obsm`` entries included).
    copy
        Return a modified copy instead of writing to ``adata``.
    **model_kwargs
        Passed to :class:`~hycnn_sc.models.TransportMap` (``hidden``, ``tau``, ``n_iters``,
        ``batch_size``, ``lr``, ``device``, ``warm_start``, ...), validated before anything
        runs; unknown names raise a ``TypeError`` listing the valid ones. The map's own
        best-iterate split of the training cells is ``selection_fraction`` (default 0.1).

    Returns
    -------
    ``None``, or the modified copy with ``copy=True``. Sets:

    ``adata.uns[key_added]``
        ``'params'`` (all arguments, the fitted ``'targets'``, the ``'seed'`` used,
        ``'n_features'``, ``'schema_version'``, package ``'versions'``,
        ``'model_params_json'``),
        ``'var_names'``, ``'representation'`` (per-feature mean and std of the fitted source
        cells; PCA loadings and centre when ``use_rep="X_pca"`` came from scanpy) and
        ``'maps'``: per map id (``target`` or ``"target|stratum"``) its ``'target'``,
        ``'stratum'``, training ``'history'``, ``'state_json'`` (fitted scalars such as
        ``w2_squared_``, ``best_iteration_``, ``converged_``) and the potentials' weights
        ``'f'``, ``'g'`` as plain arrays. Maps are rebuilt from these without retraining
        after ``write_h5ad``/``read_h5ad``; see :mod:`hycnn_sc.tl._schema`.
    ``adata.obsm[f"{key_added}_{target}"]``
        For every source cell (held-out ones included), its predicted perturbed state in the
        ``use_rep`` space; ``NaN`` for all other cells. One entry per fitted target (a
        ``/`` in the label becomes ``_``, as h5ad keys cannot hold it).
    ``adata.obs[f"{key_added}_split"]``
        Categorical, ``"train"`` or ``"held_out"`` for cells of the fitted groups, missing
        otherwise.

    Raises
    ------
    KeyError
        A column, label, ``obsm`` key or layer that does not exist.
    TypeError
        Unknown model arguments, non-numeric representations.
    ValueError
        Invalid values (labels, fractions, hyper-parameters, NaN/inf or constant
        representations, too small groups, backed ``copy=True``).

    Examples
    --------
    {example_fitted}
    >>> adata.obsm["hycnn_stimulated"].shape
    (832, 20)
    """
    holdout_fraction = _renamed_holdout(holdout_fraction, model_kwargs)
    _check_destination(adata, key_added, copy)
    labels = inputs.group_labels(adata, groupby, "groupby")
    targets = inputs.resolve_targets(labels, groupby, source, target)
    if split_by is not None and split_by == groupby:
        raise ValueError(
            f"split_by={split_by!r} equals groupby: every stratum would hold one label. Pass "
            "another obs column (e.g. 'cell_type') or split_by=None."
        )
    strata = inputs.group_labels(adata, split_by, "split_by") if split_by is not None else None
    unit_labels = _check_groups(adata, groups, groupby, split_by)
    inputs.check_fraction(
        holdout_fraction, "holdout_fraction",
        " It is the share of every group held out of training for evaluate; 0 trains on all cells.",
    )
    seed = check_seed(seed)
    covariate_columns = conditional_fits.check_conditional_args(
        adata, conditional=conditional, covariates=covariates, combination_sep=combination_sep,
        dose_key=dose_key, split_by=split_by, groups=groups, groupby=groupby)
    matrix = inputs.get_matrix(adata, use_rep, layer)
    if matrix.shape[0] != adata.n_obs:
        raise ValueError(f"The representation has {matrix.shape[0]} rows for {adata.n_obs} cells.")
    estimator = ConditionalTransportMap if conditional else TransportMap
    model_params = _model_params(model, seed, model_kwargs, estimator)
    if conditional:
        model_params["combination_sep"] = combination_sep
    _check_obsm_keys(key_added, targets)
    params = FitParams(
        groupby=groupby, source=str(source), targets=targets, use_rep=use_rep, layer=layer,
        model=model, split_by=split_by, groups=groups, holdout_fraction=holdout_fraction,
        seed=seed, model_params=model_params, conditional=conditional,
        covariates=covariate_columns, combination_sep=combination_sep, dose_key=dose_key,
    )
    if conditional:
        stored, split, predictions = _fit_conditional(adata, labels.to_numpy(), params)
    else:
        stratum_values = strata.to_numpy() if strata is not None else np.full(adata.n_obs, "")
        stored, split, predictions = _fit_maps(adata, labels.to_numpy(), stratum_values,
                                               unit_labels, params)
    obsm = {obsm_key(key_added, label): block for label, block in predictions.items()}
    return _store(adata, key_added, stored, split, obsm, copy)


def _renamed_holdout(holdout_fraction: float, model_kwargs: dict[str, Any]) -> float:
    """``holdout_fraction``, or the value passed under its former name ``validation_fraction``."""
    if "validation_fraction" not in model_kwargs:
        return holdout_fraction
    value = model_kwargs.pop("validation_fraction")
    if holdout_fraction != 0.0:
        raise TypeError(
            "Pass holdout_fraction only: validation_fraction is its former name (deprecated)."
        )
    warn_user(
        "fit_transport(validation_fraction=...) is deprecated and will be removed in the next "
        f"release: pass holdout_fraction={value!r} (the cells held out for evaluate). The map's "
        "own best-iterate split is selection_fraction.",
        FutureWarning,
    )
    return value


def _check_destination(adata: AnnData, key_added: str, copy: bool) -> None:
    """``adata``, ``key_added`` and ``copy`` allow writing the results (checked first)."""
    inputs.check_adata(adata)
    if not isinstance(key_added, str) or not key_added or "/" in key_added:
        raise ValueError(f"key_added must be a non-empty string without '/', got {key_added!r}.")
    if not isinstance(copy, bool):
        raise TypeError(f"copy must be True or False, got {copy!r}.")
    if adata.isbacked and (copy or adata.is_view):
        what = "copy=True cannot copy" if copy else "fit_transport cannot write to a view of"
        raise ValueError(
            f"{what} a backed AnnData (anndata needs a filename to copy one). Pass copy=False on "
            "the backed object itself (results are added in memory; the file on disk is not "
            "changed), or load it first: adata = adata.to_memory()."
        )


def _check_obsm_keys(key_added: str, targets: list[str]) -> None:
    keys = {label: obsm_key(key_added, label) for label in targets}
    if len(set(keys.values())) < len(keys):
        raise ValueError(
            f"Targets {targets} give clashing obsm keys once '/' is replaced by '_' "
            f"({sorted(keys.values())}); rename the labels."
        )


def _pair_groups(label_values: np.ndarray, stratum_values: np.ndarray,
                 params: FitParams) -> tuple[dict[tuple[str, str], np.ndarray], list, list[str]]:
    """Which cells form each (label, stratum) group, which (target, stratum) pairs get a map,
    and the pairs skipped for lack of source or target cells."""
    source, split_by = params.source, params.split_by
    cell_groups: dict[tuple[str, str], np.ndarray] = {}
    pairs: list[tuple[str, str]] = []
    skipped: list[str] = []
    for stratum in pd.unique(stratum_values):
        in_stratum = stratum_values == stratum
        source_rows = np.flatnonzero(in_stratum & (label_values == source))
        for label in params.targets:
            target_rows = np.flatnonzero(in_stratum & (label_values == label))
            if len(target_rows) == 0 or len(source_rows) == 0:
                skipped.append(f"{label!r} in {split_by}={stratum!r}")
                continue
            cell_groups[(source, stratum)] = source_rows
            cell_groups[(label, stratum)] = target_rows
            pairs.append((label, stratum))
    if not pairs:
        raise ValueError(
            f"No stratum of obs[{split_by!r}] holds both source and target cells; nothing to fit."
        )
    inputs.check_group_sizes({key: len(rows) for key, rows in cell_groups.items()},
                             params.groupby, split_by)
    return cell_groups, pairs, skipped


def _fit_maps(adata: AnnData, label_values: np.ndarray, stratum_values: np.ndarray,
              unit_labels: np.ndarray | None, params: FitParams):
    """Fit one :class:`TransportMap` per (target, stratum): the ``uns`` entry, the split column
    and the predictions per target."""
    source = params.source
    cell_groups, pairs, skipped = _pair_groups(label_values, stratum_values, params)
    held_out = inputs.split_cells(cell_groups, params.holdout_fraction, params.seed)
    if unit_labels is not None:
        _check_enough_units(unit_labels, cell_groups, held_out, pairs, source, params.groups)
    position, values = _read_groups(adata, cell_groups, params.use_rep, params.layer)
    projection = _pca_projection(adata, params.use_rep)
    if skipped:
        warn_user(
            f"Skipped {len(skipped)} target/stratum pair(s) without source or target cells: "
            f"{', '.join(skipped[:10])}{' ...' if len(skipped) > 10 else ''}.",
            UserWarning,
        )
    # One array per group: the maps of a stratum share its source cells (one object).
    train = {key: values[position[rows[~held_out[key]]]] for key, rows in cell_groups.items()}
    unit_kwargs = {}
    if unit_labels is not None:
        units = {key: unit_labels[rows[~held_out[key]]] for key, rows in cell_groups.items()}
        unit_kwargs = {"source_groups": [units[(source, stratum)] for _, stratum in pairs],
                       "target_groups": [units[pair] for pair in pairs]}
    maps = TransportMap.fit_many([train[(source, stratum)] for _, stratum in pairs],
                                 [train[pair] for pair in pairs], **unit_kwargs, **params.model_params)

    # Everything is computed; only now is the AnnData touched (all or nothing).
    predictions: dict[str, np.ndarray] = {}
    entries: dict[str, Any] = {}
    for (label, stratum), tmap in zip(pairs, maps, strict=True):
        source_rows = cell_groups[(source, stratum)]
        block = predictions.setdefault(
            label, np.full((adata.n_obs, values.shape[1]), np.nan, dtype=np.float32)
        )
        block[source_rows] = _transport_source_cells(
            tmap, values[position[source_rows]],
            None if unit_labels is None else unit_labels[source_rows], params.groups, label,
        )
        entries[map_id(label, stratum or None)] = encode_map(tmap, label, stratum or None)
    fitted_strata = dict.fromkeys(stratum for _, stratum in pairs)
    source_values = values[position[np.concatenate([cell_groups[(source, s)] for s in fitted_strata])]]
    stored = fitted_uns(
        replace(params, targets=list(predictions), n_features=source_values.shape[1]),
        var_names=adata.var_names, source_values=source_values, projection=projection,
        maps=entries,
    )
    return stored, _split_column(adata, cell_groups, held_out), predictions


def _read_groups(adata: AnnData, cell_groups: dict, use_rep: str | None,
                 layer: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The representation of every cell of ``cell_groups`` and each cell's row in it."""
    involved = np.unique(np.concatenate(list(cell_groups.values())))
    position = np.full(adata.n_obs, -1)
    position[involved] = np.arange(len(involved))
    values = inputs.read_rows(adata, involved, use_rep, layer, what="the fitted groups")
    name = inputs.representation_name(use_rep, layer)
    matrix = inputs.get_matrix(adata, use_rep, layer)
    inputs.warn_if_counts(values, use_rep, name, getattr(matrix, "dtype", None))
    inputs.check_not_constant(values, name)
    return position, values


def _split_column(adata: AnnData, cell_groups: dict, held_out: dict) -> np.ndarray:
    split = np.full(adata.n_obs, None, dtype=object)
    for key, rows in cell_groups.items():
        split[rows] = np.where(held_out[key], HELD_OUT, TRAIN)
    return split


def _fit_conditional(adata: AnnData, labels: np.ndarray, params: FitParams):
    """Fit one conditional map for every (target, covariate values[, dose]) present."""
    covariates, dose_key, source = params.covariates, params.dose_key, params.source
    contexts = cell_strata(adata, covariates)
    doses = None if dose_key is None else conditional_fits.dose_values(adata, dose_key)
    cell_groups, pairs = conditional_fits.conditional_pairs(labels, contexts, doses, source,
                                                            params.targets)
    if not pairs:
        raise ValueError(
            f"No value of covariates {covariates} holds both source cells and target cells; "
            "nothing to fit."
        )
    inputs.check_group_sizes({key: len(rows) for key, rows in cell_groups.items()},
                             params.groupby, "+".join(covariates) if covariates else None)
    held_out = inputs.split_cells(cell_groups, params.holdout_fraction, params.seed)
    all_sources = np.flatnonzero(labels == source)
    position, values = _read_groups(adata, {**cell_groups, ("__all__", ""): all_sources},
                                    params.use_rep, params.layer)
    cmap = conditional_fits.fit_conditional(values, position, cell_groups, pairs, held_out,
                                            covariates, source, params.model_params)
    predictions = {}
    for label in dict.fromkeys(label for label, *_ in pairs):
        dose = max((d for lab, _, d, _ in pairs if lab == label), default=None) if doses is not None else None
        block = np.full((adata.n_obs, values.shape[1]), np.nan, dtype=np.float32)
        block[all_sources] = conditional_fits.predict_source_cells(
            cmap, values[position[all_sources]], contexts[all_sources], np.arange(len(all_sources)),
            label, dose, covariates)
        predictions[label] = block
    source_values = values[position[all_sources]]
    stored = fitted_uns(
        replace(params, targets=list(predictions), n_features=source_values.shape[1]),
        var_names=adata.var_names, source_values=source_values,
        projection=_pca_projection(adata, params.use_rep),
        maps=conditional_fits.map_entries(pairs, covariates), conditional=cmap,
    )
    return stored, _split_column(adata, cell_groups, held_out), predictions


def _store(adata: AnnData, key_added: str, stored: dict[str, Any], split: np.ndarray,
           obsm: dict[str, np.ndarray], copy: bool) -> AnnData | None:
    """Write the results to ``adata`` (or a copy), all or nothing."""
    if copy:
        adata = adata.copy()
    elif adata.is_view:
        warn_user(
            "fit_transport received a view of an AnnData: it makes the view an actual AnnData "
            "(as anndata does whenever a view is modified) and writes the results to it; the "
            "parent object is not changed. Pass adata[mask].copy() to avoid this warning.",
            UserWarning,
        )
        adata._init_as_actual(adata.copy())
    _write(adata, key_added, stored, split, obsm)
    return adata if copy else None


def _write(adata: AnnData, key_added: str, stored: dict[str, Any], split: np.ndarray,
           obsm: dict[str, np.ndarray]) -> None:
    """Write the results; on any failure restore what was there, so nothing is half-written."""
    split_column = split_key(key_added)
    previous = adata.uns.get(key_added)
    stale = [obsm_key(key_added, t) for t in previous_targets(previous)]
    stale = [k for k in stale if k in adata.obsm and k not in obsm]
    touched = [*stale, *obsm]
    saved_obsm = {k: adata.obsm[k] for k in touched if k in adata.obsm}
    had_uns, had_split = key_added in adata.uns, split_column in adata.obs
    saved_split = adata.obs[split_column].copy() if had_split else None
    try:
        for old in stale:
            del adata.obsm[old]
        adata.uns[key_added] = stored
        adata.obs[split_column] = pd.Categorical(split, categories=[TRAIN, HELD_OUT])
        for name, block in obsm.items():
            adata.obsm[name] = block
    except BaseException:
        for name in touched:
            if name in saved_obsm:
                adata.obsm[name] = saved_obsm[name]
            elif name in adata.obsm:
                del adata.obsm[name]
        if had_uns:
            adata.uns[key_added] = previous
        else:
            adata.uns.pop(key_added, None)
        if had_split:
            adata.obs[split_column] = saved_split
        elif split_column in adata.obs:
            del adata.obs[split_column]
        raise
