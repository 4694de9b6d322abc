r"""Closed-form optimal-transport map between Gaussian approximations of two populations.

For :math:`\mathcal N(m_0, \Sigma_0)` and :math:`\mathcal N(m_1, \Sigma_1)` with
:math:`\Sigma_0` positive definite, the quadratic-cost (W2) optimal transport map is affine,

.. math::

    T(x) = m_1 + A (x - m_0), \qquad
    A = \Sigma_0^{-1/2} \bigl(\Sigma_0^{1/2} \Sigma_1 \Sigma_0^{1/2}\bigr)^{1/2} \Sigma_0^{-1/2},

with :math:`A` symmetric positive semi-definite, so that :math:`T` is the gradient of the convex
function :math:`x \mapsto \tfrac12 (x - m_0)^\top A (x - m_0) + m_1^\top x` (Brenier). The
squared distance is the Bures–Wasserstein formula

.. math::

    W_2^2 = \lVert m_0 - m_1 \rVert^2 + \operatorname{tr}\Sigma_0 + \operatorname{tr}\Sigma_1
            - 2 \operatorname{tr} \bigl(\Sigma_0^{1/2} \Sigma_1 \Sigma_0^{1/2}\bigr)^{1/2}.

Applied to the empirical means and covariances of two cell populations this is the linear
baseline every neural transport map should beat, and a warm start for one.
All matrix roots use symmetric eigendecompositions in float64.
"""

from typing import Any, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from .._validation import check_array, check_positive
from .._warnings import warn_user
from ._options import COVARIANCES, Covariance


def _symmetrize(matrix: NDArray[np.float64]) -> NDArray[np.float64]:
    return 0.5 * (matrix + matrix.T)


def _check_covariance(cov: ArrayLike, name: str) -> NDArray[np.float64]:
    """Validate a finite, square, symmetric matrix and return it (symmetrized) in float64."""
    array = np.asarray(cov, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != array.shape[1] or array.shape[0] == 0:
        raise ValueError(
            f"`{name}` must be a square (d, d) covariance matrix, got shape {array.shape}."
        )
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    asymmetry = float(np.abs(array - array.T).max())
    if asymmetry > 1e-6 * max(float(np.abs(array).max()), np.finfo(np.float64).tiny):
        raise ValueError(
            f"`{name}` must be symmetric, but max |C - C.T| = {asymmetry:.3g}; "
            "pass a covariance matrix (e.g. np.cov(x, rowvar=False))."
        )
    return _symmetrize(array)


def _psd_eigh(
    matrix: NDArray[np.float64], name: str
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Eigendecomposition of a symmetric PSD matrix with round-off negatives clipped to 0."""
    values, vectors = np.linalg.eigh(_symmetrize(matrix))
    scale = max(float(np.abs(values).max()), np.finfo(np.float64).tiny)
    tol = matrix.shape[0] * np.finfo(np.float64).eps * scale * 10
    if values.min() < -tol:
        raise ValueError(
            f"{name} is not positive semi-definite (smallest eigenvalue {values.min():.3g})."
        )
    return np.clip(values, 0.0, None), vectors


def _gaussian_ot(
    cov_source: NDArray[np.float64], cov_target: NDArray[np.float64], names: tuple[str, str]
) -> tuple[NDArray[np.float64], float]:
    """Return ``A`` and ``tr (Σ0^{1/2} Σ1 Σ0^{1/2})^{1/2}`` for validated covariances."""
    d = cov_source.shape[0]
    values, vectors = _psd_eigh(cov_source, names[0])
    if values.min() <= d * np.finfo(np.float64).eps * values.max():
        raise ValueError(
            f"{names[0]} is singular (smallest eigenvalue {values.min():.3g}, largest "
            f"{values.max():.3g}), so the transport map from it is not unique; add a small "
            "ridge to its diagonal (GaussianTransportMap(regularization=...) does this)."
        )
    _psd_eigh(cov_target, names[1])  # only checks that the target is PSD
    root = np.sqrt(values)
    sqrt_source = (vectors * root) @ vectors.T
    inv_sqrt_source = (vectors / root) @ vectors.T
    middle_values, middle_vectors = _psd_eigh(
        sqrt_source @ cov_target @ sqrt_source, f"Σ0^1/2 {names[1]} Σ0^1/2"
    )
    middle_root = np.sqrt(middle_values)
    sqrt_middle = (middle_vectors * middle_root) @ middle_vectors.T
    matrix = _symmetrize(inv_sqrt_source @ sqrt_middle @ inv_sqrt_source)
    return matrix, float(middle_root.sum())


def gaussian_transport_matrix(cov_source: ArrayLike, cov_target: ArrayLike) -> NDArray[np.float64]:
    """Linear part ``A`` of the optimal transport map between two Gaussians.

    ``A = Σ0^{-1/2} (Σ0^{1/2} Σ1 Σ0^{1/2})^{1/2} Σ0^{-1/2}`` is the unique symmetric positive
    semi-definite matrix with ``A Σ0 A = Σ1``; the map is ``T(x) = m1 + A (x - m0)``. It is
    computed in float64 from symmetric eigendecompositions (tiny negative eigenvalues from
    round-off are clipped to 0).

    Parameters
    ----------
    cov_source
        Source covariance ``Σ0``, symmetric positive definite, shape ``(d, d)``.
    cov_target
        Target covariance ``Σ1``, symmetric positive semi-definite, shape ``(d, d)``.

    Returns
    -------
    numpy.ndarray
        ``A`` as a symmetric float64 array of shape ``(d, d)``.

    Raises
    ------
    ValueError
        If the matrices are not square, of equal shape, finite and symmetric, if ``Σ1`` is not
        PSD, or if ``Σ0`` is singular.

    Examples
    --------
    >>> import numpy as np
    >>> gaussian_transport_matrix(np.diag([1.0, 4.0]), np.diag([9.0, 1.0]))
    array([[3. , 0. ],
           [0. , 0.5]])
    """
    source = _check_covariance(cov_source, "cov_source")
    target = _check_covariance(cov_target, "cov_target")
    if source.shape != target.shape:
        raise ValueError(
            f"`cov_source` has shape {source.shape} but `cov_target` has shape {target.shape}; "
            "both must be (d, d) for the same d."
        )
    return _gaussian_ot(source, target, ("`cov_source`", "`cov_target`"))[0]


def check_shrinkage(value: float, name: str = "shrinkage",
                    meaning: str = "0: Gaussian OT map, 1: mean shift") -> None:
    """Raise a clear error unless ``value`` is a number in ``[0, 1]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number in [0, 1] ({meaning}), got {value!r}.")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1] ({meaning}), got {value!r}.")


def shrink_towards_identity(
    matrix: NDArray[np.float64], shrinkage: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(1 − γ) A + γ I`` and its inverse, for a symmetric PSD ``A`` (float64).

    Examples
    --------
    >>> shrunk, inverse = shrink_towards_identity(np.diag([4.0, 0.25]), 0.5)
    >>> np.diag(shrunk), np.allclose(shrunk @ inverse, np.eye(2))
    (array([2.5  , 0.625]), True)
    """
    values, vectors = np.linalg.eigh(_symmetrize(matrix))
    values = (1.0 - shrinkage) * np.clip(values, 0.0, None) + shrinkage
    shrunk = _symmetrize((vectors * values) @ vectors.T)
    inverse = _symmetrize((vectors / np.maximum(values, np.finfo(np.float64).tiny)) @ vectors.T)
    return shrunk, inverse


def _regularized_covariance(
    data: NDArray[np.floating], regularization: float, name: str, estimator: str = "empirical"
) -> NDArray[np.float64]:
    """Covariance (unbiased, or Ledoit–Wolf shrunk) plus ``regularization * mean variance``."""
    centered = np.asarray(data, dtype=np.float64) - data.mean(axis=0, dtype=np.float64)
    if estimator == "ledoit_wolf":
        from sklearn.covariance import ledoit_wolf

        # Ledoit–Wolf shrinks towards a scaled identity with the analytically optimal weight;
        # rescaled to the unbiased normalisation so both estimators agree for large n.
        cov = ledoit_wolf(centered, assume_centered=True)[0] * data.shape[0] / (data.shape[0] - 1)
        cov = _symmetrize(cov)
    else:
        cov = _symmetrize(centered.T @ centered / (data.shape[0] - 1))
    mean_variance = float(np.trace(cov)) / cov.shape[0]
    if not mean_variance > 0:
        raise ValueError(
            f"Every feature of `{name}` is constant (zero variance); a Gaussian map needs spread."
        )
    cov[np.diag_indices_from(cov)] += regularization * mean_variance
    return cov


class GaussianTransportMap(BaseEstimator):
    """Closed-form W2 optimal transport map between Gaussian fits of two populations.

    ``fit`` estimates the mean and covariance of each population and stores the affine map
    ``T(x) = m1 + (x - m0) A`` (rows are cells; ``A`` is symmetric) and its inverse
    ``T^{-1}(y) = m0 + (y - m1) A^{-1}``, where ``A^{-1}`` is the Gaussian OT matrix from
    ``Σ1`` to ``Σ0``. It is the exact OT map when both populations are Gaussian and the best
    affine baseline otherwise.

    Parameters
    ----------
    regularization
        Ridge added to each covariance before the matrix roots: ``Σ + λ · v̄ · I`` with
        ``λ = regularization`` and ``v̄ = tr Σ / d`` the mean feature variance of that
        population, so the ridge is scale-free. Needed when ``d`` approaches the number of
        cells or some features are constant; ``0`` disables it (then singular covariances
        raise).
    shrinkage
        ``γ`` in ``[0, 1]``: the linear part becomes ``(1 − γ) A + γ I``, a convex combination
        of the Gaussian OT matrix and the identity. ``0`` is the Gaussian OT map, ``1`` the
        mean shift ``x + (m1 − m0)``; in between, a map that trusts the estimated covariances
        less (useful with few cells or when applying the map to new patients or cell
        lines). The matrix stays symmetric positive definite, so the map stays the gradient
        of a convex function.
    covariance
        ``"empirical"`` (unbiased sample covariance) or ``"ledoit_wolf"`` (shrunk towards a
        scaled identity with the Ledoit–Wolf weight; better conditioned with few cells).

    Attributes
    ----------
    mean_source_, mean_target_ : numpy.ndarray
        Per-feature means ``m0`` and ``m1``, shape ``(d,)``.
    matrix_ : numpy.ndarray
        ``A``, symmetric PSD ``(d, d)``, with ``A Σ0 A = Σ1`` for the regularized covariances
        (``(1 − γ) A + γ I`` with ``shrinkage=γ``).
    inverse_matrix_ : numpy.ndarray
        The linear part of the target-to-source map: the Gaussian OT matrix from ``Σ1`` to
        ``Σ0`` (the inverse of ``matrix_``; with ``shrinkage > 0``, ``matrix_`` inverted).
    w2_squared_ : float
        Closed-form (Bures–Wasserstein) squared W2 distance between the two fitted Gaussians,
        ``‖m0 − m1‖² + tr Σ0 + tr Σ1 − 2 tr (Σ0^{1/2} Σ1 Σ0^{1/2})^{1/2}``, using the
        regularized covariances (it does not depend on ``shrinkage``).
    n_features_in_ : int
        Number of features ``d`` seen in ``fit``.

    Notes
    -----
    Covariances use the unbiased ``1 / (n - 1)`` normalisation; all fitted arrays are float64.
    ``transport`` and ``inverse`` compute in float64 and return float32 for float32 input and
    float64 otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> source = rng.normal(size=(500, 3))
    >>> target = 2.0 * rng.normal(size=(400, 3)) + 1.0
    >>> gmap = GaussianTransportMap().fit(source, target)
    >>> moved = gmap.transport(source)
    >>> np.allclose(moved.mean(axis=0), target.mean(axis=0))
    True
    >>> np.allclose(gmap.inverse(moved), source)
    True
    >>> restored = GaussianTransportMap.from_state(gmap.get_state())
    >>> np.allclose(restored.transport(source), moved)
    True
    """

    def __init__(
        self, regularization: float = 1e-6, shrinkage: float = 0.0, covariance: Covariance = "empirical"
    ) -> None:
        self.regularization = regularization
        self.shrinkage = shrinkage
        self.covariance = covariance

    #: Fitted arrays, stored by :meth:`get_state` under their names without the ``_``.
    _fitted_arrays = ("mean_source_", "mean_target_", "matrix_", "inverse_matrix_")
    #: Every fitted attribute.
    _fitted_attributes = (*_fitted_arrays, "w2_squared_", "n_features_in_")

    def fit(self, source: ArrayLike, target: ArrayLike) -> Self:
        """Estimate means and covariances of both populations and the map between them.

        Parameters
        ----------
        source
            Source cells ``[n0, d]`` (``n0 >= 2``).
        target
            Target cells ``[n1, d]`` (``n1 >= 2``); ``n1`` may differ from ``n0``.

        Returns
        -------
        GaussianTransportMap
            ``self``, fitted.

        Examples
        --------
        >>> import numpy as np
        >>> rng = np.random.default_rng(1)
        >>> gmap = GaussianTransportMap().fit(rng.normal(size=(50, 2)), rng.normal(size=(60, 2)))
        >>> gmap.matrix_.shape
        (2, 2)
        """
        check_positive(self.regularization, "regularization", allow_zero=True)
        check_shrinkage(self.shrinkage)
        if self.covariance not in COVARIANCES:
            raise ValueError(
                f"Unknown covariance {self.covariance!r}; choose one of {COVARIANCES}."
            )
        regularization = float(self.regularization)
        x0 = check_array(source, "`source`", min_rows=2, why=" to estimate a covariance")
        x1 = check_array(target, "`target`", min_rows=2, why=" to estimate a covariance")
        if x0.shape[1] != x1.shape[1]:
            raise ValueError(
                f"`source` has {x0.shape[1]} features but `target` has {x1.shape[1]}; both must "
                "live in the same feature space (same genes in the same order, or the same embedding)."
            )
        cov0 = _regularized_covariance(x0, regularization, "source", self.covariance)
        cov1 = _regularized_covariance(x1, regularization, "target", self.covariance)
        names = ("the covariance of `source`", "the covariance of `target`")
        matrix, cross_trace = _gaussian_ot(cov0, cov1, names)
        inverse_matrix, _ = _gaussian_ot(cov1, cov0, names[::-1])
        if self.shrinkage > 0:
            matrix, inverse_matrix = shrink_towards_identity(matrix, float(self.shrinkage))
        mean0 = x0.mean(axis=0, dtype=np.float64)
        mean1 = x1.mean(axis=0, dtype=np.float64)
        w2 = float(np.sum((mean0 - mean1) ** 2) + np.trace(cov0) + np.trace(cov1) - 2 * cross_trace)

        fitted = (mean0, mean1, matrix, inverse_matrix, max(w2, 0.0), int(x0.shape[1]))
        for name, value in zip(self._fitted_attributes, fitted, strict=True):
            setattr(self, name, value)
        return self

    def _check_fitted(self) -> None:
        check_is_fitted(self, self._fitted_attributes,
                        msg="This %(name)s is not fitted yet; call fit(source, target) first.")

    def _apply(
        self, data: ArrayLike, name: str, shift_in: NDArray, matrix: NDArray, shift_out: NDArray
    ) -> NDArray[np.floating]:
        array = check_array(data, f"`{name}`", n_features=self.n_features_in_,
                            reference="the map was fitted on")
        out = shift_out + (np.asarray(array, dtype=np.float64) - shift_in) @ matrix
        return out.astype(np.float32) if array.dtype == np.float32 else out

    def transport(self, x: ArrayLike) -> NDArray[np.floating]:
        """Map source-like cells to the target: ``m1 + (x - m0) A``.

        Parameters
        ----------
        x
            Cells ``[n, d]`` in the source feature space.

        Returns
        -------
        numpy.ndarray
            Transported cells ``[n, d]`` (float32 for float32 input, else float64).

        Examples
        --------
        >>> import numpy as np
        >>> rng = np.random.default_rng(2)
        >>> gmap = GaussianTransportMap().fit(rng.normal(size=(80, 2)), rng.normal(size=(80, 2)) + 5)
        >>> gmap.transport(np.zeros((1, 2))).shape
        (1, 2)
        """
        self._check_fitted()
        return self._apply(x, "x", self.mean_source_, self.matrix_, self.mean_target_)

    def inverse(self, y: ArrayLike) -> NDArray[np.floating]:
        """Map target-like cells back to the source: ``m0 + (y - m1) A^{-1}``.

        Parameters
        ----------
        y
            Cells ``[n, d]`` in the target feature space.

        Returns
        -------
        numpy.ndarray
            Cells ``[n, d]`` mapped to the source (float32 for float32 input, else float64).

        Examples
        --------
        >>> import numpy as np
        >>> rng = np.random.default_rng(3)
        >>> x = rng.normal(size=(60, 2))
        >>> gmap = GaussianTransportMap().fit(x, 3 * rng.normal(size=(70, 2)))
        >>> np.allclose(gmap.inverse(gmap.transport(x)), x)
        True
        """
        self._check_fitted()
        return self._apply(y, "y", self.mean_target_, self.inverse_matrix_, self.mean_source_)

    def get_state(self) -> dict[str, Any]:
        """Fitted state as plain numpy arrays and floats (storable in ``AnnData.uns``).

        Returns
        -------
        dict
            Keys ``regularization``, ``shrinkage``, ``w2_squared`` (floats), ``covariance``
            and ``mean_source``, ``mean_target`` (``(d,)``), ``matrix``, ``inverse_matrix``
            (``(d, d)``) float64 arrays. The arrays are copies.

        Examples
        --------
        >>> import numpy as np
        >>> rng = np.random.default_rng(4)
        >>> state = GaussianTransportMap().fit(rng.normal(size=(30, 2)), rng.normal(size=(30, 2))).get_state()
        >>> sorted(state)  # doctest: +NORMALIZE_WHITESPACE
        ['covariance', 'inverse_matrix', 'matrix', 'mean_source', 'mean_target', 'regularization',
         'shrinkage', 'w2_squared']
        """
        self._check_fitted()
        return {
            "regularization": float(self.regularization),
            "shrinkage": float(self.shrinkage),
            "covariance": str(self.covariance),
            **{name[:-1]: getattr(self, name).copy() for name in self._fitted_arrays},
            "w2_squared": float(self.w2_squared_),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild a fitted map from :meth:`get_state` output (no pickling involved).

        Parameters
        ----------
        state
            Mapping with the keys written by :meth:`get_state`; values may be numpy scalars or
            arrays as read back from an ``.h5ad`` file.

        Returns
        -------
        GaussianTransportMap
            A fitted instance.

        Examples
        --------
        >>> import numpy as np
        >>> rng = np.random.default_rng(5)
        >>> gmap = GaussianTransportMap().fit(rng.normal(size=(30, 2)), rng.normal(size=(30, 2)))
        >>> GaussianTransportMap.from_state(gmap.get_state()).w2_squared_ == gmap.w2_squared_
        True
        """
        required = ("regularization", *(name[:-1] for name in cls._fitted_arrays), "w2_squared")
        missing = [key for key in required if key not in state]
        if missing:
            raise ValueError(
                f"Cannot rebuild {cls.__name__}: missing keys {missing}; pass the dict written by "
                "get_state()."
            )
        arrays = [np.array(state[name[:-1]], dtype=np.float64) for name in cls._fitted_arrays]
        mean_source, mean_target, matrix, inverse_matrix = arrays
        d = mean_source.shape[0] if mean_source.ndim == 1 else -1
        if d < 1 or [a.shape for a in arrays] != [(d,), (d,), (d, d), (d, d)]:
            raise ValueError(
                f"Inconsistent shapes in state: mean_source {mean_source.shape}, mean_target "
                f"{mean_target.shape}, matrix {matrix.shape}, inverse_matrix {inverse_matrix.shape}; "
                "expected (d,), (d,), (d, d), (d, d)."
            )
        model = cls(
            regularization=float(state["regularization"]),
            shrinkage=float(state.get("shrinkage", 0.0)),
            covariance=str(state.get("covariance", "empirical")),
        )
        for name, value in zip(model._fitted_attributes,
                               (*arrays, float(state["w2_squared"]), d), strict=True):
            setattr(model, name, value)
        return model

    def to_dict(self) -> dict[str, Any]:
        """Deprecated name of :meth:`get_state` (removed in the next release)."""
        warn_user("GaussianTransportMap.to_dict is deprecated; use get_state (same output).",
                  FutureWarning)
        return self.get_state()

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Self:
        """Deprecated name of :meth:`from_state` (removed in the next release)."""
        warn_user("GaussianTransportMap.from_dict is deprecated; use from_state (same input).",
                  FutureWarning)
        return cls.from_state(state)
