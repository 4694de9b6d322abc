"""``hycnn_sc.pl.response``: predicted vs observed per-gene mean change."""

from __future__ import annotations

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._docs import EXAMPLE_FITTED, PLOT_RETURNS, doc_params, plot_arguments
from .._warnings import warn_user
from ..metrics import r2_mean
from ..tl import _inputs as inputs
from ..tl._predict import gene_space
from ..tl._schema import HELD_OUT, pca_genes, split_key
from . import _utils as utils


def _changes(adata: AnnData, stored: dict, p: dict, control_rows: np.ndarray,
             predicted: np.ndarray, target_rows: np.ndarray,
             layer: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Predicted and observed mean change per feature, the feature names and the space name."""
    use_rep, fit_layer = p["use_rep"], p["layer"]
    genes = np.asarray(adata.var_names).astype(str)
    if use_rep is None:  # the maps live in X (or a layer) itself: predictions are genes
        if layer is not None and layer != fit_layer:
            raise ValueError(
                f"The maps were fitted on {inputs.representation_name(None, fit_layer)}, so "
                f"predictions live there; layer={layer!r} is not comparable."
            )
        control = inputs.mean_rows(adata, control_rows, fit_layer)
        predicted_change = predicted.mean(axis=0) - control
        observed_change = inputs.mean_rows(adata, target_rows, fit_layer) - control
        return predicted_change, observed_change, genes, "gene"
    control_rep = inputs.read_rows(adata, control_rows, use_rep, None).mean(axis=0, keepdims=True)
    predicted_rep = predicted.mean(axis=0, keepdims=True)
    # The PCA back-projection is linear: the mean of projections is the projection of means.
    predicted_genes = gene_space(stored, predicted_rep)
    if predicted_genes is not None:
        columns = pca_genes(stored)
        predicted_change = (predicted_genes - gene_space(stored, control_rep))[0, columns]
        control = inputs.mean_rows(adata, control_rows, layer, columns)
        observed_change = inputs.mean_rows(adata, target_rows, layer, columns) - control
        return predicted_change, observed_change, genes[columns], "gene"
    if layer is not None:
        raise ValueError(
            f"layer={layer!r}: the maps were fitted in obsm[{use_rep!r}] without stored PCA "
            "loadings, so predictions cannot be compared in gene space."
        )
    observed_rep = inputs.read_rows(adata, target_rows, use_rep, None).mean(axis=0)
    predicted_change = (predicted_rep - control_rep)[0]
    observed_change = observed_rep - control_rep[0]
    names = np.asarray([f"feature {i}" for i in range(len(observed_change))])
    return predicted_change, observed_change, names, use_rep


def _place_labels(ax: Axes, x: np.ndarray, y: np.ndarray, names: list[str],
                  fontsize: float = 8.0, avoid: tuple = ()) -> None:
    """Label points, greedily choosing for each label an offset whose box overlaps no other.

    Boxes are estimated from the string length in display units; points are tried in order
    (most important first) at eight directions and three distances. Cheap, no dependency.
    """
    fig = ax.figure
    fig.canvas.draw()  # settle the layout, so that data -> pixel transforms are final
    to_pixels = ax.transData.transform
    dpi_scale = fig.dpi / 72.0
    char_w, char_h = 0.6 * fontsize * dpi_scale, 1.2 * fontsize * dpi_scale
    bounds = ax.get_window_extent()
    placed: list[tuple[float, float, float, float]] = []
    points = to_pixels(np.column_stack([x, y]))
    occupied = [(px - 3, py - 3, px + 3, py + 3) for px, py in points]
    occupied += [(b.x0, b.y0, b.x1, b.y1) for b in (a.get_window_extent() for a in avoid)]
    directions = [(1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)]

    def overlaps(box: tuple[float, float, float, float]) -> bool:
        inside = (box[0] >= bounds.x0 and box[2] <= bounds.x1
                  and box[1] >= bounds.y0 and box[3] <= bounds.y1)
        return not inside or any(
            box[0] < o[2] and box[2] > o[0] and box[1] < o[3] and box[3] > o[1]
            for o in [*placed, *occupied]
        )

    for (px, py), name in zip(points, names, strict=True):
        width, height = char_w * len(name), char_h
        choice = None
        for distance in (7.0, 14.0, 24.0, 36.0):
            for dx, dy in directions:
                ox, oy = dx * distance * dpi_scale, dy * distance * dpi_scale
                x0 = px + ox - (width if dx < 0 else (width / 2 if dx == 0 else 0))
                y0 = py + oy - (height if dy < 0 else (height / 2 if dy == 0 else 0))
                box = (x0, y0, x0 + width, y0 + height)
                if not overlaps(box):
                    choice = (ox, oy, dx, dy, box)
                    break
            if choice:
                break
        if choice is None:  # nothing free: fall back to the first offset
            ox, oy, dx, dy = 5.0 * dpi_scale, 5.0 * dpi_scale, 1, 1
            box = (px + ox, py + oy, px + ox + width, py + oy + height)
        else:
            ox, oy, dx, dy, box = choice
        placed.append(box)
        ax.annotate(
            name, xy=ax.transData.inverted().transform((px, py)),
            xytext=(ox / dpi_scale, oy / dpi_scale), textcoords="offset points",
            ha="left" if dx > 0 else ("right" if dx < 0 else "center"),
            va="bottom" if dy > 0 else ("top" if dy < 0 else "center"),
            fontsize=fontsize,
            arrowprops={"arrowstyle": "-", "color": "#777777", "lw": 0.5, "shrinkA": 0,
                        "shrinkB": 2},
        )


@doc_params(fitted_arguments=utils.FITTED_ARGUMENTS,
            plot_arguments=plot_arguments("hycnn_response"), plot_returns=PLOT_RETURNS,
            example_fitted=EXAMPLE_FITTED)
def response(
    adata: AnnData,
    *,
    key: str = "hycnn",
    target: str | None = None,
    n_genes: int = 10,
    layer: str | None = None,
    size: float | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: bool | str | None = None,
) -> Figure | Axes | None:
    """Predicted vs observed mean change per gene (target mean − control mean).

    One point per gene: the observed change (mean of the ``target`` cells minus mean of the
    control cells) against the predicted change (mean of the maps' predictions for the control
    cells minus the control mean), with the diagonal ``y = x`` and the squared Pearson
    correlation ``r²`` of the two (:func:`hycnn_sc.metrics.r2_mean` of the two mean changes).
    The ``n_genes`` genes with the largest observed change are labelled.

    Cells: if ``obs[f"{key}_split"]`` exists (written by
    :func:`~hycnn_sc.tl.fit_transport`), only held-out cells are used — held-out control cells
    with their stored predictions (``obsm[f"{key}_{target}"]``) and held-out ``target``
    cells — so the comparison is out of sample; otherwise (or with fewer than 2 held-out cells
    per side) all cells.

    Space: when the maps were fitted on a scanpy PCA, predictions are back-projected to genes
    through the stored loadings (:func:`hycnn_sc.tl._predict.gene_space`; the predicted change
    is the back-projected mean difference) and compared with the change of ``X`` (or
    ``layer``) over the genes with PCA loadings (e.g. the highly variable genes). When the maps
    were fitted on ``X`` (or a layer) the genes are used directly; for any other
    representation its features are compared (labelled ``"feature 0"``, ...).

    Parameters
    ----------
    {fitted_arguments}
    target
        The perturbation to show; may be omitted when only one target was fitted.
    n_genes
        Number of genes (largest observed absolute change) labelled.
    layer
        Layer holding the observed expression compared with PCA back-projections (default
        ``X``, which scanpy's PCA is computed from).
    size
        Marker area of the genes.
    {plot_arguments}

    {plot_returns}

    Examples
    --------
    {example_fitted}
    >>> ax = hs.pl.response(adata, target="stimulated", n_genes=8, show=False)
    """
    stored = utils.fitted(adata, key)
    p = utils.params(stored)
    target = utils.resolve_target(p, target)
    utils.maps_for(stored, target)
    if n_genes < 0:
        raise ValueError(f"n_genes must be non-negative, got {n_genes}.")
    source_rows, predicted = utils.predictions(adata, key, target)
    labels = utils.labels(adata, p["groupby"])
    target_rows = np.flatnonzero(labels == target)
    if len(target_rows) == 0:
        raise ValueError(f"No cells with obs[{p['groupby']!r}] == {target!r} to compare with.")
    keep_source, target_rows, cells = _compared_cells(adata, key, source_rows, target_rows)
    control_rows = source_rows[keep_source]
    predicted_change, observed_change, names, space = _finite_changes(*_changes(
        adata, stored, p, control_rows, predicted[keep_source], target_rows, layer
    ))
    r2 = r2_mean(predicted_change[np.newaxis], observed_change[np.newaxis])

    fig, ax = utils.new_axes(ax, (5.2, 5.0))
    top = np.argsort(-np.abs(observed_change))[: int(n_genes)]
    _draw_changes(ax, observed_change, predicted_change, top, size)
    unit = "gene" if space == "gene" else f"{space} feature"
    ax.set_xlabel(f"observed change ({target} − {p['source']})")
    ax.set_ylabel(f"predicted change ({target} − {p['source']})")
    ax.set_title(f"{target}: mean change per {unit}", fontsize="medium")
    box = ax.text(0.03, 0.97,
            f"r² = {r2:.2f}\n{len(names)} {unit}s, {cells}\n"
            f"{len(control_rows)} control, {len(target_rows)} {target}",
            transform=ax.transAxes, ha="left", va="top", fontsize="small",
            bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": "#cccccc", "alpha": 0.9})
    if len(top):
        _place_labels(ax, observed_change[top], predicted_change[top], [str(n) for n in names[top]],
                      avoid=(box,))
    return utils.finish(fig, ax, show=show, save=save, return_fig=return_fig,
                        writekey="hycnn_response")


def _compared_cells(adata: AnnData, key: str, source_rows: np.ndarray,
                    target_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Held-out cells when the split stores at least 2 per side, else all cells.

    Returns which ``source_rows`` to keep, the target rows kept, and the cells' description.
    """
    split = split_key(key)
    if split not in adata.obs:
        return np.ones(len(source_rows), dtype=bool), target_rows, "all cells"
    held = (adata.obs[split].astype(str) == HELD_OUT).to_numpy()
    if held[source_rows].sum() >= 2 and held[target_rows].sum() >= 2:
        return held[source_rows], target_rows[held[target_rows]], "held-out cells"
    warn_user(
        f"Fewer than 2 held-out cells per side in obs[{split!r}]; comparing all cells "
        "(training cells included).",
        UserWarning,
    )
    return np.ones(len(source_rows), dtype=bool), target_rows, "all cells"


def _finite_changes(predicted_change: np.ndarray, observed_change: np.ndarray, names: np.ndarray,
                    space: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The features whose predicted and observed changes are both finite (at least 2)."""
    finite = np.isfinite(predicted_change) & np.isfinite(observed_change)
    if finite.sum() < 2:
        raise ValueError("Fewer than 2 features with finite changes: nothing to compare.")
    return predicted_change[finite], observed_change[finite], names[finite], space


def _draw_changes(ax: Axes, observed_change: np.ndarray, predicted_change: np.ndarray,
                  top: np.ndarray, size: float | None) -> None:
    """One point per feature (``top`` highlighted), the diagonal and equal, padded limits."""
    rest = np.setdiff1d(np.arange(len(observed_change)), top)
    size = float(np.clip(6000.0 / len(observed_change), 4.0, 30.0)) if size is None else float(size)
    ax.scatter(observed_change[rest], predicted_change[rest], s=size, c="#7f7f7f", alpha=0.5,
               linewidths=0, rasterized=len(rest) > 5000)
    ax.scatter(observed_change[top], predicted_change[top], s=max(size * 2, 12),
               c=utils.COLORS["predicted"], edgecolors="black", linewidths=0.4, zorder=3)
    low = float(min(observed_change.min(), predicted_change.min()))
    high = float(max(observed_change.max(), predicted_change.max()))
    pad = 0.06 * (high - low if high > low else 1.0)
    lims = (low - pad, high + pad)
    ax.axline((0, 0), slope=1, color="black", lw=0.8, ls="--", zorder=1)
    ax.axhline(0, color="#cccccc", lw=0.6, zorder=0)
    ax.axvline(0, color="#cccccc", lw=0.6, zorder=0)
    ax.set_xlim(lims)
    ax.set_ylim(lims)
    ax.set_aspect("equal", adjustable="box")
