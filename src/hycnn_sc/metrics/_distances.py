"""Distances between two samples of cells: energy distance and kernel MMD.

Both functions take numpy arrays or torch tensors of shape ``[n_cells, n_features]``.
Numpy input is computed with float64 torch on the CPU and returned as a Python ``float``;
torch input stays on its device and dtype and a 0-d tensor is returned, so a training loop
can call the metrics on the GPU without host copies (and even back-propagate through them).

Pairwise distances are never held as one ``n x m`` matrix: rows are processed in blocks of
at most ``_MAX_BLOCK_BYTES`` (64 MiB) of distances, with a few temporaries of that size alive at
once, so peak extra memory stays around 256 MiB whatever the number of cells.
"""

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .._validation import check_finite, check_real_dtype, check_shape, to_numpy

# Largest block of pairwise distances (in bytes) materialised at once.
_MAX_BLOCK_BYTES = 64 * 2**20
# Median-heuristic settings: size of the deterministic subsample and its seed.
_MEDIAN_MAX_POINTS = 2000
_MEDIAN_SEED = 0
# Default MMD bandwidths, as multiples of the median pairwise distance.
_BANDWIDTH_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


def _prepare(
    arrays: Sequence[tuple[str, Any]], *, min_rows: int
) -> tuple[list[torch.Tensor], bool]:
    """Validate named 2-D inputs and convert them to torch tensors of one dtype and device.

    Returns the tensors and ``as_float``: True when every input was a numpy-like array (the
    caller then returns a Python float), False when at least one was a torch tensor (the
    caller returns a 0-d tensor on that tensor's device).
    """
    tensors = [value for _, value in arrays if isinstance(value, torch.Tensor)]
    as_float = not tensors
    if as_float:
        device = torch.device("cpu")
        dtype = torch.float64
    else:
        devices = {t.device for t in tensors}
        if len(devices) > 1:
            names = ", ".join(
                f"`{n}` on {v.device}" for n, v in arrays if isinstance(v, torch.Tensor)
            )
            raise ValueError(
                f"All tensors must be on the same device, got {names}; move them with .to(device)."
            )
        device = tensors[0].device
        floating = [t.dtype for t in tensors if t.is_floating_point()]
        dtype = floating[0] if floating else torch.get_default_dtype()
        for other in floating[1:]:
            dtype = torch.promote_types(dtype, other)

    out: list[torch.Tensor] = []
    for name, value in arrays:
        if isinstance(value, torch.Tensor):
            check_real_dtype(value.dtype, f"`{name}`")
            tensor = value.to(dtype=dtype)
        else:
            array = to_numpy(value)
            check_real_dtype(array.dtype, f"`{name}`")
            tensor = torch.as_tensor(np.asarray(array, dtype=np.float64), dtype=dtype, device=device)
        first = out[0].shape[1] if out else None
        check_shape(tuple(tensor.shape), f"`{name}`", min_rows=min_rows, n_features=first,
                    reference=f"`{arrays[0][0]}` has")
        out.append(tensor)
    for (name, _), tensor in zip(arrays, out, strict=True):
        check_finite(tensor, f"`{name}`")
    return out, as_float


def _finish(value: torch.Tensor, as_float: bool) -> float | torch.Tensor:
    """Return a Python float for numpy callers and the 0-d tensor for torch callers."""
    return float(value) if as_float else value


def _center(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift both samples by the same vector; distances are unchanged, rounding improves."""
    shift = 0.5 * (x.mean(dim=0) + y.mean(dim=0))
    return x - shift, y - shift


def _rows_per_block(n_cols: int, element_size: int) -> int:
    """Number of rows whose distances to ``n_cols`` points fit in ``_MAX_BLOCK_BYTES``."""
    return max(1, _MAX_BLOCK_BYTES // max(1, n_cols * element_size))


def _sq_blocks(a: torch.Tensor, b: torch.Tensor, *, floor: float = 0.0) -> Iterator[torch.Tensor]:
    """Yield squared distances from consecutive row blocks of ``a`` to all of ``b``.

    Squared distances come from one matrix product, ``‖a‖² + ‖b‖² − 2 a·b``, whose rounding
    error is of order ``eps · (‖a‖² + ‖b‖²)``; entries below a small multiple of that are
    replaced by ``floor`` (0 by default). Identical points (the diagonal of a sample against
    itself, duplicated cells) thus get distance exactly 0 instead of ``sqrt(eps)``-sized noise.
    Each block holds at most ``_MAX_BLOCK_BYTES`` bytes (at least one row).
    """
    norms_a = (a * a).sum(dim=1)
    norms_b = (b * b).sum(dim=1)
    rel_tol = 4.0 * torch.finfo(a.dtype).eps * math.sqrt(a.shape[1])
    step = _rows_per_block(b.shape[0], a.element_size())
    for start in range(0, a.shape[0], step):
        base = norms_a[start : start + step, None] + norms_b[None, :]
        sq = torch.addmm(base, a[start : start + step], b.T, alpha=-2.0)
        yield torch.where(sq > base * rel_tol, sq, floor)


def _pairwise_sum(
    a: torch.Tensor,
    b: torch.Tensor,
    reduce: Callable[[torch.Tensor], torch.Tensor],
    *,
    floor: float = 0.0,
) -> torch.Tensor:
    """``sum(reduce(block) for block in _sq_blocks(a, b))``, never holding all pairs at once."""
    total = a.new_zeros(())
    for sq in _sq_blocks(a, b, floor=floor):
        total = total + reduce(sq)
    return total


def _mean_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance over all pairs (differentiable, zero gradient at 0 distance)."""
    tiny = torch.finfo(a.dtype).tiny  # sqrt(tiny) has a finite derivative, unlike sqrt(0)
    total = _pairwise_sum(a, b, lambda sq: sq.sqrt().sum(), floor=tiny)
    return total / (a.shape[0] * b.shape[0])


def energy_distance(
    x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor
) -> float | torch.Tensor:
    r"""Squared energy distance between two samples (Székely & Rizzo).

    .. math::

        \mathcal{E}(X, Y) = 2\,\mathbb{E}\lVert X - Y\rVert
            - \mathbb{E}\lVert X - X'\rVert - \mathbb{E}\lVert Y - Y'\rVert,

    estimated in V-statistic form: every expectation is the plain mean over all pairs,
    including the zero diagonal terms ``‖x_i − x_i‖`` of the within-sample means. This
    estimator is always ``>= 0`` and is exactly 0 when ``x`` and ``y`` are the same sample
    (tiny negative rounding errors are clipped to 0). It is not an unbiased estimator: for two
    independent samples of the same distribution it is positive, of order ``1/n``.

    Parameters
    ----------
    x, y
        Samples of shape ``[n, d]`` and ``[m, d]`` (``n, m >= 2``), as numpy arrays or torch
        tensors. Torch tensors must share a device; mixed input is moved to the tensor's
        device.

    Returns
    -------
    float or torch.Tensor
        A Python float for numpy input (computed in float64), otherwise a 0-d tensor on the
        input device, differentiable with respect to the inputs.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(300, 5))
    >>> energy_distance(x, x)
    0.0
    >>> energy_distance(x, x + 1.0) > energy_distance(x, x + 0.1) > 0
    True
    """
    (x, y), as_float = _prepare([("x", x), ("y", y)], min_rows=2)
    x, y = _center(x, y)
    value = 2.0 * _mean_distance(x, y) - _mean_distance(x, x) - _mean_distance(y, y)
    return _finish(value.clamp_min(0.0), as_float)


def _median_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Median pairwise distance of the pooled sample (deterministic subsample <= 2000 points).

    Taken over the ``k (k - 1) / 2`` distinct pairs; for an even count this is the lower of the
    two middle values (``torch.median``), which is immaterial for a bandwidth.

    Falls back to the mean pairwise distance, then to 1.0, when the median is 0 (for example
    when most cells are identical).
    """
    with torch.no_grad():
        pooled = torch.cat([x.detach(), y.detach()])
        if pooled.shape[0] > _MEDIAN_MAX_POINTS:
            generator = torch.Generator().manual_seed(_MEDIAN_SEED)
            keep = torch.randperm(pooled.shape[0], generator=generator)[:_MEDIAN_MAX_POINTS]
            pooled = pooled[keep.to(pooled.device)]
        k = pooled.shape[0]
        upper = torch.ones(k, k, dtype=torch.bool, device=pooled.device).triu(diagonal=1)
        dists = torch.cat(list(_sq_blocks(pooled, pooled)))[upper].sqrt()
        median = float(dists.median())  # the lower median for an even count
        if not median > 0:
            median = float(dists.mean())
    return median if median > 0 and math.isfinite(median) else 1.0


def _check_bandwidths(bandwidths: float | Sequence[float]) -> list[float]:
    """Validate user bandwidths and return them as a list of positive floats."""
    if isinstance(bandwidths, (int, float, np.integer, np.floating)) and not isinstance(
        bandwidths, bool
    ):
        bandwidths = [bandwidths]
    try:
        values = [float(b) for b in bandwidths]
    except (TypeError, ValueError):
        raise TypeError(
            f"`bandwidths` must be a positive float or a sequence of positive floats, got {bandwidths!r}."
        ) from None
    if not values:
        raise ValueError(
            "`bandwidths` is empty; pass at least one kernel width or use None for the default."
        )
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(
            f"`bandwidths` must hold positive, finite kernel widths s (in exp(-‖a-b‖²/(2 s²))), got {values!r}."
        )
    return values


def mmd(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    bandwidths: float | Sequence[float] | None = None,
) -> float | torch.Tensor:
    r"""Squared maximum mean discrepancy with Gaussian (RBF) kernels.

    For one bandwidth ``s`` the kernel is :math:`k_s(a, b) = \exp(-\lVert a-b\rVert^2 / (2 s^2))`
    and the biased (V-statistic) estimate is

    .. math::

        \mathrm{MMD}^2_s = \overline{k_s(x, x')} + \overline{k_s(y, y')} - 2\,\overline{k_s(x, y)},

    where each bar is the mean over *all* pairs, diagonal included. The returned value is the
    average of :math:`\mathrm{MMD}^2_s` over the bandwidths, i.e. the MMD² of the averaged
    kernel. It is ``>= 0``, exactly 0 for identical samples (rounding negatives are clipped) and
    of order ``1/n`` for two independent samples of one distribution.

    Parameters
    ----------
    x, y
        Samples of shape ``[n, d]`` and ``[m, d]`` (``n, m >= 2``), numpy arrays or torch
        tensors.
    bandwidths
        Kernel widths ``s`` (a positive float or a sequence of them). By default the median
        heuristic is used: ``s_med`` is the median pairwise Euclidean distance of the pooled
        sample ``[x; y]`` (computed on a subsample of at most 2000 points drawn with a fixed
        seed, so the result is deterministic), and the bandwidths are
        ``s_med * (0.25, 0.5, 1, 2, 4)``. Because the default depends on the data, compare
        several models against the same ``y`` with fixed explicit bandwidths when the exact
        scale matters.

    Returns
    -------
    float or torch.Tensor
        A Python float for numpy input (computed in float64), otherwise a 0-d tensor on the
        input device (differentiable; the median heuristic itself is not differentiated).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(300, 5))
    >>> mmd(x, x)
    0.0
    >>> mmd(x, x + 1.0) > mmd(x, x + 0.1) > 0
    True
    >>> mmd(x, x + 1.0, bandwidths=[1.0, 2.0]) > 0
    True
    """
    (x, y), as_float = _prepare([("x", x), ("y", y)], min_rows=2)
    widths = (
        [_median_distance(x, y) * f for f in _BANDWIDTH_FACTORS]
        if bandwidths is None
        else _check_bandwidths(bandwidths)
    )
    x, y = _center(x, y)
    scales = [-0.5 / (s * s) for s in widths]

    def mean_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        def reduce(sq: torch.Tensor) -> torch.Tensor:
            return sum((torch.exp(sq * c).sum() for c in scales), start=sq.new_zeros(()))

        return _pairwise_sum(a, b, reduce) / (a.shape[0] * b.shape[0] * len(scales))

    value = mean_kernel(x, x) + mean_kernel(y, y) - 2.0 * mean_kernel(x, y)
    return _finish(value.clamp_min(0.0), as_float)
