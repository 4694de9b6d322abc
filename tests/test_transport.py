"""Tests of ``TransportMap``: accuracy against the closed-form Gaussian OT map, persistence,
reproducibility, batching and input validation.

Accuracy is stated relative to how far points move: with ``T`` the exact map built from the TRUE
covariances, ``mean ‖T̂(x) − T(x)‖² <= tol · mean ‖T(x) − x‖²`` on fresh source points.
All fits are tiny (d = 2, hidden = (16, 16), <= 200 iterations) so the file runs in seconds.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import with_pre_rename_names
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError

import hycnn_sc.models._estimator as estimator_module
import hycnn_sc.models.transport as transport_module
from hycnn_sc.models import ConditionalTransportMap, ConvexRegressor
from hycnn_sc.models.gaussian import GaussianTransportMap, gaussian_transport_matrix
from hycnn_sc.models.transport import GAUSSIAN_RIDGE, TransportMap

D = 2
N_SAMPLES = 2000
#: Shared small configuration; ``selection_fraction=0`` keeps the last iterate (with the cosine
#: learning-rate decay this is a low-noise iterate), which makes accuracy checks stable. ``lr`` is
#: pinned because these budgets (<= 200 iterations) were tuned for it: a smaller default learning
#: rate needs many more iterations than a fast test can afford. ``tau=10`` (the paper's OT
#: setting, nearly affine gates) suits these Gaussian problems: with the cell-data default 0.3
#: the forward map is as accurate, but the round trip ∇g∘∇f misses by ~3 % instead of < 1 %
#: at these tiny budgets.
BASE = dict(
    hidden=(16, 16),
    tau=10.0,
    batch_size=256,
    inner_steps=3,
    lr=1e-2,
    selection_fraction=0.0,
    device="cpu",
    seed=0,
)
#: Tiny configuration for tests that only need *a* fitted map (reproducibility, validation).
TINY = dict(hidden=(4,), n_iters=5, inner_steps=2, batch_size=32, warm_start_iters=5, device="cpu")


def random_spd(rng: np.random.Generator, d: int, low: float = 0.5, high: float = 3.0) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (q * rng.uniform(low, high, size=d)) @ q.T


class GaussianProblem:
    """Two Gaussians, samples of each, and the exact OT map from the TRUE parameters."""

    def __init__(self, seed: int, d: int = D, n: int = N_SAMPLES) -> None:
        rng = np.random.default_rng(seed)
        self.m0, self.m1 = rng.normal(size=d), rng.normal(size=d) + 1.0
        self.cov0, self.cov1 = random_spd(rng, d), random_spd(rng, d)
        self.source = rng.multivariate_normal(self.m0, self.cov0, n)
        self.target = rng.multivariate_normal(self.m1, self.cov1, n)
        self.fresh = rng.multivariate_normal(self.m0, self.cov0, 1000)
        self.matrix = gaussian_transport_matrix(self.cov0, self.cov1)

    def exact(self, x: np.ndarray) -> np.ndarray:
        return self.m1 + (x - self.m0) @ self.matrix

    def relative_error(self, tmap: TransportMap) -> float:
        exact = self.exact(self.fresh)
        mse = np.sum((tmap.transport(self.fresh) - exact) ** 2, axis=1).mean()
        return float(mse / np.sum((exact - self.fresh) ** 2, axis=1).mean())

    def w2_squared(self) -> float:
        # tr (Σ0^½ Σ1 Σ0^½)^½ = tr(A Σ0) for the OT matrix A.
        return float(
            np.sum((self.m0 - self.m1) ** 2)
            + np.trace(self.cov0)
            + np.trace(self.cov1)
            - 2.0 * np.trace(self.matrix @ self.cov0)
        )


def fit(source, target, **params) -> TransportMap:
    # These tests check the trained network itself: keep it whole (residual weight 1) unless a
    # test asks otherwise; the selection of the residual is tested in test_selection.py.
    params.setdefault("residual", 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "still falling" convergence warnings
        return TransportMap(**params).fit(source, target)


@pytest.fixture(scope="module")
def problem() -> GaussianProblem:
    return GaussianProblem(0)


@pytest.fixture(scope="module")
def fitted(problem) -> TransportMap:
    """HyCNN map with the Gaussian warm start (the default), shared by many tests."""
    return fit(problem.source, problem.target, n_iters=80, warm_start_iters=100, **BASE)


@pytest.fixture(scope="module")
def tiny_data():
    rng = np.random.default_rng(1)
    return rng.normal(size=(200, 3)), 2.0 * rng.normal(size=(150, 3)) + 1.0


# ---------------------------------------------------------------------------- accuracy
def test_recovers_gaussian_map_with_gaussian_warm_start(problem, fitted) -> None:
    assert problem.relative_error(fitted) <= 0.05
    assert fitted.transport(problem.fresh).shape == problem.fresh.shape
    assert fitted.transport(problem.fresh).dtype == np.float32


@pytest.mark.parametrize("warm_start", [None, "identity"])
def test_recovers_gaussian_map_without_gaussian_warm_start(problem, warm_start) -> None:
    tmap = fit(
        problem.source,
        problem.target,
        n_iters=200,
        warm_start=warm_start,
        warm_start_iters=50,
        **BASE,
    )
    assert problem.relative_error(tmap) <= 0.05


@pytest.mark.parametrize("model", ["hycnn", "icnn"])
def test_full_quadratic_starts_exactly_at_the_gaussian_map(problem, model) -> None:
    """With ``full_quadratic`` the Gaussian warm start is exact: no training needed."""
    tmap = fit(problem.source, problem.target, model=model, n_iters=1,
               network_kwargs={"full_quadratic": True},
               **{**BASE, "tau": None if model == "icnn" else 10.0, "lr": 1e-6})
    gaussian = GaussianTransportMap(regularization=GAUSSIAN_RIDGE).fit(problem.source, problem.target)
    reference = gaussian.transport(problem.fresh)
    error = np.sum((tmap.transport(problem.fresh) - reference) ** 2, axis=1).mean()
    assert error <= 1e-3 * np.sum((reference - problem.fresh) ** 2, axis=1).mean()
    assert problem.relative_error(tmap) <= 0.05
    assert tmap.f_.full_quadratic and tmap.history_["loss_f"].shape == (1,)


def test_full_quadratic_exact_start_ignores_warm_start_iters(problem) -> None:
    """The exact Gaussian start does no gradient matching, so warm_start_iters=0 keeps it."""
    options = dict(n_iters=1, network_kwargs={"full_quadratic": True}, **{**BASE, "lr": 1e-6})
    with_steps = fit(problem.source, problem.target, warm_start_iters=100, **options)
    without = fit(problem.source, problem.target, warm_start_iters=0, **options)
    np.testing.assert_array_equal(with_steps.transport(problem.fresh),
                                  without.transport(problem.fresh))


@pytest.mark.parametrize(
    ("activation", "tolerance"),
    # A ReLU ICNN has a piecewise-constant gradient (a staircase map), so it is much less
    # accurate: 3-16% over several data/model seeds, against 1-3% for the smooth softplus ICNN.
    [("relu", 0.25), ("softplus", 0.10)],
)
def test_icnn_recovers_gaussian_map_loosely(problem, activation, tolerance) -> None:
    tmap = fit(
        problem.source,
        problem.target,
        model="icnn",
        n_iters=50,
        warm_start_iters=150,
        network_kwargs={"activation": activation},
        **{**BASE, "tau": None},
    )
    assert problem.relative_error(tmap) <= tolerance
    assert type(tmap.f_).__name__ == "ICNN" and tmap.f_.activation == activation


def test_inverse_of_transport_is_identity(problem, fitted) -> None:
    mapped = fitted.transport(problem.fresh)
    back = fitted.inverse(mapped)
    moved = np.sum((mapped - problem.fresh) ** 2, axis=1).mean()
    # ∇g ∘ ∇f ≈ id: mean squared round-trip error <= 1% of the mean squared displacement.
    assert np.sum((back - problem.fresh) ** 2, axis=1).mean() <= 0.01 * moved


def test_inverse_maps_target_to_source(problem, fitted) -> None:
    """∇g is the map target -> source: compare with the exact inverse affine map."""
    fresh_target = problem.exact(problem.fresh)  # exact pushforward of fresh source points
    error = np.sum((fitted.inverse(fresh_target) - problem.fresh) ** 2, axis=1).mean()
    moved = np.sum((fresh_target - problem.fresh) ** 2, axis=1).mean()
    assert error <= 0.05 * moved


def test_w2_squared_close_to_closed_form(problem, fitted) -> None:
    exact = problem.w2_squared()
    assert fitted.w2_squared_ == pytest.approx(exact, rel=0.2)
    # Without validation data w2_squared_ is measured on the (whole) training data.
    assert fitted.w2_squared(problem.source, problem.target) == pytest.approx(
        fitted.w2_squared_, rel=1e-3
    )


def test_fitted_attributes(fitted, problem) -> None:
    assert fitted.in_features_ == D
    assert fitted.seed_ == 0
    assert fitted.n_params_ > 0
    assert fitted.best_iteration_ == 80  # no validation: the last iterate is kept
    assert fitted.center_.shape == (D,)
    assert fitted.scale_ > 0
    for name in ("loss_f", "loss_g", "tau"):
        assert fitted.history_[name].shape == (80,)
        assert np.isfinite(fitted.history_[name]).all()


# ---------------------------------------------------------------------------- inference helpers
def test_transport_in_chunks_equals_unchunked(problem, fitted) -> None:
    # Equal up to float32 round-off (matrix products may block differently per chunk size).
    x = problem.fresh[:50]
    for method in (fitted.transport, fitted.inverse, fitted.potential):
        whole = method(x)
        chunked = method(x, batch_size=7)
        assert chunked.shape == whole.shape
        np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5 * (1 + np.abs(whole).max()))
    single = np.concatenate([fitted.transport(x[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(single, fitted.transport(x[:5]), rtol=1e-5, atol=1e-5)


def test_transport_accepts_torch_and_lists(problem, fitted) -> None:
    x = problem.fresh[:5]
    expected = fitted.transport(x)
    np.testing.assert_array_equal(fitted.transport(torch.as_tensor(x)), expected)
    np.testing.assert_array_equal(fitted.transport(x.astype(np.float32).tolist()), expected)


def test_potential_gradient_is_transport(problem, fitted) -> None:
    x = problem.fresh[:20].astype(np.float64)
    eps = 1e-2
    fd = np.stack(
        [
            (
                fitted.potential(x + eps * e).astype(np.float64)
                - fitted.potential(x - eps * e).astype(np.float64)
            )
            / (2 * eps)
            for e in np.eye(D)
        ],
        axis=1,
    )
    mapped = fitted.transport(x)
    np.testing.assert_allclose(fd, mapped, atol=2e-2 * (1 + np.abs(mapped).max()))


def test_potential_is_convex_along_segments(problem, fitted) -> None:
    rng = np.random.default_rng(3)
    a, b = problem.fresh[:200], problem.fresh[200:400]
    t = rng.uniform(size=(200, 1))
    gap = (
        t[:, 0] * fitted.potential(a)
        + (1 - t[:, 0]) * fitted.potential(b)
        - fitted.potential(t * a + (1 - t) * b)
    )
    assert gap.min() >= -1e-3 * (1 + np.abs(fitted.potential(a)).max())


# ---------------------------------------------------------------------------- persistence
def assert_same_outputs(a: TransportMap, b: TransportMap, x: np.ndarray) -> None:
    np.testing.assert_array_equal(a.transport(x), b.transport(x))
    np.testing.assert_array_equal(a.inverse(x), b.inverse(x))
    np.testing.assert_array_equal(a.potential(x), b.potential(x))


def test_save_load_round_trip(fitted, problem, tmp_path) -> None:
    path = tmp_path / "map"
    fitted.save(path)
    loaded = TransportMap.load(path, device="cpu")
    assert_same_outputs(fitted, loaded, problem.fresh[:100])
    assert loaded.get_params() == {**fitted.get_params(), "hidden": (16, 16)}
    for name in (
        "in_features_",
        "scale_",
        "seed_",
        "n_params_",
        "best_iteration_",
        "converged_",
        "w2_squared_",
    ):
        assert getattr(loaded, name) == getattr(fitted, name), name
    for name, values in fitted.history_.items():
        np.testing.assert_array_equal(loaded.history_[name], values)


def test_renamed_keywords_warn_and_still_work(tiny_data) -> None:
    source, target = tiny_data
    new = fit(source, target, seed=0, selection_fraction=0.2, selection_every=2, **TINY)
    with pytest.warns(FutureWarning, match=r"validation_fraction=.*use selection_fraction="):
        old = fit(source, target, seed=0, validation_fraction=0.2, validation_every=2, **TINY)
    np.testing.assert_array_equal(new.transport(source), old.transport(source))
    params = old.get_state()["params"]
    assert "validation_fraction" not in params and "validation_every" not in params
    assert params["selection_fraction"] == 0.2 and params["selection_every"] == 2
    with pytest.warns(FutureWarning, match=r"validation_every=.*use selection_every="):
        TransportMap.fit_many([source], [target], seed=0, validation_every=2, **TINY)


def test_state_with_the_old_names_loads(tiny_data) -> None:
    """States written before the rename (params ``validation_*``, history ``validation_*``)."""
    source, target = tiny_data
    tmap = fit(source, target, seed=0, selection_fraction=0.2, **TINY)
    state = tmap.get_state()
    state = with_pre_rename_names(state)
    loaded = TransportMap.from_state(state, device="cpu")
    assert loaded.selection_fraction == 0.2 and loaded.validation_fraction == "deprecated"
    assert set(loaded.history_) == set(tmap.history_)
    np.testing.assert_array_equal(loaded.transport(source), tmap.transport(source))


def test_save_refuses_existing_path(fitted, problem, tmp_path) -> None:
    path = tmp_path / "map"
    fitted.save(path)
    with pytest.raises(FileExistsError):
        fitted.save(path)
    (tmp_path / "other").mkdir()
    with pytest.raises(FileExistsError):
        fitted.save(tmp_path / "other")
    fitted.save(path, overwrite=True)
    assert_same_outputs(fitted, TransportMap.load(path, device="cpu"), problem.fresh[:10])


def test_load_rejects_missing_or_foreign_directories(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        TransportMap.load(tmp_path / "does-not-exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        TransportMap.load(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError):
        TransportMap.load(tmp_path / "other")


@pytest.fixture
def saved(fitted, tmp_path):
    path = tmp_path / "map"
    fitted.save(path)
    return path


def test_load_rejects_truncated_weights(saved) -> None:
    weights = saved / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError):
        TransportMap.load(saved)


def test_load_rejects_empty_weights(saved) -> None:
    (saved / "weights.pt").write_bytes(b"")
    with pytest.raises(ValueError):
        TransportMap.load(saved)


@pytest.mark.parametrize("junk", [b"garbage" * 10, b"this is not a torch file \x00\x01\x02" * 20])
def test_load_rejects_garbage_weights(saved, junk) -> None:
    (saved / "weights.pt").write_bytes(junk)
    with pytest.raises(ValueError):
        TransportMap.load(saved)


def test_load_rejects_wrong_tensors(saved) -> None:
    torch.save({"something": torch.zeros(3)}, saved / "weights.pt")
    with pytest.raises(ValueError):
        TransportMap.load(saved)


def test_load_rejects_foreign_params(saved) -> None:
    params = saved / "params.json"
    original = json.loads(params.read_text())
    params.write_text(json.dumps({"format": "some.OtherModel", "format_version": 1, "params": {}}))
    with pytest.raises(ValueError, match="format"):
        TransportMap.load(saved)
    params.write_text("{not json")
    with pytest.raises(ValueError):
        TransportMap.load(saved)
    params.write_text("[1, 2, 3]")
    with pytest.raises(ValueError):
        TransportMap.load(saved)
    params.write_text(json.dumps({**original, "format_version": 999}))
    with pytest.raises(ValueError, match="newer"):
        TransportMap.load(saved)
    params.write_text(json.dumps({**original, "params": {**original["params"], "hidden": [5]}}))
    with pytest.raises(ValueError):
        TransportMap.load(saved)


def test_load_rejects_params_missing_fitted_attribute(saved) -> None:
    params = saved / "params.json"
    state = json.loads(params.read_text())
    del state["fitted"]["scale_"]
    params.write_text(json.dumps(state))
    with pytest.raises(ValueError):
        TransportMap.load(saved)


def test_get_state_from_state_round_trip(fitted, problem) -> None:
    state = fitted.get_state()
    json.dumps({k: v for k, v in state.items() if k != "arrays"})  # metadata is JSON-able
    assert all(isinstance(v, np.ndarray) for v in state["arrays"].values())
    rebuilt = TransportMap.from_state(state, device="cpu")
    assert_same_outputs(fitted, rebuilt, problem.fresh[:100])
    assert rebuilt.w2_squared_ == fitted.w2_squared_
    with pytest.raises(ValueError):
        TransportMap.from_state({**state, "format": "nope"})
    with pytest.raises(ValueError):
        TransportMap.from_state({k: v for k, v in state.items() if k != "arrays"})


# ---------------------------------------------------------------------------- reproducibility
def test_same_seed_is_bit_identical(tiny_data) -> None:
    source, target = tiny_data
    a = fit(source, target, seed=3, **TINY)
    b = fit(source, target, seed=3, **TINY)
    np.testing.assert_array_equal(a.transport(source), b.transport(source))
    np.testing.assert_array_equal(a.inverse(target), b.inverse(target))
    assert a.history_.keys() == b.history_.keys()
    for name in a.history_:
        np.testing.assert_array_equal(a.history_[name], b.history_[name])
    assert a.w2_squared_ == b.w2_squared_
    c = fit(source, target, seed=4, **TINY)
    assert not np.array_equal(a.transport(source), c.transport(source))
    assert not np.array_equal(a.history_["loss_f"], c.history_["loss_f"])


def test_seed_none_records_seed_and_reproduces(tiny_data) -> None:
    source, target = tiny_data
    a = fit(source, target, seed=None, **TINY)
    assert isinstance(a.seed_, int)
    assert a.seed is None
    b = fit(source, target, seed=a.seed_, **TINY)
    np.testing.assert_array_equal(a.transport(source), b.transport(source))
    np.testing.assert_array_equal(a.history_["loss_g"], b.history_["loss_g"])


def test_refit_replaces_fitted_state(tiny_data) -> None:
    source, target = tiny_data
    tmap = fit(source, target, seed=0, **TINY)
    first = tmap.transport(source[:5])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        tmap.set_params(seed=1).fit(source, target)
    assert tmap.seed_ == 1
    assert not np.array_equal(first, tmap.transport(source[:5]))


def test_selection_history_with_default_fraction(tiny_data) -> None:
    source, target = tiny_data  # 200 / 150 points: 20 / 15 held out, so validation runs
    tmap = fit(source, target, seed=0, **TINY)
    history = tmap.history_
    assert len(history["selection_iteration"]) == len(history["selection_energy"]) >= 2
    assert history["selection_iteration"][0] == 0
    assert 0 <= tmap.best_iteration_ <= 5
    assert np.isfinite(tmap.w2_squared_)


# ---------------------------------------------------------------------------- fit_many
def test_fit_many_matches_separate_fits_in_quality() -> None:
    problems = [GaussianProblem(seed, n=1000) for seed in (10, 11, 12)]
    params = dict(n_iters=40, warm_start_iters=100, residual=1.0, **BASE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        maps = TransportMap.fit_many(
            [p.source for p in problems], [p.target for p in problems], **params
        )
    assert len(maps) == 3
    for tmap, prob in zip(maps, problems, strict=True):
        assert isinstance(tmap, TransportMap)
        separate = fit(prob.source, prob.target, **params)
        stacked_error, separate_error = prob.relative_error(tmap), prob.relative_error(separate)
        # Both well below the 10% bar (about 0.5% with these seeds), and within 5 points of
        # each other (the stacked and separate fits see different random batches).
        assert stacked_error <= 0.1
        assert separate_error <= 0.1
        assert stacked_error <= separate_error + 0.05
        np.testing.assert_allclose(tmap.center_, separate.center_)
        assert tmap.scale_ == pytest.approx(separate.scale_)


def test_fit_many_shared_source_and_validation(tiny_data) -> None:
    source, target = tiny_data
    with pytest.raises(ValueError):
        TransportMap.fit_many([source], [target, target], **TINY)
    with pytest.raises(ValueError):
        TransportMap.fit_many([], [], **TINY)
    with pytest.raises(ValueError, match="features"):
        TransportMap.fit_many([source, source], [target, target[:, :2]], **TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        maps = TransportMap.fit_many([source, source], [target, target + 5.0], seed=0, **TINY)
    assert len(maps) == 2
    assert not np.allclose(maps[0].transport(source[:5]), maps[1].transport(source[:5]))


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "method",
    [
        pytest.param("transport"),
        pytest.param("inverse"),
        pytest.param("potential"),
        "get_state",
        "save",
        "w2_squared",
    ],
)
def test_use_before_fit_raises(method, tmp_path) -> None:
    tmap = TransportMap()
    x = np.zeros((3, 2))
    args = {"get_state": (), "save": (tmp_path / "m",), "w2_squared": (x, x)}.get(method, (x,))
    with pytest.raises(NotFittedError, match="fit"):
        getattr(tmap, method)(*args)


ESTIMATORS = {
    "TransportMap": (TransportMap, dict(selection_fraction=0.2, hidden=(4,))),
    "ConditionalTransportMap": (ConditionalTransportMap, dict(condition_hidden=(8,), tau=1.0)),
    "GaussianTransportMap": (GaussianTransportMap, dict(shrinkage=0.5)),
    "ConvexRegressor": (ConvexRegressor, dict(model="icnn", hidden=(4,))),
}


@pytest.mark.parametrize("name", ESTIMATORS)
def test_every_estimator_is_a_sklearn_estimator(name) -> None:
    """One convention: sklearn get_params/set_params/clone, repr, NotFittedError."""
    kind, params = ESTIMATORS[name]
    estimator = kind(**params)
    assert isinstance(estimator, BaseEstimator)
    copy = clone(estimator)
    assert type(copy) is kind and copy.get_params() == estimator.get_params()
    assert {k: v for k, v in copy.get_params().items() if k in params} == params
    assert copy.set_params(seed=3) is copy if "seed" in copy.get_params() else True
    assert repr(estimator).startswith(f"{name}(") and "=" in repr(estimator)
    with pytest.raises(ValueError, match="Invalid parameter"):
        estimator.set_params(bogus=1)
    method = "predict" if name == "ConvexRegressor" else "transport"
    args = (np.zeros((3, 2)), "A") if name == "ConditionalTransportMap" else (np.zeros((3, 2)),)
    with pytest.raises(NotFittedError, match="not fitted"):
        getattr(estimator, method)(*args)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_raise(fitted, tiny_data, bad) -> None:
    source, target = tiny_data
    broken = source.copy()
    broken[3, 1] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        TransportMap(**TINY).fit(broken, target)
    broken_target = target.copy()
    broken_target[0, 0] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        TransportMap(**TINY).fit(source, broken_target)
    x = np.zeros((4, D))
    x[0, 0] = bad
    for method in (fitted.transport, fitted.inverse, fitted.potential):
        with pytest.raises(ValueError, match="NaN or inf"):
            method(x)


def test_wrong_feature_count_raises(fitted, tiny_data) -> None:
    for method in (fitted.transport, fitted.inverse, fitted.potential):
        with pytest.raises(ValueError, match="features"):
            method(np.zeros((4, D + 1)))
        with pytest.raises(ValueError):
            method(np.zeros(D))  # 1-D
    source, target = tiny_data
    with pytest.raises(ValueError, match="features"):
        TransportMap(**TINY).fit(source, target[:, :2])
    with pytest.raises(ValueError):
        TransportMap(**TINY).fit(source[:1], target)  # fewer than 2 points
    with pytest.raises(ValueError):
        TransportMap(**TINY).fit(np.ones((50, 3)), np.ones((50, 3)))  # nothing to transport
    with pytest.raises(TypeError):
        TransportMap(**TINY).fit(np.full((10, 3), "a"), target)


def test_inference_batch_size_validated(fitted) -> None:
    with pytest.raises(ValueError):
        fitted.transport(np.zeros((3, D)), batch_size=-1)
    with pytest.raises(TypeError):
        fitted.transport(np.zeros((3, D)), batch_size=2.5)


def test_inference_batch_size_zero_rejected(fitted) -> None:
    with pytest.raises(ValueError):
        fitted.transport(np.zeros((3, D)), batch_size=0)


INVALID_PARAMS = [
    {"n_iters": 0},
    {"n_iters": 2.5},
    {"batch_size": -1},
    {"inner_steps": 0},
    {"tau": -1.0},
    {"model": "foo"},
    {"model": "mlp"},
    {"device": "tpu"},
    {"device": 3},
    {"model": "icnn", "tau": 1.0},
    {"model": "icnn", "tau_schedule": "cosine"},
    {"selection_fraction": 1.5},
    {"selection_fraction": 1.0},
    {"selection_fraction": -0.1},
    {"hidden": (0,)},
    {"hidden": ()},
    {"lr": 0.0},
    {"lr_final_fraction": 0.0},
    {"betas": (1.0, 0.9)},
    {"warm_start": "bogus"},
    {"warm_start_iters": -1},
    {"tau_schedule": "linear"},
    {"tau": 1.0, "tau_final": 2.0, "tau_schedule": "cosine"},
    {"selection_every": 0},
    {"network_kwargs": "activation=relu"},
    {"seed": -1},
    {"seed": 1.5},
]


@pytest.mark.parametrize(
    "params", INVALID_PARAMS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items())
)
def test_invalid_hyper_parameters_raise_before_training(params, tiny_data, monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("training started despite invalid parameters")

    for name in ("train_minimax", "train_in_cycles"):
        monkeypatch.setattr(estimator_module, name, forbidden)
    monkeypatch.setattr(transport_module, "warm_start", forbidden)
    source, target = tiny_data
    with pytest.raises((ValueError, TypeError)):
        TransportMap(**{**TINY, **params}).fit(source, target)
    with pytest.raises((ValueError, TypeError)):
        TransportMap.fit_many([source], [target], **{**TINY, **params})


def test_get_set_params_and_repr() -> None:
    tmap = TransportMap(n_iters=7)
    assert tmap.get_params()["n_iters"] == 7
    assert tmap.set_params(n_iters=9, seed=2) is tmap
    assert tmap.n_iters == 9 and tmap.seed == 2
    assert "n_iters=9" in repr(tmap)
    with pytest.raises(ValueError, match="Invalid parameter"):
        tmap.set_params(bogus=1)
    clone = TransportMap(**tmap.get_params())
    assert clone.get_params() == tmap.get_params()
