"""Conditional fits of :func:`hycnn_sc.tl.fit_transport` (``conditional=True``): one network for all conditions.

Kept apart from ``_fit.py``: this module turns AnnData columns into (source, target,
condition) triples for :class:`~hycnn_sc.models.ConditionalTransportMap`, and back into the
stored entries and predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._warnings import warn_user
from ..models.conditional_transport import ConditionalTransportMap
from ..models.transport import MIN_GROUP_POINTS
from . import _inputs as inputs
from ._schema import map_id

#: Joins covariate values into the stratum name of a conditional map entry.
STRATUM_SEP = "|"


def check_conditional_args(adata: AnnData, *, conditional: bool, covariates, combination_sep,
                           dose_key, split_by, groups, groupby: str) -> list[str]:
    """Validate the conditional arguments (before anything is read); the covariate columns."""
    if not isinstance(conditional, bool):
        raise TypeError(f"conditional must be True or False, got {conditional!r}.")
    if not conditional:
        given = [name for name, value in (("covariates", covariates), ("dose_key", dose_key))
                 if value is not None]
        if combination_sep != "+":
            given.append("combination_sep")
        if given:
            raise ValueError(
                f"{', '.join(given)} only apply to conditional=True (one network for all "
                "conditions); pass conditional=True or leave them out."
            )
        return []
    if split_by is not None:
        raise ValueError(
            "conditional=True cannot be combined with split_by: separate maps per stratum are "
            f"what a conditional map replaces. Pass covariates=[{split_by!r}] instead (the "
            "stratum becomes part of the condition)."
        )
    if groups is not None:
        raise ValueError(
            "conditional=True does not take groups=: pass the column (e.g. 'patient_id') as a "
            "covariate (covariates=[...]); a new group is then predicted from its control cells."
        )
    if not isinstance(combination_sep, str) or not combination_sep:
        raise ValueError(f"combination_sep must be a non-empty string, got {combination_sep!r}.")
    columns = [] if covariates is None else inputs.labels_sequence(covariates)
    for column in columns:
        if column == groupby:
            raise ValueError(
                f"covariates holds groupby={groupby!r}: the perturbation is already the "
                "condition; covariates are context columns (cell type, cell line, patient)."
            )
        inputs.group_labels(adata, column, "covariates")
    if len(set(columns)) < len(columns):
        raise ValueError(f"covariates lists a column more than once: {columns}.")
    if dose_key is not None:
        dose_values(adata, dose_key)
    return columns


def dose_values(adata: AnnData, dose_key: str) -> np.ndarray:
    """``obs[dose_key]`` as finite floats, with a clear error otherwise."""
    column = inputs.obs_column(adata, dose_key, "dose_key")
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        raise TypeError(
            f"dose_key={dose_key!r}: obs[{dose_key!r}] must be numeric (e.g. a log-dose), got "
            f"dtype {column.dtype}. Convert it: adata.obs[{dose_key!r}] = "
            f"pd.to_numeric(adata.obs[{dose_key!r}])."
        )
    values = column.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(
            f"dose_key={dose_key!r}: obs[{dose_key!r}] has {int((~np.isfinite(values)).sum())} "
            "missing or infinite value(s); give every cell a dose (controls too, e.g. 0)."
        )
    return values


def split_context(context: str, covariates: Sequence[str]) -> tuple[str, ...]:
    return tuple(context.split(STRATUM_SEP)) if covariates else ()


def conditional_pairs(labels: np.ndarray, contexts: np.ndarray, doses: np.ndarray | None,
                      source: str, targets: list[str]) -> tuple[dict, list]:
    """Cell rows per (label, context[, dose]) group and the conditions that get a map."""
    cell_groups: dict[tuple[str, str], np.ndarray] = {}
    pairs = []
    for context in pd.unique(contexts):
        in_context = contexts == context
        source_rows = np.flatnonzero(in_context & (labels == source))
        if len(source_rows) == 0:
            continue
        for label in targets:
            rows = np.flatnonzero(in_context & (labels == label))
            dose_levels = [None] if doses is None else sorted(set(doses[rows].tolist()))
            for dose in dose_levels:
                chosen = rows if dose is None else rows[doses[rows] == dose]
                if len(chosen) == 0:
                    continue
                name = context if dose is None else f"{context}{STRATUM_SEP}dose={dose:g}"
                cell_groups[(source, context)] = source_rows
                cell_groups[(label, name)] = chosen
                pairs.append((label, context, dose, name))
    return cell_groups, pairs


def fit_conditional(values: np.ndarray, position: np.ndarray, cell_groups: dict, pairs: list,
                    held_out: dict, covariates: Sequence[str], source: str,
                    params: dict[str, Any]) -> ConditionalTransportMap:
    """Fit one :class:`ConditionalTransportMap` on the training cells of every pair."""
    arrays = {key: values[position[rows[~held_out[key]]]] for key, rows in cell_groups.items()}
    sources = [arrays[(source, context)] for _, context, _, _ in pairs]
    targets = [arrays[(label, name)] for label, _, _, name in pairs]
    doses = None if pairs[0][2] is None else [dose for _, _, dose, _ in pairs]
    return ConditionalTransportMap(**params).fit(
        sources, targets, [label for label, _, _, _ in pairs],
        contexts=[split_context(context, covariates) for _, context, _, _ in pairs], doses=doses,
    )


def predict_source_cells(cmap: ConditionalTransportMap, values: np.ndarray, contexts: np.ndarray,
                         rows: np.ndarray, label: str, dose: float | None,
                         covariates: Sequence[str]) -> np.ndarray:
    """Predictions of ``label`` for source cells ``rows`` (positions in ``values``), per context.

    Contexts with fewer than ``MIN_GROUP_POINTS`` cells that were not seen at fit time stay
    ``NaN`` (with a warning): a new context is encoded from its own control cells.
    """
    out = np.full((len(rows), values.shape[1]), np.nan, dtype=np.float32)
    too_small = []
    for context in pd.unique(contexts):
        mine = np.flatnonzero(contexts == context)
        key = split_context(str(context), covariates)
        if key not in cmap.context_means_ and len(mine) < MIN_GROUP_POINTS:
            too_small.append(str(context))
            continue
        out[mine] = cmap.transport(values[rows[mine]], label, context=key, dose=dose)
    if too_small:
        warn_user(
            f"No {label!r} prediction for context(s) {too_small[:10]}: they were not seen at fit "
            f"time and have fewer than {MIN_GROUP_POINTS} source cells to encode them from; "
            "their rows are NaN.",
            UserWarning,
        )
    return out


def map_entries(pairs: list, covariates: Sequence[str]) -> dict[str, dict[str, Any]]:
    """One stored entry per fitted condition: its target, stratum and condition."""
    entries = {}
    for label, context, dose, name in pairs:
        entries[map_id(label, name or None)] = {
            "target": str(label), "stratum": str(name), "conditional": 1,
            "context": np.asarray(split_context(context, covariates), dtype=object),
            "dose": float("nan") if dose is None else float(dose),
        }
    return entries
