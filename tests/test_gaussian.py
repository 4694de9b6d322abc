"""Tests for the closed-form Gaussian optimal-transport map."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from hycnn_sc.models.gaussian import GaussianTransportMap, gaussian_transport_matrix


def random_spd(rng: np.random.Generator, d: int, low: float = 0.5, high: float = 3.0) -> np.ndarray:
    """Random SPD matrix with eigenvalues in [low, high] (well conditioned)."""
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (q * rng.uniform(low, high, size=d)) @ q.T


def exact_bures_w2(m0, cov0, m1, cov1) -> float:
    """W2² between Gaussians via an independent route (scipy sqrtm on SPD products)."""
    from scipy.linalg import sqrtm

    root0 = sqrtm(cov0).real
    cross = sqrtm(root0 @ cov1 @ root0).real
    return float(np.sum((m0 - m1) ** 2) + np.trace(cov0) + np.trace(cov1) - 2 * np.trace(cross))


@pytest.fixture
def gaussians() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "m0": np.array([0.0, 1.0, -1.0]),
        "m1": np.array([2.0, -1.0, 0.5]),
        "cov0": random_spd(rng, 3),
        "cov1": random_spd(rng, 3),
    }


def test_exact_covariances_push_forward(gaussians) -> None:
    cov0, cov1 = gaussians["cov0"], gaussians["cov1"]
    a = gaussian_transport_matrix(cov0, cov1)
    np.testing.assert_allclose(a, a.T, atol=0)  # exactly symmetric
    assert np.linalg.eigvalsh(a).min() > 0  # PSD (PD here since cov1 is PD)
    np.testing.assert_allclose(a @ cov0 @ a, cov1, rtol=1e-10, atol=1e-12)
    # the reverse map is the inverse matrix
    np.testing.assert_allclose(gaussian_transport_matrix(cov1, cov0) @ a, np.eye(3), atol=1e-10)


def test_known_matrices() -> None:
    # commuting (diagonal) case: A = sqrt(Σ1 / Σ0) entry-wise
    a = gaussian_transport_matrix(np.diag([1.0, 4.0, 0.25]), np.diag([9.0, 1.0, 1.0]))
    np.testing.assert_allclose(a, np.diag([3.0, 0.5, 2.0]), rtol=1e-12)
    # identity when the covariances agree
    cov = random_spd(np.random.default_rng(5), 4)
    np.testing.assert_allclose(gaussian_transport_matrix(cov, cov), np.eye(4), atol=1e-10)
    # singular target is allowed (A is then only PSD)
    a = gaussian_transport_matrix(np.eye(2), np.diag([4.0, 0.0]))
    np.testing.assert_allclose(a, np.diag([2.0, 0.0]), atol=1e-12)


def test_fit_recovers_map_from_samples(gaussians) -> None:
    """n = 200k per population: sampling error of A is O(1/sqrt(n)); we allow 0.02 absolute."""
    rng = np.random.default_rng(1)
    g = gaussians
    n = 200_000
    source = rng.multivariate_normal(g["m0"], g["cov0"], size=n)
    target = rng.multivariate_normal(g["m1"], g["cov1"], size=n - 1000)
    gmap = GaussianTransportMap().fit(source, target)
    exact = gaussian_transport_matrix(g["cov0"], g["cov1"])
    np.testing.assert_allclose(gmap.matrix_, exact, atol=0.02)
    np.testing.assert_allclose(gmap.inverse_matrix_, np.linalg.inv(exact), atol=0.02)
    np.testing.assert_allclose(gmap.mean_source_, g["m0"], atol=0.02)
    np.testing.assert_allclose(gmap.mean_target_, g["m1"], atol=0.02)
    w2 = exact_bures_w2(g["m0"], g["cov0"], g["m1"], g["cov1"])
    assert gmap.w2_squared_ == pytest.approx(w2, rel=0.02)


def test_fit_is_exact_on_empirical_moments() -> None:
    """Without regularisation the map sends the source sample moments to the target ones."""
    rng = np.random.default_rng(2)
    source = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 4))
    target = rng.gamma(2.0, size=(250, 4)) @ rng.normal(size=(4, 4)) + 3.0
    gmap = GaussianTransportMap(regularization=0.0).fit(source, target)
    moved = gmap.transport(source)
    np.testing.assert_allclose(moved.mean(axis=0), target.mean(axis=0), atol=1e-10)
    np.testing.assert_allclose(
        np.cov(moved, rowvar=False), np.cov(target, rowvar=False), rtol=1e-8, atol=1e-9
    )
    np.testing.assert_allclose(gmap.matrix_, gmap.matrix_.T, atol=0)
    assert np.linalg.eigvalsh(gmap.matrix_).min() >= 0
    w2 = exact_bures_w2(
        source.mean(0), np.cov(source, rowvar=False), target.mean(0), np.cov(target, rowvar=False)
    )
    assert gmap.w2_squared_ == pytest.approx(w2, rel=1e-8)


def test_inverse_of_transport_is_identity() -> None:
    rng = np.random.default_rng(3)
    source = rng.normal(size=(100, 5))
    target = rng.normal(size=(120, 5)) @ random_spd(rng, 5) + 1.0
    gmap = GaussianTransportMap().fit(source, target)
    x = rng.normal(size=(20, 5))
    np.testing.assert_allclose(gmap.inverse(gmap.transport(x)), x, atol=1e-10)
    np.testing.assert_allclose(gmap.transport(gmap.inverse(x)), x, atol=1e-10)
    assert gmap.transport(x).dtype == np.float64
    assert gmap.transport(x.astype(np.float32)).dtype == np.float32


def test_w2_one_dimensional_formula() -> None:
    rng = np.random.default_rng(4)
    source = rng.normal(1.0, 2.0, size=(500, 1))
    target = rng.normal(-3.0, 0.5, size=(400, 1))
    gmap = GaussianTransportMap(regularization=0.0).fit(source, target)
    m0, m1 = source.mean(), target.mean()
    s0, s1 = source.std(ddof=1), target.std(ddof=1)
    assert gmap.w2_squared_ == pytest.approx((m0 - m1) ** 2 + (s0 - s1) ** 2, rel=1e-12)
    assert gmap.matrix_[0, 0] == pytest.approx(s1 / s0, rel=1e-12)


def test_regularization_is_relative_to_mean_variance() -> None:
    rng = np.random.default_rng(6)
    source = rng.normal(size=(50, 3))
    target = rng.normal(size=(50, 3))
    small = GaussianTransportMap(regularization=0.5).fit(source, target)
    big = GaussianTransportMap(regularization=0.5).fit(100 * source, 100 * target)
    np.testing.assert_allclose(small.matrix_, big.matrix_, rtol=1e-10)  # scale-free ridge
    assert big.w2_squared_ == pytest.approx(1e4 * small.w2_squared_, rel=1e-10)
    # d > n: singular without the ridge, fine with it
    wide = rng.normal(size=(5, 10))
    with pytest.raises(ValueError, match="singular"):
        GaussianTransportMap(regularization=0.0).fit(wide, wide + 1)
    assert np.isfinite(GaussianTransportMap(regularization=1e-3).fit(wide, wide + 1).matrix_).all()


def test_state_round_trip() -> None:
    rng = np.random.default_rng(7)
    gmap = GaussianTransportMap(regularization=1e-4).fit(
        rng.normal(size=(40, 3)), rng.normal(size=(30, 3)) * 2
    )
    state = gmap.get_state()
    for value in state.values():
        assert isinstance(value, (float, str, np.ndarray))  # str: the covariance estimator
    restored = GaussianTransportMap.from_state(state)
    assert restored.regularization == gmap.regularization
    assert restored.w2_squared_ == gmap.w2_squared_
    assert restored.n_features_in_ == 3
    for name in ("mean_source_", "mean_target_", "matrix_", "inverse_matrix_"):
        np.testing.assert_array_equal(getattr(restored, name), getattr(gmap, name))
    x = rng.normal(size=(4, 3))
    np.testing.assert_array_equal(restored.transport(x), gmap.transport(x))
    # values as read back from h5ad (numpy scalars, lists) are accepted
    loose = {k: (np.float64(v) if isinstance(v, float) else v if isinstance(v, str) else v.tolist())
             for k, v in state.items()}
    np.testing.assert_array_equal(GaussianTransportMap.from_state(loose).matrix_, gmap.matrix_)
    with pytest.raises(ValueError, match="missing keys"):
        GaussianTransportMap.from_state({"matrix": state["matrix"]})
    with pytest.raises(ValueError, match="Inconsistent shapes"):
        GaussianTransportMap.from_state({**state, "matrix": np.eye(2)})


def test_deprecated_dict_names_warn_and_still_work() -> None:
    rng = np.random.default_rng(7)
    gmap = GaussianTransportMap().fit(rng.normal(size=(40, 3)), rng.normal(size=(30, 3)))
    with pytest.warns(FutureWarning, match="use get_state"):
        state = gmap.to_dict()
    with pytest.warns(FutureWarning, match="use from_state"):
        restored = GaussianTransportMap.from_dict(state)
    np.testing.assert_array_equal(restored.matrix_, gmap.matrix_)


def test_sklearn_clone_and_params() -> None:
    gmap = GaussianTransportMap(shrinkage=0.5, covariance="ledoit_wolf")
    copy = clone(gmap)
    assert copy.get_params() == gmap.get_params() and copy is not gmap
    assert gmap.set_params(shrinkage=0.25) is gmap and gmap.shrinkage == 0.25
    assert repr(gmap) == "GaussianTransportMap(covariance='ledoit_wolf', shrinkage=0.25)"


@pytest.mark.parametrize(
    ("source", "target", "error", "match"),
    [
        (np.zeros(5), np.zeros((5, 1)), ValueError, "2-D"),
        (np.ones((5, 2)), np.ones((5, 3)), ValueError, "features"),
        (np.ones((1, 2)), np.ones((5, 2)), ValueError, "at least 2"),
        (np.full((5, 2), np.inf), np.ones((5, 2)), ValueError, "NaN or infinite"),
        (np.ones((5, 2)), np.ones((5, 2)), ValueError, "constant"),
        (np.array([["a", "b"], ["c", "d"]]), np.ones((5, 2)), TypeError, "numeric"),
    ],
)
def test_fit_bad_input(source, target, error, match) -> None:
    with pytest.raises(error, match=match):
        GaussianTransportMap().fit(source, target)


def test_other_errors() -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(size=(10, 2))
    with pytest.raises(NotFittedError, match="not fitted"):
        GaussianTransportMap().transport(x)
    with pytest.raises(NotFittedError):
        GaussianTransportMap().get_state()
    with pytest.raises(ValueError, match="regularization"):
        GaussianTransportMap(regularization=-1.0).fit(x, x)
    gmap = GaussianTransportMap().fit(x, x + 1)
    with pytest.raises(ValueError, match="fitted on 2"):
        gmap.transport(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="symmetric"):
        gaussian_transport_matrix(np.array([[1.0, 0.5], [0.0, 1.0]]), np.eye(2))
    with pytest.raises(ValueError, match="singular"):
        gaussian_transport_matrix(np.diag([1.0, 0.0]), np.eye(2))
    with pytest.raises(ValueError, match="positive semi-definite"):
        gaussian_transport_matrix(np.eye(2), np.diag([1.0, -1.0]))
    with pytest.raises(ValueError, match="shape"):
        gaussian_transport_matrix(np.eye(2), np.eye(3))


@pytest.mark.parametrize("shrinkage", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("covariance", ["empirical", "ledoit_wolf"])
def test_shrinkage_interpolates_to_the_mean_shift(shrinkage: float, covariance: str) -> None:
    rng = np.random.default_rng(11)
    source = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 4))
    target = rng.normal(size=(250, 4)) * 3 + 1
    gmap = GaussianTransportMap(shrinkage=shrinkage, covariance=covariance).fit(source, target)
    full = GaussianTransportMap(covariance=covariance).fit(source, target)
    expected = (1 - shrinkage) * full.matrix_ + shrinkage * np.eye(4)
    np.testing.assert_allclose(gmap.matrix_, expected, atol=1e-10)
    np.testing.assert_allclose(gmap.matrix_ @ gmap.inverse_matrix_, np.eye(4), atol=1e-8)
    assert np.linalg.eigvalsh(gmap.matrix_).min() > 0  # still the gradient of a convex function
    moved = gmap.transport(source)
    np.testing.assert_allclose(moved.mean(0), target.mean(0), atol=1e-8)  # means always match
    if shrinkage == 1.0:
        np.testing.assert_allclose(moved, source + target.mean(0) - source.mean(0), atol=1e-8)
    restored = GaussianTransportMap.from_state(gmap.get_state())
    np.testing.assert_array_equal(restored.transport(source), moved)


def test_ledoit_wolf_is_better_conditioned_with_few_cells() -> None:
    rng = np.random.default_rng(12)
    source, target = rng.normal(size=(25, 20)), rng.normal(size=(25, 20)) * 2
    empirical = GaussianTransportMap(regularization=1e-3).fit(source, target)
    shrunk = GaussianTransportMap(regularization=1e-3, covariance="ledoit_wolf").fit(source, target)
    assert np.linalg.cond(shrunk.matrix_) < np.linalg.cond(empirical.matrix_)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"shrinkage": -0.1}, ValueError, r"shrinkage must lie in \[0, 1\] \(0: Gaussian OT map, 1: mean shift\)"),
        ({"shrinkage": 1.5}, ValueError, "shrinkage must lie in"),
        ({"shrinkage": "auto"}, TypeError, "shrinkage must be a number"),
        ({"covariance": "oas"}, ValueError, "Unknown covariance 'oas'; choose one of"),
    ],
)
def test_bad_shrinkage_and_covariance(kwargs, error, match) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(error, match=match):
        GaussianTransportMap(**kwargs).fit(rng.normal(size=(20, 2)), rng.normal(size=(20, 2)))
