"""Tests of ``hycnn_sc.pl``: scanpy's return conventions, errors, and what the plots place where.

One tiny fit (200 Kang cells, 10 PCs, hidden=(8,), 20 iterations) is shared by the module; tests
that change the AnnData work on deep copies.
"""

from __future__ import annotations

import copy
import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import hycnn_sc as hs
from hycnn_sc.pl._transport import knn_place

FIT = dict(holdout_fraction=0.2, residual=1.0, n_iters=20, hidden=(8,), batch_size=64, warm_start_iters=10, seed=0, device="cpu")
PLOTS = ("transport", "training", "response", "evaluation")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def scanpy_settings():
    """Set scanpy settings in a test and restore them afterwards (they are class properties)."""
    names = ("autoshow", "autosave", "figdir")
    saved = {name: getattr(sc.settings, name) for name in names}
    yield sc.settings
    for name, value in saved.items():
        setattr(sc.settings, name, value)


def _tiny() -> sc.AnnData:
    adata = hs.datasets.kang_ifnb1k()
    rng = np.random.default_rng(0)
    labels = adata.obs["condition"].astype(str).to_numpy()
    rows = np.sort(np.concatenate([
        rng.choice(np.flatnonzero(labels == label), 100, replace=False)
        for label in ("control", "stimulated")
    ]))
    adata = adata[rows].copy()
    sc.pp.filter_genes(adata, min_cells=10)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=10)
    # A cheap stand-in for UMAP: a smooth function of the PCA, so neighbours stay neighbours.
    pcs = adata.obsm["X_pca"]
    adata.obsm["X_umap"] = np.column_stack([pcs[:, 0] + 0.3 * pcs[:, 2], pcs[:, 1] - 0.3 * pcs[:, 3]])
    adata.obs["lineage"] = np.where(
        adata.obs["cell_type"].astype(str).str.contains("Mono"), "myeloid", "lymphoid"
    )
    return adata


@pytest.fixture(scope="module")
def fitted() -> sc.AnnData:
    adata = _tiny()
    hs.tl.fit_transport(adata, groupby="condition", source="control", **FIT)
    hs.tl.evaluate(adata, by="cell_type")
    return adata


@pytest.fixture(scope="module")
def fitted_split() -> sc.AnnData:
    adata = _tiny()
    hs.tl.fit_transport(adata, groupby="condition", source="control", split_by="lineage", **FIT)
    hs.tl.evaluate(adata, by="cell_type")
    return adata


def _call(name: str, adata, **kwargs):
    return getattr(hs.pl, name)(adata, **kwargs)


def _scatter_offsets(ax: Axes, color: str) -> np.ndarray:
    """Offsets of the scatter collection drawn in ``color``."""
    rgba = matplotlib.colors.to_rgba(color)
    for collection in ax.collections:
        faces = collection.get_facecolors()
        if len(faces) and np.allclose(faces[0][:3], rgba[:3]):
            return np.asarray(collection.get_offsets())
    raise AssertionError(f"no scatter in {color}")


# ----------------------------------------------------------------------------- conventions


def test_public_api():
    assert set(hs.pl.__all__) == set(PLOTS)


@pytest.mark.parametrize("name", PLOTS)
def test_return_fig(fitted, name):
    fig = _call(name, fitted, return_fig=True)
    assert isinstance(fig, Figure)
    assert fig.axes


@pytest.mark.parametrize("name", PLOTS)
def test_show_false_returns_axes(fitted, name):
    out = _call(name, fitted, show=False)
    if name == "training":
        assert len(out) == 2 and all(isinstance(a, Axes) for a in out)
    else:
        assert isinstance(out, Axes)


@pytest.mark.parametrize("name", PLOTS)
def test_draws_into_given_ax(fitted, name):
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    out = _call(name, fitted, ax=right, show=False)
    if name == "training":  # one Axes is split in two, inside the same figure
        assert all(a.figure is fig for a in out) and len(out) == 2
        assert right not in fig.axes
        assert all(a.lines for a in out)
    else:
        assert out is right
        assert right.collections or right.patches
    assert not left.has_data()


def test_training_accepts_two_axes(fitted):
    _, axes = plt.subplots(1, 2)
    out = hs.pl.training(fitted, ax=axes, show=False)
    assert list(out) == list(axes)


@pytest.mark.parametrize("name", PLOTS)
def test_show_follows_autoshow(fitted, name, monkeypatch, scanpy_settings):
    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(True))
    scanpy_settings.autoshow = True
    assert _call(name, fitted) is None
    assert shown == [True]
    scanpy_settings.autoshow = False
    assert _call(name, fitted) is not None
    assert shown == [True]


def test_save_writes_to_figdir(fitted, tmp_path, scanpy_settings):
    scanpy_settings.figdir = tmp_path
    hs.pl.evaluation(fitted, save="_demo.png", show=False)
    hs.pl.training(fitted, save=True, show=False)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert "hycnn_evaluation_demo.png" in written
    assert f"hycnn_training.{sc.settings.file_format_figs}" in written


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", PLOTS)
def test_missing_key(fitted, name):
    with pytest.raises(KeyError, match="fit_transport"):
        _call(name, fitted, key="nothing", show=False)


@pytest.mark.parametrize("name", ["transport", "training", "response", "evaluation"])
def test_unknown_target(fitted, name):
    with pytest.raises(KeyError, match="stimulatd"):
        _call(name, fitted, target="stimulatd", show=False)


def test_missing_evaluation(fitted):
    adata = fitted.copy()
    adata.uns["hycnn"] = {k: v for k, v in fitted.uns["hycnn"].items() if k != "evaluation"}
    with pytest.raises(KeyError, match=r"hycnn_sc\.tl\.evaluate"):
        hs.pl.evaluation(adata, show=False)


def test_missing_predictions(fitted):
    adata = fitted.copy()
    del adata.obsm["hycnn_stimulated"]
    for name in ("transport", "response"):
        with pytest.raises(KeyError, match="fit_transport"):
            _call(name, adata, target="stimulated", show=False)


def test_bad_arguments(fitted):
    with pytest.raises(KeyError, match=r"scanpy\.tl\.tsne"):
        hs.pl.transport(fitted, basis="tsne", show=False)
    with pytest.raises(ValueError, match="components"):
        hs.pl.transport(fitted, basis="umap", components=(1, 3), show=False)
    with pytest.raises(KeyError, match="metric"):
        hs.pl.evaluation(fitted, metric="accuracy", show=False)
    with pytest.raises(KeyError, match="space"):
        hs.pl.evaluation(fitted, space="latent", show=False)


# ----------------------------------------------------------------------------- transport


def test_knn_place_exact_and_mean():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(50, 4))
    embedding = rng.normal(size=(50, 2))
    np.testing.assert_allclose(knn_place(reference[[7, 3]], reference, embedding, 1),
                               embedding[[7, 3]])
    distances = np.linalg.norm(reference - reference[7], axis=1)
    nearest = np.argsort(distances)[:5]
    np.testing.assert_allclose(knn_place(reference[[7]], reference, embedding, 5),
                               embedding[nearest].mean(0, keepdims=True))
    with pytest.raises(ValueError):
        knn_place(reference, reference, embedding, 0)


def _knn_place_torch(queries, reference, embedding, n_neighbors):
    """The placement as pl.transport computed it with torch before issue 11 (cdist, topk)."""
    import torch

    k = min(n_neighbors, len(reference))
    distances = torch.cdist(torch.as_tensor(np.asarray(queries, dtype=np.float64)),
                            torch.as_tensor(reference))
    nearest = distances.topk(k, dim=1, largest=False).indices.numpy()
    return embedding[nearest].mean(axis=1)


@pytest.mark.parametrize(("n", "m", "d", "k"), [(300, 120, 10, 15), (40, 30, 3, 60), (500, 50, 30, 1)])
def test_knn_place_equals_the_torch_placement(n, m, d, k):
    rng = np.random.default_rng(n)
    reference = rng.normal(size=(n, d))
    queries = rng.normal(size=(m, d)).astype(np.float32)  # stored predictions are float32
    embedding = rng.normal(size=(n, 2))
    np.testing.assert_array_equal(knn_place(queries, reference, embedding, k),
                                  _knn_place_torch(queries, reference, embedding, k))


def test_pl_does_not_use_torch():
    """pl draws what tl stored: no module of it imports torch itself."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(hs.pl.__path__, "hycnn_sc.pl."):
        module = importlib.import_module(info.name)
        assert "torch" not in vars(module), info.name


def test_transport_places_prediction_at_identical_cell(fitted):
    adata = fitted.copy()
    labels = adata.obs["condition"].astype(str).to_numpy()
    source = np.flatnonzero(labels == "control")[0]
    cell = np.flatnonzero(labels == "stimulated")[5]
    block = np.array(adata.obsm["hycnn_stimulated"])
    block[source] = adata.obsm["X_pca"][cell]
    adata.obsm["hycnn_stimulated"] = block
    order = np.flatnonzero(np.isfinite(block).all(1)).tolist().index(source)
    umap = adata.obsm["X_umap"]

    ax = hs.pl.transport(adata, target="stimulated", n_neighbors=1, show=False)
    placed = _scatter_offsets(ax, "tab:orange")
    np.testing.assert_allclose(placed[order], umap[cell], rtol=1e-6)

    ax = hs.pl.transport(adata, target="stimulated", show=False)  # k = 15: near the cell
    placed = _scatter_offsets(ax, "tab:orange")
    typical = np.median(np.linalg.norm(umap[:, None] - umap[None], axis=-1))
    assert np.linalg.norm(placed[order] - umap[cell]) < 0.25 * typical


def test_transport_pca_plots_predictions_directly(fitted):
    rows = np.flatnonzero(np.isfinite(fitted.obsm["hycnn_stimulated"]).all(1))
    ax = hs.pl.transport(fitted, target="stimulated", basis="pca", components="2,3", show=False)
    placed = _scatter_offsets(ax, "tab:orange")
    np.testing.assert_allclose(placed, fitted.obsm["hycnn_stimulated"][rows][:, [1, 2]], rtol=1e-6)
    assert ax.get_xlabel() == "PC2" and ax.get_ylabel() == "PC3"
    assert "stimulated" in ax.get_title()


def test_transport_arrows_and_legend(fitted):
    ax = hs.pl.transport(fitted, target="stimulated", arrows=12, seed=1, show=False)
    quiver = [c for c in ax.collections if isinstance(c, matplotlib.quiver.Quiver)]
    assert len(quiver) == 1 and quiver[0].N == 12
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("control" in t for t in texts) and any("predicted" in t for t in texts)
    with pytest.raises(ValueError, match="arrows"):
        hs.pl.transport(fitted, target="stimulated", arrows=-1, show=False)


def test_transport_split_maps(fitted_split):
    assert len(fitted_split.uns["hycnn"]["maps"]) == 2
    ax = hs.pl.transport(fitted_split, target="stimulated", show=False)
    placed = _scatter_offsets(ax, "tab:orange")
    assert len(placed) == int((fitted_split.obs["condition"] == "control").sum())


# ----------------------------------------------------------------------------- training


def test_training_marks_best_iteration(fitted):
    (entry,) = fitted.uns["hycnn"]["maps"].values()
    best = json.loads(entry["state_json"])["fitted"]["best_iteration_"]
    _, val_ax = hs.pl.training(fitted, show=False)
    stars = [line for line in val_ax.lines if line.get_marker() == "*"]
    assert len(stars) == 1 and stars[0].get_xdata()[0] == best
    assert any(f"kept: iteration {best}" in t.get_text() for t in val_ax.texts)


def test_training_marks_cycles_of_the_auto_budget(fitted):
    """A map trained in cosine cycles (``n_iters="auto"``) shows where each cycle began."""
    adata = fitted.copy()
    stored = copy.deepcopy(dict(adata.uns["hycnn"]))
    (entry,) = stored["maps"].values()
    entry["history"]["cycle_start"] = np.array([0, 5, 15])
    adata.uns["hycnn"] = stored
    loss_ax, _ = hs.pl.training(adata, show=False)
    starts = sorted(float(line.get_xdata()[0]) for line in loss_ax.lines
                    if line.get_linestyle() == "--" and line.get_color() == "#999999")
    assert starts == [5.0, 15.0]


def test_training_shows_the_criterion_that_judged_the_cycles(fitted):
    """The held-out criterion of an auto budget: at the start and at each completed cycle's
    end, on a right axis of the selection panel."""
    adata = fitted.copy()
    stored = copy.deepcopy(dict(adata.uns["hycnn"]))
    (entry,) = stored["maps"].values()
    entry["history"]["cycle_start"] = np.array([0, 5, 15])
    entry["history"]["cycle_criterion"] = np.array([3.0, 2.0, 1.5])  # the third cycle cut short
    adata.uns["hycnn"] = stored
    _, val_ax = hs.pl.training(adata, show=False)
    (dual_ax,) = [a for a in val_ax.figure.axes if a.get_ylabel().startswith("held-out criterion")]
    (line,) = dual_ax.lines
    np.testing.assert_array_equal(line.get_xdata(), [0, 5, 15])
    np.testing.assert_array_equal(line.get_ydata(), [3.0, 2.0, 1.5])


def test_training_without_cycles_has_no_criterion_axis(fitted):
    _, val_ax = hs.pl.training(fitted, show=False)
    assert not any(a.get_ylabel().startswith("held-out criterion") for a in val_ax.figure.axes)


def _many_maps(adata, n: int):
    adata = adata.copy()
    stored = copy.deepcopy(dict(adata.uns["hycnn"]))
    (entry,) = stored["maps"].values()
    stored["maps"] = {f"stimulated|s{i}": {**copy.deepcopy(entry), "stratum": f"s{i}"}
                      for i in range(n)}
    adata.uns["hycnn"] = stored
    return adata


def test_training_several_and_many_maps(fitted, fitted_split):
    _, val_ax = hs.pl.training(fitted_split, show=False)
    labels = [t.get_text().removesuffix(" (not converged)")
              for t in val_ax.get_legend().get_texts()]
    assert labels == list(fitted_split.uns["hycnn"]["maps"])

    _, val_ax = hs.pl.training(_many_maps(fitted, 33), show=False)
    labels = [t.get_text() for t in val_ax.get_legend().get_texts()]
    assert labels[0] == "median of 33 maps" and len(labels) == 2


def test_training_without_selection_checks(fitted):
    adata = _many_maps(fitted, 1)
    (entry,) = adata.uns["hycnn"]["maps"].values()
    entry["history"]["selection_iteration"] = np.empty(0, dtype=int)
    entry["history"]["selection_energy"] = np.empty(0)
    _, val_ax = hs.pl.training(adata, show=False)
    assert any("no selection checks" in t.get_text() for t in val_ax.texts)


def test_training_reads_the_history_keys_of_older_fits(fitted):
    """uns written before the rename names the checks validation_iteration/_energy."""
    adata = _many_maps(fitted, 1)
    (entry,) = adata.uns["hycnn"]["maps"].values()
    history = entry["history"]
    history["validation_iteration"] = history.pop("selection_iteration")
    history["validation_energy"] = history.pop("selection_energy")
    _, old_ax = hs.pl.training(adata, show=False)
    _, new_ax = hs.pl.training(fitted, show=False)
    assert len(old_ax.lines) == len(new_ax.lines) > 0
    for old, new in zip(old_ax.lines, new_ax.lines, strict=True):
        np.testing.assert_array_equal(old.get_xydata(), new.get_xydata())


# ----------------------------------------------------------------------------- response


def test_response_identity_predictions_give_zero_change(fitted):
    adata = fitted.copy()
    block = np.array(adata.obsm["hycnn_stimulated"])
    rows = np.isfinite(block).all(1)
    block[rows] = adata.obsm["X_pca"][rows]  # "predict" no change at all
    adata.obsm["hycnn_stimulated"] = block
    ax = hs.pl.response(adata, target="stimulated", n_genes=0, show=False)
    offsets = np.concatenate([np.asarray(c.get_offsets()) for c in ax.collections])
    np.testing.assert_allclose(offsets[:, 1], 0.0, atol=1e-4)


def test_response_observed_change_and_labels(fitted):
    ax = hs.pl.response(fitted, target="stimulated", n_genes=5, show=False)
    annotation = " ".join(t.get_text() for t in ax.texts)
    assert "r² =" in annotation and "held-out" in annotation
    labels = [t.get_text() for t in ax.texts if "r² =" not in t.get_text()]
    assert len(labels) == 5
    # The top gene's observed change equals a direct computation on held-out cells.
    held = (fitted.obs["hycnn_split"] == "held_out").to_numpy()
    condition = fitted.obs["condition"].to_numpy()
    gene = labels[0]
    column = fitted[:, gene].X.toarray().ravel()
    expected = column[held & (condition == "stimulated")].mean() - column[
        held & (condition == "control")].mean()
    top = _scatter_offsets(ax, "tab:orange")
    assert np.isclose(np.abs(top[:, 0]).max(), abs(expected), rtol=1e-4)


def test_response_r2_is_the_squared_correlation_of_the_points(fitted):
    """The r² in the box is that of the plotted mean changes (metrics.r2_mean of the two)."""
    ax = hs.pl.response(fitted, target="stimulated", n_genes=5, show=False)
    points = np.concatenate([np.asarray(c.get_offsets()) for c in ax.collections])
    r2 = np.corrcoef(points[:, 0], points[:, 1])[0, 1] ** 2
    assert np.isclose(hs.metrics.r2_mean(points[None, :, 1], points[None, :, 0]), r2)
    assert any(t.get_text().startswith(f"r² = {r2:.2f}\n") for t in ax.texts)


def test_response_without_split_or_pca(fitted):
    adata = fitted.copy()
    del adata.obs["hycnn_split"]
    stored = copy.deepcopy(dict(adata.uns["hycnn"]))
    stored["representation"] = {k: v for k, v in stored["representation"].items()
                                if not k.startswith("pca_")}
    adata.uns["hycnn"] = stored
    ax = hs.pl.response(adata, target="stimulated", n_genes=3, show=False)
    text = " ".join(t.get_text() for t in ax.texts)
    assert "all cells" in text and "feature" in text
    assert len(_scatter_offsets(ax, "tab:orange")) == 3


# ----------------------------------------------------------------------------- evaluation


def test_evaluation_bars_and_floor(fitted):
    table = fitted.uns["hycnn"]["evaluation"]
    ax = hs.pl.evaluation(fitted, metric="mmd", show=False)
    heights = sorted(p.get_height() for p in ax.patches)
    expected = table[(table.group == "all") & (table.space == "rep")
                     & (table.method != "observed")]["mmd"]
    np.testing.assert_allclose(heights, sorted(expected), rtol=1e-6)
    floor = table[(table.group == "all") & (table.space == "rep") & (table.method == "observed")]
    (segments,) = [c for c in ax.collections if c.get_linestyle()[0][1] is not None]
    assert np.isclose(segments.get_segments()[0][0][1], floor["mmd"].iloc[0])


def test_evaluation_per_group_and_log(fitted):
    ax = hs.pl.evaluation(fitted, by="group", space="gene", log=True, show=False)
    ticks = [t.get_text().split("\n")[0] for t in ax.get_xticklabels()]
    groups = set(fitted.uns["hycnn"]["evaluation"]["group"])
    assert ticks[0] == "all" and set(ticks) == groups
    assert ax.get_yscale() == "log"


def test_evaluation_options_are_literal_types():
    import typing

    hints = typing.get_type_hints(hs.pl.evaluation)
    assert typing.get_args(hints["space"]) == ("rep", "gene")
    assert typing.get_args(hints["by"]) == ("target", "group")


@pytest.mark.parametrize("name", PLOTS)
def test_docstrings_are_filled(name):
    """The shared fragments replaced every placeholder (ax, show, return_fig, save, Returns)."""
    doc = getattr(hs.pl, name).__doc__
    assert "{" + "plot" not in doc and "{" + "example" not in doc and "{" + "fitted" not in doc
    for line in ("    show\n", "    return_fig\n", "    save\n", "    Returns\n", "    >>> import hycnn_sc as hs\n"):
        assert doc.count(line) == 1, (name, line)


def test_evaluation_many_maps_horizontal(fitted):
    adata = fitted.copy()
    table = fitted.uns["hycnn"]["evaluation"]
    table = table[table.group == "all"]
    adata.uns["hycnn"] = {**fitted.uns["hycnn"], "evaluation": pd.concat(
        [table.assign(target=f"t{i}") for i in range(14)], ignore_index=True)}
    ax = hs.pl.evaluation(adata, show=False)
    assert len(ax.get_yticklabels()) == 14
    with pytest.raises(ValueError, match="target="):
        hs.pl.evaluation(adata, by="group", show=False)


def test_split_maps_all_plots(fitted_split, tmp_path):
    path = tmp_path / "split.h5ad"
    fitted_split.write_h5ad(path)
    adata = sc.read_h5ad(path)
    for name in PLOTS:
        assert isinstance(_call(name, adata, return_fig=True), Figure)
    ax = hs.pl.evaluation(adata, show=False)
    ticks = {t.get_text().split("\n")[0] for t in ax.get_xticklabels()}
    assert ticks == {"lymphoid", "myeloid"}
    assert ax.get_title().startswith("stimulated")


def test_plots_work_for_labels_with_a_slash():
    """Drug and guide names often hold '/', which h5ad keys cannot: obsm uses '_' instead."""
    adata = _tiny()
    labels = adata.obs["condition"].astype(str).replace({"stimulated": "IFN/b"})
    adata.obs["condition"] = labels.astype("category")
    hs.tl.fit_transport(adata, groupby="condition", source="control", **FIT)
    assert "hycnn_IFN_b" in adata.obsm
    for name in ("transport", "response"):
        fig = getattr(hs.pl, name)(adata, target="IFN/b", return_fig=True)
        assert fig.axes
        plt.close(fig)


def test_training_plot_says_when_no_network_was_trained():
    adata = _tiny()
    hs.tl.fit_transport(adata, groupby="condition", source="control", **{**FIT, "residual": 0.0})
    fig = hs.pl.training(adata, return_fig=True)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("no network was trained" in t for t in texts)
    plt.close(fig)
