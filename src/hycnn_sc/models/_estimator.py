"""What the minimax-trained estimators share: parameters and their checks, persistence.

:class:`~hycnn_sc.models.TransportMap` and :class:`~hycnn_sc.models.ConditionalTransportMap`
are scikit-learn estimators (``get_params``, ``set_params``, ``clone``, ``NotFittedError``)
taking the same optimisation arguments; this base validates them in one place (each
estimator adds its own checks through :meth:`MinimaxEstimator._validate_own`) and saves and
loads both through :meth:`~MinimaxEstimator.get_state` and
:meth:`~MinimaxEstimator.from_state`.

Both ``__init__`` signatures list every argument explicitly, shared ones included: scikit-learn
reads the parameters from the signature, and an explicit signature is what users and their
editors see.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from .._validation import check_positive, json_default
from .._warnings import warn_user
from ._factory import DEFAULT_HIDDEN, POTENTIALS, check_model_name
from ._minimax import MinimaxResult, MinimaxSettings, train_in_cycles, train_minimax
from ._utils import check_hidden, resolve_device
from .gaussian import check_shrinkage
from .schedules import check_tau_schedule

#: HyCNN gate temperature used when ``tau=None`` (standardised units). Measured on held-out
#: Kang 2018 cells (benchmarks/results_kang_*.txt): 0.3 beat the closed-form Gaussian map by
#: ~28 % in energy distance on 11k training cells, where the paper's OT setting 10 (nearly
#: affine gates at unit-variance pre-activations) did not beat it.
DEFAULT_TAU = 0.3
#: ``n_iters="auto"``: length of the first cosine cycle (each later one doubles), and the cap:
#: ``AUTO_EPOCHS`` passes over the training data (every condition's larger side, in batches),
#: clipped to ``[AUTO_MIN_ITERS, AUTO_MAX_ITERS]``. The held-out rule stops well before the cap
#: on data that cannot support more. 1,200 epochs let 10,000 points a side (9,000 training
#: points, batch 256) run the sixth cycle, to 31,500 iterations: on the Wasserstein-2
#: benchmark its held-out semi-dual still improved there, and L2-UVP fell from 3.34 % and
#: 2.99 % (D = 16, seeds 0 and 1, 15,500 iterations, the cap of 500 epochs) to 2.65 % and
#: 2.42 %, and from 11.03 % to 10.19 % at D = 64, in at most 6.5 minutes a fit (1 thread,
#: two fits sharing 2 cores). A larger cap does not pay there: a seventh cycle (to 63,500
#: iterations) was rejected by the held-out rule at D = 16 and D = 64 (seed 0), and one
#: 63,500-iteration schedule reached 2.76 % at D = 16. The error left at 10,000 points is
#: shared by every seed and shrinks with more points (benchmarks/w2_limits.py).
AUTO_FIRST_CYCLE = 500
AUTO_EPOCHS = 1200
AUTO_MIN_ITERS = 1500
AUTO_MAX_ITERS = 31500
#: ``n_iters="auto"`` without held-out data (``selection_fraction=0``): a fixed budget.
AUTO_ITERS_WITHOUT_VALIDATION = 1000
#: Meaning of the two blend arguments, for their error messages.
_BLEND_MEANINGS = {"shrinkage": "0: Gaussian OT map, 1: mean shift",
                   "residual": "0: the linear map, 1: the network alone"}
#: Default of a renamed keyword: "not passed" (the new keyword applies).
DEPRECATED = "deprecated"
#: Keywords renamed in hycnn_sc 0.3 (old name: new name), accepted with a FutureWarning for
#: one release and never written to a saved state.
RENAMED_PARAMS = {"validation_fraction": "selection_fraction", "validation_every": "selection_every"}
#: Training-history keys renamed with them (old states are read with the new names).
RENAMED_HISTORY = {"validation_iteration": "selection_iteration",
                   "validation_energy": "selection_energy"}


class MinimaxEstimator(BaseEstimator):
    """Base of the estimators trained with the minimax semi-dual.

    Parameters and their checks, the not-fitted guard, and persistence: :meth:`get_state` and
    :meth:`from_state` (JSON-able metadata plus numpy arrays), :meth:`save` and :meth:`load`
    (a directory). A subclass names its fitted state once: ``_fitted_scalars`` (stored in the
    JSON part, with the type each is read back as) and ``_fitted_attributes`` (all of them,
    checked by :meth:`_check_fitted`), and implements ``_state_arrays`` and ``_restore``.
    """

    #: Integer arguments that must be positive.
    _positive_ints: tuple[str, ...] = ("n_iters", "inner_steps", "batch_size")
    #: Whether ``n_iters="auto"`` (a held-out-driven budget) is supported.
    _auto_budget: bool = False
    #: Fitted scalars kept in a state's ``"fitted"`` record, with the type read back.
    _fitted_scalars: ClassVar[dict[str, Callable[[Any], Any]]] = {}
    #: Every fitted attribute (the scalars, then networks and arrays).
    _fitted_attributes: tuple[str, ...] = ()
    #: Parameters held as tuples (lists in a state's JSON), with the type of their entries.
    _tuple_params: ClassVar[dict[str, type]] = {"hidden": int, "betas": float}
    #: ``"format"`` and ``"format_version"`` of the states this class writes.
    _format: str = ""
    _format_version: int = 1

    def _resolved_hidden(self) -> tuple[int, ...]:
        return check_hidden(DEFAULT_HIDDEN[self.model] if self.hidden is None else self.hidden)

    def _resolved_tau(self) -> float | None:
        if self.model == "hycnn":
            return DEFAULT_TAU if self.tau is None else float(self.tau)
        return self.tau

    def _minimax_settings(self, n_iters: int, train_network: bool) -> MinimaxSettings:
        """Settings of one minimax schedule of ``n_iters`` iterations (0 without a network)."""
        tau = self._resolved_tau()
        return MinimaxSettings(
            n_iters=n_iters if train_network else 0, inner_steps=self.inner_steps,
            batch_size=self.batch_size, lr=self.lr, lr_final_fraction=self.lr_final_fraction,
            lr_warmup_fraction=self.lr_warmup_fraction, betas=tuple(self.betas),
            selection_every=self._selection_every,
            tau=tau if self.model == "hycnn" else None, tau_schedule=self.tau_schedule,
            tau_final=self.tau_final, tau_cycles=self.tau_cycles, progress=self.progress,
            torch_compile=self._compile_setting(),
        )

    def _compile_setting(self) -> bool | str:
        """``MinimaxSettings.torch_compile`` (never for a shared, conditional network)."""
        return False

    def _schedule(self, points_per_epoch: int, points_per_iteration: int,
                  use_validation: bool) -> tuple[int, int | None]:
        """``(iterations of one schedule, cap of the cycles or None)`` from ``n_iters``.

        An epoch draws ``points_per_epoch`` points, an iteration ``points_per_iteration`` (per
        side); ``n_iters="auto"`` caps the cycles at ``AUTO_EPOCHS`` epochs.
        """
        if self.n_iters != "auto":
            return self.n_iters, None
        if not use_validation:
            return AUTO_ITERS_WITHOUT_VALIDATION, None
        cap = int(np.clip(math.ceil(AUTO_EPOCHS * points_per_epoch / points_per_iteration),
                          AUTO_MIN_ITERS, AUTO_MAX_ITERS))
        return AUTO_FIRST_CYCLE, cap

    def _run_minimax(self, f, g, source, target, generator: torch.Generator, validation, *,
                     points_per_epoch: int, points_per_iteration: int, train_network: bool,
                     subject: Callable[[MinimaxResult], str],
                     before_step: Callable[[int | None], None] | None = None,
                     ) -> MinimaxResult:
        """The minimax of both estimators: held-out-driven cycles for ``n_iters="auto"`` (see
        :func:`~hycnn_sc.models._minimax.train_in_cycles`; the cap in epochs as in
        :meth:`_schedule`), else one schedule; warns when the held-out criterion was still
        improving (``subject(result)`` names what had not converged)."""
        use_validation = validation is not None
        n_iters, cap = self._schedule(points_per_epoch, points_per_iteration, use_validation)
        settings = self._minimax_settings(n_iters, train_network)
        if cap is not None and train_network:
            result = train_in_cycles(f, g, source, target, settings, generator, validation,
                                     first_cycle=n_iters, max_iters=cap, before_step=before_step)
        else:
            result = train_minimax(f, g, source, target, settings, generator, validation, before_step)
        if train_network and use_validation and not result.converged.all():
            if result.interrupted or result.stopped_early:
                reason = (f"training was cut short after {result.iterations_run} iterations "
                          "(see the warning above); fit again to train it fully")
            else:
                advice = (f"the cap of {cap} iterations stopped it; pass a larger integer n_iters"
                          if result.capped else "use n_iters='auto' or a larger n_iters")
                reason = (f"the held-out {result.criterion} was still improving beyond its "
                          f"noise after {result.iterations_run} iterations, so more training "
                          f"would likely still help; {advice}")
            warn_user(
                f"{subject(result)} had not converged: {reason}.",
                RuntimeWarning,
            )
        return result

    def _validate_params(self) -> None:
        """Check every argument (raises before any data is read or trained on)."""
        check_model_name(self.model, tuple(POTENTIALS))
        self._resolved_hidden()
        if self.model == "hycnn":
            check_positive(self._resolved_tau(), "tau", allow_zero=True)
            check_tau_schedule(self.tau_schedule, self._resolved_tau(), self.tau_final, self.tau_cycles)
        elif self.tau is not None:
            raise ValueError(f"tau={self.tau!r} only applies to model='hycnn'; use tau=None.")
        elif self.tau_schedule is not None:
            raise ValueError("tau_schedule only applies to model='hycnn'.")
        for name in self._positive_ints:
            value = getattr(self, name)
            if name == "n_iters" and self._auto_budget and isinstance(value, str):
                if value != "auto":
                    raise ValueError(f"n_iters must be 'auto' or a positive integer, got {value!r}.")
                if self.tau_schedule is not None:
                    raise ValueError(
                        "tau_schedule anneals over a fixed number of iterations; pass an integer "
                        "n_iters with it (e.g. n_iters=2000), not n_iters='auto'."
                    )
                continue
            check_positive(value, name, integer=True)
        check_positive(self.warm_start_iters, "warm_start_iters", integer=True, allow_zero=True)
        check_positive(self.lr, "lr")
        if not 0 < self.lr_final_fraction <= 1:
            raise ValueError(f"lr_final_fraction must lie in (0, 1], got {self.lr_final_fraction!r}.")
        if not 0 <= self.lr_warmup_fraction < 1:
            raise ValueError(f"lr_warmup_fraction must lie in [0, 1), got {self.lr_warmup_fraction!r}.")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}.")
        for name, meaning in _BLEND_MEANINGS.items():
            value = getattr(self, name)
            if isinstance(value, str) and value != "auto":
                raise ValueError(f"{name} must be 'auto' or a number in [0, 1] ({meaning}), got {value!r}.")
            if not isinstance(value, str):
                check_shrinkage(value, name, meaning)
        params = self._resolved_params(warn=True)
        self._selection_fraction = params["selection_fraction"]
        self._selection_every = params["selection_every"]
        if not 0 <= self._selection_fraction < 1:
            raise ValueError(
                f"selection_fraction must lie in [0, 1), got {self._selection_fraction!r}."
            )
        if self._selection_every is not None:
            check_positive(self._selection_every, "selection_every", integer=True)
        if self.network_kwargs is not None and not isinstance(self.network_kwargs, dict):
            raise TypeError(f"network_kwargs must be a dict or None, got {self.network_kwargs!r}.")
        self._validate_own()
        resolve_device(self.device)

    def _validate_own(self) -> None:
        """Checks of the arguments only this estimator has."""

    def _resolved_params(self, *, warn: bool = False) -> dict[str, Any]:
        """``get_params()`` with renamed keywords under their new names (the old ones dropped).

        A renamed keyword passed explicitly overrides the new one (with a FutureWarning when
        ``warn``).
        """
        params = self.get_params()
        for old, new in RENAMED_PARAMS.items():
            value = params.pop(old, DEPRECATED)
            if isinstance(value, str) and value == DEPRECATED:
                continue
            if warn:
                warn_user(
                    f"{type(self).__name__}({old}=...) is deprecated and will be removed in the "
                    f"next release; use {new}= (same meaning).",
                    FutureWarning,
                )
            params[new] = value
        return params

    # ------------------------------------------------------------------ fitted state
    def _check_fitted(self) -> None:
        """Raise :class:`sklearn.exceptions.NotFittedError` unless every fitted attribute is set."""
        check_is_fitted(
            self, self._fitted_attributes,
            msg="This %(name)s is not fitted yet: call fit(...) first (or %(name)s.load(path)).",
        )

    def _set_fitted(self, fitted: dict[str, Any]) -> None:
        """Set every fitted attribute from ``fitted`` (a mapping of all of them)."""
        for name in self._fitted_attributes:
            setattr(self, name, fitted[name])

    # ------------------------------------------------------------------ persistence
    def get_state(self) -> dict[str, Any]:
        """Everything needed to rebuild the fitted estimator: JSON-able metadata and arrays.

        ``{"format", "format_version", "params", "fitted", "arrays"}``: ``params`` are the
        constructor arguments, ``fitted`` the fitted scalars and labels, ``arrays`` maps names
        (``"f/<weight>"``, ``"history/<name>"``, ...) to numpy arrays. Used by :meth:`save`
        and by :func:`hycnn_sc.tl.fit_transport` (AnnData storage).
        """
        self._check_fitted()
        params = self._resolved_params()
        params["hidden"] = list(self._resolved_hidden())
        for name in self._tuple_params:
            params[name] = list(params[name])
        fitted = {name: kind(getattr(self, name)) for name, kind in self._fitted_scalars.items()}
        arrays = {f"history/{name}": np.asarray(value) for name, value in self.history_.items()}
        arrays.update(self._state_arrays(fitted))
        return {"format": self._format, "format_version": self._format_version,
                "params": params, "fitted": fitted, "arrays": arrays}

    @classmethod
    def from_state(cls, state: dict[str, Any], *, device: str = "auto"):
        """Rebuild a fitted estimator from :meth:`get_state` output (no retraining, no pickles).

        States written before hycnn_sc 0.3 (``validation_*`` parameters and history) load
        with the new names.
        """
        try:
            version = cls._check_format(state)
            params, arrays = renamed_state(dict(state["params"]), state["arrays"])
            for name, kind in cls._tuple_params.items():
                params[name] = tuple(kind(v) for v in params[name])
            estimator = cls(**{**params, "device": device})
            estimator._validate_params()
            fitted = estimator._upgrade(dict(state["fitted"]), version)
            for name, kind in cls._fitted_scalars.items():
                setattr(estimator, name, kind(fitted[name]))
            estimator.history_ = {name[len("history/"):]: np.asarray(value)
                                  for name, value in arrays.items() if name.startswith("history/")}
            estimator.device_ = str(resolve_device(device))
            estimator._restore(fitted, arrays, resolve_device(device))
        except (KeyError, TypeError, RuntimeError, ValueError, AttributeError, IndexError) as error:
            raise ValueError(
                f"Cannot rebuild a {cls.__name__} from this state: {error}. It is truncated, "
                "tampered with or was not written by hycnn_sc; refit the map."
            ) from None
        return estimator

    @classmethod
    def _check_format(cls, state: dict[str, Any]) -> int:
        """The state's format version, after checking it was written by this class."""
        if state["format"] != cls._format:
            raise ValueError(f"not a {cls._format} state (format={state['format']!r})")
        version = int(state["format_version"])
        if version > cls._format_version:
            raise ValueError(
                f"written by a newer hycnn_sc (format_version {version} > "
                f"{cls._format_version}); upgrade hycnn_sc"
            )
        return version

    def _upgrade(self, fitted: dict[str, Any], version: int) -> dict[str, Any]:
        """The ``fitted`` record of an older format version, completed with what it lacked."""
        return fitted

    def _state_arrays(self, fitted: dict[str, Any]) -> dict[str, np.ndarray]:
        """Networks and arrays of the fitted state (may add labels to ``fitted``)."""
        raise NotImplementedError

    def _restore(self, fitted: dict[str, Any], arrays: dict[str, Any],
                 device: torch.device) -> None:
        """Rebuild networks and arrays from a state (the scalars and history are set)."""
        raise NotImplementedError

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
        (directory / "params.json").write_text(json.dumps(state, indent=2, default=json_default))

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str = "auto"):
        """Load a map written by :meth:`save`."""
        name = cls.__name__
        directory = Path(path)
        params_file, weights_file = directory / "params.json", directory / "weights.pt"
        if not params_file.is_file() or not weights_file.is_file():
            raise FileNotFoundError(
                f"{directory} does not hold a saved {name} (expected params.json and "
                f"weights.pt written by {name}.save)."
            )
        try:
            state = json.loads(params_file.read_text())
            # weights_only=True: tensors and plain containers only, never arbitrary pickled code.
            tensors = torch.load(weights_file, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for junk: report them all alike
            raise ValueError(
                f"{directory} is not a readable {name} save ({type(error).__name__}: "
                f"{error}); it is truncated or was not written by {name}.save."
            ) from None
        if (not isinstance(state, dict) or not isinstance(tensors, dict)
                or not all(isinstance(v, torch.Tensor) for v in tensors.values())):
            raise ValueError(f"{directory} is not a {name} save (unexpected content).")
        state["arrays"] = {key: value.numpy() for key, value in tensors.items()}
        return cls.from_state(state, device=device)


def renamed_state(params: dict[str, Any],
                  arrays: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A saved state's params and arrays with the names renamed in 0.3 (older saves)."""
    params = {RENAMED_PARAMS.get(name, name): value for name, value in params.items()}
    history = {f"history/{old}": f"history/{new}" for old, new in RENAMED_HISTORY.items()}
    return params, {history.get(name, name): value for name, value in arrays.items()}

