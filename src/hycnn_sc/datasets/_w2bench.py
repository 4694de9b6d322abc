"""Optimal-transport problems with a known map: the "Mix3toMix10" pairs of Korotin et al. (2021).

Korotin, Li, Genevay, Solomon, Filippov and Burnaev, *Do Neural Optimal Transport Solvers
Work? A Continuous Wasserstein-2 Benchmark* (NeurIPS 2021, arXiv 2106.01954). In dimension
``D`` the source is a fixed mixture of three Gaussians; the target is its image under
``T* = ∇ψ``, with ``ψ`` the standardised sum of two pretrained input-convex networks (the
published checkpoints, MIT licence). ``T*`` is the gradient of a convex function, so by
Brenier's theorem it *is* the squared-distance optimal-transport map, and a learned map
``T̂`` is scored by

    L2-UVP = 100 · E_x ‖T̂(x) − T*(x)‖² / Var(target)   (per cent of the target's variance).

This module is written from the paper's definitions: the mixture (centres on a grid of
three values per coordinate, random unit-row factor matrices, component scale 0.4, the
whole standardised to unit variance per coordinate, drawn from NumPy's legacy generator
seeded with 0 as in the paper, so the source distribution is the published one), the
potential (dense ICNN with rank-one quadratic input skips, CELU activations, strong
convexity ``10⁻²``) and the standardisation of ``ψ`` (mean shift removed, scaled so the
target has unit variance per coordinate; estimated here on ``2¹⁶`` source points).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ._cache import download as _download
from ._cache import resolve_cache_dir

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["GaussianMixture", "W2BenchmarkPair", "w2_benchmark_pair"]

_REPOSITORY = "iamalexkorotin/Wasserstein2Benchmark"
_COMMIT = "f0158e7a4f59ff38313aeee084c9d2ed397e6a43"
_URL = f"https://raw.githubusercontent.com/{_REPOSITORY}/{_COMMIT}/benchmarks/Mix3toMix10/{{name}}"
_CACHE_SUBDIR = "w2bench"
#: SHA-256 of the published checkpoints (a download that does not match is rejected).
_SHA256 = {
    "2_v1.pt": "12fbf72953af1371002cb4a0b67757bd63b335e923fc5f7d4076fbeb81ee72b5",
    "2_v2.pt": "28d161bf7b352d678fb77f512b51266574da06455d3eabf9173695813efc1716",
    "4_v1.pt": "edbe9ff24297c685d070811930f2d17b63f0fd299cba0f792617798211e1bbc2",
    "4_v2.pt": "ec2a061e00be682b5212cfd9801d6d874768bd8b7ba3c2a80e2dc48d5a473425",
    "8_v1.pt": "0ace0d609d39eac0cbbb0f1e26ca1cd2329a8c48da7122f3118389755ca5be16",
    "8_v2.pt": "f2ef690cf8f9c3c9aed9c15471a64c8dc9da68f5d565b1c091d8f2e7caec5cb5",
    "16_v1.pt": "d50a23710ca3b71a01007cd53c6b578de087c9879e0506866bac9196357e1891",
    "16_v2.pt": "722088932a1a0dbbf9cc1e90a6b9d86df0536f4520caf205b33161c74c0dd574",
    "32_v1.pt": "d843897886c9346c3a0d14c2a0824f5b235ca4cf7932dda77a8c8f5c1a3fc201",
    "32_v2.pt": "34e8fed6bc0c7cfc54fa607b2bfb17118b70a1c135be486f55299299062f767f",
    "64_v1.pt": "ea8778313115151315cdc4a60198fea41e18800295559391c97e9a49b5b8f56c",
    "64_v2.pt": "2bbc6d8e5c7f29a6e188e23ea10b811e1b07b1bd0f355cc8916356eed2e7428b",
    "128_v1.pt": "69146834f2b33b6f05accbc7d4d49ef43e9517f38d5a7ab71c50a936c0c613ab",
    "128_v2.pt": "d03ed8ab9b8bab886ecc7d69e1dba1173b154f4eae9378a295a7cbbc93d52321",
}
#: Dimensions whose checkpoints can be downloaded (and are checked against ``_SHA256``).
DIMENSIONS = (2, 4, 8, 16, 32, 64, 128)
#: Forward L2-UVP (%) published in the paper's Table 2 (as printed on the authors' poster).
PUBLISHED_L2_UVP = {
    "best published solver": {2: 0.1, 16: 1.4, 64: 3.2},
    "linear map [L]": {2: 14.1, 16: 41.6, 64: 63.9},
    "identity [ID]": {2: 32.7, 16: 87.0, 64: 137.0},
}
#: The paper's mixture: three components, centre spacing 1, component scale 0.4.
_N_COMPONENTS, _SPACING, _COMPONENT_SCALE = 3, 1.0, 0.4
#: Strong convexity ``½ s ‖x‖²`` of each pretrained potential (the paper's Mix3toMix10 setting).
_STRONG_CONVEXITY = 1e-2
#: Source points used to standardise the potential and to estimate the target's moments.
_N_STANDARDISE = 2**16
_CHUNK = 8192


@dataclass(frozen=True)
class GaussianMixture:
    """Equal-weight Gaussian mixture; component ``j`` is ``centers[j] + factors[j] @ z``, ``z ~ N(0, I)``.

    Examples
    --------
    >>> mixture = GaussianMixture(np.array([[0.0], [2.0]]), np.array([[[1.0]], [[1.0]]]))
    >>> mixture.sample(5, seed=0).shape
    (5, 1)
    >>> mixture.covariance
    array([[2.]])
    """

    centers: np.ndarray
    factors: np.ndarray

    @property
    def dim(self) -> int:
        """Dimension ``D``."""
        return int(self.centers.shape[1])

    @property
    def mean(self) -> np.ndarray:
        """Mixture mean (exact)."""
        return self.centers.mean(axis=0)

    @property
    def covariance(self) -> np.ndarray:
        """Mixture covariance (exact): mean component covariance plus the centres' spread."""
        within = np.einsum("kij,klj->il", self.factors, self.factors) / len(self.factors)
        spread = self.centers - self.mean
        return within + spread.T @ spread / len(self.centers)

    def sample(self, n: int, seed: int | np.random.Generator | None = None) -> np.ndarray:
        """``n`` independent points, float64 ``[n, D]``."""
        rng = np.random.default_rng(seed)
        component = rng.integers(len(self.centers), size=n)
        noise = rng.standard_normal((n, self.dim))
        return self.centers[component] + np.einsum("nij,nj->ni", self.factors[component], noise)


def paper_mixture(dim: int) -> GaussianMixture:
    """The source mixture of the paper in dimension ``dim``, drawn exactly as published.

    NumPy's legacy generator seeded with 0 draws, for every coordinate, a permutation of the
    three grid values (the component centres' coordinates), then three ``D × D`` Gaussian
    matrices whose rows are normalised to unit length; the grid is centred, component scale
    0.4, and everything divided by one factor so that the mixture has unit variance per
    coordinate on average.

    Examples
    --------
    >>> mixture = paper_mixture(4)
    >>> round(float(np.trace(mixture.covariance)) / 4, 6)
    1.0
    """
    state = np.random.RandomState(0)  # the paper's np.random.seed(0): same draws, same order
    centers = np.zeros((_N_COMPONENTS, dim), dtype=np.float32)
    for coordinate in range(dim):
        centers[:, coordinate] += _SPACING * state.permutation(_N_COMPONENTS)
    centers -= _SPACING * (_N_COMPONENTS - 1) / 2
    factors = state.normal(size=(_N_COMPONENTS, dim, dim)).astype(np.float32)
    factors /= np.sqrt((factors**2).sum(axis=2, keepdims=True))
    scale = np.sqrt((centers**2).sum(axis=1).mean() + dim * _COMPONENT_SCALE**2) / np.sqrt(dim)
    return GaussianMixture(
        centers=(centers / scale).astype(np.float64),
        factors=(factors / scale * _COMPONENT_SCALE).astype(np.float64),
    )


def _quadratic_skip_icnn(x: torch.Tensor, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The checkpoints' potential: ``z₀ = q₀(x)``, ``z_l = celu(W_l z_{l-1} + q_l(x))``, ``wᵀ z_L``.

    ``q_l(x) = Σ_r (xᵀ Q_l[:, r, :])² + B_l x + b_l`` (convex: squares of linear forms), the
    ``W_l`` and ``w`` are non-negative, plus ``½ · 10⁻² ‖x‖²``.
    """
    n_layers = 1 + sum(1 for name in weights if name.startswith("convex_layers."))

    def quadratic(layer: int) -> torch.Tensor:
        prefix = f"quadratic_layers.{layer}."
        forms = torch.einsum("nd,dro->nro", x, weights[prefix + "quadratic_decomposed"])
        return forms.square().sum(1) + x @ weights[prefix + "weight"].T + weights[prefix + "bias"]

    hidden = quadratic(0)
    for layer in range(1, n_layers):
        hidden = torch.celu(hidden @ weights[f"convex_layers.{layer - 1}.weight"].T + quadratic(layer))
    return (hidden @ weights["final_layer.weight"].T)[:, 0] + 0.5 * _STRONG_CONVEXITY * x.square().sum(1)


def _check_weights(weights: Mapping[str, torch.Tensor], dim: int, label: str) -> dict[str, torch.Tensor]:
    required = ["final_layer.weight", "quadratic_layers.0.quadratic_decomposed",
                "quadratic_layers.0.weight", "quadratic_layers.0.bias"]
    missing = [name for name in required if name not in weights]
    if missing:
        raise ValueError(
            f"{label} is not a Mix3toMix10 potential: keys {missing} are missing (expected "
            "quadratic_layers.*, convex_layers.* and final_layer.weight, as in the published "
            "checkpoints)."
        )
    found = int(weights["quadratic_layers.0.weight"].shape[1])
    if found != dim:
        raise ValueError(f"{label} is a potential in dimension {found}, not {dim}.")
    checked = {name: torch.as_tensor(value, dtype=torch.float64) for name, value in weights.items()}
    for name, value in checked.items():
        if not torch.isfinite(value).all():
            raise ValueError(f"{label}: {name} has non-finite entries.")
        if (name.startswith("convex_layers.") or name == "final_layer.weight") and (value < 0).any():
            raise ValueError(
                f"{label}: {name} has negative entries, so the potential is not convex and its "
                "gradient is not an optimal-transport map."
            )
    return checked


class W2BenchmarkPair:
    """One optimal-transport problem with a known map: source mixture and ``T* = ∇ψ``.

    Parameters
    ----------
    potentials
        State dicts of the convex networks whose sum (standardised) is ``ψ`` (the paper:
        two, ``{D}_v1.pt`` and ``{D}_v2.pt``).
    mixture
        The source distribution; ``None`` means the paper's mixture in this dimension.

    Attributes
    ----------
    dim : int
    mixture : GaussianMixture
    target_mean, target_covariance : ndarray
        Moments of the target, estimated on ``2¹⁶`` source points (standardised: mean 0,
        unit variance per coordinate on average).
    target_variance : float
        ``Var(target)`` = trace of ``target_covariance``, the L2-UVP denominator.

    Examples
    --------
    >>> pair = w2_benchmark_pair(16, directory="../shared/data/w2bench")  # doctest: +SKIP
    >>> x, y = pair.sample(1000, seed=0)  # doctest: +SKIP
    >>> pair.l2_uvp(x, y)  # the true map scores 0  # doctest: +SKIP
    0.0
    """

    def __init__(
        self, potentials: list[Mapping[str, torch.Tensor]], mixture: GaussianMixture | None = None
    ) -> None:
        if not potentials:
            raise ValueError("potentials is empty; pass at least one state dict.")
        dim = int(torch.as_tensor(potentials[0]["quadratic_layers.0.weight"]).shape[1])
        self.mixture = paper_mixture(dim) if mixture is None else mixture
        if self.mixture.dim != dim:
            raise ValueError(f"The mixture is {self.mixture.dim}-dimensional but the potentials are {dim}-dimensional.")
        self.dim = dim
        self._weights = [_check_weights(w, dim, f"potentials[{i}]") for i, w in enumerate(potentials)]
        self._shift = np.zeros(dim)
        self._scale = 1.0
        pushed = self._raw_map(self.mixture.sample(_N_STANDARDISE, seed=0))
        self._shift = pushed.mean(axis=0)
        self._scale = 1.0 / float(np.sqrt((pushed - self._shift).var(axis=0).mean()))
        standardised = (pushed - self._shift) * self._scale
        self.target_mean = standardised.mean(axis=0)
        self.target_covariance = np.cov(standardised.T).reshape(dim, dim)
        self.target_variance = float(np.trace(self.target_covariance))

    def __repr__(self) -> str:
        return f"W2BenchmarkPair(dim={self.dim}, potentials={len(self._weights)})"

    def _raw_map(self, x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x, dtype=np.float64)
        for start in range(0, len(x), _CHUNK):
            chunk = torch.as_tensor(x[start:start + _CHUNK], dtype=torch.float64).requires_grad_(True)
            value = sum(_quadratic_skip_icnn(chunk, w) for w in self._weights)
            (gradient,) = torch.autograd.grad(value.sum(), chunk)
            out[start:start + _CHUNK] = gradient.numpy()
        return out

    def true_map(self, x: np.ndarray) -> np.ndarray:
        """``T*(x)`` for points ``x`` ``[n, D]`` (float64)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (n, {self.dim}); got {x.shape}.")
        return (self._raw_map(x) - self._shift) * self._scale

    def sample(self, n: int, seed: int | np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``n`` source points and their images ``T*(x)`` (paired: use two calls for unpaired data)."""
        x = self.mixture.sample(n, seed)
        return x, self.true_map(x)

    def linear_map(self) -> tuple[np.ndarray, np.ndarray]:
        """The Gaussian (linear) OT map between the two distributions' moments: ``(A, b)``, ``T(x) = A x + b``.

        The paper's [L] baseline: it is what a solver that only matches means and
        covariances reaches.
        """
        from ..models.gaussian import gaussian_transport_matrix

        matrix = gaussian_transport_matrix(self.mixture.covariance, self.target_covariance)
        return matrix, self.target_mean - matrix @ self.mixture.mean

    def l2_uvp(self, x: np.ndarray, mapped: np.ndarray) -> float:
        """``100 · mean ‖mapped − T*(x)‖² / Var(target)``: per cent of the target's variance."""
        mapped = np.asarray(mapped, dtype=np.float64)
        if mapped.shape != np.shape(x):
            raise ValueError(f"mapped has shape {mapped.shape} but x has shape {np.shape(x)}.")
        error = np.square(mapped - self.true_map(x)).sum(axis=1).mean()
        return float(100.0 * error / self.target_variance)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(directory: Path, name: str, *, progress: bool) -> Path:
    destination = directory / name
    if destination.is_file() and _sha256(destination) == _SHA256[name]:
        return destination
    url = _URL.format(name=name)
    try:
        _download(url, destination, progress=progress)
    except OSError as err:
        raise ConnectionError(
            f"Could not download {url} ({err}). On a machine without internet access, download "
            f"it elsewhere and copy it to {destination}, or pass directory= pointing at a folder "
            "holding the checkpoints."
        ) from err
    if _sha256(destination) != _SHA256[name]:
        destination.unlink()
        raise OSError(f"{url} did not match the published checkpoint's SHA-256; the file was removed.")
    return destination


def w2_benchmark_pair(
    dim: int,
    *,
    directory: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> W2BenchmarkPair:
    """The "Mix3toMix10" optimal-transport pair of Korotin et al. (2021) in dimension ``dim``.

    Parameters
    ----------
    dim
        ``D``: 2, 4, 8, 16, 32, 64 or 128 (256 too, with ``directory``).
    directory
        A folder holding ``{D}_v1.pt`` and ``{D}_v2.pt`` (e.g. a copy of the repository's
        ``benchmarks/Mix3toMix10``); nothing is downloaded.
    cache_dir
        Without ``directory``: where downloaded checkpoints are kept (default
        ``scanpy.settings.datasetdir / "w2bench"``). Missing files are downloaded from the
        authors' GitHub repository (MIT licence) at a fixed commit and checked against their
        SHA-256.
    progress
        Show download progress bars.

    Returns
    -------
    W2BenchmarkPair

    Examples
    --------
    >>> pair = w2_benchmark_pair(16, directory="../shared/data/w2bench")  # doctest: +SKIP
    >>> x = pair.mixture.sample(10_000, seed=1)  # doctest: +SKIP
    >>> round(pair.l2_uvp(x, x))  # identity map: the paper's [ID] row says 87  # doctest: +SKIP
    87
    """
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}.")
    names = [f"{dim}_v1.pt", f"{dim}_v2.pt"]
    if directory is not None:
        folder = Path(directory).expanduser()
        paths = [folder / name for name in names]
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"Checkpoint(s) {missing} not found; directory must hold {names[0]} and "
                f"{names[1]} (the repository's benchmarks/Mix3toMix10 folder)."
            )
    else:
        if dim not in DIMENSIONS:
            raise ValueError(
                f"dim={dim} has no published checkpoint to download; choose one of {DIMENSIONS} "
                "or pass directory= holding the files."
            )
        folder = resolve_cache_dir(cache_dir, _CACHE_SUBDIR)
        paths = [_fetch(folder, name, progress=progress) for name in names]
    return W2BenchmarkPair([torch.load(path, map_location="cpu", weights_only=True) for path in paths])
