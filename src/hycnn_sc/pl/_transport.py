"""``hycnn_sc.pl.transport``: control, observed and predicted cells on one embedding."""

from __future__ import annotations

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from sklearn.neighbors import NearestNeighbors

from .._docs import EXAMPLE_FITTED, PLOT_RETURNS, doc_params, plot_arguments
from ..tl import _inputs as inputs
from ..tl._schema import split_key
from . import _utils as utils

_BASIS_LABELS = {"umap": "UMAP", "tsne": "tSNE", "pca": "PC", "diffmap": "DC",
                 "draw_graph_fa": "FA", "draw_graph_fr": "FR", "phate": "PHATE"}


def basis_key(adata: AnnData, basis: str) -> str:
    """The ``obsm`` key of ``basis`` (``"umap"`` -> ``"X_umap"``; full keys are accepted too)."""
    for name in (f"X_{basis}", basis):
        if name in adata.obsm:
            return name
    hint = f" Run scanpy.tl.{basis}(adata) first." if basis in ("umap", "tsne", "pca") else ""
    raise KeyError(
        f"basis={basis!r}: neither obsm['X_{basis}'] nor obsm[{basis!r}] exists "
        f"(obsm keys: {list(adata.obsm.keys())}).{hint}"
    )


def _components(components: str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """1-based components (scanpy's ``"1,2"`` or ``(1, 2)``) as 0-based column indices."""
    values = [int(c) for c in components.split(",")] if isinstance(components, str) else list(components)
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"components must be two 1-based indices such as (1, 2), got {components!r}.")
    return values[0] - 1, values[1] - 1


def knn_place(queries: np.ndarray, reference: np.ndarray, embedding: np.ndarray,
              n_neighbors: int = 15) -> np.ndarray:
    """Embedding position of each query: the mean position of its nearest reference cells.

    Parameters
    ----------
    queries
        ``[m, d]`` points in the representation the neighbours are searched in.
    reference
        ``[n, d]`` observed cells in the same representation.
    embedding
        ``[n, e]`` coordinates of the reference cells in the embedding.
    n_neighbors
        Neighbours averaged per query (capped at ``n``).

    Returns
    -------
    ``[m, e]`` positions.

    Examples
    --------
    >>> reference = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 1.0]])
    >>> embedding = np.array([[0.0, 0.0], [5.0, 5.0], [7.0, 5.0]])
    >>> knn_place(np.array([[10.0, 0.4]]), reference, embedding, n_neighbors=2)
    array([[6., 5.]])
    """
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be at least 1, got {n_neighbors}.")
    embedding = np.asarray(embedding, dtype=np.float64)
    if len(queries) == 0:
        return np.empty((0, embedding.shape[1]), dtype=np.float64)
    k = min(int(n_neighbors), len(reference))
    search = NearestNeighbors(n_neighbors=k).fit(np.asarray(reference, dtype=np.float64))
    nearest = search.kneighbors(np.asarray(queries, dtype=np.float64), return_distance=False)
    return embedding[nearest].mean(axis=1)


@doc_params(fitted_arguments=utils.FITTED_ARGUMENTS,
            plot_arguments=plot_arguments("hycnn_transport"), plot_returns=PLOT_RETURNS,
            example_fitted=EXAMPLE_FITTED)
def transport(
    adata: AnnData,
    *,
    key: str = "hycnn",
    target: str | None = None,
    basis: str = "umap",
    components: str | tuple[int, int] = (1, 2),
    arrows: int = 0,
    n_neighbors: int = 15,
    seed: int = 0,
    size: float | None = None,
    title: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: bool | str | None = None,
) -> Figure | Axes | None:
    """Control, observed perturbed and predicted cells on one embedding.

    Control (source) cells are grey, observed cells of ``target`` blue and the maps'
    predictions for the control cells (``adata.obsm[f"{key}_{target}"]``, written by
    :func:`~hycnn_sc.tl.fit_transport`) orange; all other cells, if any, light grey behind.

    Where the predictions are drawn:

    - When the embedding *is* the representation the maps were fitted in (``basis="pca"``
      with ``use_rep="X_pca"``, or ``basis`` naming ``use_rep`` itself), each prediction is
      plotted at its own coordinates (``components``).
    - For any other embedding (``"umap"``, ``"tsne"``, ...) predicted cells have no
      coordinates of their own. Each is placed at the **average embedding position of its**
      ``n_neighbors`` **nearest observed cells** (of all fitted groups, control and targets)
      in the fitted representation: a kNN projection in the spirit of
      :func:`scanpy.tl.ingest`. Predictions thus land among the observed cells they resemble,
      and the placement smooths them towards dense regions; it is a visual aid, not an
      embedding of the predictions.

    Parameters
    ----------
    {fitted_arguments}
    target
        The perturbation to show; may be omitted when only one target was fitted.
        Maps fitted per ``split_by`` stratum are shown together.
    basis
        Embedding in ``adata.obsm`` (``"umap"`` for ``obsm["X_umap"]``, ``"pca"``, ``"tsne"``,
        or a full key such as ``"X_scVI"``).
    components
        Two 1-based components of the embedding, as in scanpy (``(1, 2)`` or ``"2,3"``).
    arrows
        Draw displacement arrows (control cell -> its prediction) for this many randomly
        chosen control cells (``0``: none).
    n_neighbors
        Neighbours of the kNN placement (ignored when predictions are plotted directly).
    seed
        Seed of the cells chosen for ``arrows``.
    size
        Marker area; default scales with the number of cells drawn.
    title
        Axes title; default names the target and the basis.
    {plot_arguments}

    {plot_returns}

    Examples
    --------
    {example_fitted}
    >>> sc.pp.neighbors(adata)
    >>> sc.tl.umap(adata)
    >>> ax = hs.pl.transport(adata, target="stimulated", arrows=40, show=False)
    >>> ax = hs.pl.transport(adata, target="stimulated", basis="pca", show=False)
    """
    if arrows < 0:
        raise ValueError(f"arrows must be a non-negative number of cells, got {arrows}.")
    stored = utils.fitted(adata, key)
    p = utils.params(stored)
    target = utils.resolve_target(p, target)
    utils.maps_for(stored, target)
    source_rows, predicted = utils.predictions(adata, key, target)
    obsm_key = basis_key(adata, basis)
    columns = _components(components)
    xy = _embedding(adata, obsm_key, columns, components)
    labels = utils.labels(adata, p["groupby"])
    if obsm_key == p["use_rep"]:
        placed, note = np.asarray(predicted, dtype=np.float64)[:, list(columns)], ""
    else:
        placed, note = _place(adata, key, p, labels, predicted, xy, n_neighbors)

    fig, ax = utils.new_axes(ax, (5.6, 5.6))
    layers = _cell_layers(p, target, labels, source_rows, xy)
    handles = _draw_cells(ax, xy, layers, placed, f"{target}, predicted", size)
    if arrows:
        handles.append(_draw_arrows(ax, xy, placed, source_rows, arrows, seed))
    name = _BASIS_LABELS.get(obsm_key.removeprefix("X_"), obsm_key.removeprefix("X_"))
    ax.set_xlabel(f"{name}{columns[0] + 1}")
    ax.set_ylabel(f"{name}{columns[1] + 1}")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title if title is not None else f"{p['source']} → {target} ({name})")
    if note:
        ax.text(0.99, 0.01, note, transform=ax.transAxes, ha="right", va="bottom",
                fontsize="x-small", color="#555555")
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=2,
              frameon=False, fontsize="small", handletextpad=0.2, columnspacing=1.2,
              borderaxespad=0.0)
    return utils.finish(fig, ax, show=show, save=save, return_fig=return_fig,
                        writekey="hycnn_transport")


def _embedding(adata: AnnData, obsm_key: str, columns: tuple[int, int],
               components: str | tuple[int, int]) -> np.ndarray:
    """The two ``columns`` of ``adata.obsm[obsm_key]`` as a dense float64 ``[n_obs, 2]`` array."""
    embedding = np.asarray(adata.obsm[obsm_key])
    if hasattr(embedding, "toarray"):
        embedding = embedding.toarray()
    embedding = np.asarray(embedding, dtype=np.float64)
    if max(columns) >= embedding.shape[1]:
        raise ValueError(
            f"components {components!r} ask for column {max(columns) + 1}, but "
            f"obsm[{obsm_key!r}] has {embedding.shape[1]}."
        )
    return embedding[:, list(columns)]


def _place(adata: AnnData, key: str, p: dict, labels: np.ndarray, predicted: np.ndarray,
           xy: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, str]:
    """Predictions placed by :func:`knn_place` among the fitted cells, and a note saying so."""
    split = split_key(key)
    if split in adata.obs:
        reference_rows = np.flatnonzero(adata.obs[split].notna().to_numpy())
    else:
        reference_rows = np.flatnonzero(np.isin(labels, [p["source"], *p["targets"]]))
    reference_rows = reference_rows[np.isfinite(xy[reference_rows]).all(1)]
    reference = inputs.read_rows(adata, reference_rows, p["use_rep"], p["layer"],
                                 what="the fitted cells")
    placed = knn_place(predicted, reference, xy[reference_rows], n_neighbors)
    rep = p["use_rep"] or (f"layer {p['layer']}" if p["layer"] else "X")
    note = (f"predictions placed at the mean of {min(n_neighbors, len(reference_rows))} "
            f"nearest cells in {rep}")
    return placed, note


def _cell_layers(p: dict, target: str, labels: np.ndarray, source_rows: np.ndarray,
                 xy: np.ndarray) -> list[tuple[str, np.ndarray, str, float]]:
    """(label, cells, colour, alpha) of the observed cells, drawn back to front."""
    finite = np.isfinite(xy).all(axis=1)
    is_source = np.zeros(len(xy), dtype=bool)
    is_source[source_rows] = True
    is_target = (labels == target) & finite
    other = finite & ~is_source & ~is_target
    source_name = p["source"] if "control" in p["source"].lower() else f"{p['source']} (control)"
    return [
        ("other cells", other, utils.COLORS["other"], 0.6),
        (source_name, is_source & finite, utils.COLORS["control"], 0.55),
        (f"{target}, observed", is_target, utils.COLORS["observed"], 0.55),
    ]


def _draw_cells(ax: Axes, xy: np.ndarray, layers: list[tuple[str, np.ndarray, str, float]],
                placed: np.ndarray, placed_label: str, size: float | None) -> list[Line2D]:
    """Scatter the observed cells by layer and the predictions on top; their legend handles."""
    n_points = int(np.isfinite(xy).all(axis=1).sum()) + len(placed)
    size = utils.point_size(n_points) if size is None else float(size)
    handles = []
    for label, mask, color, alpha in layers:
        if not mask.any():
            continue
        ax.scatter(xy[mask, 0], xy[mask, 1], s=size, c=color, alpha=alpha, linewidths=0,
                   rasterized=mask.sum() > 5000, zorder=2)
        handles.append(_handle(f"{label} ({int(mask.sum())})", color))
    ax.scatter(placed[:, 0], placed[:, 1], s=size, c=utils.COLORS["predicted"], alpha=0.75,
               linewidths=0, rasterized=len(placed) > 5000, zorder=4)
    handles.append(_handle(f"{placed_label} ({len(placed)})", utils.COLORS["predicted"]))
    return handles


def _draw_arrows(ax: Axes, xy: np.ndarray, placed: np.ndarray, source_rows: np.ndarray,
                 arrows: int, seed: int) -> Line2D:
    """Arrows from ``arrows`` random control cells to their predictions; their legend handle."""
    rng = np.random.default_rng(seed)
    keep = np.flatnonzero(np.isfinite(xy[source_rows]).all(axis=1))
    pick = np.sort(rng.choice(keep, size=min(int(arrows), len(keep)), replace=False))
    start = xy[source_rows[pick]]
    delta = placed[pick] - start
    ax.quiver(start[:, 0], start[:, 1], delta[:, 0], delta[:, 1], angles="xy",
              scale_units="xy", scale=1, width=0.0025, headwidth=5, headlength=6,
              headaxislength=5.5, color="black", alpha=0.4, zorder=3)
    return Line2D([], [], color="black", alpha=0.6, lw=1.0,
                  label=f"control cell → prediction ({len(pick)} cells)")


def _handle(label: str, color: str) -> Line2D:
    return Line2D([], [], ls="", marker="o", markersize=6, markerfacecolor=color,
                  markeredgewidth=0, label=label)
