"""``hycnn_sc.pl.evaluation``: the table of :func:`hycnn_sc.tl.evaluate` as grouped bars."""

from __future__ import annotations

from itertools import pairwise
from typing import Literal, get_args

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .._docs import EXAMPLE_DATA, PLOT_RETURNS, doc_params, plot_arguments
from .._warnings import warn_user
from . import _utils as utils

_BASELINE_COLORS = {"identity": "#9e9e9e", "mean_shift": "tab:green", "gaussian_ot": "tab:purple"}
_BASELINE_LABELS = {"identity": "identity (control)", "mean_shift": "mean shift",
                    "gaussian_ot": "Gaussian OT"}
_HIGHER_IS_BETTER = {"r2_mean", "pearson_delta", "overlap_at_N", "overlap_at_50",
                      "de_direction_match"}
_METRIC_LABELS = {"energy_distance": "energy distance", "mmd": "MMD²", "r2_mean": "r² of means",
                  "signature_l2": "signature l2 error"}
#: Columns of the evaluation table that say which rows they are, not what was measured.
_KEY_COLUMNS = ("target", "stratum", "group", "space", "method")
#: Most categories drawn as vertical bars; more are drawn horizontally.
_MAX_VERTICAL = 12

#: Where the metrics were computed: the fitted representation or gene space.
Space = Literal["rep", "gene"]
#: One group of bars per map (``"target"``) or per evaluation group (``"group"``).
By = Literal["target", "group"]


def _labels_overlap(ax: Axes) -> bool:
    """Whether neighbouring x tick labels overlap once the figure is laid out."""
    ax.figure.canvas.draw()
    boxes = sorted((t.get_window_extent() for t in ax.get_xticklabels() if t.get_text()),
                   key=lambda b: b.x0)
    gap = 4.0 * ax.figure.dpi / 72.0
    return any(left.x1 + gap > right.x0 for left, right in pairwise(boxes))


def _categories(table: pd.DataFrame, by: str) -> pd.Series:
    """The x label of every row: the map (target, stratum) or the evaluation group."""
    strata = table["stratum"].astype(str)
    if by == "target":
        targets = table["target"].astype(str)
        if targets.nunique() == 1 and (strata != "").all():
            return strata  # one target: the title names it
        return targets.where(strata == "", targets + " | " + strata)
    groups = table["group"].astype(str)
    if strata.nunique() <= 1:
        return groups
    same = (groups == "all") | (groups == strata)
    return strata.where(same, strata + ": " + groups)


@doc_params(plot_arguments=plot_arguments("hycnn_evaluation"), plot_returns=PLOT_RETURNS,
            example_data=EXAMPLE_DATA)
def evaluation(
    adata: AnnData,
    *,
    key: str = "hycnn",
    metric: str = "energy_distance",
    space: Space = "rep",
    by: By = "target",
    target: str | None = None,
    log: bool = False,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: bool | str | None = None,
) -> Figure | Axes | None:
    """The evaluation table of :func:`~hycnn_sc.tl.evaluate` as a grouped bar chart.

    One group of bars per map (``by="target"``; rows of group ``"all"``) or per group of the
    ``by`` column that :func:`~hycnn_sc.tl.evaluate` was run with (``by="group"``, for one
    target), one bar per method: the fitted model and the baselines ``identity`` (unmoved
    control), ``mean_shift`` and ``gaussian_ot``. The ``observed`` row — training against
    held-out perturbed cells, the level sampling noise alone reaches — is drawn as a dashed
    line over each group of bars. Tick labels (or the title) give the number of held-out
    perturbed cells. More than 12 groups of bars are drawn horizontally.

    Parameters
    ----------
    adata
        AnnData with an evaluation table written by :func:`~hycnn_sc.tl.evaluate`.
    key
        ``key_added`` of :func:`~hycnn_sc.tl.fit_transport`.
    metric
        Column of the table: ``"energy_distance"``, ``"mmd"``, ``"r2_mean"`` or
        ``"signature_l2"``.
    space
        ``"rep"`` (the fitted representation) or ``"gene"`` (PCA back-projection).
    by
        ``"target"``: one group of bars per map; ``"group"``: one per evaluation group.
    target
        Show only this target (needed with ``by="group"`` when several were evaluated).
    log
        Logarithmic value axis, for values spanning orders of magnitude (non-positive values,
        possible for unbiased estimators, are not drawn).
    {plot_arguments}

    {plot_returns}

    Examples
    --------
    {example_data}
    >>> hs.tl.fit_transport(adata, groupby="condition", source="control",  # hold 20 % out
    ...                     holdout_fraction=0.2, n_iters=20, hidden=(8,), warm_start_iters=20)
    >>> table = hs.tl.evaluate(adata, by="cell_type")
    >>> ax = hs.pl.evaluation(adata, by="group", show=False)
    """
    stored = utils.fitted(adata, key)
    model = utils.params(stored)["model"]
    table = utils.evaluation_table(stored, key)
    _check_columns(table, metric, space, by)
    table, categories = _rows(table, key, space, by, target)
    present = list(pd.unique(table["method"].astype(str)))
    methods = [m for m in [model, *_BASELINE_COLORS] if m in present]
    methods += [m for m in present if m not in methods and m != "observed"]
    values = table.pivot_table(index="_x", columns="method", values=metric, aggfunc="first")
    values = values.reindex(index=categories)
    counts = table.groupby("_x")["n_observed"].first().reindex(categories)

    # Many categories read better as horizontal bars (labels need no rotation, height grows).
    horizontal = len(categories) > _MAX_VERTICAL
    span = 0.8 * len(categories) * max(len(methods), 1) / 4
    if horizontal:
        fig, ax = utils.new_axes(ax, (6.5, float(np.clip(1.2 + 0.35 * span, 4.0, 30.0))))
    else:
        fig, ax = utils.new_axes(ax, (float(np.clip(2.8 + span, 5.0, 14.0)), 4.0))
    handles = _draw_bars(ax, values, methods, model, horizontal=horizontal)
    if "observed" in values:
        handles.append(_draw_floor(ax, values["observed"], metric, horizontal=horizontal))
    _value_scale(ax, values.to_numpy(dtype=float), metric, log=log, horizontal=horizontal)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              fontsize="small", borderaxespad=0.0)
    known_counts = counts.dropna()
    same_count = horizontal and known_counts.nunique() == 1
    _category_axis(ax, categories, None if same_count or known_counts.empty else counts,
                   horizontal=horizontal)
    better = "higher" if metric in _HIGHER_IS_BETTER else "lower"
    where_space = "gene space" if space == "gene" else "representation"
    value_label = f"{_METRIC_LABELS.get(metric, metric)} ({where_space})\n{better} is better"
    (ax.set_xlabel if horizontal else ax.set_ylabel)(value_label)
    single = table["target"].astype(str).nunique() == 1
    where = f"{table['target'].iloc[0]}: " if single else ""
    per = "per group" if by == "group" else "per map"
    cells = f" (n={int(known_counts.iloc[0])} held-out cells)" if same_count else ""
    ax.set_title(f"{where}held-out evaluation {per}{cells}", fontsize="medium")
    ax.spines[["top", "right"]].set_visible(False)
    return utils.finish(fig, ax, show=show, save=save, return_fig=return_fig,
                        writekey="hycnn_evaluation")


def _check_columns(table: pd.DataFrame, metric: str, space: str, by: str) -> None:
    """``metric`` and ``space`` name what the table holds; ``by`` is an option."""
    if metric not in table.columns or metric in _KEY_COLUMNS:
        known = [c for c in table.columns if c not in (*_KEY_COLUMNS, "n_predicted", "n_observed")]
        raise KeyError(f"metric={metric!r} is not in the evaluation table; metrics: {known}.")
    spaces = sorted(table["space"].astype(str).unique())
    if space not in spaces:
        raise KeyError(
            f"space={space!r} is not in the evaluation table (spaces: {spaces}); gene-space "
            "metrics need maps fitted on a scanpy PCA or on X, or evaluate(..., scvi_model=) for an "
            "scVI latent."
        )
    if by not in get_args(By):
        raise ValueError(f"by must be 'target' or 'group', got {by!r}.")


def _rows(table: pd.DataFrame, key: str, space: str, by: str,
          target: str | None) -> tuple[pd.DataFrame, list[str]]:
    """The rows drawn, with their category in column ``_x``, and the categories in order."""
    table = table[table["space"].astype(str) == space]
    evaluated = list(pd.unique(table["target"].astype(str)))
    if target is None and by == "group":
        if len(evaluated) > 1:
            raise ValueError(f"by='group' shows one target; pass target= one of {evaluated}.")
        target = evaluated[0]
    if target is not None:
        if str(target) not in evaluated:
            raise KeyError(
                f"No evaluation for target {target!r}; evaluated targets: {evaluated}. Run "
                f"hycnn_sc.tl.evaluate(adata, key={key!r}) for it first."
            )
        table = table[table["target"].astype(str) == str(target)]
    if by == "target":
        table = table[table["group"].astype(str) == "all"]
    table = table.assign(_x=_categories(table, by).to_numpy())
    if by == "group":  # "all" first; drop a group identical to its stratum's "all"
        table = table.drop_duplicates(["_x", "method"])
    categories = list(pd.unique(table["_x"]))
    if by == "group":
        categories = sorted(categories, key=lambda c: (c != "all", c))
    return table, categories


def _draw_bars(ax: Axes, values: pd.DataFrame, methods: list[str], model: str, *,
               horizontal: bool) -> list:
    """One bar per method in every category; the legend handle of each method."""
    bar = 0.8 / max(len(methods), 1)
    x = np.arange(len(values))
    fallback = iter(["tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"])
    handles: list = []
    for i, method in enumerate(methods):
        color = utils.COLORS["predicted"] if method == model else (
            _BASELINE_COLORS.get(method) or next(fallback, "tab:gray"))
        heights = values[method].to_numpy(dtype=float) if method in values else np.full(len(x), np.nan)
        offset = bar * (i + 0.5) - 0.4
        if horizontal:  # the y axis is inverted: the first method is on top of each category
            ax.barh(x + offset, heights, height=bar * 0.95, color=color,
                    edgecolor="white", linewidth=0.4)
        else:
            ax.bar(x + offset, heights, width=bar * 0.95, color=color, edgecolor="white",
                   linewidth=0.4)
        label = f"{model} (model)" if method == model else _BASELINE_LABELS.get(method, method)
        handles.append(Patch(facecolor=color, label=label))
    return handles


def _draw_floor(ax: Axes, observed: pd.Series, metric: str, *, horizontal: bool) -> Line2D:
    """The ``observed`` (noise) level as a dashed line across each category; its handle."""
    x = np.arange(len(observed))
    lines = ax.vlines if horizontal else ax.hlines
    lines(observed.to_numpy(dtype=float), x - 0.45, x + 0.45, colors="black", linestyles="--",
          lw=1.2, zorder=4)
    kind = "ceiling" if metric in _HIGHER_IS_BETTER else "floor"
    return Line2D([], [], color="black", ls="--", lw=1.2, label=f"observed (noise {kind})")


def _value_scale(ax: Axes, shown: np.ndarray, metric: str, *, log: bool, horizontal: bool) -> None:
    """A log value axis, or a zero line under negative values."""
    if log:
        if np.any(shown[np.isfinite(shown)] <= 0):
            warn_user(
                f"Some {metric} values are <= 0 and are not drawn on the log scale.",
                UserWarning,
            )
        (ax.set_xscale if horizontal else ax.set_yscale)("log")
    elif np.nanmin(shown) < 0:
        (ax.axvline if horizontal else ax.axhline)(0, color="black", lw=0.6)


def _category_axis(ax: Axes, categories: list[str], counts: pd.Series | None, *,
                   horizontal: bool) -> None:
    """Category ticks, with the number of held-out cells where ``counts`` are given."""
    if counts is None:
        ticks = [str(c) for c in categories]
    else:
        ticks = [f"{c} (n={int(k)})" if horizontal else f"{c}\nn={int(k)}" if pd.notna(k)
                 else str(c) for c, k in zip(categories, counts, strict=True)]
    x = np.arange(len(categories))
    if horizontal:
        ax.set_yticks(x, ticks, fontsize="small")
        ax.set_ylim(len(categories) - 0.4, -0.6)
        return
    ax.set_xticks(x, ticks, fontsize="small")
    if _labels_overlap(ax):
        ax.set_xticks(x, ticks, rotation=35, ha="right", rotation_mode="anchor",
                      fontsize="small")
    ax.set_xlim(-0.6, len(categories) - 0.4)
