"""Leave-one-group-out evaluation: refit per held-out patient (cell line, sample ...) and score.

Used by :func:`hycnn_sc.tl.evaluate` with ``holdout=``; kept apart because it refits maps
with the stored settings instead of scoring the stored maps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ..models.gaussian import GaussianTransportMap
from ..models.transport import GAUSSIAN_RIDGE, MIN_GROUP_POINTS, TransportMap
from . import _inputs as inputs
from ._schema import FitParams, fit_params

#: Fewest cells of a held-out group per side for that fold to be scored.
MIN_FOLD_CELLS = 4
#: The baselines scored beside every map, in table order (see :func:`baseline_predictions`).
BASELINES = ("identity", "mean_shift", "gaussian_ot")


def subsample(rows: np.ndarray, n_max: int, rng: np.random.Generator) -> np.ndarray:
    """``rows``, or ``n_max`` of them drawn at random (sorted)."""
    return rows if len(rows) <= n_max else np.sort(rng.choice(rows, n_max, replace=False))


def baseline_predictions(source_train: np.ndarray, target_train: np.ndarray,
                         control: np.ndarray) -> dict[str, np.ndarray]:
    """``identity``, ``mean_shift`` and ``gaussian_ot`` moves of ``control``, fitted on the pair."""
    gaussian = GaussianTransportMap(regularization=GAUSSIAN_RIDGE).fit(source_train, target_train)
    return {
        "identity": control,
        "mean_shift": control + target_train.mean(0) - source_train.mean(0),
        "gaussian_ot": gaussian.transport(control).astype(np.float32),
    }


def fold_plan(adata: AnnData, params: FitParams, holdout: str,
              targets: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labels, held-out-group labels and the folds (groups) to score; checks before any fit."""
    groupby, source = params.groupby, params.source
    if params.split_by:
        raise ValueError(
            "evaluate(holdout=...) refits maps without split_by strata; refit with "
            "split_by=None (use groups= for patients or cell lines) to evaluate by holdout."
        )
    if holdout == groupby:
        raise ValueError(
            f"holdout={holdout!r} equals groupby: hold out units that contain both control and "
            "perturbed cells, e.g. holdout='patient_id'."
        )
    labels = inputs.group_labels(adata, groupby, "groupby").to_numpy()
    units = inputs.group_labels(adata, holdout, "holdout").to_numpy()
    without_source = sorted(set(units) - set(units[labels == source]))
    if without_source:
        raise ValueError(
            f"holdout={holdout!r}: group(s) {without_source[:10]} have no {source!r} (source) "
            "cells, so their response cannot be predicted from their own controls. Leave them "
            f"out first: adata = adata[~adata.obs[{holdout!r}].isin({without_source[:10]})].copy()."
        )
    if params.groups:
        # Maps fitted with groups may predict a new group relative to its own control cells.
        counts = {u: int(((units == u) & (labels == source)).sum()) for u in set(units)}
        few = sorted(u for u, n in counts.items() if n < MIN_GROUP_POINTS)
        if few:
            raise ValueError(
                f"holdout={holdout!r}: group(s) {few[:10]} have fewer than {MIN_GROUP_POINTS} "
                f"{source!r} (source) cells; maps fitted with groups= predict a new group from "
                "the mean of its own control cells. Leave those groups out first: adata = "
                f"adata[~adata.obs[{holdout!r}].isin({few[:10]})].copy()."
            )
    folds = sorted(set(units))
    if len(folds) < 2:
        raise ValueError(
            f"holdout={holdout!r} has {len(folds)} group; leave-one-group-out needs at least 2."
        )
    scored = [u for u in folds if any(((units == u) & (labels == t)).sum() >= MIN_FOLD_CELLS
                                      for t in targets)]
    if not scored:
        raise ValueError(
            f"No group of obs[{holdout!r}] has {MIN_FOLD_CELLS} or more cells of a fitted target; "
            "nothing to evaluate."
        )
    return labels, units, scored


def evaluate_holdout(adata: AnnData, stored: dict[str, Any], holdout: str,
                     targets: list[str], score: Callable, max_cells: int, seed: int,
                     device: str) -> pd.DataFrame:
    """One row per (held-out group, target, method): the model refitted without that group.

    ``score(predicted, observed, control)`` returns the metrics of one method.
    """
    params = fit_params(stored)
    labels, units, folds = fold_plan(adata, params, holdout, targets)
    fit_units = (inputs.group_labels(adata, params.groups, "groups").to_numpy()
                 if params.groups else None)
    model_params = _refit_arguments(params, device)
    rng = np.random.default_rng(seed)
    read = lambda rows: inputs.read_rows(adata, rows, params.use_rep, params.layer)  # noqa: E731
    records = []
    for fold in folds:
        in_fold = units == fold
        train_source = np.flatnonzero(~in_fold & (labels == params.source))
        held_source = np.flatnonzero(in_fold & (labels == params.source))
        pairs = []
        for target in targets:
            train_target = np.flatnonzero(~in_fold & (labels == target))
            held_target = np.flatnonzero(in_fold & (labels == target))
            if len(held_target) >= MIN_FOLD_CELLS and len(train_target) >= MIN_FOLD_CELLS:
                pairs.append((target, train_target, held_target))
        if not pairs or len(train_source) < MIN_FOLD_CELLS:
            continue
        source_train, control = read(train_source), read(held_source)
        kwargs = {}
        if fit_units is not None:
            kwargs = {"source_groups": [fit_units[train_source]] * len(pairs),
                      "target_groups": [fit_units[rows] for _, rows, _ in pairs]}
        maps = TransportMap.fit_many([source_train] * len(pairs),
                                     [read(rows) for _, rows, _ in pairs], **kwargs, **model_params)
        for (target, train_target, held_target), tmap in zip(pairs, maps, strict=True):
            groups = None if fit_units is None else fit_units[held_source]
            predictions = {params.model: tmap.transport(control, groups=groups),
                           **baseline_predictions(source_train, read(train_target), control)}
            base = {"holdout": fold, "target": target}
            records += _score_fold(predictions, read(held_target), control, base, tmap,
                                   params.model, score, max_cells, rng)
    return _sorted_table(records, params.model)


def _refit_arguments(params: FitParams, device: str) -> dict[str, Any]:
    """The stored estimator arguments, ready for ``TransportMap.fit_many`` on ``device``."""
    return {**params.model_params, "device": device, "progress": False}


def _score_fold(predictions: dict[str, np.ndarray], observed: np.ndarray, control: np.ndarray,
                base: dict[str, Any], tmap: TransportMap, model_name: str, score: Callable,
                max_cells: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Records of one (fold, target): every method, and the floor of two observed halves."""
    pick_source = subsample(np.arange(len(control)), max_cells, rng)
    pick_target = subsample(np.arange(len(observed)), max_cells, rng)
    halves = rng.permutation(len(observed))
    base = {**base, "n_observed": len(pick_target)}
    choice = {"frame": tmap.frame_, "shrinkage": tmap.shrinkage_,
              "residual_weight": tmap.residual_weight_}
    records = []
    for method, values in predictions.items():
        records.append({**base, "method": method, "n_predicted": len(pick_source),
                        **score(values[pick_source], observed[pick_target], control[pick_source]),
                        **(choice if method == model_name else {})})
    first, second = halves[: len(halves) // 2], halves[len(halves) // 2 :]
    records.append({**base, "method": "observed", "n_predicted": len(first),
                    "n_observed": len(second),
                    **score(observed[first], observed[second], control[pick_source])})
    return records


def _sorted_table(records: list[dict[str, Any]], model_name: str) -> pd.DataFrame:
    columns = ["holdout", "target", "method", "n_predicted", "n_observed", "mmd",
               "energy_distance", "r2_mean", "signature_l2", "frame", "shrinkage",
               "residual_weight"]
    table = pd.DataFrame.from_records(records).reindex(columns=columns)
    table["frame"] = table["frame"].fillna("").astype(str)  # h5ad-writable: no NaN in strings
    order = {name: i for i, name in enumerate([model_name, *BASELINES, "observed"])}
    return table.sort_values(
        ["holdout", "target", "method"],
        key=lambda column: column.map(order) if column.name == "method" else column,
    ).reset_index(drop=True)
