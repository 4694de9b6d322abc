"""Training faults: non-finite losses, KeyboardInterrupt, convergence reporting."""

import numpy as np
import pytest
import torch

import hycnn_sc.models._minimax as minimax
from hycnn_sc.models import TransportMap

SMALL = dict(residual=1.0, hidden=(8,), n_iters=30, inner_steps=5, batch_size=64, warm_start_iters=20, seed=0, device="cpu")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(300, 3)).astype(np.float32)
    return source, (1.5 * source + 1.0).astype(np.float32)


def _poison_inner(monkeypatch, bad_calls):
    """Make the inner loss NaN on the given (0-based) calls."""
    original = minimax.inner_objective
    calls = {"n": 0}

    def poisoned(f, g, batch):
        loss, mapped = original(f, g, batch)
        index = calls["n"]
        calls["n"] += 1
        return (loss * float("nan"), mapped) if bad_calls(index) else (loss, mapped)

    monkeypatch.setattr(minimax, "inner_objective", poisoned)


def test_transient_nan_is_recovered(monkeypatch, data):
    _poison_inner(monkeypatch, lambda i: i in (25, 26, 27, 28, 29))
    with pytest.warns(RuntimeWarning, match="Non-finite loss at iteration 5: restored the best"):
        tmap = TransportMap(**SMALL).fit(*data)
    assert tmap.nonfinite_recoveries_ == 1
    moved = tmap.transport(data[0])
    assert np.isfinite(moved).all()
    assert not np.isfinite(tmap.history_["loss_g"][5])


def test_persistent_nan_stops_and_keeps_a_finite_map(monkeypatch, data):
    _poison_inner(monkeypatch, lambda i: i >= 25)
    with pytest.warns(RuntimeWarning, match="training stopped and the best iterate"):
        tmap = TransportMap(**SMALL).fit(*data)
    assert tmap.nonfinite_recoveries_ == minimax.MAX_NONFINITE_RECOVERIES + 1
    assert np.isfinite(tmap.transport(data[0])).all()


def test_keyboard_interrupt_keeps_best_iterate(monkeypatch, data):
    original = minimax.outer_objective
    calls = {"n": 0}

    def interrupting(f, x, mapped):
        calls["n"] += 1
        if calls["n"] == 12:
            raise KeyboardInterrupt
        return original(f, x, mapped)

    monkeypatch.setattr(minimax, "outer_objective", interrupting)
    with pytest.warns(RuntimeWarning, match="interrupted at iteration 11"):
        tmap = TransportMap(**SMALL).fit(*data)
    assert tmap.interrupted_
    assert tmap.best_iteration_ <= 11
    assert np.isfinite(tmap.transport(data[0])).all()


def _synthetic_profiles(values, noise):
    """Replace the held-out scoring by a curve ``values`` whose paired noise is ``noise``."""
    rng = np.random.default_rng(0)
    stream = iter(values)

    def profiles(*args):
        value = float(next(stream))
        jitter = torch.as_tensor(rng.normal(scale=noise, size=(3, 50)))
        return [minimax.EnergyProfile(value, jitter[0], jitter[1], jitter[2])]

    return profiles


@pytest.mark.parametrize(("curve", "converged"), [
    ("falling", False),  # falls far beyond its noise in the second half
    ("flat", True),
    ("jitter", True),  # moves, but within its noise
])
def test_convergence_flag(monkeypatch, data, curve, converged):
    checks = np.arange(100)
    values = {"falling": 1.0 / (1.0 + checks), "flat": np.full(100, 0.5),
              "jitter": 0.5 + 0.005 * np.sin(checks)}[curve]
    monkeypatch.setattr(minimax, "_validation_profiles", _synthetic_profiles(values, noise=0.02))
    if converged:
        tmap = TransportMap(selection_every=3, **SMALL).fit(*data)
    else:
        with pytest.warns(RuntimeWarning, match="still improving beyond its noise"):
            tmap = TransportMap(selection_every=3, **SMALL).fit(*data)
    assert tmap.converged_ is converged
