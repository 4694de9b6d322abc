"""``hycnn_sc.pl.training``: loss curves and selection energy from the stored training history."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .._docs import EXAMPLE_FITTED, doc_params, plot_arguments
from ..tl._schema import stored_history
from . import _utils as utils

_F_COLOR, _G_COLOR, _CRITERION_COLOR = "tab:blue", "tab:orange", "tab:purple"
#: The shared plot arguments less ``ax``, which here may also be two Axes.
_PLOT_ARGUMENTS = plot_arguments("hycnn_training").split("\n", 2)[2]


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred running mean that skips NaN (non-finite iterations are stored as NaN)."""
    series = pd.Series(np.asarray(values, dtype=np.float64))
    return series.rolling(window, center=True, min_periods=1).mean().to_numpy()


def _history(entry: dict) -> dict[str, np.ndarray]:
    """One stored map's training history as float arrays, with the current key names.

    The uns of older fits names the selection checks ``validation_iteration`` and
    ``validation_energy``; they are read under their new names.
    """
    history = entry.get("history")
    if history is None or "loss_f" not in history or "loss_g" not in history:
        raise KeyError(
            "A stored map has no training history (loss_f, loss_g): run "
            "hycnn_sc.tl.fit_transport first (or refit with this hycnn_sc version)."
        )
    out = {name: np.asarray(value, dtype=np.float64).ravel()
           for name, value in stored_history(entry).items()}
    out.setdefault("selection_iteration", np.empty(0))
    out.setdefault("selection_energy", np.empty(0))
    return out


@doc_params(fitted_arguments=utils.FITTED_ARGUMENTS, plot_arguments=_PLOT_ARGUMENTS,
            example_fitted=EXAMPLE_FITTED)
def training(
    adata: AnnData,
    *,
    key: str = "hycnn",
    target: str | None = None,
    smooth: int | None = None,
    max_maps: int = 10,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: bool | str | None = None,
) -> Figure | list[Axes] | None:
    """Training curves of the stored maps: minimax losses and selection energy.

    Left panel: the two minimax losses per iteration, ``loss f`` (outer problem, left axis,
    solid) and ``loss g`` (inner problem, right axis, dashed; the two live on different
    scales), as a running mean over ``smooth`` iterations over the faint raw values. Right
    panel: the energy distance between mapped and target cells of the map's internal
    selection split (standardised units) at every check, with the iteration whose weights were
    kept (``best_iteration_``) marked by a star.

    With several maps (several targets, or ``split_by`` strata) each map gets its own colour
    and legend entry, up to ``max_maps``; beyond that every map is drawn as a thin line and the
    median over maps in bold, so that e.g. 33 maps stay readable. A single map trained with
    ``n_iters="auto"`` shows a dashed grey line where each cosine cycle began (the learning
    rate restarts there, so the losses jump) and, on the right panel's right axis, the
    held-out criterion that decided whether each cycle was kept and whether to go on (the
    semi-dual; for a potential with kinks the energy distance, for a conditional map the
    mean energy distance).

    Parameters
    ----------
    {fitted_arguments}
    target
        Show only the maps of this target (all strata); ``None`` shows every map.
    smooth
        Window (iterations) of the running mean; default ``n_iters / 25`` (at least 1).
    max_maps
        Most maps drawn individually with a legend entry each.
    ax
        Two Axes (losses, selection energy), or one Axes that is split in two.
    {plot_arguments}

    Returns
    -------
    The Figure with ``return_fig=True``; else the two Axes when ``show=False``; else ``None``.

    Examples
    --------
    {example_fitted}
    >>> loss_ax, selection_ax = hs.pl.training(adata, show=False)
    """
    stored = utils.fitted(adata, key)
    maps = utils.maps_for(stored, target)
    if not maps:
        raise ValueError(f"adata.uns[{key!r}] holds no maps: run hycnn_sc.tl.fit_transport first.")
    histories = {mid: _history(entry) for mid, entry in maps.items()}
    states = {mid: utils.fitted_state(entry) for mid, entry in maps.items()}
    best = {mid: state.get("best_iteration_") for mid, state in states.items()}
    converged = {mid: state.get("converged_", True) for mid, state in states.items()}
    n_iters = max(len(h["loss_f"]) for h in histories.values())
    window = max(1, round(n_iters / 25)) if smooth is None else int(smooth)
    if window < 1:
        raise ValueError(f"smooth must be a positive number of iterations, got {smooth}.")

    fig, (loss_ax, val_ax) = utils.split_axes(ax, 2, (10.0, 3.8))
    axes = (loss_ax, loss_ax.twinx(), val_ax)
    many = len(maps) > max_maps
    colors = mpl.colormaps["tab10" if len(maps) <= 10 else "tab20"]
    handles: list[Line2D] = []
    for i, (mid, history) in enumerate(histories.items()):
        color = "#bbbbbb" if many else colors(i % colors.N)
        _draw_map(axes, history, best[mid], color, window, many=many, single=len(maps) == 1)
        if not many and len(maps) > 1:
            note = "" if converged[mid] else " (not converged)"
            handles.append(Line2D([], [], color=color, lw=1.6, label=f"{mid}{note}"))
    if many:
        _draw_median(*axes, histories, window)
        handles.append(Line2D([], [], color="black", lw=1.8, label=f"median of {len(maps)} maps"))
        handles.append(Line2D([], [], color="#bbbbbb", lw=0.8, label="single maps"))
    if len(maps) == 1:
        ((mid, history),) = histories.items()
        _label_single(axes, mid, history, best[mid], converged[mid])
    else:
        _label_several(axes)
    _label_iterations(axes, histories, window, n_iters)
    if handles:
        val_ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                      frameon=False, fontsize="small", borderaxespad=0.0)
    return utils.finish(fig, [loss_ax, val_ax], show=show, save=save, return_fig=return_fig,
                        writekey="hycnn_training")


def _draw_map(axes: tuple[Axes, Axes, Axes], history: dict[str, np.ndarray],
              best: int | None, color: str, window: int, *, many: bool, single: bool) -> None:
    """One map's smoothed losses (raw values behind for a single map) and selection checks."""
    loss_ax, g_ax, val_ax = axes
    x = np.arange(len(history["loss_f"]))
    f_color, g_color = (_F_COLOR, _G_COLOR) if single else (color, color)
    for axis, values, c, style in ((loss_ax, history["loss_f"], f_color, "-"),
                                   (g_ax, history["loss_g"], g_color, "--")):
        if single:
            axis.plot(x, values, color=c, lw=0.6, alpha=0.25)
        axis.plot(x, _smooth(values, window), color=c, ls=style,
                  lw=0.7 if many else 1.4, alpha=0.6 if many else 1.0)
    checks, energy = history["selection_iteration"], history["selection_energy"]
    if not len(checks):
        return
    val_ax.plot(checks, energy, color=color if not single else _F_COLOR,
                lw=0.7 if many else 1.4, alpha=0.6 if many else 1.0,
                marker=None if many or len(checks) > 40 else "o", ms=3)
    at = np.flatnonzero(checks == best) if best is not None else []
    if len(at):
        val_ax.plot(checks[at[0]], energy[at[0]], marker="*", ms=8 if many else 13,
                    color="black" if single else color, mec="black", mew=0.6,
                    ls="", zorder=5)


def _label_single(axes: tuple[Axes, Axes, Axes], mid: str, history: dict[str, np.ndarray],
                  best: int | None, converged: bool) -> None:
    """Axis colours, the kept iteration and the cycle starts of a single map."""
    loss_ax, g_ax, val_ax = axes
    if best is not None:
        loss_ax.axvline(best, color="black", ls=":", lw=0.8)
        val_ax.axvline(best, color="black", ls=":", lw=0.8)
    for start in history.get("cycle_start", np.empty(0))[1:]:
        for axis in (loss_ax, val_ax):  # n_iters="auto": where each cosine cycle began
            axis.axvline(start, color="#999999", ls="--", lw=0.6)
    _draw_cycle_criterion(val_ax, history)
    loss_ax.set_ylabel("loss f (outer)", color=_F_COLOR)
    g_ax.set_ylabel("loss g (inner)", color=_G_COLOR)
    loss_ax.tick_params(axis="y", colors=_F_COLOR)
    g_ax.tick_params(axis="y", colors=_G_COLOR)
    status = "" if converged else "\n(not converged)"
    if best is not None:
        val_ax.annotate(f"kept: iteration {best}{status}", xy=(best, 1.0),
                        xycoords=("data", "axes fraction"), xytext=(3, -3),
                        textcoords="offset points", ha="left", va="top", fontsize="small")
    val_ax.set_title("selection energy", fontsize="medium")
    loss_ax.set_title(f"minimax losses: {mid}", fontsize="medium")


def _draw_cycle_criterion(val_ax: Axes, history: dict[str, np.ndarray]) -> None:
    """``n_iters="auto"``: the held-out criterion that judged the cycles (the semi-dual of
    a smooth ``TransportMap`` potential, else the energy distance), on a right axis, at the
    start and at the end of every completed cycle."""
    values = history.get("cycle_criterion", np.empty(0))
    starts = history.get("cycle_start", np.empty(0))
    if len(values) < 2 or not len(starts):
        return
    ends = [*starts[1:], len(history["loss_f"])][: len(values) - 1]
    criterion_ax = val_ax.twinx()
    criterion_ax.plot([0, *ends], values, color=_CRITERION_COLOR, ls=":", marker="D", ms=4, lw=1.0)
    criterion_ax.set_ylabel("held-out criterion\n(judges the cycles)", color=_CRITERION_COLOR)
    criterion_ax.tick_params(axis="y", colors=_CRITERION_COLOR)


def _label_several(axes: tuple[Axes, Axes, Axes]) -> None:
    loss_ax, g_ax, val_ax = axes
    loss_ax.set_ylabel("loss f (outer, solid)")
    g_ax.set_ylabel("loss g (inner, dashed)")
    val_ax.set_title("selection energy (★ kept)", fontsize="medium")
    loss_ax.set_title("minimax losses", fontsize="medium")


def _label_iterations(axes: tuple[Axes, Axes, Axes], histories: dict[str, dict[str, np.ndarray]],
                      window: int, n_iters: int) -> None:
    """x labels and limits, and a note where no checks were stored or no network trained."""
    loss_ax, g_ax, val_ax = axes
    if not any(len(h["selection_iteration"]) for h in histories.values()):
        val_ax.set_title("selection energy", fontsize="medium")
        val_ax.set_yticks([])
        val_ax.text(0.5, 0.5, "no selection checks stored\n(selection split off or too small):"
                    "\nthe last iterate was kept", transform=val_ax.transAxes, ha="center",
                    va="center", color="#555555")
    loss_ax.set_xlabel("iteration" if window == 1 else f"iteration (running mean of {window})")
    val_ax.set_xlabel("iteration")
    val_ax.set_ylabel("energy distance (standardised)")
    if n_iters > 0:
        loss_ax.set_xlim(0, n_iters)
        val_ax.set_xlim(0, n_iters)
        return
    # Residual weight 0 chosen before training: the map is only its linear part.
    val_ax.cla()
    for line in [*loss_ax.lines, *g_ax.lines]:
        line.remove()
    loss_ax.set_ylabel("")
    g_ax.set_ylabel("")
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
    loss_ax.text(0.5, 0.5, "no network was trained:\nthe map is its linear part\n"
                 "(residual weight 0; see tl.transport_map(...).selection_)",
                 transform=loss_ax.transAxes, ha="center", va="center", color="#555555")
    val_ax.set_title("selection energy", fontsize="medium")


def _draw_median(loss_ax: Axes, g_ax: Axes, val_ax: Axes, histories: dict,
                 window: int) -> None:
    """Bold median curves over maps (losses per iteration, energy per shared check)."""
    length = min(len(h["loss_f"]) for h in histories.values())
    for axis, name, style in ((loss_ax, "loss_f", "-"), (g_ax, "loss_g", "--")):
        stacked = np.stack([_smooth(h[name][:length], window) for h in histories.values()])
        axis.plot(np.arange(length), np.nanmedian(stacked, axis=0), color="black", ls=style, lw=1.8)
    checks = [h["selection_iteration"] for h in histories.values()]
    if checks and all(len(c) == len(checks[0]) and np.array_equal(c, checks[0]) for c in checks):
        if len(checks[0]):
            stacked = np.stack([h["selection_energy"] for h in histories.values()])
            val_ax.plot(checks[0], np.nanmedian(stacked, axis=0), color="black", lw=1.8)
