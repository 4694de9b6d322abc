"""Small helpers shared by the model classes: devices, layer widths and the optimiser."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

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


#: Devices on which torch has a fused (single-kernel) Adam update.
FUSED_ADAM_DEVICES = ("cpu", "cuda")


def make_adam(params: Iterable[torch.nn.Parameter], **options: Any) -> torch.optim.Adam:
    """``torch.optim.Adam`` with the fused update where torch has one (CPU and CUDA).

    The same update rule as the default implementation, in one kernel instead of about a
    dozen small operations per parameter tensor: measured 0.22 ms instead of 0.80 ms per
    step for a HyCNN 48x4 (D = 64) on 2 CPU cores, which a minimax iteration pays three times.

    Examples
    --------
    >>> make_adam(torch.nn.Linear(2, 1).parameters(), lr=1e-3).defaults["fused"]
    True
    """
    params = list(params)
    if all(p.device.type in FUSED_ADAM_DEVICES and p.is_floating_point() for p in params):
        try:
            return torch.optim.Adam(params, fused=True, **options)
        except RuntimeError:  # torch < 2.4 has no fused Adam on the CPU
            pass
    return torch.optim.Adam(params, **options)
