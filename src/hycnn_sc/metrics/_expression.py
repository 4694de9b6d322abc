"""Agreement between predicted and observed mean expression profiles."""

import numpy as np
import torch

from ._distances import _finish, _prepare


def r2_mean(
    pred: np.ndarray | torch.Tensor, obs: np.ndarray | torch.Tensor
) -> float | torch.Tensor:
    r"""Squared Pearson correlation between the per-feature means of ``pred`` and ``obs``.

    This is the "r² of means" used to score perturbation predictions (scGen, CellOT): average
    every feature (gene) over the cells of each population, giving two vectors of length
    ``d``, and return the squared Pearson correlation between them,

    .. math::

        r^2 = \frac{\langle \bar p - \langle\bar p\rangle,\ \bar o - \langle\bar o\rangle\rangle^2}
                   {\lVert \bar p - \langle\bar p\rangle\rVert^2\,\lVert \bar o - \langle\bar o\rangle\rVert^2}.

    It is 1 for ``pred == obs`` and is insensitive to an affine rescaling of either mean
    profile, so it rewards getting the *pattern* of mean expression right, not its scale.

    Parameters
    ----------
    pred, obs
        Predicted and observed cells, shapes ``[n, d]`` and ``[m, d]`` with ``d >= 2``
        features (``n`` and ``m`` may differ), numpy arrays or torch tensors.

    Returns
    -------
    float or torch.Tensor
        A Python float for numpy input (computed in float64), otherwise a 0-d tensor on the
        input device. When one of the two mean vectors is constant (all features have the same
        mean) the correlation is undefined and ``nan`` is returned without raising.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> obs = rng.poisson(rng.uniform(0.1, 5.0, size=50), size=(200, 50)).astype(float)
    >>> r2_mean(obs, obs)
    1.0
    >>> 0.0 <= r2_mean(obs[:100], obs[100:]) <= 1.0
    True
    """
    (pred, obs), as_float = _prepare([("pred", pred), ("obs", obs)], min_rows=1)
    if pred.shape[1] < 2:
        raise ValueError(
            f"r2_mean needs at least 2 features to correlate mean profiles, got {pred.shape[1]}; "
            "pass cells x genes (or x embedding dimensions) arrays."
        )
    mean_pred = pred.mean(dim=0)
    mean_obs = obs.mean(dim=0)
    if bool((mean_pred == mean_pred[0]).all()) or bool((mean_obs == mean_obs[0]).all()):
        return _finish(mean_pred.new_full((), float("nan")), as_float)
    a = mean_pred - mean_pred.mean()
    b = mean_obs - mean_obs.mean()
    r2 = (a @ b) ** 2 / ((a @ a) * (b @ b))
    return _finish(r2.clamp(0.0, 1.0), as_float)


def signature_l2(
    pred: np.ndarray | torch.Tensor,
    obs: np.ndarray | torch.Tensor,
    control: np.ndarray | torch.Tensor,
) -> float | torch.Tensor:
    r"""Euclidean error of the predicted perturbation signature.

    The perturbation signature of a population is its mean shift from the control population,
    and the error is

    .. math::

        \lVert (\bar p - \bar c) - (\bar o - \bar c) \rVert_2,

    with :math:`\bar p, \bar o, \bar c` the per-feature means of ``pred``, ``obs`` and
    ``control``. Algebraically the control mean cancels, so the value equals
    :math:`\lVert \bar p - \bar o\rVert_2`; ``control`` is still checked to live in the same
    feature space. It is 0 when the predicted mean response is exact and is expressed in the
    units of the features.

    Parameters
    ----------
    pred, obs, control
        Predicted perturbed cells, observed perturbed cells and control cells, each
        ``[n_i, d]`` with the same ``d``, numpy arrays or torch tensors.

    Returns
    -------
    float or torch.Tensor
        A Python float for numpy input (computed in float64), otherwise a 0-d tensor on the
        input device.

    Examples
    --------
    >>> import numpy as np
    >>> control = np.zeros((4, 2))
    >>> obs = np.array([[1.0, 2.0], [1.0, 2.0]])
    >>> pred = np.array([[4.0, 6.0]])
    >>> signature_l2(pred, obs, control)
    5.0
    """
    (pred, obs, control), as_float = _prepare(
        [("pred", pred), ("obs", obs), ("control", control)], min_rows=1
    )
    mean_control = control.mean(dim=0)
    delta_pred = pred.mean(dim=0) - mean_control
    delta_obs = obs.mean(dim=0) - mean_control
    return _finish(torch.linalg.vector_norm(delta_pred - delta_obs), as_float)
