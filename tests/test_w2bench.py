"""The Wasserstein-2 benchmark loader: tiny generated pairs here, the published checkpoints when present."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hycnn_sc.datasets import GaussianMixture, W2BenchmarkPair, _w2bench, w2_benchmark_pair
from hycnn_sc.datasets._w2bench import PUBLISHED_L2_UVP, paper_mixture

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "w2bench"


def random_potential(dim: int, hidden=(8, 8, 4), seed: int = 0) -> dict[str, torch.Tensor]:
    """A random potential in the checkpoints' layout (non-negative z-path: convex)."""
    generator = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for layer, width in enumerate(hidden):
        weights[f"quadratic_layers.{layer}.quadratic_decomposed"] = 0.3 * torch.randn(dim, 1, width, generator=generator)
        weights[f"quadratic_layers.{layer}.weight"] = torch.randn(width, dim, generator=generator)
        weights[f"quadratic_layers.{layer}.bias"] = torch.randn(width, generator=generator)
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(hidden)):
        weights[f"convex_layers.{layer}.weight"] = torch.rand(fan_out, fan_in, generator=generator) / fan_in
    weights["final_layer.weight"] = torch.rand(1, hidden[-1], generator=generator)
    return weights


@pytest.fixture(scope="module")
def tiny_pair() -> W2BenchmarkPair:
    return W2BenchmarkPair([random_potential(3, seed=1), random_potential(3, seed=2)])


def test_true_map_scores_zero_and_identity_does_not(tiny_pair):
    x, y = tiny_pair.sample(500, seed=0)
    assert tiny_pair.l2_uvp(x, y) == 0.0
    assert tiny_pair.l2_uvp(x, x) > 1.0


def test_target_is_standardised(tiny_pair):
    _, y = tiny_pair.sample(20_000, seed=3)
    assert np.abs(y.mean(0)).max() < 0.05
    assert tiny_pair.target_variance == pytest.approx(3.0, rel=1e-3)
    assert np.trace(np.cov(y.T)) == pytest.approx(3.0, rel=0.05)


def test_linear_map_matches_the_moments(tiny_pair):
    matrix, shift = tiny_pair.linear_map()
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-10)
    x = tiny_pair.mixture.sample(50_000, seed=4)
    moved = x @ matrix.T + shift
    np.testing.assert_allclose(np.cov(moved.T), tiny_pair.target_covariance, atol=0.05)
    x_test = tiny_pair.mixture.sample(2000, seed=5)
    assert tiny_pair.l2_uvp(x_test, x_test @ matrix.T + shift) < tiny_pair.l2_uvp(x_test, x_test)


def test_true_map_is_the_gradient_of_the_potential(tiny_pair):
    x = torch.tensor(tiny_pair.mixture.sample(4, seed=6), requires_grad=True)
    value = sum(_w2bench._quadratic_skip_icnn(x, w) for w in tiny_pair._weights)
    (gradient,) = torch.autograd.grad(value.sum(), x)
    expected = (gradient.numpy() - tiny_pair._shift) * tiny_pair._scale
    np.testing.assert_allclose(tiny_pair.true_map(x.detach().numpy()), expected, rtol=1e-10)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_true_map_is_monotone(tiny_pair, seed):
    """A gradient of a convex function: ⟨T(x) − T(y), x − y⟩ ≥ 0 for every pair."""
    rng = np.random.default_rng(seed)
    x, y = 2 * rng.normal(size=(64, 3)), 2 * rng.normal(size=(64, 3))
    inner = np.sum((tiny_pair.true_map(x) - tiny_pair.true_map(y)) * (x - y), axis=1)
    assert inner.min() >= -1e-9


def test_paper_mixture_is_standardised_and_reproducible():
    mixture = paper_mixture(8)
    assert np.trace(mixture.covariance) / 8 == pytest.approx(1.0)
    # Every coordinate of the three centres is a permutation of the same centred grid.
    sorted_centres = np.sort(mixture.centers, axis=0)
    np.testing.assert_allclose(sorted_centres, np.repeat(sorted_centres[:, :1], 8, axis=1))
    np.testing.assert_array_equal(paper_mixture(8).factors, mixture.factors)
    sample = mixture.sample(100_000, seed=0)
    np.testing.assert_allclose(np.cov(sample.T), mixture.covariance, atol=0.03)


def test_gaussian_mixture_sampling_is_seeded():
    mixture = GaussianMixture(np.zeros((2, 2)), np.stack([np.eye(2), 2 * np.eye(2)]))
    np.testing.assert_array_equal(mixture.sample(10, seed=1), mixture.sample(10, seed=1))


def test_loader_reads_a_directory(tmp_path):
    torch.save(random_potential(3, seed=1), tmp_path / "3_v1.pt")
    torch.save(random_potential(3, seed=2), tmp_path / "3_v2.pt")
    pair = w2_benchmark_pair(3, directory=tmp_path)
    reference = W2BenchmarkPair([random_potential(3, seed=1), random_potential(3, seed=2)],
                                mixture=paper_mixture(3))
    x = pair.mixture.sample(100, seed=0)
    np.testing.assert_allclose(pair.true_map(x), reference.true_map(x))
    assert repr(pair) == "W2BenchmarkPair(dim=3, potentials=2)"


@pytest.mark.parametrize("dim", [0, -2, 2.5, "16", True, None])
def test_bad_dim(dim, tmp_path):
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        w2_benchmark_pair(dim, directory=tmp_path)


def test_missing_checkpoint_names_the_files(tmp_path):
    torch.save(random_potential(3), tmp_path / "3_v1.pt")
    with pytest.raises(FileNotFoundError, match=r"3_v2\.pt"):
        w2_benchmark_pair(3, directory=tmp_path)


def test_dimension_without_published_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="no published checkpoint"):
        w2_benchmark_pair(5, cache_dir=tmp_path)


def test_failed_download_says_what_to_do(tmp_path, monkeypatch):
    def offline(url, destination, *, progress=True):
        raise OSError("no network")

    monkeypatch.setattr("hycnn_sc.datasets._w2bench._download", offline)
    with pytest.raises(ConnectionError, match="copy it to"):
        w2_benchmark_pair(2, cache_dir=tmp_path, progress=False)


def test_corrupt_download_is_removed(tmp_path, monkeypatch):
    def corrupt(url, destination, *, progress=True):
        destination.write_bytes(b"not a checkpoint")

    monkeypatch.setattr("hycnn_sc.datasets._w2bench._download", corrupt)
    with pytest.raises(OSError, match="SHA-256"):
        w2_benchmark_pair(2, cache_dir=tmp_path, progress=False)
    assert not (tmp_path / "2_v1.pt").exists()


def test_non_convex_checkpoint_is_rejected():
    weights = random_potential(3)
    weights["convex_layers.0.weight"][0, 0] = -1.0
    with pytest.raises(ValueError, match="not convex"):
        W2BenchmarkPair([weights])


def test_malformed_checkpoints_are_rejected():
    with pytest.raises(ValueError, match="missing"):
        W2BenchmarkPair([{"weight": torch.zeros(2, 2), "quadratic_layers.0.weight": torch.zeros(4, 3)}])
    with pytest.raises(ValueError, match="dimension"):
        W2BenchmarkPair([random_potential(3), random_potential(4)])
    with pytest.raises(ValueError, match="mixture"):
        W2BenchmarkPair([random_potential(3)], mixture=paper_mixture(4))
    with pytest.raises(ValueError, match="empty"):
        W2BenchmarkPair([])


def test_bad_points(tiny_pair):
    with pytest.raises(ValueError, match="shape"):
        tiny_pair.true_map(np.zeros((5, 4)))
    with pytest.raises(ValueError, match="shape"):
        tiny_pair.l2_uvp(np.zeros((5, 3)), np.zeros((4, 3)))


@pytest.mark.skipif(not SHARED.is_dir(), reason="the published checkpoints are not beside the repository")
def test_published_rows_are_reproduced():
    """The loader is the paper's problem: identity and linear map within 5 % of Table 2."""
    pair = w2_benchmark_pair(16, directory=SHARED)
    x = pair.mixture.sample(2**14, seed=1)
    matrix, shift = pair.linear_map()
    assert pair.l2_uvp(x, x) == pytest.approx(PUBLISHED_L2_UVP["identity [ID]"][16], rel=0.05)
    assert pair.l2_uvp(x, x @ matrix.T + shift) == pytest.approx(
        PUBLISHED_L2_UVP["linear map [L]"][16], rel=0.05)
    assert pair.l2_uvp(x, pair.true_map(x)) == 0.0
