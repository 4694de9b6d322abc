"""``TransportMap``: a neural optimal-transport map between two point clouds."""

from __future__ import annotations

import inspect
import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ._convex_base import ConvexPotential, potential_gradient
from ._factory import DEFAULT_HIDDEN, POTENTIALS, build_potential, check_model_name
from ._minimax import MinimaxSettings, StackedSamples, train_minimax, warm_start
from ._utils import as_float_array, check_hidden, check_positive, make_generator, resolve_device
from .gaussian import GaussianTransportMap
from .objectives import dual_w2_squared
from .schedules import check_tau_schedule

FORMAT = "hycnn_sc.TransportMap"
FORMAT_VERSION = 1
WARM_STARTS = ("gaussian", "identity", None)
#: Fewest held-out points per side for validation; smaller data train without validation.
MIN_VALIDATION_POINTS = 8
#: Most held-out points per side used for the validation energy distance.
MAX_VALIDATION_POINTS = 1000
#: Learning rate of the warm start (a stable regression, unlike the minimax).
WARM_START_LR = 1e-2
#: Ridge (relative to the mean feature variance) of the covariances of the Gaussian warm start
#: and of the Gaussian OT baseline in ``tl.evaluate``: defined with fewer cells than features.
GAUSSIAN_RIDGE = 1e-3
#: HyCNN gate temperature used when ``tau=None`` (standardised units). Measured on held-out
#: Kang 2018 cells (benchmarks/results_kang_*.txt): 0.3 beat the closed-form Gaussian map by
#: ~28 % in energy distance on 11k training cells, where the paper's OT setting 10 (nearly
#: affine gates at unit-variance pre-activations) did not beat it.
DEFAULT_TAU = 0.3
#: Initial strength of the isotropic quadratic term added to both potentials by default.
DEFAULT_QUADRATIC = 0.1
#: Rows per chunk in :meth:`TransportMap.transport` and friends.
INFERENCE_BATCH = 32768


class TransportMap:
    """Squared-distance optimal-transport map between two point clouds, learned with convex networks.

    Two convex potentials are trained with the minimax semi-dual of Makkuva et al. (2020):
    ``∇f`` maps source to target (Brenier's theorem) and ``∇g`` maps target back to source.
    Data are centred and scaled by one common scalar internally (which leaves the OT problem
    unchanged up to that similarity), so the defaults suit principal components, latent
    spaces or any features in comparable units.

    Parameters
    ----------
    model
        ``"hycnn"`` (:class:`~hycnn_sc.models.HyCNN`) or ``"icnn"`` (:class:`~hycnn_sc.models.ICNN`).
    hidden
        Layer widths; ``None`` means ``(48,) * 4`` for HyCNN and ``(64,) * 4`` for ICNN.
    tau
        HyCNN gate temperature; ``None`` means ``0.3`` for HyCNN (a smooth potential gives
        a continuous map; inputs are standardised, so pre-activations have unit scale and
        ``tau`` around 10, the paper's setting for its 50-D Gaussian benchmark, makes the gates
        nearly affine: good for that quadratic target, too stiff for cell data). Must stay
        ``None`` for ICNN.
    n_iters
        Outer iterations (updates of ``f``).
    inner_steps
        Updates of ``g`` per outer iteration.
    batch_size
        Points drawn (with replacement) from each side per step; may exceed the data size.
    lr, lr_final_fraction, lr_warmup_fraction, betas
        Adam learning rate (``3e-3``: on the 50-D benchmark ``1e-2`` passed through a
        transient blow-up before recovering), reached by a linear warm-up over the first ``lr_warmup_fraction``
        of iterations (the minimax is most fragile right after initialisation) and decayed by
        a half cosine to ``lr * lr_final_fraction``; Adam's betas (``(0.5, 0.9)`` as in
        Makkuva et al.).
    tau_schedule, tau_final, tau_cycles
        Optional gate-temperature schedule for HyCNN: ``"cosine"`` anneals ``tau`` to
        ``tau_final``; ``"cosine_restarts"`` does so ``tau_cycles`` times.
    warm_start
        Before the minimax, fit ``∇f`` (and ``∇g``) by gradient matching to the closed-form
        Gaussian OT map (``"gaussian"``, the default: training starts from the linear baseline
        and only has to learn what it misses), to the identity (``"identity"``), or not at all
        (``None``).
    warm_start_iters
        Gradient-matching steps of the warm start (Adam from ``1e-2``, cosine decay); not
        used by the exact start of ``full_quadratic`` potentials.
    validation_fraction
        Share of each side held out to pick the best iterate by the energy distance between
        ``∇f(x_val)`` and ``y_val`` (a side with too few points to hold out 8 is scored on its
        training points instead); ``0`` trains without validation and keeps the last iterate.
    validation_every
        Iterations between validations; ``None`` means ``max(n_iters // 20, 1)``.
    network_kwargs
        Extra keyword arguments of the network class (e.g. ``{"activation": "softplus"}``).
        ``isotropic_quadratic`` defaults to ``0.1`` here: each potential gets a learnable
        ``½ α ‖x‖²`` term that keeps the minimax objective bounded (see
        :class:`~hycnn_sc.models.ConvexPotential`). ``{"full_quadratic": True}`` uses a
        learnable ``½ ‖Lx‖²`` instead, and the ``"gaussian"`` warm start then sets it to the
        closed-form Gaussian map exactly (no gradient-matching steps): training starts at the
        Gaussian baseline. Measured on held-out Kang cells it tied the Gaussian map on small
        sets and matched the default on the full data.
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    seed
        Seed of initialisation, batch sampling and validation split; CPU runs with the same
        seed are bit-identical. ``None`` draws one and stores it in ``seed_``.
    progress
        Show progress bars.

    Attributes
    ----------
    f_, g_ : ConvexPotential
        Trained potentials (standardised coordinates).
    center_ : ndarray of shape (d,)
        Common centre used for standardisation.
    scale_ : float
        Common scale used for standardisation.
    history_ : dict of ndarray
        ``loss_f``, ``loss_g`` (per iteration), ``tau``, ``validation_iteration`` and
        ``validation_energy`` (standardised units).
    best_iteration_ : int
        Iteration whose weights were kept.
    converged_ : bool
        False when the validation energy was still falling by more than 5 % in the last
        quarter of training (a warning says so).
    w2_squared_ : float
        Semi-dual estimate of the squared 2-Wasserstein distance (original units), measured on
        the validation data (training data without validation).
    n_params_ : int
        Trainable parameters of one potential.
    seed_ : int
        The seed actually used.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> source = rng.normal(size=(500, 2))
    >>> target = 2.0 * rng.normal(size=(400, 2)) + 1.0
    >>> tmap = TransportMap(n_iters=50, hidden=(16, 16), warm_start_iters=20, seed=0)
    >>> tmap = tmap.fit(source, target)
    >>> tmap.transport(source[:3]).shape
    (3, 2)
    """

    def __init__(
        self,
        model: str = "hycnn",
        hidden: Sequence[int] | None = None,
        tau: float | None = None,
        n_iters: int = 1000,
        inner_steps: int = 5,
        batch_size: int = 256,
        lr: float = 3e-3,
        lr_final_fraction: float = 0.01,
        lr_warmup_fraction: float = 0.1,
        betas: tuple[float, float] = (0.5, 0.9),
        tau_schedule: str | None = None,
        tau_final: float = 0.0,
        tau_cycles: int = 1,
        warm_start: str | None = "gaussian",
        warm_start_iters: int = 200,
        validation_fraction: float = 0.1,
        validation_every: int | None = None,
        network_kwargs: dict[str, Any] | None = None,
        device: str = "auto",
        seed: int | None = None,
        progress: bool = False,
    ) -> None:
        self.model = model
        self.hidden = hidden
        self.tau = tau
        self.n_iters = n_iters
        self.inner_steps = inner_steps
        self.batch_size = batch_size
        self.lr = lr
        self.lr_final_fraction = lr_final_fraction
        self.lr_warmup_fraction = lr_warmup_fraction
        self.betas = betas
        self.tau_schedule = tau_schedule
        self.tau_final = tau_final
        self.tau_cycles = tau_cycles
        self.warm_start = warm_start
        self.warm_start_iters = warm_start_iters
        self.validation_fraction = validation_fraction
        self.validation_every = validation_every
        self.network_kwargs = network_kwargs
        self.device = device
        self.seed = seed
        self.progress = progress

    # ------------------------------------------------------------------ parameters
    @classmethod
    def _param_names(cls) -> list[str]:
        return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor arguments, as scikit-learn's ``get_params``."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> TransportMap:
        """Set constructor arguments, as scikit-learn's ``set_params``."""
        for name, value in params.items():
            if name not in self._param_names():
                raise ValueError(f"Unknown parameter {name!r}; valid: {self._param_names()}.")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {
            name: p.default for name, p in inspect.signature(type(self).__init__).parameters.items()
        }
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if v != defaults.get(k)]
        return f"{type(self).__name__}({', '.join(changed)})"

    def _resolved_hidden(self) -> tuple[int, ...]:
        return check_hidden(DEFAULT_HIDDEN[self.model] if self.hidden is None else self.hidden)

    def _resolved_tau(self) -> float | None:
        if self.model == "hycnn":
            return DEFAULT_TAU if self.tau is None else float(self.tau)
        return self.tau

    def _validate_params(self) -> None:
        check_model_name(self.model, tuple(POTENTIALS))
        self._resolved_hidden()
        if self.model == "hycnn":
            check_positive(self._resolved_tau(), "tau", allow_zero=True)
        elif self.tau is not None:
            raise ValueError(f"tau={self.tau!r} only applies to model='hycnn'; use tau=None.")
        for name in ("n_iters", "inner_steps", "batch_size"):
            check_positive(getattr(self, name), name, integer=True)
        check_positive(self.warm_start_iters, "warm_start_iters", integer=True, allow_zero=True)
        check_positive(self.lr, "lr")
        if not 0 < self.lr_final_fraction <= 1:
            raise ValueError(f"lr_final_fraction must lie in (0, 1], got {self.lr_final_fraction!r}.")
        if not 0 <= self.lr_warmup_fraction < 1:
            raise ValueError(f"lr_warmup_fraction must lie in [0, 1), got {self.lr_warmup_fraction!r}.")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}.")
        if self.model == "hycnn":
            check_tau_schedule(self.tau_schedule, self._resolved_tau(), self.tau_final, self.tau_cycles)
        elif self.tau_schedule is not None:
            raise ValueError("tau_schedule only applies to model='hycnn'.")
        if self.warm_start not in WARM_STARTS:
            raise ValueError(f"Unknown warm_start {self.warm_start!r}; choose one of {WARM_STARTS}.")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(
                f"validation_fraction must lie in [0, 1), got {self.validation_fraction!r}."
            )
        if self.validation_every is not None:
            check_positive(self.validation_every, "validation_every", integer=True)
        resolve_device(self.device)
        if self.network_kwargs is not None and not isinstance(self.network_kwargs, dict):
            raise TypeError(f"network_kwargs must be a dict or None, got {self.network_kwargs!r}.")

    # ------------------------------------------------------------------ fitting
    def fit(self, source, target) -> TransportMap:
        """Learn the map from ``source`` ``[n0, d]`` to ``target`` ``[n1, d]`` (``n0 != n1`` allowed).

        Returns
        -------
        self
        """
        fitted = type(self).fit_many([source], [target], **self.get_params())[0]
        self.__dict__.update({k: v for k, v in fitted.__dict__.items() if k.endswith("_")})
        return self

    @classmethod
    def fit_many(
        cls, sources: Sequence[Any], targets: Sequence[Any], **params: Any
    ) -> list[TransportMap]:
        """Fit one map per ``(sources[k], targets[k])`` pair as a single batched computation.

        All ``K`` potential pairs are stacked along a leading model axis and trained together
        (one matrix product per layer for all maps), which costs far less than ``K`` separate
        fits. Each map is trained exactly as a separate fit would train it (Adam's updates
        are per parameter; only the random batches differ). Passing the same array object as
        several sources (one control population) stores it once.

        Returns
        -------
        list of fitted :class:`TransportMap`, one per pair.

        Examples
        --------
        >>> rng = np.random.default_rng(0)
        >>> control = rng.normal(size=(300, 2))
        >>> maps = TransportMap.fit_many(
        ...     [control, control], [control + 1.0, 2.0 * control], n_iters=20, hidden=(8,),
        ...     warm_start_iters=20, seed=0,
        ... )
        >>> len(maps)
        2
        """
        template = cls(**params)
        template._validate_params()
        if len(sources) != len(targets) or len(sources) == 0:
            raise ValueError(
                f"sources and targets must be equally long, non-empty lists; got {len(sources)} "
                f"and {len(targets)}."
            )
        arrays = _check_pairs(sources, targets)
        return template._fit_stacked(arrays)

    def _fit_stacked(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[TransportMap]:
        device = resolve_device(self.device)
        generator, seed = make_generator(self.seed)
        rng = np.random.default_rng(seed)
        in_features = pairs[0][0].shape[1]
        centers, scales, train, held_out = [], [], [], []
        standardised: dict[int, np.ndarray] = {}
        for source, target in pairs:
            center, scale = _common_standardisation(source, target)
            centers.append(center)
            scales.append(scale)
            sides = []
            for array in (source, target):
                # One split per distinct array keeps a shared control population shared.
                key = (id(array), center.tobytes(), scale)
                if key not in standardised:
                    standardised[key] = _split((array - center) / scale, self.validation_fraction, rng)
                sides.append(standardised[key])
            train.append((sides[0][0], sides[1][0]))
            held_out.append((sides[0][1], sides[1][1]))
        n_models = len(pairs)
        hidden, tau = self._resolved_hidden(), self._resolved_tau()
        potentials = []
        for _ in range(2):
            potential = build_potential(
                self.model, in_features, hidden, tau=tau, n_models=n_models,
                network_kwargs=_network_kwargs(self),
            )
            potential.reset_parameters(generator)
            potentials.append(potential.to(device))
        f, g = potentials
        source_samples = StackedSamples([pair[0] for pair in train], device)
        target_samples = StackedSamples([pair[1] for pair in train], device)
        self._warm_start(f, g, source_samples, target_samples, generator)

        # Each map selects its best iterate on its held-out points; a map whose held-out share
        # is too small (a small stratum) falls back to its training points rather than
        # switching selection off for every stacked map.
        use_validation = self.validation_fraction > 0
        validation = None
        if use_validation:
            chosen = [
                (src_held, tgt_held)
                if min(len(src_held), len(tgt_held)) >= MIN_VALIDATION_POINTS
                else (src_train, tgt_train)
                for (src_train, tgt_train), (src_held, tgt_held) in zip(train, held_out, strict=True)
            ]
            validation = (
                StackedSamples([src[:MAX_VALIDATION_POINTS] for src, _ in chosen], device),
                [torch.as_tensor(tgt[:MAX_VALIDATION_POINTS], device=device) for _, tgt in chosen],
            )
        settings = MinimaxSettings(
            n_iters=self.n_iters, inner_steps=self.inner_steps, batch_size=self.batch_size,
            lr=self.lr, lr_final_fraction=self.lr_final_fraction,
            lr_warmup_fraction=self.lr_warmup_fraction, betas=tuple(self.betas),
            validation_every=self.validation_every or max(self.n_iters // 20, 1),
            tau=tau if self.model == "hycnn" else None, tau_schedule=self.tau_schedule,
            tau_final=self.tau_final, tau_cycles=self.tau_cycles, progress=self.progress,
        )
        result = train_minimax(f, g, source_samples, target_samples, settings, generator, validation)
        if use_validation and not result.converged.all():
            warnings.warn(
                f"{int((~result.converged).sum())} of {n_models} transport map(s) had a validation "
                "energy distance still falling by more than 5% in the last quarter of training; "
                "consider increasing n_iters.",
                RuntimeWarning,
                stacklevel=3,
            )
        evaluation = chosen if use_validation else train
        w2 = dual_w2_squared(
            f, g,
            StackedSamples([src for src, _ in evaluation], device).padded(),
            StackedSamples([tgt for _, tgt in evaluation], device).padded(),
        ).cpu().numpy()

        maps = []
        for k in range(n_models):
            fitted = type(self)(**self.get_params())
            fitted.f_ = _select_model(f, k, self, in_features, hidden)
            fitted.g_ = _select_model(g, k, self, in_features, hidden)
            fitted.center_ = centers[k]
            fitted.scale_ = scales[k]
            fitted.in_features_ = in_features
            fitted.seed_ = seed
            fitted.n_params_ = f.n_params
            fitted.best_iteration_ = int(result.best_iteration[k])
            fitted.converged_ = bool(result.converged[k])
            fitted.interrupted_ = bool(result.interrupted)
            fitted.nonfinite_recoveries_ = int(result.nonfinite_recoveries)
            fitted.w2_squared_ = float(w2[k]) * scales[k] ** 2
            fitted.history_ = {
                name: values[:, k] if values.ndim == 2 else values
                for name, values in result.history.items()
            }
            fitted.device_ = str(device)
            maps.append(fitted)
        return maps

    def _warm_start(self, f, g, source: StackedSamples, target: StackedSamples, generator) -> None:
        # full_quadratic potentials start exactly at the Gaussian map: no gradient matching,
        # so warm_start_iters does not apply to them.
        exact = self.warm_start == "gaussian" and f.full_quadratic and g.full_quadratic
        if self.warm_start is None or (self.warm_start_iters == 0 and not exact):
            return
        device = source.values.device
        if self.warm_start == "identity":
            forward = backward = lambda points: points
        else:
            # A ridge keeps the warm start defined with fewer cells than features or
            # constant features (gene space, small strata).
            gaussians = [GaussianTransportMap(regularization=GAUSSIAN_RIDGE).fit(src, tgt)
                         for src, tgt in zip(source.arrays, target.arrays, strict=True)]
            m0, m1, a, a_inv = (
                np.stack([getattr(gaussian, name) for gaussian in gaussians])
                for name in ("mean_source_", "mean_target_", "matrix_", "inverse_matrix_")
            )
            if exact:
                # ∇f(x) = A x + (m1 - A m0) is the Gaussian map itself (A symmetric); float64.
                f.set_quadratic_part(torch.as_tensor(a),
                                     torch.as_tensor(m1 - np.einsum("kd,kde->ke", m0, a)))
                g.set_quadratic_part(torch.as_tensor(a_inv),
                                     torch.as_tensor(m0 - np.einsum("kd,kde->ke", m1, a_inv)))
                return
            m0, m1, a, a_inv = (torch.as_tensor(values, dtype=torch.float32, device=device)
                                for values in (m0, m1, a, a_inv))
            m0, m1 = m0.unsqueeze(1), m1.unsqueeze(1)

            def forward(points):
                return m1 + (points - m0) @ a

            def backward(points):
                return m0 + (points - m1) @ a_inv

        options = dict(n_steps=self.warm_start_iters, batch_size=self.batch_size,
                       lr=WARM_START_LR, generator=generator)
        warm_start(f, source, forward, **options)
        warm_start(g, target, backward, **options)

    # ------------------------------------------------------------------ inference
    def _check_fitted(self) -> None:
        if not hasattr(self, "f_"):
            raise RuntimeError(
                f"This {type(self).__name__} is not fitted yet: call fit(source, target) first "
                "(or TransportMap.load(path))."
            )

    def _apply(self, which: str, data, name: str, batch_size: int | None,
               progress: bool | None, gradient: bool) -> np.ndarray:
        self._check_fitted()
        potential: ConvexPotential = getattr(self, which)
        array = as_float_array(data, name, n_features=self.in_features_)
        device = next(potential.parameters()).device
        center = torch.as_tensor(self.center_, dtype=torch.float32, device=device)
        step = INFERENCE_BATCH if batch_size is None else batch_size
        check_positive(step, "batch_size", integer=True)
        chunks = range(0, len(array), step)
        show = self.progress if progress is None else progress
        out = np.empty(array.shape if gradient else (len(array),), dtype=np.float32)
        for start in tqdm(chunks, disable=not show or len(chunks) < 2, desc=name, leave=False):
            batch = torch.as_tensor(array[start : start + step], device=device)
            standard = (batch - center) / self.scale_
            if gradient:
                values = center + self.scale_ * potential_gradient(potential, standard)
            else:
                with torch.no_grad():
                    values = batch @ center + self.scale_**2 * potential(standard)
            out[start : start + step] = values.detach().cpu().numpy()
        return out

    def transport(self, x, *, batch_size: int | None = None, progress: bool | None = None) -> np.ndarray:
        """Map source points to the target distribution: ``∇f(x)``.

        Works in chunks of ``batch_size`` rows (default 32768), so memory stays bounded for
        any number of points.
        """
        return self._apply("f_", x, "x", batch_size, progress, gradient=True)

    def inverse(self, y, *, batch_size: int | None = None, progress: bool | None = None) -> np.ndarray:
        """Map target points back to the source distribution: ``∇g(y)``."""
        return self._apply("g_", y, "y", batch_size, progress, gradient=True)

    def potential(self, x, *, batch_size: int | None = None) -> np.ndarray:
        """Convex potential ``F`` with ``∇F = transport``, in original coordinates."""
        return self._apply("f_", x, "x", batch_size, False, gradient=False)

    def w2_squared(self, source, target) -> float:
        """Semi-dual estimate of ``W2²(source, target)`` from the trained potentials."""
        self._check_fitted()
        device = next(self.f_.parameters()).device
        tensors = [
            (torch.as_tensor(as_float_array(a, n, n_features=self.in_features_), device=device)
             - torch.as_tensor(self.center_, device=device)) / self.scale_
            for a, n in ((source, "source"), (target, "target"))
        ]
        return float(dual_w2_squared(self.f_, self.g_, *tensors)) * self.scale_**2

    # ------------------------------------------------------------------ persistence
    def get_state(self) -> dict[str, Any]:
        """Everything needed to rebuild the fitted map: JSON-able metadata and numpy arrays.

        ``{"format", "format_version", "params", "fitted", "arrays"}``; ``arrays`` maps
        ``"f/<name>"``, ``"g/<name>"``, ``"center"`` and ``"history/<name>"`` to ndarrays.
        Used by :meth:`save` and by :func:`hycnn_sc.tl.fit_transport` (AnnData storage).
        """
        self._check_fitted()
        arrays = {"center": np.asarray(self.center_, dtype=np.float32)}
        for prefix, potential in (("f", self.f_), ("g", self.g_)):
            for name, value in potential.state_dict().items():
                arrays[f"{prefix}/{name}"] = value.detach().cpu().numpy()
        for name, value in self.history_.items():
            arrays[f"history/{name}"] = np.asarray(value)
        params = self.get_params()
        params["hidden"] = list(self._resolved_hidden())
        params["betas"] = list(params["betas"])
        fitted = {
            name: getattr(self, name)
            for name in ("in_features_", "scale_", "seed_", "n_params_", "best_iteration_",
                         "converged_", "interrupted_", "nonfinite_recoveries_", "w2_squared_")
        }
        fitted["tau_"] = getattr(self.f_, "tau", None)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "params": params,
                "fitted": fitted, "arrays": arrays}

    @classmethod
    def from_state(cls, state: dict[str, Any], *, device: str = "auto") -> TransportMap:
        """Rebuild a fitted map from :meth:`get_state` output (no retraining, no pickles)."""
        try:
            if state["format"] != FORMAT:
                raise ValueError(f"not a {FORMAT} state (format={state['format']!r})")
            if int(state["format_version"]) > FORMAT_VERSION:
                raise ValueError(
                    f"written by a newer hycnn_sc (format_version {state['format_version']} > "
                    f"{FORMAT_VERSION}); upgrade hycnn_sc"
                )
            params, fitted, arrays = dict(state["params"]), dict(state["fitted"]), state["arrays"]
            params["hidden"] = tuple(int(w) for w in params["hidden"])
            params["betas"] = tuple(float(b) for b in params["betas"])
            params["device"] = device
            tmap = cls(**params)
            tmap._validate_params()
            in_features = int(fitted["in_features_"])
            for prefix in ("f", "g"):
                potential = build_potential(
                    tmap.model, in_features, params["hidden"], tau=tmap._resolved_tau(),
                    network_kwargs=_network_kwargs(tmap),
                )
                if fitted.get("tau_") is not None:
                    potential.tau = float(fitted["tau_"])
                weights = {
                    name[len(prefix) + 1 :]: torch.as_tensor(np.asarray(value))
                    for name, value in arrays.items() if name.startswith(prefix + "/")
                }
                potential.load_state_dict(weights, strict=True)
                setattr(tmap, f"{prefix}_", potential.to(resolve_device(device)))
            tmap.center_ = np.asarray(arrays["center"], dtype=np.float32)
            tmap.history_ = {
                name[len("history/") :]: np.asarray(value)
                for name, value in arrays.items() if name.startswith("history/")
            }
            tmap.in_features_ = in_features
            tmap.scale_ = float(fitted["scale_"])
            tmap.seed_ = int(fitted["seed_"])
            tmap.n_params_ = int(fitted["n_params_"])
            tmap.best_iteration_ = int(fitted["best_iteration_"])
            tmap.converged_ = bool(fitted["converged_"])
            tmap.interrupted_ = bool(fitted["interrupted_"])
            tmap.nonfinite_recoveries_ = int(fitted["nonfinite_recoveries_"])
            tmap.w2_squared_ = float(fitted["w2_squared_"])
        except (KeyError, TypeError, RuntimeError, ValueError, AttributeError) as error:
            raise ValueError(
                f"Cannot rebuild a TransportMap from this state: {error}. It is truncated, "
                "tampered with or was not written by hycnn_sc; refit the map."
            ) from None
        tmap.device_ = str(resolve_device(device))
        return tmap

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Save to directory ``path``: ``params.json`` (metadata) and ``weights.pt`` (tensors).

        ``weights.pt`` holds only tensors, so :meth:`load` reads it with
        ``torch.load(weights_only=True)``: no pickled code is ever executed.
        """
        state = self.get_state()
        directory = Path(path)
        if directory.exists() and not overwrite:
            raise FileExistsError(f"{directory} exists; pass overwrite=True to replace it.")
        if directory.exists() and not directory.is_dir():
            raise FileExistsError(f"{directory} is a file; save() writes a directory.")
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {name: torch.as_tensor(value) for name, value in state.pop("arrays").items()}
        torch.save(tensors, directory / "weights.pt")
        (directory / "params.json").write_text(json.dumps(state, indent=2, default=_json_default))

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str = "auto") -> TransportMap:
        """Load a map written by :meth:`save`."""
        directory = Path(path)
        params_file, weights_file = directory / "params.json", directory / "weights.pt"
        if not params_file.is_file() or not weights_file.is_file():
            raise FileNotFoundError(
                f"{directory} does not hold a saved TransportMap (expected params.json and "
                "weights.pt written by TransportMap.save)."
            )
        try:
            state = json.loads(params_file.read_text())
            # weights_only=True: tensors and plain containers only, never arbitrary pickled code.
            tensors = torch.load(weights_file, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for junk: report them all alike
            raise ValueError(
                f"{directory} is not a readable TransportMap save ({type(error).__name__}: "
                f"{error}); it is truncated or was not written by TransportMap.save."
            ) from None
        if (not isinstance(state, dict) or not isinstance(tensors, dict)
                or not all(isinstance(v, torch.Tensor) for v in tensors.values())):
            raise ValueError(f"{directory} is not a TransportMap save (unexpected content).")
        state["arrays"] = {name: value.numpy() for name, value in tensors.items()}
        return cls.from_state(state, device=device)


# ---------------------------------------------------------------------- helpers
def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _check_pairs(sources, targets) -> list[tuple[np.ndarray, np.ndarray]]:
    converted: dict[int, np.ndarray] = {}

    def convert(array, name):
        if id(array) not in converted:  # keep one object per distinct input (shared controls)
            converted[id(array)] = as_float_array(array, name)
        return converted[id(array)]

    pairs = []
    for k, (source, target) in enumerate(zip(sources, targets, strict=True)):
        label = "" if len(sources) == 1 else f"[{k}]"
        src, tgt = convert(source, f"source{label}"), convert(target, f"target{label}")
        if src.shape[1] != tgt.shape[1]:
            raise ValueError(
                f"source{label} has {src.shape[1]} features but target{label} has {tgt.shape[1]}; "
                "both must live in the same representation."
            )
        for array, name in ((src, "source"), (tgt, "target")):
            if len(array) < 2:
                raise ValueError(f"{name}{label} needs at least 2 points, got {len(array)}.")
        if pairs and src.shape[1] != pairs[0][0].shape[1]:
            raise ValueError("All pairs passed to fit_many must have the same number of features.")
        pairs.append((src, tgt))
    return pairs


def _common_standardisation(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float]:
    """A shared centre and one scalar scale (keeps the squared-distance OT problem equivalent)."""
    pooled = np.concatenate([source, target])
    center = pooled.mean(axis=0, dtype=np.float64).astype(np.float32)
    variance = float(pooled.var(axis=0, dtype=np.float64).mean())
    if not math.isfinite(variance) or variance <= 1e-12:
        raise ValueError(
            "source and target have (near) zero variance in every feature: there is nothing to "
            "transport. Check the representation (e.g. use_rep) is not constant."
        )
    return center, math.sqrt(variance)


def _split(array: np.ndarray, fraction: float, rng: np.random.Generator):
    n_held = round(fraction * len(array))
    if n_held < MIN_VALIDATION_POINTS or len(array) - n_held < 2:
        return array.astype(np.float32), array[:0].astype(np.float32)
    order = rng.permutation(len(array))
    return (array[order[n_held:]].astype(np.float32), array[order[:n_held]].astype(np.float32))


def _network_kwargs(tmap: TransportMap) -> dict[str, Any]:
    return {"isotropic_quadratic": DEFAULT_QUADRATIC, **(tmap.network_kwargs or {})}


def _select_model(stacked: ConvexPotential, k: int, tmap: TransportMap, in_features: int,
                  hidden: tuple[int, ...]) -> ConvexPotential:
    single = build_potential(tmap.model, in_features, hidden, tau=getattr(stacked, "tau", None),
                             network_kwargs=_network_kwargs(tmap))
    single.load_state_dict({name: value[k : k + 1].clone()
                            for name, value in stacked.state_dict().items()})
    return single.to(next(stacked.parameters()).device)
