"""Property tests of the convex potentials (HyCNN, ICNN) and the MLP baseline.

Convexity of HyCNN / ICNN holds *by construction* (softplus-positive z-path weights, convex
non-decreasing merges), so it must hold for any parameter values: the tests re-initialise with a
random generator and then add large random noise to every parameter before checking Jensen's
inequality and the monotonicity of the gradient map, in float64.
"""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import exact_softplus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hycnn_sc.models import ICNN, MLP, HyCNN, potential_gradient, smooth_max
from hycnn_sc.models._convex_base import ConvexPotential as ConvexPotentialBase

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ACTIVATIONS = ("relu", "softplus", "leaky_relu")


# ---------------------------------------------------------------------------- helpers
def perturb(module: torch.nn.Module, generator: torch.Generator, scale: float) -> None:
    """Add N(0, scale²) noise to every parameter (convexity must survive any weights)."""
    with torch.no_grad():
        for param in module.parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
            param.add_(scale * noise.to(param.dtype))


def random_network(kind: str, d: int, hidden: tuple[int, ...], seed: int, noise: float, **kw):
    generator = torch.Generator().manual_seed(seed)
    if kind == "hycnn":
        net = HyCNN(d, hidden, tau=kw.pop("tau"), **kw)
    elif kind == "icnn":
        net = ICNN(d, hidden, **kw)
    else:
        net = MLP(d, hidden)
    net = net.double()
    net.reset_parameters(generator)
    perturb(net, generator, noise)
    return net


def jensen_gap(net, d: int, seed: int, n: int = 64, spread: float = 3.0):
    """``t f(a) + (1-t) f(b) - f(t a + (1-t) b)`` (>= 0 for convex f) and a tolerance."""
    generator = torch.Generator().manual_seed(seed)
    a = spread * torch.randn(n, d, generator=generator, dtype=torch.float64)
    b = spread * torch.randn(n, d, generator=generator, dtype=torch.float64)
    t = torch.rand(n, 1, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        fa, fb, fm = net(a), net(b), net(t * a + (1 - t) * b)
    t = t.squeeze(1)
    gap = t * fa + (1 - t) * fb - fm
    # float64 rounding in the layers leaves gaps of a few 1e-9 relative to |f| (hypothesis found
    # -3.0e-9 against a 1e-9 tolerance of 2.6e-9 for d=1, hidden=(1, 1), tau=0); a real
    # convexity violation is of the order of the values themselves.
    tol = 1e-8 * (1.0 + fa.abs() + fb.abs() + fm.abs())
    return gap, tol


network_shapes = dict(
    d=st.integers(1, 6),
    hidden=st.lists(st.integers(1, 16), min_size=1, max_size=4).map(tuple),
    seed=st.integers(0, 2**31 - 1),
    noise=st.sampled_from([0.0, 1.0, 5.0]),
)


# ---------------------------------------------------------------------------- convexity
@SETTINGS
@given(
    tau=st.sampled_from([0.0, 1e-3, 0.3, 2.0]),
    zero_skip_init=st.booleans(),
    isotropic_quadratic=st.sampled_from([0.0, 0.5, 2.0]),
    full_quadratic=st.booleans(),
    **network_shapes,
)
def test_hycnn_jensen(
    d, hidden, seed, noise, tau, zero_skip_init, isotropic_quadratic, full_quadratic
) -> None:
    net = random_network(
        "hycnn",
        d,
        hidden,
        seed,
        noise,
        tau=tau,
        zero_skip_init=zero_skip_init,
        isotropic_quadratic=isotropic_quadratic,
        full_quadratic=full_quadratic,
    )
    gap, tol = jensen_gap(net, d, seed + 1)
    assert (gap >= -tol).all(), float((gap + tol).min())


@SETTINGS
@given(
    activation=st.sampled_from(ACTIVATIONS),
    quadratic=st.booleans(),
    zero_skip_init=st.booleans(),
    isotropic_quadratic=st.sampled_from([0.0, 0.5, 2.0]),
    full_quadratic=st.booleans(),
    **network_shapes,
)
def test_icnn_jensen(
    d, hidden, seed, noise, activation, quadratic, zero_skip_init, isotropic_quadratic,
    full_quadratic,
) -> None:
    net = random_network(
        "icnn",
        d,
        hidden,
        seed,
        noise,
        activation=activation,
        quadratic=quadratic,
        zero_skip_init=zero_skip_init,
        isotropic_quadratic=isotropic_quadratic,
        full_quadratic=full_quadratic,
    )
    gap, tol = jensen_gap(net, d, seed + 1)
    assert (gap >= -tol).all(), float((gap + tol).min())


def gradient_monotonicity(net, d: int, seed: int, n: int = 64):
    generator = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn(n, d, generator=generator, dtype=torch.float64)
    y = 2.0 * torch.randn(n, d, generator=generator, dtype=torch.float64)
    gx, gy = potential_gradient(net, x), potential_gradient(net, y)
    inner = ((gx - gy) * (x - y)).sum(-1)
    tol = 1e-9 * (1.0 + (gx.abs() + gy.abs()).sum(-1) * (x - y).abs().sum(-1))
    return inner, tol


@SETTINGS
@given(
    tau=st.sampled_from([0.0, 0.1, 1.0]),
    isotropic_quadratic=st.sampled_from([0.0, 0.5, 2.0]),
    full_quadratic=st.booleans(),
    **network_shapes,
)
def test_hycnn_gradient_monotone(
    d, hidden, seed, noise, tau, isotropic_quadratic, full_quadratic
) -> None:
    net = random_network(
        "hycnn", d, hidden, seed, noise, tau=tau, isotropic_quadratic=isotropic_quadratic,
        full_quadratic=full_quadratic,
    )
    inner, tol = gradient_monotonicity(net, d, seed + 2)
    assert (inner >= -tol).all(), float((inner + tol).min())


@SETTINGS
@given(activation=st.sampled_from(ACTIVATIONS), quadratic=st.booleans(), **network_shapes)
def test_icnn_gradient_monotone(d, hidden, seed, noise, activation, quadratic) -> None:
    net = random_network("icnn", d, hidden, seed, noise, activation=activation, quadratic=quadratic)
    inner, tol = gradient_monotonicity(net, d, seed + 2)
    assert (inner >= -tol).all(), float((inner + tol).min())


@pytest.mark.parametrize("cls", [HyCNN, ICNN])
def test_set_quadratic_part_starts_at_the_affine_map(cls) -> None:
    """After ``set_quadratic_part(M, b)``, ``∇f(x) ≈ M x + b`` up to the damped residual."""
    generator = torch.Generator().manual_seed(0)
    d, n_models = 5, 2
    net = cls(d, (16, 16), n_models=n_models, full_quadratic=True)
    net.reset_parameters(generator)
    factor = torch.randn(n_models, d, d, generator=generator)
    matrix = factor @ factor.transpose(-1, -2) / d + 0.1 * torch.eye(d)
    linear = torch.randn(n_models, d, generator=generator)
    net.set_quadratic_part(matrix, linear, residual_scale=1e-3)
    x = torch.randn(n_models, 100, d, generator=generator)
    expected = x @ matrix + linear.unsqueeze(1)
    error = (potential_gradient(net, x) - expected).abs().max()
    assert error < 1e-2 * expected.abs().max(), float(error)
    # the residual stays trainable: its output weights are damped, not zeroed
    assert (torch.nn.functional.softplus(net.output_weight_raw) > 0).all()


def test_set_quadratic_part_needs_full_quadratic() -> None:
    with pytest.raises(ValueError, match="full_quadratic=True"):
        HyCNN(3, (4,)).set_quadratic_part(torch.eye(3), torch.zeros(3))


def test_full_quadratic_starts_isotropic() -> None:
    net = HyCNN(4, (8,), isotropic_quadratic=0.25, full_quadratic=True)
    assert net.quadratic_weight_raw is None
    torch.testing.assert_close(net.quadratic_factor[0], 0.5 * torch.eye(4))
    assert "full_quadratic=True" in repr(net)


def test_mlp_is_not_convex() -> None:
    """Sanity check of the Jensen test itself: it does detect a non-convex network."""
    violations = 0
    for seed in range(10):
        net = random_network("mlp", 2, (16, 16), seed, noise=0.0)
        gap, tol = jensen_gap(net, 2, seed + 100, n=256)
        violations += int((gap < -tol).any())
    assert violations > 0


def test_potential_gradient_matches_finite_differences() -> None:
    net = random_network("hycnn", 3, (8, 8), 0, noise=0.5, tau=0.5)
    x = torch.randn(10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grad = potential_gradient(net, x)
    eps = 1e-6
    with torch.no_grad():
        fd = torch.stack(
            [
                (net(x + eps * e) - net(x - eps * e)) / (2 * eps)
                for e in torch.eye(3, dtype=x.dtype)
            ],
            dim=-1,
        )
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("cls", [HyCNN, ICNN, MLP])
def test_output_shape_2d(cls) -> None:
    net = cls(4, (5, 3))
    assert net(torch.randn(7, 4)).shape == (7,)
    if cls is not MLP:
        quad = cls(4, (5, 3), isotropic_quadratic=1.0)
        assert quad(torch.randn(7, 4)).shape == (7,)
    assert potential_gradient(net, torch.randn(7, 4)).shape == (7, 4)


@pytest.mark.parametrize("isotropic_quadratic", [0.0, 1.0])
@pytest.mark.parametrize("cls", [HyCNN, ICNN])
def test_output_shape_stacked(cls, isotropic_quadratic) -> None:
    net = cls(4, (5, 3), n_models=3, isotropic_quadratic=isotropic_quadratic)
    assert net(torch.randn(3, 7, 4)).shape == (3, 7)
    assert potential_gradient(net, torch.randn(3, 7, 4)).shape == (3, 7, 4)
    # a 2-D batch is broadcast to every stacked model
    assert net(torch.randn(7, 4)).shape == (3, 7)


@pytest.mark.parametrize("cls", [HyCNN, ICNN])
def test_wrong_feature_count_raises(cls) -> None:
    with pytest.raises(ValueError, match="features"):
        cls(4, (5,))(torch.randn(7, 3))


@pytest.mark.parametrize("cls", [HyCNN, ICNN])
def test_stacked_models_are_independent(cls) -> None:
    torch.manual_seed(0)
    net = cls(3, (6, 6), n_models=4, isotropic_quadratic=1.0).double()
    x = torch.randn(4, 20, 3, dtype=torch.float64)
    with torch.no_grad():
        before = net(x).clone()
        for param in net.parameters():
            param[2].add_(torch.randn_like(param[2]))
        after = net(x)
    changed = [k for k in range(4) if not torch.equal(before[k], after[k])]
    assert changed == [2]


@pytest.mark.parametrize("cls", [HyCNN, ICNN])
def test_stacked_model_equals_single_model(cls) -> None:
    """Model k of a stack computes exactly what a single network with its weights computes."""
    torch.manual_seed(0)
    stacked = cls(3, (6, 5), n_models=3, isotropic_quadratic=1.0).double()
    single = cls(3, (6, 5), isotropic_quadratic=1.0).double()
    x = torch.randn(3, 11, 3, dtype=torch.float64)
    with torch.no_grad():
        out = stacked(x)
        for k in range(3):
            single.load_state_dict({n: v[k : k + 1] for n, v in stacked.state_dict().items()})
            torch.testing.assert_close(single(x[k]), out[k], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------- initialisation
INIT_CONFIGS = [
    ("hycnn", {"tau": 0.0}),
    ("hycnn", {"tau": 1.0}),
    ("hycnn", {"tau": 0.0, "zero_skip_init": True}),
    ("icnn", {"activation": "relu"}),
    ("icnn", {"activation": "softplus"}),
    ("icnn", {"activation": "leaky_relu", "quadratic": True}),
    ("icnn", {"activation": "relu", "zero_skip_init": True}),
]


@pytest.mark.parametrize("depth", [1, 4, 16])
@pytest.mark.parametrize(("kind", "kwargs"), INIT_CONFIGS)
def test_moment_matching_init_keeps_output_scale(kind, kwargs, depth) -> None:
    d = 4
    generator = torch.Generator().manual_seed(depth)
    cls = HyCNN if kind == "hycnn" else ICNN
    net = cls(d, (16,) * depth, **kwargs)
    net.reset_parameters(generator)
    x = torch.randn(2000, d, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        out = net(x)
    assert torch.isfinite(out).all()
    assert 0.3 <= float(out.std()) <= 3.0
    assert abs(float(out.mean())) <= 0.5  # centred by the init, up to probe noise


def test_reset_parameters_is_seeded() -> None:
    nets = []
    for _ in range(2):
        net = HyCNN(3, (5, 5), tau=0.3)
        net.reset_parameters(torch.Generator().manual_seed(7))
        nets.append(net)
    for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------- smooth_max
@settings(max_examples=50, deadline=None)
@given(
    a=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=20),
    tau=st.floats(1e-3, 10.0),
    data=st.data(),
)
def test_smooth_max_bounds(a, tau, data) -> None:
    b = data.draw(st.lists(st.floats(-1e3, 1e3), min_size=len(a), max_size=len(a)))
    a_t = torch.tensor(a, dtype=torch.float64)
    b_t = torch.tensor(b, dtype=torch.float64)
    hard = torch.maximum(a_t, b_t)
    soft = smooth_max(a_t, b_t, tau)
    # Round-off allowance: an implementation such as ``b + relu(a - b)`` is max(a, b) only up to
    # a few ulps of the larger of |a|, |b| (not exactly), which is all convexity needs.
    tol = 4 * torch.finfo(torch.float64).eps * (a_t.abs() + b_t.abs()) + 1e-300
    assert (soft >= hard - tol).all()
    assert (soft <= hard + tau * math.log(2) + tol).all()
    assert ((smooth_max(a_t, b_t, 0.0) - hard).abs() <= tol).all()


@settings(max_examples=30, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.integers(-1000, 1000), st.integers(-1000, 1000)), min_size=1),
)
def test_smooth_max_is_exact_max_at_zero_tau(pairs) -> None:
    """On integer-valued inputs all arithmetic is exact, so τ = 0 must give max exactly."""
    a, b = (torch.tensor(column, dtype=torch.float64) for column in zip(*pairs, strict=True))
    assert torch.equal(smooth_max(a, b, 0.0), torch.maximum(a, b))
    assert torch.equal(smooth_max(a.float(), b.float(), 0.0), torch.maximum(a, b).float())


def test_smooth_max_equal_arguments_attain_upper_bound() -> None:
    a = torch.tensor([0.0, 5.0, -3.0], dtype=torch.float64)
    torch.testing.assert_close(smooth_max(a, a, 0.5), a + 0.5 * math.log(2))


def test_smooth_max_no_overflow_for_small_tau() -> None:
    out = smooth_max(torch.tensor([1000.0]), torch.tensor([-1000.0]), 1e-3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.tensor([1000.0]))


# ---------------------------------------------------------------------------- validation
def test_tau_setter() -> None:
    net = HyCNN(2, (3,), tau=0.5)
    net.tau = 0.0
    assert net.tau == 0.0
    net.tau = 2
    assert net.tau == 2.0
    for bad in (-1.0, -1e-9, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tau"):
            net.tau = bad
    with pytest.raises(TypeError):
        net.tau = "1.0"
    assert net.tau == 2.0
    with pytest.raises(ValueError, match="tau"):
        HyCNN(2, (3,), tau=-0.1)


@pytest.mark.parametrize("cls", [HyCNN, ICNN, MLP])
@pytest.mark.parametrize(
    "hidden", [0, -1, (), [], (3, 0), (4, -2), (2.5,), ("a",), "ab", None, (True,), (np.nan,)]
)
def test_invalid_hidden_raises(cls, hidden) -> None:
    with pytest.raises((ValueError, TypeError)):
        cls(3, hidden)


@pytest.mark.parametrize("cls", [HyCNN, ICNN, MLP])
@pytest.mark.parametrize("in_features", [0, -2, 2.0, True, None])
def test_invalid_in_features_raises(cls, in_features) -> None:
    with pytest.raises((ValueError, TypeError)):
        cls(in_features, (3,))


@pytest.mark.parametrize("cls", [HyCNN, ICNN])
def test_invalid_stacking_and_skip_variance(cls) -> None:
    with pytest.raises((ValueError, TypeError)):
        cls(3, (3,), n_models=0)
    with pytest.raises(ValueError):
        cls(3, (3,), skip_variance=1.5)


def test_hidden_accepts_int_and_numpy_ints() -> None:
    assert HyCNN(2, 5).hidden == (5,)
    assert ICNN(2, np.array([3, 4])).hidden == (3, 4)


@pytest.mark.parametrize("activation", ["tanh", "RELU", "", None])
def test_unknown_icnn_activation_raises(activation) -> None:
    with pytest.raises(ValueError, match="activation"):
        ICNN(2, (3,), activation=activation)


# ---------------------------------------------------------------------------- explicit gradient
def _autograd_parameter_gradients(net, x, explicit: bool):
    """Parameter gradients of ``Σ‖∇f(x)‖²`` through the explicit or the autograd gradient."""
    params = list(net.parameters())
    gradient = potential_gradient(net, x, create_graph=True, autograd=not explicit)
    grads = torch.autograd.grad(gradient.square().sum(), params, allow_unused=True,
                                materialize_grads=True)
    return gradient, grads


@SETTINGS
@given(
    kind=st.sampled_from(["hycnn", "icnn"]),
    tau=st.sampled_from([0.0, 0.1, 1.0]),
    activation=st.sampled_from(ACTIVATIONS),
    squared_first_layer=st.booleans(),
    quadratic=st.sampled_from(["none", "isotropic", "full"]),
    n_models=st.integers(1, 3),
    stacked=st.booleans(),
    **network_shapes,
)
def test_explicit_gradient_matches_autograd(
    kind, tau, activation, squared_first_layer, quadratic, n_models, stacked, d, hidden, seed,
    noise,
) -> None:
    kw = dict(n_models=n_models, isotropic_quadratic=0.5 if quadratic == "isotropic" else 0.0,
              full_quadratic=quadratic == "full")
    if kind == "hycnn":
        kw.update(tau=tau)
    else:
        kw.update(activation=activation, quadratic=squared_first_layer)
    net = random_network(kind, d, hidden, seed, noise, **kw)
    shape = (n_models, 9, d) if stacked else (9, d)
    x = 2.0 * torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    # torch's softplus is exactly linear above 20 (derivatives 1 and 0) while the explicit
    # slope is the exact sigmoid: compare both with an unthresholded softplus.
    with mock.patch.object(torch.nn.functional, "softplus", exact_softplus):
        values, gradient = net.value_and_gradient(x)
        _assert_close_to_rounding(values, net(x))
        _assert_close_to_rounding(gradient, potential_gradient(net, x, autograd=True))
        explicit, explicit_grads = _autograd_parameter_gradients(net, x, explicit=True)
        reference, reference_grads = _autograd_parameter_gradients(net, x, explicit=False)
    _assert_close_to_rounding(explicit, reference)
    for ours, theirs in zip(explicit_grads, reference_grads, strict=True):
        _assert_close_to_rounding(ours, theirs)


def _assert_close_to_rounding(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """float64 agreement up to rounding relative to the largest entry (sums over layers)."""
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-8 * (1 + float(theirs.abs().max())))




def test_explicit_gradient_with_modulation_matches_autograd() -> None:
    net = random_network("hycnn", 4, (6, 5, 3), 3, noise=1.0, tau=0.3)
    generator = torch.Generator().manual_seed(4)
    modulation = torch.randn(3, sum(net.modulation_sizes), dtype=torch.float64, generator=generator)
    x = torch.randn(3, 7, 4, dtype=torch.float64, generator=generator)
    values, gradient = net.value_and_gradient(x, modulation)
    torch.testing.assert_close(values, net(x, modulation))
    reference = potential_gradient(lambda points: net(points, modulation), x)
    torch.testing.assert_close(gradient, reference)


def test_potential_gradient_without_graph_is_detached() -> None:
    net = HyCNN(3, (8, 8), tau=0.5)
    x = torch.randn(5, 3)
    assert not potential_gradient(net, x).requires_grad
    assert potential_gradient(net, x, create_graph=True).requires_grad


def test_potential_gradient_falls_back_to_autograd_for_plain_modules() -> None:
    net = MLP(3, (8,))
    x = torch.randn(5, 3, dtype=torch.float32)
    gradient = potential_gradient(net, x)
    assert gradient.shape == x.shape and torch.isfinite(gradient).all()


def test_explicit_gradient_keeps_autograd_shapes_and_graph_semantics() -> None:
    net = HyCNN(3, (8, 8), tau=0.5, n_models=2)
    x = torch.randn(1, 5, 3)  # one batch broadcast over both stacked models
    explicit = potential_gradient(net, x)
    assert explicit.shape == potential_gradient(net, x, autograd=True).shape == x.shape
    with torch.no_grad():  # create_graph asks for a graph even inside no_grad, as autograd does
        assert potential_gradient(net, x, create_graph=True).requires_grad


class _OnlyMerge(ICNN):
    """A subclass that implements ``merge`` alone (no explicit slope)."""

    def merge(self, pre: torch.Tensor, layer: int) -> torch.Tensor:
        return torch.nn.functional.softplus(pre)

    merge_with_slope = ConvexPotentialBase.merge_with_slope


def test_subclass_without_slopes_falls_back_to_autograd() -> None:
    net = _OnlyMerge(3, (8, 8))
    assert not net.explicit_gradient and HyCNN(3, (4,)).explicit_gradient
    x = torch.randn(5, 3)
    torch.testing.assert_close(potential_gradient(net, x), potential_gradient(net, x, autograd=True))


def test_parameters_without_a_path_get_zero_gradients() -> None:
    from hycnn_sc.models._minimax import set_gradients

    net = HyCNN(3, (8, 8), tau=0.0)  # hard max: the gradient map does not depend on the biases
    params = list(net.parameters())
    set_gradients(potential_gradient(net, torch.randn(6, 3), create_graph=True).square().sum(),
                  params)
    assert all(p.grad is not None for p in params)
    assert float(net.input_bias.grad.abs().max()) == 0.0
