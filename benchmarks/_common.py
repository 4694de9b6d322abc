"""Shared helpers of the benchmark scripts: timing, seeds, table printing."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch


def machine() -> str:
    """One line describing where the benchmark ran."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), {device}"
    )


def timed(function: Callable[[], float]) -> tuple[float, float]:
    """Run ``function`` and return (its value, wall seconds)."""
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def mean_spread(values: list[float]) -> str:
    """``mean ± standard deviation`` (or the single value)."""
    array = np.asarray(values, dtype=float)
    if len(array) == 1:
        return f"{array[0]:.3f}"
    return f"{array.mean():.3f} ± {array.std(ddof=1):.3f}"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """A Markdown table, aligned for the terminal."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
