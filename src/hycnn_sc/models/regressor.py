"""``ConvexRegressor``: scikit-learn style regression with convex (or MLP) networks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data
from tqdm.auto import tqdm

from .._validation import check_positive, make_generator
from ._convex_base import potential_gradient
from ._factory import DEFAULT_HIDDEN, build_potential, check_model_name
from ._options import LR_SCHEDULES, REGRESSOR_MODELS, LRSchedule, RegressorModel, TauSchedule
from ._utils import check_hidden, make_adam, resolve_device
from .mlp import MLP
from .schedules import check_tau_schedule, cosine_factor, tau_at


def _dense_float32(X) -> np.ndarray:
    if hasattr(X, "toarray"):
        X = X.toarray()
    return np.ascontiguousarray(X, dtype=np.float32)


class ConvexRegressor(RegressorMixin, BaseEstimator):
    """Least-squares regression with a HyCNN, an ICNN (both convex in the input) or an MLP.

    Inputs are standardised per feature and the target to zero mean and unit variance
    internally; both are affine maps with positive scales, so the fitted function stays
    convex in the original inputs.

    Parameters
    ----------
    model
        ``"hycnn"``, ``"icnn"`` or ``"mlp"`` (not convex; a baseline).
    hidden
        Layer widths; ``None`` means ``(48,) * 4`` for HyCNN and ``(64,) * 4`` otherwise.
    tau
        HyCNN gate temperature (``0`` = hard max).
    tau_schedule, tau_final, tau_cycles
        Optional HyCNN temperature schedule (see :func:`hycnn_sc.models.schedules.tau_at`).
    epochs, lr, batch_size, weight_decay
        Adam optimisation: passes over the data, learning rate, mini-batch size (capped at the
        number of samples) and L2 penalty.
    lr_schedule
        ``"cosine"`` decays the learning rate to 1 % over training; ``None`` keeps it constant.
    network_kwargs
        Extra keyword arguments of the network class (e.g. ``{"activation": "softplus"}``).
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
    seed
        Seed for initialisation and shuffling; CPU runs with one seed are bit-identical.
    progress
        Show a progress bar over epochs.

    Attributes
    ----------
    network_ : torch.nn.Module
        The trained network (standardised coordinates).
    history_ : dict of ndarray
        ``loss`` (training MSE per epoch, standardised units) and ``lr``.
    n_params_ : int
        Trainable parameters.
    n_features_in_ : int
        Input dimension.
    seed_ : int
        The seed actually used.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(-1, 1, size=(500, 3))
    >>> y = (X**2).sum(1)
    >>> reg = ConvexRegressor(hidden=(16, 16), epochs=20, seed=0).fit(X, y)
    >>> reg.predict(X[:2]).shape
    (2,)
    """

    def __init__(
        self,
        model: RegressorModel = "hycnn",
        hidden: Sequence[int] | None = None,
        tau: float = 0.0,
        tau_schedule: TauSchedule | None = None,
        tau_final: float = 0.0,
        tau_cycles: int = 1,
        epochs: int = 100,
        lr: float = 1e-2,
        batch_size: int = 1000,
        weight_decay: float = 0.0,
        lr_schedule: LRSchedule | None = "cosine",
        network_kwargs: dict | None = None,
        device: str = "auto",
        seed: int | None = None,
        progress: bool = False,
    ) -> None:
        self.model = model
        self.hidden = hidden
        self.tau = tau
        self.tau_schedule = tau_schedule
        self.tau_final = tau_final
        self.tau_cycles = tau_cycles
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        self.network_kwargs = network_kwargs
        self.device = device
        self.seed = seed
        self.progress = progress

    #: Every fitted attribute (``n_features_in_`` is set by sklearn's ``validate_data``).
    _fitted_attributes = ("network_", "history_", "n_params_", "n_features_in_", "seed_",
                          "x_mean_", "x_scale_", "y_mean_", "y_scale_")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True  # accepted and densified (the networks are dense)
        return tags

    def _validate_params(self) -> tuple[int, ...]:
        check_model_name(self.model, REGRESSOR_MODELS)
        hidden = check_hidden(DEFAULT_HIDDEN[self.model] if self.hidden is None else self.hidden)
        check_positive(self.tau, "tau", allow_zero=True)
        check_tau_schedule(self.tau_schedule, self.tau, self.tau_final, self.tau_cycles)
        check_positive(self.epochs, "epochs", integer=True)
        check_positive(self.batch_size, "batch_size", integer=True)
        check_positive(self.lr, "lr")
        check_positive(self.weight_decay, "weight_decay", allow_zero=True)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"Unknown lr_schedule {self.lr_schedule!r}; choose one of {LR_SCHEDULES}.")
        resolve_device(self.device)
        return hidden

    def _build_network(self, in_features: int, hidden: tuple[int, ...]) -> torch.nn.Module:
        if self.model == "mlp":
            return MLP(in_features, hidden)
        tau = self.tau if self.model == "hycnn" else None
        return build_potential(self.model, in_features, hidden, tau=tau,
                               network_kwargs=self.network_kwargs)

    def fit(self, X, y) -> ConvexRegressor:
        """Fit the network to ``X`` ``[n, d]`` and ``y`` ``[n]`` by mini-batch Adam on the MSE."""
        hidden = self._validate_params()
        # scikit-learn's own validation: its messages are what sklearn users expect (sparse X
        # is densified: the networks are dense; complex, object-with-text, NaN and inf refused).
        X, y = validate_data(self, X, y, accept_sparse=True, dtype=[np.float32, np.float64],
                             y_numeric=True, ensure_min_samples=2)
        X = _dense_float32(X)
        y = np.asarray(y, dtype=np.float64)
        device = resolve_device(self.device)
        generator, self.seed_ = make_generator(self.seed)
        self.x_mean_ = X.mean(0)
        self.x_scale_ = np.where(X.std(0) > 1e-12, X.std(0), 1.0).astype(np.float32)
        self.y_mean_ = float(y.mean())
        self.y_scale_ = float(y.std()) if y.std() > 1e-12 else 1.0

        network = self._build_network(self.n_features_in_, hidden)
        network.reset_parameters(generator)
        network.to(device)
        inputs = torch.as_tensor((X - self.x_mean_) / self.x_scale_, device=device)
        targets = torch.as_tensor((y - self.y_mean_) / self.y_scale_, dtype=torch.float32, device=device)
        optimizer = make_adam(network.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        batch_size = min(self.batch_size, len(X))
        n_batches = -(-len(X) // batch_size)
        total_steps = self.epochs * n_batches
        losses, rates = np.empty(self.epochs), np.empty(self.epochs)
        step = 0
        for epoch in tqdm(range(self.epochs), disable=not self.progress, desc="fitting", leave=False):
            if self.model == "hycnn":
                network.tau = tau_at(epoch, self.epochs, tau=self.tau, schedule=self.tau_schedule,
                                     tau_final=self.tau_final, cycles=self.tau_cycles)
            order = torch.randperm(len(X), generator=generator).to(device)
            epoch_loss = torch.zeros((), device=device)
            for start in range(0, len(X), batch_size):
                factor = cosine_factor(step, total_steps, 0.01) if self.lr_schedule else 1.0
                for group in optimizer.param_groups:
                    group["lr"] = self.lr * factor
                index = order[start : start + batch_size]
                loss = (network(inputs[index]) - targets[index]).square().mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                epoch_loss += loss.detach() * len(index)
                step += 1
            losses[epoch] = float(epoch_loss) / len(X)
            rates[epoch] = optimizer.param_groups[0]["lr"]
            if not np.isfinite(losses[epoch]):
                raise FloatingPointError(
                    f"Training loss became non-finite in epoch {epoch}; lower lr (now {self.lr})."
                )
        self.network_ = network.eval()
        self.history_ = {"loss": losses, "lr": rates}
        self.n_params_ = sum(p.numel() for p in network.parameters())
        return self

    def _standardised(self, X) -> torch.Tensor:
        check_is_fitted(self, self._fitted_attributes)
        X = _dense_float32(validate_data(self, X, reset=False, accept_sparse=True,
                                         dtype=[np.float32, np.float64]))
        device = next(self.network_.parameters()).device
        return torch.as_tensor((X - self.x_mean_) / self.x_scale_, device=device)

    def predict(self, X) -> np.ndarray:
        """Predicted values ``[n]``."""
        inputs = self._standardised(X)
        with torch.no_grad():
            out = torch.cat([self.network_(chunk) for chunk in inputs.split(65536)])
        return out.cpu().numpy().astype(np.float64) * self.y_scale_ + self.y_mean_

    def gradient(self, X) -> np.ndarray:
        """Gradient of the fitted function with respect to the original inputs, ``[n, d]``."""
        inputs = self._standardised(X)
        grads = torch.cat([potential_gradient(self.network_, chunk) for chunk in inputs.split(65536)])
        return grads.cpu().numpy() * (self.y_scale_ / self.x_scale_)
