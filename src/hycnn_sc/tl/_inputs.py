"""Validation and extraction of AnnData inputs for :mod:`hycnn_sc.tl`.

Every check raises before anything is trained or written, with a message that names the
argument, the bad value and the fix.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

#: Fewest cells a group needs: a few for training and some held out for evaluation.
MIN_CELLS = 4
#: Rows densified at a time when reading a sparse or backed matrix.
READ_CHUNK = 50_000


def check_adata(adata: Any) -> AnnData:
    if not isinstance(adata, AnnData):
        raise TypeError(f"adata must be an AnnData object, got {type(adata).__name__}.")
    return adata


def group_labels(adata: AnnData, groupby: str) -> pd.Series:
    """``obs[groupby]`` as strings, checking it exists and is categorical-like."""
    if not isinstance(groupby, str):
        raise TypeError(f"groupby must be the name of an obs column, got {groupby!r}.")
    if groupby not in adata.obs:
        raise KeyError(
            f"groupby={groupby!r} is not a column of adata.obs; available: {list(adata.obs.columns)}."
        )
    column = adata.obs[groupby]
    if pd.api.types.is_float_dtype(column) and column.nunique() > 0.5 * len(column):
        raise ValueError(
            f"obs[{groupby!r}] looks continuous ({column.nunique()} distinct float values); "
            "groupby must hold condition labels. Convert it with .astype('category')."
        )
    if column.isna().any():
        raise ValueError(
            f"obs[{groupby!r}] has {int(column.isna().sum())} missing labels; fill or drop them first."
        )
    return column.astype(str)


def resolve_targets(labels: pd.Series, groupby: str, source: str, target) -> list[str]:
    """The target labels to fit, checking they and ``source`` exist and differ."""
    present = list(pd.unique(labels))
    if str(source) not in present:
        raise KeyError(f"source={source!r} is not a label of obs[{groupby!r}]; labels: {present}.")
    if target is None:
        targets = [label for label in present if label != str(source)]
        if not targets:
            raise ValueError(f"obs[{groupby!r}] holds only the source label {source!r}: nothing to map to.")
        return targets
    targets = [target] if isinstance(target, str) else list(target)
    if not targets:
        raise ValueError("target is an empty list; pass a label, a list of labels or None (all).")
    targets = [str(t) for t in targets]
    missing = [t for t in targets if t not in present]
    if missing:
        raise KeyError(f"target label(s) {missing} not in obs[{groupby!r}]; labels: {present}.")
    if str(source) in targets:
        raise ValueError(f"target {source!r} equals the source label: a map from a group to itself is trivial.")
    if len(set(targets)) != len(targets):
        raise ValueError(f"target holds duplicates: {targets}.")
    return targets


def check_group_sizes(counts: dict[tuple[str, str], int], groupby: str, split_by: str | None) -> None:
    small = {key: n for key, n in counts.items() if n < MIN_CELLS}
    if small:
        described = ", ".join(
            f"{label!r}" + (f" in {split_by}={stratum!r}" if split_by else "") + f": {n}"
            for (label, stratum), n in small.items()
        )
        raise ValueError(
            f"Every group needs at least {MIN_CELLS} cells (some are held out for evaluation); "
            f"too few cells in obs[{groupby!r}] for {described}. Drop these labels via target=, "
            "or merge strata."
        )


def get_matrix(adata: AnnData, use_rep: str | None, layer: str | None):
    """The representation matrix (``obsm[use_rep]``, ``layers[layer]`` or ``X``), checked to exist."""
    if use_rep is not None and layer is not None:
        raise ValueError("Pass either use_rep (an obsm key) or layer (with use_rep=None), not both.")
    if use_rep is not None:
        if use_rep not in adata.obsm:
            hint = " Run scanpy.pp.pca(adata) first." if use_rep == "X_pca" else ""
            raise KeyError(
                f"use_rep={use_rep!r} is not in adata.obsm (keys: {list(adata.obsm.keys())}).{hint} "
                "Use use_rep=None to work on adata.X."
            )
        matrix = adata.obsm[use_rep]
    elif layer is not None:
        if layer not in adata.layers:
            raise KeyError(f"layer={layer!r} is not in adata.layers (keys: {list(adata.layers.keys())}).")
        matrix = adata.layers[layer]
    else:
        matrix = adata.X
        if matrix is None:
            raise ValueError("adata.X is empty; pass use_rep or layer.")
    if isinstance(matrix, pd.DataFrame):
        matrix = matrix.to_numpy()
    if len(matrix.shape) != 2:
        raise ValueError(f"The representation must be 2-D, got shape {matrix.shape}.")
    return matrix


def representation_name(use_rep: str | None, layer: str | None) -> str:
    return f"obsm[{use_rep!r}]" if use_rep else (f"layers[{layer!r}]" if layer else "X")


def read_rows(adata: AnnData, rows: np.ndarray, use_rep: str | None, layer: str | None,
              *, what: str = "the representation") -> np.ndarray:
    """Dense float32 ``[len(rows), d]`` block of the representation, read in chunks.

    Sparse matrices are densified only for the selected rows; backed ``X`` is read chunk by
    chunk; NaN, inf and non-numeric data raise.
    """
    name = representation_name(use_rep, layer)
    matrix = get_matrix(adata, use_rep, layer)
    dtype = getattr(matrix, "dtype", None)
    if dtype is None or not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
        raise TypeError(f"{name} has dtype {dtype}; it must be numeric. Convert it to float.")
    rows = np.asarray(rows)
    blocks = []
    for start in range(0, len(rows), READ_CHUNK):
        index = rows[start : start + READ_CHUNK]
        # h5py (backed mode) needs increasing indices: read sorted, then restore the order.
        order = np.argsort(index, kind="stable")
        block = matrix[index[order]]
        if hasattr(block, "toarray"):
            block = block.toarray()
        block = np.asarray(block)[np.argsort(order, kind="stable")]
        blocks.append(np.asarray(block, dtype=np.float32))
    dense = np.concatenate(blocks) if blocks else np.empty((0, 0), np.float32)
    finite = np.isfinite(dense)
    if not finite.all():
        bad = int((~finite).any(axis=1).sum())
        raise ValueError(
            f"{name} holds NaN or inf values in {bad} of {len(rows)} cells of {what}; "
            "remove or impute those cells first."
        )
    return dense


def warn_if_counts(values: np.ndarray, use_rep: str | None, name: str) -> None:
    """Warn when gene-space input looks like raw counts (integers with a large maximum)."""
    if use_rep is not None or values.size == 0:
        return
    sample = values[: min(len(values), 2000)]
    if sample.max() > 50 and np.allclose(sample, np.round(sample)):
        warnings.warn(
            f"{name} looks like raw counts (integer values up to {sample.max():.0f}); maps are "
            "usually fitted on log-normalised data or a PCA. Run scanpy.pp.normalize_total and "
            "scanpy.pp.log1p (and pca) first, or pass use_rep.",
            UserWarning,
            stacklevel=3,
        )


def check_not_constant(values: np.ndarray, name: str) -> None:
    if len(values) > 1 and float(values.std(axis=0).max()) <= 1e-12:
        raise ValueError(
            f"{name} is constant across cells (zero variance in every feature): nothing to "
            "transport. Check use_rep/layer."
        )


def split_cells(groups: dict[Any, np.ndarray], fraction: float, seed: int) -> dict[Any, np.ndarray]:
    """A boolean held-out mask per group: ``round(fraction * n)`` cells, at least 1, at most n-2."""
    rng = np.random.default_rng(seed)
    masks = {}
    for key, rows in groups.items():
        n = len(rows)
        n_held = 0 if fraction == 0 else min(max(int(round(fraction * n)), 1), n - 2)
        mask = np.zeros(n, dtype=bool)
        mask[rng.permutation(n)[:n_held]] = True
        masks[key] = mask
    return masks


def check_fraction(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}.")


def labels_sequence(value: Any) -> Sequence[str]:
    return [value] if isinstance(value, str) else list(value)
