"""The held-out semi-dual that judges the cycles of ``n_iters="auto"``: the convex conjugate by
safeguarded ascent, the per-point profile and its paired standard error."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import hycnn_sc.models._minimax as minimax
from hycnn_sc.models import HyCNN
from hycnn_sc.models._minimax import StackedSamples
from hycnn_sc.models.objectives import conjugate_values


class _Quadratic(nn.Module):
    """``f(x) = ½ xᵀAx + bᵀx`` (stacked inputs), conjugate ``½ (y − b)ᵀA⁻¹(y − b)``."""

    def __init__(self, matrix: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.matrix, self.shift = matrix, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((x @ self.matrix) * x).sum(-1) + x @ self.shift

    def conjugate(self, y: torch.Tensor) -> torch.Tensor:
        centred = y - self.shift
        return 0.5 * ((centred @ torch.linalg.inv(self.matrix)) * centred).sum(-1)


def _quadratic(seed: int, dim: int = 4, condition: float = 10.0) -> _Quadratic:
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    eigenvalues = torch.logspace(0, np.log10(condition), dim, dtype=torch.float64) / 3
    return _Quadratic(basis @ torch.diag(eigenvalues) @ basis.T,
                      torch.randn(dim, generator=generator, dtype=torch.float64))


def test_conjugate_of_a_quadratic_is_exact_from_a_poor_start():
    f = _quadratic(0)
    y = torch.randn(300, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    values = conjugate_values(f, y, torch.zeros_like(y))
    np.testing.assert_allclose(values.numpy(), f.conjugate(y).numpy(), atol=1e-6)


def test_conjugate_starts_at_its_start_and_never_overshoots():
    """No step at all gives ``⟨x₀, y⟩ − f(x₀)``; every value is a lower bound of ``f*(y)``."""
    f = _quadratic(2)
    y = torch.randn(50, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    start = torch.randn(50, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    np.testing.assert_allclose(conjugate_values(f, y, start, steps=0).numpy(),
                               ((start * y).sum(-1) - f(start)).numpy())
    for steps in (1, 5, 20):
        assert (conjugate_values(f, y, start, steps=steps) <= f.conjugate(y) + 1e-9).all()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), width=st.integers(2, 12), depth=st.integers(1, 3),
       tau=st.floats(0.05, 2.0))
def test_conjugate_rises_with_the_steps_on_a_hycnn(seed, width, depth, tau):
    """Safeguarded ascent: more steps never lower the value (the first steps are the same)."""
    torch.manual_seed(seed)
    f = HyCNN(3, (width,) * depth, tau=tau).double()
    y = torch.randn(40, 3, dtype=torch.float64)
    start = torch.randn(40, 3, dtype=torch.float64)
    values = [conjugate_values(f, y, start, steps=k) for k in (0, 3, 10, 30)]
    for fewer, more in itertools.pairwise(values):
        assert (more >= fewer).all()


def test_conjugate_of_a_hycnn_has_converged_after_the_default_steps():
    """With a quadratic term (as the estimators add) the HyCNN is strongly convex and smooth:
    the default 50 steps agree with 2,000 to float64 precision, from a poor start."""
    torch.manual_seed(11)
    f = HyCNN(3, (16, 16), tau=0.3, isotropic_quadratic=0.5).double()
    y = 2.0 * torch.randn(60, 3, dtype=torch.float64)
    start = torch.zeros_like(y)
    np.testing.assert_allclose(conjugate_values(f, y, start).numpy(),
                               conjugate_values(f, y, start, steps=2000).numpy(), atol=1e-8)


def _validation(sizes=(120, 80), dim=4, seed=5):
    rng = np.random.default_rng(seed)
    sources = [rng.normal(size=(n, dim)) for n in sizes]
    targets = [torch.as_tensor(rng.normal(size=(n + 7, dim)) + 1.0, dtype=torch.float32)
               for n in sizes]
    return StackedSamples(sources, torch.device("cpu")), targets, sources


class _Stacked(nn.Module):
    """Two stacked quadratics: ``forward`` maps ``[2, n, d]`` to ``[2, n]``."""

    def __init__(self, potentials: list[_Quadratic]) -> None:
        super().__init__()
        self.potentials = potentials

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([p(x[k]) for k, p in enumerate(self.potentials)])


def test_held_out_dual_is_the_semi_dual_of_each_stacked_model():
    """``E f(x) + E f*(y)`` per model on its own held-out points (padding rows left out),
    with ``g`` a poor start for the conjugate."""
    quadratics = [_Quadratic(q.matrix.float(), q.shift.float()) for q in (_quadratic(6), _quadratic(7))]
    sources, targets, raw = _validation()
    f = _Stacked(quadratics)
    g = _Stacked([_Quadratic(torch.eye(4) * 3.0, torch.zeros(4))] * 2)
    profiles = minimax.held_out_dual(f, g, (sources, targets))
    assert len(profiles) == 2
    for k, (profile, quadratic) in enumerate(zip(profiles, quadratics, strict=True)):
        source = torch.as_tensor(raw[k], dtype=torch.float32)
        expected = quadratic(source).mean() + quadratic.conjugate(targets[k]).mean()
        assert profile.value == pytest.approx(float(expected), rel=1e-4)
        assert len(profile.source_terms) == len(raw[k])
        assert len(profile.target_terms) == len(targets[k])


def test_paired_standard_error_of_the_semi_dual():
    """The SE of a difference of two semi-duals on the same points: the two paired means'."""
    rng = np.random.default_rng(8)
    a = minimax.DualProfile(1.0, torch.as_tensor(rng.normal(size=100)),
                            torch.as_tensor(rng.normal(size=60)))
    shift_s, shift_t = rng.normal(size=100), rng.normal(size=60)
    b = minimax.DualProfile(0.5, a.source_terms + torch.as_tensor(shift_s),
                            a.target_terms + torch.as_tensor(shift_t))
    expected = np.sqrt(shift_s.var() / 100 + shift_t.var() / 60)
    assert minimax.paired_standard_error(a, b) == pytest.approx(expected, rel=1e-9)
    assert minimax.paired_standard_error(a, a) == 0.0
    assert minimax.significant_improvement(b, a) == (0.5 > minimax.IMPROVEMENT_Z * expected)
