"""Tests for hycnn_sc.metrics: energy distance, MMD, r² of means, signature error."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

import hycnn_sc.metrics as metrics
from hycnn_sc.metrics import _distances, energy_distance, mmd, r2_mean, signature_l2


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Naive O(n m d) Euclidean distance matrix."""
    out = np.empty((len(a), len(b)))
    for i in range(len(a)):
        for j in range(len(b)):
            out[i, j] = math.sqrt(float(np.sum((a[i] - b[j]) ** 2)))
    return out


def naive_energy(x: np.ndarray, y: np.ndarray) -> float:
    return float(2 * _pairwise(x, y).mean() - _pairwise(x, x).mean() - _pairwise(y, y).mean())


def naive_mmd(x: np.ndarray, y: np.ndarray, bandwidths: list[float]) -> float:
    values = []
    for s in bandwidths:
        k = lambda a, b, s=s: np.exp(-(_pairwise(a, b) ** 2) / (2 * s * s))  # noqa: E731
        values.append(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())
    return float(np.mean(values))


@pytest.fixture
def samples() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 3)), rng.normal(size=(30, 3)) + 0.5


def test_exports() -> None:
    assert sorted(metrics.__all__) == sorted([
        "energy_distance", "mmd", "r2_mean", "signature_l2",
        # gene-space scores as cell-eval defines them (tests/test_gene_space.py)
        "GENE_SPACE_METRICS", "DifferentialExpression", "de_direction_match", "de_overlap",
        "differential_expression", "gene_space_scores", "mae_mean", "mse_mean", "pearson_delta",
    ])


@pytest.mark.parametrize("metric", [energy_distance, mmd])
def test_zero_for_same_sample(metric, samples) -> None:
    x, _ = samples
    assert metric(x, x) == pytest.approx(0.0, abs=1e-12)
    assert metric(x, x.copy()) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("metric", [energy_distance, mmd])
def test_grows_with_mean_shift(metric) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 4))
    y = rng.normal(size=(200, 4))
    # fixed bandwidths for MMD so the kernel does not change with the shift
    kwargs = {"bandwidths": [1.0, 2.0]} if metric is mmd else {}
    values = [metric(x, y + shift, **kwargs) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert all(v > 0 for v in values)
    assert values == sorted(values)
    assert values[-1] > 10 * values[0]


@pytest.mark.parametrize("metric", [energy_distance, mmd])
def test_symmetric(metric, samples) -> None:
    x, y = samples
    assert metric(x, y) == pytest.approx(metric(y, x), rel=1e-12)


def test_energy_matches_naive(samples) -> None:
    x, y = samples
    assert energy_distance(x, y) == pytest.approx(naive_energy(x, y), rel=1e-10)


def test_mmd_matches_naive(samples) -> None:
    x, y = samples
    assert mmd(x, y, bandwidths=[0.7]) == pytest.approx(naive_mmd(x, y, [0.7]), rel=1e-10)
    assert mmd(x, y, bandwidths=0.7) == pytest.approx(naive_mmd(x, y, [0.7]), rel=1e-10)
    # default: median heuristic on the pooled sample (< 2000 points, so no subsampling)
    pooled = np.concatenate([x, y])
    d = _pairwise(pooled, pooled)[np.triu_indices(len(pooled), k=1)]
    median = np.sort(d)[(len(d) - 1) // 2]  # lower median, as torch.median
    widths = [median * f for f in (0.25, 0.5, 1.0, 2.0, 4.0)]
    assert mmd(x, y) == pytest.approx(naive_mmd(x, y, widths), rel=1e-10)


def test_mmd_default_is_deterministic_with_subsampling(samples, monkeypatch) -> None:
    x, y = samples
    full = mmd(x, y)
    monkeypatch.setattr(_distances, "_MEDIAN_MAX_POINTS", 25)  # force the subsample
    first = mmd(x, y)
    assert first == mmd(x, y)
    assert first != full  # the bandwidth really came from the 25-point subsample


@pytest.mark.parametrize("metric", [energy_distance, mmd, r2_mean])
def test_numpy_and_torch_agree(metric, samples) -> None:
    x, y = samples
    expected = metric(x, y)
    assert isinstance(expected, float)
    out = metric(torch.from_numpy(x), torch.from_numpy(y))
    assert isinstance(out, torch.Tensor) and out.ndim == 0 and out.dtype == torch.float64
    assert float(out) == pytest.approx(expected, rel=1e-10)
    out32 = metric(torch.from_numpy(x).float(), torch.from_numpy(y).float())
    assert out32.dtype == torch.float32
    assert float(out32) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    mixed = metric(x, torch.from_numpy(y))  # numpy input is moved to the tensor's device
    assert isinstance(mixed, torch.Tensor)
    assert float(mixed) == pytest.approx(expected, rel=1e-10)


def test_signature_numpy_and_torch_agree(samples) -> None:
    x, y = samples
    c = x[:10] - 1.0
    expected = signature_l2(x, y, c)
    out = signature_l2(*(torch.from_numpy(a) for a in (x, y, c)))
    assert isinstance(out, torch.Tensor) and out.ndim == 0
    assert float(out) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("metric", [energy_distance, mmd])
def test_differentiable_with_torch(metric, samples) -> None:
    x, y = samples
    xt = torch.tensor(x, requires_grad=True)
    value = metric(xt, torch.from_numpy(y))
    value.backward()
    assert xt.grad is not None and torch.isfinite(xt.grad).all()
    # also at zero distance (the sample against itself)
    xt.grad = None
    metric(xt, xt).backward()
    assert torch.isfinite(xt.grad).all()


@pytest.mark.parametrize("metric", [energy_distance, mmd])
def test_chunking_matches_single_block(metric, samples, monkeypatch) -> None:
    x, y = samples
    full = metric(x, y)
    monkeypatch.setattr(_distances, "_MAX_BLOCK_BYTES", 1)  # one row per block
    assert _distances._rows_per_block(len(y), 8) == 1
    assert metric(x, y) == pytest.approx(full, rel=1e-12)
    monkeypatch.setattr(_distances, "_MAX_BLOCK_BYTES", 7 * len(y) * 8)  # uneven last block
    assert metric(x, y) == pytest.approx(full, rel=1e-12)


def test_r2_mean_identity_and_pearson() -> None:
    rng = np.random.default_rng(3)
    obs = rng.poisson(rng.uniform(0.1, 5, size=20), size=(50, 20)).astype(float)
    pred = obs[::-1] * 1.1 + rng.normal(scale=0.3, size=obs.shape)
    assert r2_mean(obs, obs) == pytest.approx(1.0, abs=1e-15)
    r = scipy.stats.pearsonr(pred.mean(axis=0), obs.mean(axis=0))[0]
    assert r2_mean(pred, obs) == pytest.approx(r**2, rel=1e-10)
    # invariant to an affine change of the predicted means, and to different n
    assert r2_mean(3 * pred + 2, obs[:7]) == pytest.approx(
        scipy.stats.pearsonr(pred.mean(axis=0), obs[:7].mean(axis=0))[0] ** 2, rel=1e-10
    )


def test_r2_mean_constant_means_give_nan() -> None:
    obs = np.random.default_rng(4).normal(size=(10, 5))
    assert math.isnan(r2_mean(np.ones((4, 5)), obs))
    assert math.isnan(r2_mean(obs, np.zeros((3, 5))))
    out = r2_mean(torch.ones(4, 5), torch.from_numpy(obs))
    assert isinstance(out, torch.Tensor) and torch.isnan(out)


def test_signature_l2_hand_computed() -> None:
    control = np.array([[0.0, 0.0], [2.0, 2.0]])  # mean (1, 1)
    obs = np.array([[2.0, 3.0], [4.0, 3.0]])  # mean (3, 3), signature (2, 2)
    pred = np.array([[5.0, 7.0]])  # signature (4, 6)
    # (4, 6) - (2, 2) = (2, 4) -> sqrt(20)
    assert signature_l2(pred, obs, control) == pytest.approx(math.sqrt(20.0), rel=1e-15)
    assert signature_l2(obs, obs, control) == 0.0


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((np.zeros((5, 3)), np.zeros((5, 4))), "features"),
        ((np.zeros(5), np.zeros((5, 1))), "2-D"),
        ((np.zeros((1, 3)), np.zeros((5, 3))), "at least 2"),
        ((np.full((5, 3), np.nan), np.zeros((5, 3))), "NaN"),
        ((np.zeros((5, 0)), np.zeros((5, 0))), "no features"),
    ],
)
@pytest.mark.parametrize("metric", [energy_distance, mmd])
def test_distance_bad_input(metric, args, match) -> None:
    with pytest.raises(ValueError, match=match):
        metric(*args)


@pytest.mark.parametrize("bandwidths", [[], [1.0, -1.0], [0.0], [float("nan")], -2.0])
def test_mmd_bad_bandwidths(bandwidths, samples) -> None:
    x, y = samples
    with pytest.raises(ValueError, match="bandwidths"):
        mmd(x, y, bandwidths=bandwidths)


def test_expression_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 2 features"):
        r2_mean(np.zeros((5, 1)), np.zeros((5, 1)))
    with pytest.raises(ValueError, match="`obs` has 4"):
        r2_mean(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="`control` has 2"):
        signature_l2(np.zeros((5, 3)), np.zeros((5, 3)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="2-D"):
        signature_l2(np.zeros(3), np.zeros((5, 3)), np.zeros((5, 3)))
    with pytest.raises(TypeError, match="numeric"):
        r2_mean(np.array([["a", "b"]]), np.zeros((1, 2)))
