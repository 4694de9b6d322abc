"""Shared helpers of :mod:`hycnn_sc.pl`: reading what :mod:`hycnn_sc.tl` stored, finishing figures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..tl import _inputs as inputs
from ..tl._schema import (
    EVALUATION,
    find_maps,
    fit_params,
    fitted_scalars,
    obsm_key,
    read_fitted,
)

#: Colours shared by all plots: control, observed target, predicted target, background cells.
COLORS = {
    "control": "#7f7f7f",
    "observed": "tab:blue",
    "predicted": "tab:orange",
    "other": "#dcdcdc",
}


def fitted(adata: AnnData, key: str) -> dict[str, Any]:
    """``adata.uns[key]`` written by ``fit_transport``, or an error saying to run it."""
    return read_fitted(inputs.check_adata(adata), key)


def params(stored: dict[str, Any]) -> dict[str, Any]:
    """The stored fit parameters, decoded by :class:`~hycnn_sc.tl._schema.FitParams` (``None``
    for ``""`` placeholders, ``targets`` a list), as a dict keyed by field name."""
    return asdict(fit_params(stored))


def maps_for(stored: dict[str, Any], target: str | None) -> dict[str, dict[str, Any]]:
    """Map entries of ``target`` (all when None), with the stored error for unknown targets."""
    return find_maps(stored, target)


def resolve_target(p: dict[str, Any], target: str | None) -> str:
    """``target``, or the only fitted target when it is None."""
    if target is not None:
        return str(target)
    if len(p["targets"]) == 1:
        return p["targets"][0]
    raise ValueError(f"Several targets were fitted; pass target= one of {p['targets']}.")


def fitted_state(entry: dict[str, Any]) -> dict[str, Any]:
    """The ``fitted`` scalars (``best_iteration_``, ``converged_``, ...) of one stored map."""
    return fitted_scalars(entry)


def predictions(adata: AnnData, key: str, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the source cells with a prediction for ``target`` and those predictions."""
    name = obsm_key(key, target)
    if name not in adata.obsm:
        raise KeyError(
            f"adata.obsm[{name!r}] (predictions for {target!r}) is missing: run "
            f"hycnn_sc.tl.fit_transport(adata, ..., key_added={key!r}) first."
        )
    block = np.asarray(adata.obsm[name], dtype=np.float32)
    rows = np.flatnonzero(np.isfinite(block).all(axis=1))
    if len(rows) == 0:
        raise ValueError(f"adata.obsm[{name!r}] holds no finite prediction; refit the maps.")
    return rows, block[rows]


def evaluation_table(stored: dict[str, Any], key: str) -> pd.DataFrame:
    """``adata.uns[key]['evaluation']`` as a DataFrame, or an error saying to run evaluate."""
    table = stored.get(EVALUATION)
    if table is None:
        raise KeyError(
            f"adata.uns[{key!r}] holds no 'evaluation' table: run "
            f"hycnn_sc.tl.evaluate(adata, key={key!r}) first."
        )
    table = pd.DataFrame(table) if not isinstance(table, pd.DataFrame) else table
    if table.empty:
        raise ValueError(
            f"adata.uns[{key!r}]['evaluation'] is empty: run hycnn_sc.tl.evaluate again."
        )
    return table


def labels(adata: AnnData, column: str) -> np.ndarray:
    if column not in adata.obs:
        raise KeyError(f"obs[{column!r}], used at fit time, is no longer in adata.obs.")
    return adata.obs[column].astype(str).to_numpy()


def point_size(n_points: int) -> float:
    """Marker area for a scatter of ``n_points`` points (scanpy-like, but smaller)."""
    return float(np.clip(10000.0 / max(n_points, 1), 0.5, 30.0))


def _root(ax: Axes) -> Figure:
    """The top-level Figure of ``ax`` (also inside subfigures, on every matplotlib version)."""
    fig = ax.figure
    while not isinstance(fig, Figure) and getattr(fig, "figure", fig) is not fig:
        fig = fig.figure
    return fig


def new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        return fig, ax
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}.")
    return _root(ax), ax


def split_axes(ax: Axes | Sequence[Axes] | None, n: int, figsize: tuple[float, float],
               **gridspec: Any) -> tuple[Figure, list[Axes]]:
    """``n`` side-by-side Axes: new ones, the ``n`` passed, or one passed Axes split in ``n``."""
    if ax is None:
        fig, axes = plt.subplots(1, n, figsize=figsize, layout="constrained", squeeze=False)
        return fig, list(axes[0])
    if isinstance(ax, Axes):
        fig = _root(ax)
        spec = ax.get_subplotspec()
        ax.remove()
        if spec is not None:
            sub = spec.subgridspec(1, n, **gridspec)
            return fig, [fig.add_subplot(sub[0, i]) for i in range(n)]
        x0, y0, width, height = ax.get_position().bounds
        gap = 0.25 * width / n
        each = (width - gap * (n - 1)) / n
        return fig, [fig.add_axes((x0 + i * (each + gap), y0, each, height)) for i in range(n)]
    axes = list(ax)
    if len(axes) != n or not all(isinstance(a, Axes) for a in axes):
        raise TypeError(f"ax must be one matplotlib Axes or a sequence of {n} Axes.")
    return _root(axes[0]), axes


def finish(fig: Figure, axes: Any, *, show: bool | None, save: bool | str | None,
           return_fig: bool, writekey: str) -> Any:
    """scanpy's convention: save, then return the Figure, show, or return the Axes.

    ``save`` works as in scanpy: ``True`` writes ``{settings.figdir}/{writekey}.{ext}``, a
    string is appended to ``writekey`` (with its extension, if any, as the format).
    """
    from scanpy import settings

    save = settings.autosave if save is None else save
    if save:
        suffix, ext = ("", settings.file_format_figs) if save is True else (str(save), None)
        for candidate in (".png", ".pdf", ".svg"):
            if suffix.endswith(candidate):
                suffix, ext = suffix[: -len(candidate)], candidate[1:]
        ext = ext or settings.file_format_figs
        folder = Path(settings.figdir)
        folder.mkdir(parents=True, exist_ok=True)
        fig.savefig(folder / f"{writekey}{suffix}{settings.plot_suffix}.{ext}",
                    bbox_inches="tight")
    if return_fig:
        return fig
    show = settings.autoshow if show is None else show
    if show:
        plt.show()
        return None
    return axes


#: The ``adata`` and ``key`` parameters of the plots of fitted maps (``{fitted_arguments}``).
FITTED_ARGUMENTS = """\
adata
    AnnData with maps fitted by :func:`~hycnn_sc.tl.fit_transport`.
key
    ``key_added`` of :func:`~hycnn_sc.tl.fit_transport`."""
