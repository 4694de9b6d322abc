"""Validation and extraction of AnnData inputs for :mod:`hycnn_sc.tl`.

Every check raises before anything is trained or written, with a message that names the
argument, the bad value and the fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._validation import check_real_dtype
from .._warnings import warn_user

#: Fewest cells a group needs: a few for training and some held out for evaluation.
MIN_CELLS = 4
#: Rows densified at a time when reading a sparse or backed matrix.
READ_CHUNK = 50_000


def check_adata(adata: Any) -> AnnData:
    if not isinstance(adata, AnnData):
        raise TypeError(f"adata must be an AnnData object, got {type(adata).__name__}.")
    return adata


def obs_column(adata: AnnData, column: str, argument: str) -> pd.Series:
    """``obs[column]``, checking ``column`` is a str naming a column (``argument`` names it)."""
    if not isinstance(column, str):
        raise TypeError(f"{argument} must be the name of an obs column (a str), got {column!r}.")
    if column not in adata.obs:
        raise KeyError(
            f"{argument}={column!r} is not a column of adata.obs; available: "
            f"{list(adata.obs.columns)}."
        )
    return adata.obs[column]


def group_labels(adata: AnnData, column: str, argument: str = "groupby") -> pd.Series:
    """``obs[column]`` as strings, checking it exists and holds labels (``argument`` names it)."""
    values = obs_column(adata, column, argument)
    if pd.api.types.is_float_dtype(values) and values.nunique() > 0.5 * len(values):
        raise ValueError(
            f"{argument}={column!r}: obs[{column!r}] looks continuous ({values.nunique()} distinct "
            f"float values in {len(values)} cells); {argument} must name a column of labels "
            f"(e.g. 'condition'). If these floats are labels, convert them first: "
            f"adata.obs[{column!r}] = adata.obs[{column!r}].astype(str).astype('category')."
        )
    missing = int(values.isna().sum())
    if missing:
        raise ValueError(
            f"{argument}={column!r}: obs[{column!r}] has {missing} missing (NaN) label(s) of "
            f"{len(values)}; drop those cells first (adata = adata[adata.obs[{column!r}].notna()]"
            ".copy()) or give them a label."
        )
    return values.astype(str)


def resolve_targets(labels: pd.Series, groupby: str, source: Any, target: Any) -> list[str]:
    """The target labels to fit, checking they and ``source`` exist and differ."""
    present = [str(label) for label in pd.unique(labels)]
    shown = present if len(present) <= 40 else [*present[:40], "..."]
    if isinstance(source, (list, tuple, set, np.ndarray, pd.Index)):
        raise TypeError(f"source must be one label of obs[{groupby!r}], got {source!r}.")
    if str(source) not in present:
        raise KeyError(
            f"source={source!r} is not a label of obs[{groupby!r}]; labels: {shown}. Pass the "
            "label of the control cells."
        )
    if target is None:
        targets = [label for label in present if label != str(source)]
        if not targets:
            raise ValueError(
                f"obs[{groupby!r}] holds only the source label {source!r}: nothing to map to."
            )
        return targets
    if isinstance(target, str) or not isinstance(target, Iterable):
        targets = [target]
    else:
        targets = list(target)
    if not targets:
        raise ValueError(
            "target is empty; pass a label, a list of labels or None (every label but the source)."
        )
    targets = [str(t) for t in targets]
    missing = [t for t in targets if t not in present]
    if missing:
        raise KeyError(f"target label(s) {missing} not in obs[{groupby!r}]; labels: {shown}.")
    if str(source) in targets:
        raise ValueError(
            f"target includes the source label {str(source)!r}: a map from a group to itself is "
            "trivial; leave it out of target (target=None fits every other label)."
        )
    duplicated = sorted({t for t in targets if targets.count(t) > 1})
    if duplicated:
        raise ValueError(f"target lists {duplicated} more than once; pass each label once.")
    return targets


def check_group_sizes(counts: dict[tuple[str, str], int], groupby: str, split_by: str | None) -> None:
    small = {key: n for key, n in counts.items() if n < MIN_CELLS}
    if small:
        described = ", ".join(
            f"{label!r}" + (f" in {split_by}={stratum!r}" if split_by else "") + f" has {n}"
            for (label, stratum), n in small.items()
        )
        raise ValueError(
            f"Every group needs at least {MIN_CELLS} cells (some are held out for evaluation), "
            f"but in obs[{groupby!r}] {described}. Leave these labels out via target=, "
            "or merge strata."
        )


def get_matrix(adata: AnnData, use_rep: str | None, layer: str | None):
    """The representation matrix (``obsm[use_rep]``, ``layers[layer]`` or ``X``), checked to exist."""
    if use_rep is not None and not isinstance(use_rep, str):
        raise TypeError(f"use_rep must be an obsm key (a str) or None, got {type(use_rep).__name__}.")
    if layer is not None and not isinstance(layer, str):
        raise TypeError(f"layer must be a layers key (a str) or None, got {type(layer).__name__}.")
    if use_rep is not None and layer is not None:
        raise ValueError(
            f"Pass either use_rep (an obsm key) or layer, not both (got use_rep={use_rep!r}, "
            f"layer={layer!r}); use_rep defaults to 'X_pca', so to fit on a layer pass "
            f"use_rep=None, layer={layer!r}."
        )
    if use_rep is not None:
        if use_rep not in adata.obsm:
            hint = " Run scanpy.pp.pca(adata) first." if use_rep == "X_pca" else ""
            raise KeyError(
                f"use_rep={use_rep!r} is not in adata.obsm (keys: {list(adata.obsm.keys())}).{hint} "
                "Or pass use_rep=None to work on adata.X (or a layer)."
            )
        matrix = adata.obsm[use_rep]
    elif layer is not None:
        if layer not in adata.layers:
            raise KeyError(
                f"layer={layer!r} is not in adata.layers (keys: {list(adata.layers.keys())}); "
                "pass an existing layer or layer=None for adata.X."
            )
        matrix = adata.layers[layer]
    else:
        matrix = adata.X
        if matrix is None:
            raise ValueError("adata.X is None; pass use_rep (an obsm key) or layer.")
    if isinstance(matrix, pd.DataFrame):
        matrix = matrix.to_numpy()
    shape = getattr(matrix, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(
            f"{representation_name(use_rep, layer)} must be a 2-D [cells, features] matrix, got "
            f"shape {shape}."
        )
    if shape[1] == 0:
        raise ValueError(f"{representation_name(use_rep, layer)} has no features (shape {shape}).")
    return matrix


def shared_genes(genes: Any, reference: Any) -> int | None:
    """``None`` when both gene lists are equal, order included; else how many genes they share."""
    genes, reference = np.asarray(genes).astype(str), np.asarray(reference).astype(str)
    if len(genes) == len(reference) and np.array_equal(genes, reference):
        return None
    return len(np.intersect1d(genes, reference))


def representation_name(use_rep: str | None, layer: str | None) -> str:
    return f"obsm[{use_rep!r}]" if use_rep else (f"layers[{layer!r}]" if layer else "X")


def mean_rows(adata: AnnData, rows: np.ndarray | None, layer: str | None,
              columns: np.ndarray | None = None) -> np.ndarray:
    """Per-column float64 mean of ``X`` (or ``layer``) over ``rows`` (None: all cells).

    Read in chunks of ``READ_CHUNK`` rows (sparse blocks stay sparse, backed ``X`` is read
    chunk by chunk); ``columns`` restricts the columns.
    """
    matrix = get_matrix(adata, None, layer)
    if rows is not None:
        rows = np.sort(np.asarray(rows))
    n_rows = adata.n_obs if rows is None else len(rows)
    total = np.zeros(matrix.shape[1] if columns is None else len(columns), dtype=np.float64)
    for start in range(0, n_rows, READ_CHUNK):
        block = (matrix[start : start + READ_CHUNK] if rows is None
                 else matrix[rows[start : start + READ_CHUNK]])
        if columns is not None:
            block = block[:, columns]
        total += np.asarray(block.sum(axis=0), dtype=np.float64).ravel()
    return total / n_rows


def read_rows(adata: AnnData, rows: np.ndarray, use_rep: str | None, layer: str | None,
              *, what: str = "the representation") -> np.ndarray:
    """Dense float32 ``[len(rows), d]`` block of the representation, read in chunks.

    Sparse matrices are densified only for the selected rows; backed ``X`` is read chunk by
    chunk; NaN, inf and non-numeric data raise.
    """
    name = representation_name(use_rep, layer)
    matrix = get_matrix(adata, use_rep, layer)
    check_real_dtype(getattr(matrix, "dtype", None), name,
                     " Convert it, e.g. np.asarray(values, dtype=np.float32).")
    # Read each distinct row once, in increasing order (h5py, i.e. backed mode, needs that),
    # then restore the requested order and repeats.
    unique, inverse = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)
    blocks = []
    for start in range(0, len(unique), READ_CHUNK):
        block = matrix[unique[start : start + READ_CHUNK]]
        if hasattr(block, "toarray"):
            block = block.toarray()
        blocks.append(np.asarray(block, dtype=np.float32))
    dense = np.concatenate(blocks) if blocks else np.empty((0, matrix.shape[1]), np.float32)
    dense = dense[inverse.ravel()]
    finite = np.isfinite(dense)
    if not finite.all():
        bad = int((~finite).any(axis=1).sum())
        raise ValueError(
            f"{name} holds NaN or inf values in {bad} of {len(rows)} cells of {what}; "
            "remove those cells (adata = adata[mask].copy()) or impute the values first."
        )
    return dense


def warn_if_counts(values: np.ndarray, use_rep: str | None, name: str,
                   dtype: Any = None) -> None:
    """Warn when gene-space input looks like raw counts (integers, not log-normalised)."""
    if use_rep is not None or values.size == 0:
        return
    sample = values[: min(len(values), 2000)]
    integer_dtype = dtype is not None and np.issubdtype(dtype, np.integer)
    if integer_dtype or (sample.max() > 10 and np.array_equal(sample, np.round(sample))):
        warn_user(
            f"{name} looks like raw counts (integer values up to {sample.max():.0f}); maps are "
            "usually fitted on log-normalised data or a PCA. Run scanpy.pp.normalize_total and "
            "scanpy.pp.log1p (and pca) first, or pass use_rep.",
            UserWarning,
        )


def check_not_constant(values: np.ndarray, name: str) -> None:
    if len(values) > 1 and float(values.std(axis=0).max()) <= 1e-12:
        raise ValueError(
            f"{name} is constant across the {len(values)} cells of the fitted groups (zero "
            "variance in every feature): nothing to transport. Check use_rep/layer point at the "
            "expression or embedding you meant."
        )


def split_cells(groups: dict[Any, np.ndarray], fraction: float, seed: int) -> dict[Any, np.ndarray]:
    """A boolean held-out mask per group: ``round(fraction * n)`` cells, at least 1, at most n-2."""
    rng = np.random.default_rng(seed)
    masks = {}
    for key, rows in groups.items():
        n = len(rows)
        n_held = 0 if fraction == 0 else min(max(round(float(fraction) * n), 1), n - 2)
        mask = np.zeros(n, dtype=bool)
        mask[rng.permutation(n)[:n_held]] = True
        masks[key] = mask
    return masks


def check_fraction(value: float, name: str, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}.{hint}")


def labels_sequence(value: Any) -> Sequence[str]:
    return [value] if isinstance(value, str) else list(value)
