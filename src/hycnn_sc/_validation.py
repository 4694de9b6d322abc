"""Input checks shared by ``models``, ``metrics`` and ``tl``: arrays, numbers, seeds, JSON.

Every check raises before any work is done, with a message that names the argument, the bad
value and the fix. Names are used as given (pass ``"`x`"`` to have them quoted).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: ``numpy.dtype.kind`` of real numbers: booleans, signed and unsigned integers, floats.
REAL_KINDS = "biuf"


def to_numpy(data: Any) -> np.ndarray:
    """A numpy array of ``data``: torch tensors are copied to the host, sparse matrices densified."""
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    if hasattr(data, "toarray"):  # scipy sparse
        data = data.toarray()
    return np.asarray(data)


def check_real_dtype(dtype: Any, name: str, hint: str = "") -> None:
    """Raise a TypeError unless ``dtype`` (numpy or torch) holds real numbers.

    Examples
    --------
    >>> check_real_dtype(np.dtype("U1"), "x")
    Traceback (most recent call last):
    ...
    TypeError: x has dtype <U1; it must hold real numbers (a numeric array, not complex, text or objects).
    """
    if isinstance(dtype, torch.dtype):
        real = not dtype.is_complex
    else:
        real = dtype is not None and np.dtype(dtype).kind in REAL_KINDS
    if not real:
        raise TypeError(
            f"{name} has dtype {dtype}; it must hold real numbers (a numeric array, not "
            f"complex, text or objects).{hint}"
        )


def check_shape(shape: tuple[int, ...], name: str, *, min_rows: int = 1,
                n_features: int | None = None, reference: str = "the model was fitted on",
                why: str = "") -> None:
    """Raise a ValueError unless ``shape`` is ``(n_cells >= min_rows, n_features >= 1)``.

    ``n_features``, when given, is the width required, described by ``reference`` (``"x has 3
    features but <reference> 2."``); ``why`` ends the message on too few rows.
    """
    shape = tuple(shape)
    bare = name.strip("`")
    if len(shape) != 2:
        raise ValueError(
            f"{name} must be 2-D with shape (n_cells, n_features), got shape {shape}; reshape "
            f"1-D data with {bare}[:, None] (one feature) or {bare}[None, :] (one cell)."
        )
    if shape[1] == 0:
        raise ValueError(f"{name} has no features (shape {shape}).")
    if shape[0] < min_rows:
        raise ValueError(f"{name} has {shape[0]} row(s); at least {min_rows} are needed{why}.")
    if n_features is not None and shape[1] != n_features:
        raise ValueError(
            f"{name} has {shape[1]} features but {reference} {n_features}; pass the same "
            "features (genes, components) in the same order."
        )


def check_finite(array: np.ndarray | torch.Tensor, name: str) -> None:
    """Raise a ValueError naming how many rows of a 2-D array or tensor hold NaN or inf."""
    if isinstance(array, torch.Tensor):
        finite = torch.isfinite(array)
        if bool(finite.all()):
            return
        bad = int((~finite).any(dim=1).sum())
    else:
        finite = np.isfinite(array)
        if finite.all():
            return
        bad = int((~finite).any(axis=1).sum())
    raise ValueError(
        f"{name} holds NaN or infinite values in {bad} of {len(array)} rows; remove or impute "
        "them first."
    )


def check_array(data: Any, name: str, *, min_rows: int = 1, n_features: int | None = None,
                reference: str = "the model was fitted on", why: str = "",
                dtype: Any = None) -> np.ndarray:
    """Check a finite 2-D real array of cells x features; return it (cast to ``dtype`` if given).

    Accepts numpy arrays, nested lists, torch tensors and scipy sparse matrices (densified).
    See :func:`check_shape` for ``min_rows``, ``n_features``, ``reference`` and ``why``.

    Examples
    --------
    >>> check_array([[1, 2], [3, 4]], "x", dtype=np.float32).dtype
    dtype('float32')
    >>> check_array([1.0, 2.0], "x")
    Traceback (most recent call last):
    ...
    ValueError: x must be 2-D with shape (n_cells, n_features), got shape (2,); reshape 1-D data with x[:, None] (one feature) or x[None, :] (one cell).
    """
    array = to_numpy(data)
    check_real_dtype(array.dtype, name)
    check_shape(array.shape, name, min_rows=min_rows, n_features=n_features,
                reference=reference, why=why)
    check_finite(array, name)
    return array if dtype is None else np.ascontiguousarray(array, dtype=dtype)


def as_float_array(data: Any, name: str, *, n_features: int | None = None) -> np.ndarray:
    """A finite 2-D real array as contiguous float32 (the models' input check)."""
    return check_array(data, name, n_features=n_features, dtype=np.float32)


def check_positive(value: Any, name: str, *, integer: bool = False, allow_zero: bool = False) -> None:
    """Raise an error naming ``name`` when ``value`` is not a positive (or non-negative) number.

    Examples
    --------
    >>> check_positive(0, "lr")
    Traceback (most recent call last):
    ...
    ValueError: lr must be > 0, got 0.
    """
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a number"
        raise TypeError(f"{name} must be {kind}, got {value!r}.")
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}.")


def check_seed(seed: Any) -> int:
    """A non-negative int seed; ``None`` draws a fresh one (returned, so that it can be stored).

    Examples
    --------
    >>> check_seed(3)
    3
    >>> check_seed(-1)
    Traceback (most recent call last):
    ...
    ValueError: seed must be a non-negative int or None, got -1.
    """
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1)[0])
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}.")
    return int(seed)


def make_generator(seed: Any) -> tuple[torch.Generator, int]:
    """A CPU torch generator seeded by :func:`check_seed` ``(seed)``, and that seed."""
    seed = check_seed(seed)
    return torch.Generator().manual_seed(seed), seed


def json_default(value: Any) -> Any:
    """JSON encoding of numpy scalars (``json.dumps(..., default=json_default)``).

    Examples
    --------
    >>> import json
    >>> json.dumps({"n": np.int64(3)}, default=json_default)
    '{"n": 3}'
    """
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
