"""Small helpers shared by the model classes: devices, seeds, input checks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

_DEVICE_PREFIXES = ("cpu", "cuda", "mps")


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ... into a :class:`torch.device`.

    ``"auto"`` picks CUDA when it is available and the CPU otherwise.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}.")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.split(":")[0] not in _DEVICE_PREFIXES:
        raise ValueError(
            f"Unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps'."
        )
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available; use 'auto' or 'cpu'.")
    return resolved


def check_hidden(hidden: Sequence[int] | int, name: str = "hidden") -> tuple[int, ...]:
    """Validate a tuple of layer widths and return it as a tuple of ints."""
    if isinstance(hidden, (int, np.integer)):
        hidden = (int(hidden),)
    try:
        widths = tuple(hidden)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of positive ints, got {hidden!r}.") from None
    if len(widths) == 0:
        raise ValueError(f"{name} must hold at least one layer width, got {hidden!r}.")
    for width in widths:
        if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width <= 0:
            raise ValueError(
                f"{name} must hold positive integer widths, got {hidden!r}; e.g. hidden=(48, 48, 48, 48)."
            )
    return tuple(int(w) for w in widths)


def check_positive(value: float, name: str, *, integer: bool = False, allow_zero: bool = False) -> None:
    """Raise a ValueError naming ``name`` when ``value`` is not a positive (or non-negative) number."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a number"
        raise TypeError(f"{name} must be {kind}, got {value!r}.")
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}.")


def as_float_array(data, name: str, *, n_features: int | None = None) -> np.ndarray:
    """Check that ``data`` is a finite 2-D numeric array and return it as float32."""
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    if hasattr(data, "toarray"):
        data = data.toarray()
    array = np.asarray(data)
    if np.iscomplexobj(array):
        raise TypeError(f"{name} is complex; pass real-valued data.")
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.bool_)
    ):
        raise TypeError(f"{name} must be numeric, got an array of dtype {array.dtype}.")
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D [cells, features], got shape {array.shape}.")
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows).")
    if n_features is not None and array.shape[1] != n_features:
        raise ValueError(
            f"{name} has {array.shape[1]} features but the model was fitted on {n_features}."
        )
    finite = np.isfinite(array)
    if not finite.all():
        bad = int((~finite).any(axis=1).sum())
        raise ValueError(
            f"{name} holds NaN or inf in {bad} of {array.shape[0]} rows; remove or impute them first."
        )
    return np.ascontiguousarray(array, dtype=np.float32)


def make_generator(seed: int | None) -> tuple[torch.Generator, int]:
    """A CPU generator seeded by ``seed``; a fresh seed is drawn (and returned) when it is None."""
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}.")
    generator = torch.Generator().manual_seed(int(seed))
    return generator, int(seed)

