"""What the minimax-trained estimators share: scikit-learn-style parameters, defaults and checks.

:class:`~hycnn_sc.models.TransportMap` and :class:`~hycnn_sc.models.ConditionalTransportMap`
take the same optimisation arguments; this base validates them in one place and adds each
estimator's own checks through :meth:`MinimaxEstimator._validate_own`.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from .._validation import check_positive, json_default
from ._factory import DEFAULT_HIDDEN, POTENTIALS, check_model_name
from ._utils import check_hidden, resolve_device
from .gaussian import check_shrinkage
from .schedules import check_tau_schedule

#: HyCNN gate temperature used when ``tau=None`` (standardised units). Measured on held-out
#: Kang 2018 cells (benchmarks/results_kang_*.txt): 0.3 beat the closed-form Gaussian map by
#: ~28 % in energy distance on 11k training cells, where the paper's OT setting 10 (nearly
#: affine gates at unit-variance pre-activations) did not beat it.
DEFAULT_TAU = 0.3
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


class MinimaxEstimator:
    """Base of the estimators trained with the minimax semi-dual (parameters and their checks)."""

    #: Integer arguments that must be positive.
    _positive_ints: tuple[str, ...] = ("n_iters", "inner_steps", "batch_size")
    #: Whether ``n_iters="auto"`` (a held-out-driven budget) is supported.
    _auto_budget: bool = False

    @classmethod
    def _param_names(cls) -> list[str]:
        return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor arguments, as scikit-learn's ``get_params``."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any):
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
                warnings.warn(
                    f"{type(self).__name__}({old}=...) is deprecated and will be removed in the "
                    f"next release; use {new}= (same meaning).",
                    FutureWarning, stacklevel=4,
                )
            params[new] = value
        return params

    # ------------------------------------------------------------------ persistence
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

