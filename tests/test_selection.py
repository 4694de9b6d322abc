"""Behaviour of the linear part, the residual weight and the group frame of ``TransportMap``.

The final map is ``(1 − λ) T_lin + λ ∇f``: ``T_lin`` a Ledoit–Wolf Gaussian map shrunk towards
the mean shift (``shrinkage_``), in the global frame or relative to each group's source mean
(``frame_``), and ``λ = residual_weight_`` chosen on held-out cells. Everything here trains
tiny networks for a few iterations on synthetic data whose truth is known.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hycnn_sc.metrics import energy_distance
from hycnn_sc.models._selection import FRAMES, SHRINKAGE_GRID, choose_linear, paired_energy
from hycnn_sc.models.gaussian import GaussianTransportMap
from hycnn_sc.models.transport import TransportMap
from hycnn_sc.tl import evaluate, fit_transport, predict
from hycnn_sc.tl._schema import decode_map

#: Tiny TransportMap settings.
MODEL = dict(n_iters=20, inner_steps=2, hidden=(8,), warm_start_iters=10, batch_size=64,
             device="cpu", seed=0)
#: The same for fit_transport.
TL = {key: value for key, value in MODEL.items() if key != "seed"}
DELTA = np.array([1.0, -0.5, 0.5])


def gaussian_pair(seed: int, n: int = 200, d: int = 5):
    """Source N(0, I) and target N(1, Σ) with an anisotropic Σ: an affine (linear) truth."""
    rng = np.random.default_rng(seed)
    factor = rng.normal(size=(d, d))
    covariance = factor @ factor.T / d + 0.5 * np.eye(d)
    source = rng.normal(size=(n, d))
    target = rng.multivariate_normal(np.ones(d), covariance, size=n)
    return source, target


def grouped_shift(seed: int, source_counts, target_counts, scale: float = 1.0):
    """Groups ``p0, p1, ...`` translated along a line: source N(o_g, I), target o_g + Δ + scale·N(0, I).

    For ``scale=1`` the truth in every group is the shift ``x ↦ x + Δ``.
    """
    rng = np.random.default_rng(seed)
    source, target, source_labels, target_labels = [], [], [], []
    for k, (n_source, n_target) in enumerate(zip(source_counts, target_counts, strict=True)):
        offset = np.array([3.0 * k, -1.5 * k, 0.0])
        source.append(rng.normal(size=(n_source, 3)) + offset)
        target.append(offset + DELTA + scale * rng.normal(size=(n_target, 3)))
        source_labels += [f"p{k}"] * n_source
        target_labels += [f"p{k}"] * n_target
    return (np.concatenate(source), np.concatenate(target), np.array(source_labels),
            np.array(target_labels))


#: Unbalanced groups: the pooled control and stimulated populations have different group
#: compositions, so only a map relative to each group's own controls recovers the shift.
UNBALANCED = ([200, 50, 200, 50], [50, 200, 50, 200])


def make_adata(counts: dict[str, tuple[int, int]], seed: int = 0) -> ad.AnnData:
    """Synthetic cells: obs 'condition' (control/stim) and 'patient', obsm 'X_pca' (3-D).

    Every patient has its own offset; stim = control + Δ in every patient.
    """
    rng = np.random.default_rng(seed)
    points, rows = [], []
    for patient, (n_control, n_stim) in counts.items():
        offset = rng.normal(scale=3.0, size=3)
        points += [rng.normal(size=(n_control, 3)) + offset,
                   rng.normal(size=(n_stim, 3)) + offset + DELTA]
        rows += [("control", patient)] * n_control + [("stim", patient)] * n_stim
    obs = pd.DataFrame(rows, columns=["condition", "patient"],
                       index=[f"cell{i}" for i in range(len(rows))])
    obs = obs.astype("category")
    adata = ad.AnnData(X=rng.normal(size=(len(rows), 4)).astype(np.float32), obs=obs)
    adata.obsm["X_pca"] = np.concatenate(points).astype(np.float32)
    return adata


FOUR_PATIENTS = {f"p{k}": (40, 40) for k in range(4)}


# ------------------------------------------------------------------------------ 1. residual = 0
def test_residual_zero_is_exactly_the_linear_map():
    source, target = gaussian_pair(0)
    tmap = TransportMap(residual=0, **MODEL).fit(source, target)
    assert tmap.residual_weight_ == 0.0 and tmap.frame_ == "global"
    # T(x) = c + s · T_lin((x − c) / s): the linear part in the map's standardised coordinates.
    expected = tmap.center_ + tmap.scale_ * tmap.linear_.transport(
        (source - tmap.center_) / tmap.scale_
    )
    np.testing.assert_allclose(tmap.transport(source), expected, atol=1e-4)
    # ... hence affine: the transport of midpoints is the midpoint of the transports.
    a, b = source[:100], source[100:]
    np.testing.assert_allclose(tmap.transport((a + b) / 2),
                               (tmap.transport(a) + tmap.transport(b)) / 2, atol=1e-4)
    # The linear map is invertible and inverse() is its exact inverse.
    np.testing.assert_allclose(tmap.inverse(tmap.transport(source)), source, atol=1e-3)


def test_residual_zero_shrinkage_one_is_the_mean_shift():
    source, target = gaussian_pair(1)
    tmap = TransportMap(residual=0, shrinkage=1, **MODEL).fit(source, target)
    assert tmap.shrinkage_ == 1.0 and tmap.residual_weight_ == 0.0
    moved = tmap.transport(source) - source
    np.testing.assert_allclose(moved, np.broadcast_to(moved[0], moved.shape), atol=1e-4)
    np.testing.assert_allclose(moved[0], target.mean(0) - source.mean(0), atol=1e-4)


# ------------------------------------------------------------------------------ 2. λ on a linear truth
@pytest.mark.parametrize("network", ["default", "full_quadratic"])
@pytest.mark.parametrize("seed", [0, 1])
def test_linear_truth_keeps_the_linear_map(seed, network):
    """1200 points of a Gaussian pair (120 held out a side): the network is not accepted
    (λ = 0), even when it starts at the linear map exactly (full_quadratic) and so scores
    about the same."""
    source, target = gaussian_pair(seed, n=1200)
    kwargs = {"network_kwargs": {"full_quadratic": True}} if network == "full_quadratic" else {}
    tmap = TransportMap(**{**MODEL, "seed": seed}, **kwargs).fit(source, target)
    assert tmap.residual_weight_ == 0.0, tmap.selection_
    assert "energy_gain_over_linear" in tmap.selection_
    assert tmap.selection_["energy_gain_over_linear"] <= tmap.selection_["energy_gain_threshold"]


def test_too_few_held_out_cells_keep_the_linear_map_without_training():
    source, target = gaussian_pair(0)  # 200 points: 20 held out a side
    tmap = TransportMap(**MODEL).fit(source, target)
    assert tmap.residual_weight_ == 0.0
    assert "fewer than 100 held-out points a side" in tmap.selection_["residual_note"]
    assert np.isnan(tmap.w2_squared_)  # no network was trained, so no semi-dual estimate


# ------------------------------------------------------------------------------ 3. monotone blend
@pytest.fixture(scope="module")
def trained_map():
    """A tiny trained map (λ = 1 so the network is trained; λ is overridden per example)."""
    source, target = gaussian_pair(2, d=3)
    return TransportMap(residual=1, **MODEL).fit(source, 0.5 * target**2 + target)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(weight=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_blended_map_is_monotone(trained_map, weight, seed):
    """<T(x) − T(y), x − y> >= 0: the blend is the gradient of a convex potential."""
    rng = np.random.default_rng(seed)
    x, y = rng.normal(scale=2.0, size=(2, 256, 3))
    keep = np.linalg.norm(x - y, axis=1) > 0.1
    x, y = x[keep], y[keep]
    saved = trained_map.residual_weight_
    trained_map.residual_weight_ = weight
    try:
        tx, ty = trained_map.transport(x), trained_map.transport(y)
    finally:
        trained_map.residual_weight_ = saved
    inner = np.einsum("nd,nd->n", tx - ty, x - y)
    assert (inner >= -1e-4 * np.sum((x - y) ** 2, axis=1)).all(), inner.min()


# ------------------------------------------------------------------------------ 4. paired_energy
def test_paired_energy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 4))
    observed = rng.normal(size=(120, 4)) + 0.5
    predictions = {"reference": x, "copy": x.copy(), "shifted": x + 2.0, "closer": x + 0.5}
    scores = paired_energy(predictions, observed, reference="reference",
                           rng=np.random.default_rng(1), n_bootstrap=100)
    assert scores.reference == "reference"
    assert scores.standard_error["reference"] == 0.0
    assert scores.standard_error["copy"] == 0.0
    assert scores.energy["copy"] == scores.energy["reference"]
    assert scores.standard_error["shifted"] > 0.0
    assert scores.energy["shifted"] > scores.energy["reference"] > scores.energy["closer"]
    for name, predicted in predictions.items():
        assert abs(scores.energy[name] - energy_distance(predicted, observed)) < 1e-8, name
    # The bootstrap is driven by rng only: the same seed gives the same errors.
    again = paired_energy(predictions, observed, reference="reference",
                          rng=np.random.default_rng(1), n_bootstrap=100)
    assert again.standard_error == scores.standard_error


# ------------------------------------------------------------------------------ 5. choose_linear
def _choose(source, target, source_labels, target_labels):
    return choose_linear(
        source, target, frames=FRAMES, shrinkages=SHRINKAGE_GRID, source_labels=source_labels,
        target_labels=target_labels, held_source=np.zeros(len(source), bool),
        held_target=np.zeros(len(target), bool), rng=np.random.default_rng(0),
    )


def test_choose_linear_pure_shift_picks_the_mean_shift():
    _frame, shrinkage, record = _choose(*grouped_shift(0, [150] * 4, [150] * 4))
    # The lowest mean score wins; near the mean shift the candidates differ by sampling noise.
    assert shrinkage >= 0.75, record
    assert min(record.values()) < 1.02 * min(v for k, v in record.items() if k.endswith("_1"))


def test_choose_linear_unbalanced_translated_groups_picks_group_frame():
    frame, shrinkage, record = _choose(*grouped_shift(0, *UNBALANCED))
    # Both group-aware frames give the same per-group mean shift here; the pooled one cannot.
    assert frame in ("group", "within") and shrinkage == 1.0, record
    assert record["linear_score_group_1"] < record["linear_score_global_1"]


def test_choose_linear_scaling_is_not_a_mean_shift():
    """Sanity: with a response that scales the spread, the Gaussian map (little shrinkage) wins."""
    frame, shrinkage, record = _choose(*grouped_shift(0, [150] * 4, [150] * 4, scale=2.0))
    assert frame == "group" and shrinkage <= 0.25, record


def test_new_group_is_predicted_from_its_own_controls():
    source, target, source_labels, target_labels = grouped_shift(0, *UNBALANCED)
    tmap = TransportMap(residual=0, **MODEL).fit(
        source, target, source_groups=source_labels, target_groups=target_labels
    )
    assert tmap.frame_ in ("group", "within") and tmap.shrinkage_ == 1.0
    assert tmap.residual_weight_ == 0.0
    new = np.random.default_rng(9).normal(size=(150, 3)) + np.array([5.0, 4.0, -2.0])
    truth = new + DELTA
    error = np.linalg.norm(tmap.transport(new, groups=["new"] * len(new)) - truth, axis=1).mean()
    pooled = GaussianTransportMap(regularization=1e-3).fit(source, target)
    pooled_error = np.linalg.norm(pooled.transport(new) - truth, axis=1).mean()
    assert error < 0.2, error
    assert error < pooled_error / 2, (error, pooled_error)


# ------------------------------------------------------------------------------ 6. persistence
@pytest.fixture(scope="module")
def group_map():
    source, target, source_labels, target_labels = grouped_shift(1, [60] * 4, [60] * 4)
    return TransportMap(frame="group", residual=0.5, **MODEL).fit(
        source, target, source_groups=source_labels, target_groups=target_labels
    )


def test_group_map_save_load_identity(group_map, tmp_path):
    group_map.save(tmp_path / "map")
    loaded = TransportMap.load(tmp_path / "map", device="cpu")
    for name in ("frame_", "shrinkage_", "residual_weight_", "selection_"):
        assert getattr(loaded, name) == getattr(group_map, name), name
    assert loaded.frame_ == "group" and loaded.residual_weight_ == 0.5
    assert sorted(loaded.group_means_) == sorted(group_map.group_means_)
    for label, mean in group_map.group_means_.items():
        np.testing.assert_array_equal(loaded.group_means_[label], mean)
    rng = np.random.default_rng(3)
    x = rng.normal(scale=3.0, size=(40, 3))
    seen = np.repeat(["p0", "p1", "p2", "p3"], 10)
    mixed = np.array(["p0"] * 10 + ["new"] * 30)
    for groups in (seen, mixed, ["new"] * 40, None):
        np.testing.assert_array_equal(loaded.transport(x, groups=groups),
                                      group_map.transport(x, groups=groups))
        np.testing.assert_array_equal(loaded.potential(x, groups=groups),
                                      group_map.potential(x, groups=groups))
    np.testing.assert_array_equal(loaded.inverse(x, groups=seen), group_map.inverse(x, groups=seen))
    # Seen groups move relative to their stored mean, not to the mean of the rows passed.
    # (equal up to float32 rounding: batches of other sizes round differently)
    one = group_map.transport(x[:10], groups=["p2"] * 10)
    np.testing.assert_allclose(one, group_map.transport(x, groups=["p2"] * 40)[:10], atol=1e-5)


@pytest.fixture(scope="module")
def fitted_adata():
    """Four patients, a tiny map fitted with groups='patient' (default validation_fraction)."""
    adata = make_adata(FOUR_PATIENTS)
    fit_transport(adata, groupby="condition", source="control", groups="patient", frame="group",
                  residual=0.5, seed=0, **TL)
    return adata


def test_fit_transport_groups_h5ad_round_trip(fitted_adata, tmp_path):
    adata = fitted_adata.copy()
    control = (adata.obs["condition"] == "control").to_numpy()
    # New patient (out of sample): predicted relative to the mean of its own control cells.
    new = make_adata({"p9": (30, 0)}, seed=5)
    new.obsm["X_pca"] = new.obsm["X_pca"] + 2.0
    before = {"all": predict(adata).obsm["X_pca"], "new": predict(adata, query=new).obsm["X_pca"]}
    # predict agrees with what fit_transport stored for the fitted cells (groups read from obs).
    np.testing.assert_allclose(before["all"], adata.obsm["hycnn_stim"][control], atol=1e-5)
    tmap = decode_map(adata.uns["hycnn"]["maps"]["stim"], device="cpu", name="stim")
    assert tmap.frame_ == "group"
    np.testing.assert_array_equal(
        before["new"], tmap.transport(new.obsm["X_pca"], groups=["p9"] * new.n_obs)
    )

    adata.write_h5ad(tmp_path / "fitted.h5ad")
    back = ad.read_h5ad(tmp_path / "fitted.h5ad")
    np.testing.assert_array_equal(predict(back).obsm["X_pca"], before["all"])
    np.testing.assert_array_equal(predict(back, query=new).obsm["X_pca"], before["new"])
    # The group column is what predict reads: relabelled cells become a new group.
    renamed = new.copy()
    renamed.obs["patient"] = "p0"  # now a seen patient: moved relative to p0's stored mean
    assert not np.allclose(predict(back, query=renamed).obsm["X_pca"], before["new"])


# ------------------------------------------------------------------------------ 7. defaults
def test_fit_transport_default_uses_all_cells(fitted_adata):
    split = fitted_adata.obs["hycnn_split"]
    assert split.notna().all() and set(split.astype(str)) == {"train"}
    params = fitted_adata.uns["hycnn"]["params"]
    assert params["groups"] == "patient"
    assert params["holdout_fraction"] == 0.0


# ------------------------------------------------------------------------------ 8. evaluate(holdout)
def test_evaluate_holdout_table(tmp_path):
    adata = make_adata(FOUR_PATIENTS, seed=1)
    fit_transport(adata, groupby="condition", source="control", groups="patient", seed=0, **TL)
    table = evaluate(adata, holdout="patient", max_cells=100)
    methods = ["hycnn", "identity", "mean_shift", "gaussian_ot", "observed"]
    assert sorted(table["holdout"].unique()) == sorted(FOUR_PATIENTS)
    for (patient, target), block in table.groupby(["holdout", "target"], sort=False):
        assert target == "stim"
        assert block["method"].tolist() == methods, patient
        model = block[block["method"] == "hycnn"].iloc[0]
        assert model["frame"] in FRAMES
        assert model["shrinkage"] in SHRINKAGE_GRID
        assert 0.0 <= model["residual_weight"] <= 1.0
        others = block[block["method"] != "hycnn"]
        assert (others["frame"] == "").all() and others["shrinkage"].isna().all()
        assert np.isfinite(block["energy_distance"]).all()
        # Every patient is a pure shift of its own controls: the model beats leaving them unmoved.
        energy = block.set_index("method")["energy_distance"]
        assert energy["hycnn"] < energy["identity"], patient
    assert adata.uns["hycnn"]["evaluation_holdout"] is table

    adata.write_h5ad(tmp_path / "evaluated.h5ad")
    back = ad.read_h5ad(tmp_path / "evaluated.h5ad").uns["hycnn"]["evaluation_holdout"]
    pd.testing.assert_frame_equal(back.reset_index(drop=True), table, check_dtype=False,
                                  check_categorical=False)


# ------------------------------------------------------------------------------ "within" frame
def test_within_frame_is_the_average_of_within_group_linear_maps():
    from hycnn_sc.models._selection import fit_linear, fit_linear_within

    source, target, source_labels, target_labels = grouped_shift(3, [120] * 3, [100] * 3,
                                                                 scale=1.5)
    averaged = fit_linear_within(source, target, source_labels, target_labels, 0.25)
    x = source[:7]
    expected = np.mean([
        fit_linear(source[source_labels == g], target[target_labels == g], 0.25).transport(x)
        for g in np.unique(source_labels)
    ], axis=0)
    np.testing.assert_allclose(averaged.transport(x), expected, atol=1e-10)
    assert np.linalg.eigvalsh(averaged.matrix_).min() > 0  # still a convex potential's gradient
    np.testing.assert_allclose(averaged.inverse(averaged.transport(x)), x, atol=1e-8)


def test_within_frame_map_needs_no_groups_at_prediction():
    source, target, source_labels, target_labels = grouped_shift(4, [120] * 4, [100] * 4)
    tmap = TransportMap(frame="within", residual=0, **MODEL).fit(
        source, target, source_groups=source_labels, target_groups=target_labels)
    assert tmap.frame_ == "within" and tmap.group_means_ == {}
    moved = tmap.transport(source[:3])  # one point at a time is fine: nothing is centred
    np.testing.assert_allclose(moved, np.vstack([tmap.transport(row[None]) for row in source[:3]]),
                               rtol=1e-5, atol=1e-5)
