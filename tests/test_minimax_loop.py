"""The minimax loop's host/device contract: losses on the device, windowed finiteness checks,
sampling on the data's device, history names."""

import math

import numpy as np
import pytest
import torch

import hycnn_sc.models._minimax as minimax
from hycnn_sc.models._factory import build_potential
from hycnn_sc.models._minimax import MinimaxSettings, StackedSamples, train_minimax


def _settings(**overrides) -> MinimaxSettings:
    base = dict(n_iters=40, inner_steps=1, batch_size=32, lr=1e-3, lr_final_fraction=0.1,
                lr_warmup_fraction=0.1, betas=(0.5, 0.9), selection_every=20, tau=None,
                tau_schedule=None, tau_final=0.0, tau_cycles=1, progress=False)
    return MinimaxSettings(**{**base, **overrides})


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    y = (1.3 * x + 0.5).astype(np.float32)
    f, g = (build_potential("icnn", 3, (8,), tau=None) for _ in range(2))
    device = torch.device("cpu")
    validation = (StackedSamples([x[:50]], device), [torch.as_tensor(y[:50])])
    return f, g, StackedSamples([x], device), StackedSamples([y], device), validation


def _poison_outer(monkeypatch, bad_calls):
    original = minimax.outer_objective
    calls = {"n": 0}

    def poisoned(f, x, mapped):
        loss = original(f, x, mapped)
        calls["n"] += 1
        return loss * math.nan if bad_calls(calls["n"] - 1) else loss

    monkeypatch.setattr(minimax, "outer_objective", poisoned)


def test_history_names_and_losses_are_host_arrays():
    f, g, source, target, validation = _problem()
    result = train_minimax(f, g, source, target, _settings(), torch.Generator().manual_seed(0),
                           validation)
    history = result.history
    assert set(history) == {"loss_f", "loss_g", "tau", "selection_iteration", "selection_energy"}
    assert isinstance(history["loss_f"], np.ndarray) and history["loss_f"].shape == (40, 1)
    assert np.isfinite(history["loss_g"]).all()
    assert history["selection_iteration"].tolist() == [0, 20, 40]


def test_windowed_check_reports_the_first_bad_iteration(monkeypatch):
    """With checks every 10 iterations a NaN at iteration 13 is found at 20 and named 13."""
    f, g, source, target, validation = _problem()
    _poison_outer(monkeypatch, lambda call: call == 13)
    with pytest.warns(RuntimeWarning, match="Non-finite loss at iteration 13: restored the best"):
        result = train_minimax(f, g, source, target, _settings(finite_check_every=10),
                               torch.Generator().manual_seed(0), validation)
    assert result.nonfinite_recoveries == 1
    assert not np.isfinite(result.history["loss_f"][13]).all()
    # the failed check skipped the validation at 20; the next one ran on restored weights
    assert result.history["selection_iteration"].tolist() == [0, 40]
    assert all(torch.isfinite(p).all() for p in f.parameters())


def test_windowed_check_stops_after_repeated_faults(monkeypatch):
    f, g, source, target, validation = _problem()
    _poison_outer(monkeypatch, lambda call: call >= 3)
    with pytest.warns(RuntimeWarning, match="training stopped and the best iterate"):
        result = train_minimax(f, g, source, target,
                               _settings(n_iters=200, finite_check_every=5),
                               torch.Generator().manual_seed(0), validation)
    assert result.stopped_early
    assert result.nonfinite_recoveries == minimax.MAX_NONFINITE_RECOVERIES + 1
    assert result.iterations_run == 0  # no window was ever finite after the first fault
    assert all(torch.isfinite(p).all() for p in f.parameters())


def test_check_interval_does_not_change_a_finite_run():
    """Checks only read the losses: every interval gives the same weights and history."""
    runs = []
    for every in (1, 7):
        f, g, source, target, validation = _problem()
        result = train_minimax(f, g, source, target, _settings(finite_check_every=every),
                               torch.Generator().manual_seed(0), validation)
        runs.append((result.history["loss_f"], [p.detach().clone() for p in f.parameters()]))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cpu_sampling_uses_the_given_generator_stream():
    """On the CPU the draws are the generator's own (the numbers of earlier releases)."""
    values = np.arange(30, dtype=np.float32).reshape(10, 3)
    samples = StackedSamples([values, values[:4]], torch.device("cpu"))
    drawn = samples.sample(6, torch.Generator().manual_seed(5))
    uniform = torch.rand(2, 6, generator=torch.Generator().manual_seed(5))
    expected_rows = torch.stack([(uniform[0] * 10).long(), (uniform[1] * 4).long()])
    torch.testing.assert_close(drawn, torch.as_tensor(values)[expected_rows])
    samples.active = torch.tensor([1])
    assert samples.sample(5, torch.Generator()).shape == (1, 5, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sampling_stays_on_the_device():
    samples = StackedSamples([np.zeros((4, 2), np.float32)], torch.device("cuda"))
    a = samples.sample(3, torch.Generator().manual_seed(0))
    assert a.device.type == "cuda"
    b = StackedSamples([np.zeros((4, 2), np.float32)], torch.device("cuda")).sample(
        3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)


def test_make_adam_is_fused_on_cpu_and_matches_the_default_update():
    from hycnn_sc.models._utils import make_adam

    torch.manual_seed(0)
    first = torch.nn.Linear(4, 3)
    second = torch.nn.Linear(4, 3)
    second.load_state_dict(first.state_dict())
    fused = make_adam(first.parameters(), lr=1e-2, betas=(0.5, 0.9))
    plain = torch.optim.Adam(second.parameters(), lr=1e-2, betas=(0.5, 0.9))
    assert fused.defaults["fused"] is True
    x = torch.randn(16, 4)
    for _ in range(5):
        for module, optimizer in ((first, fused), (second, plain)):
            optimizer.zero_grad()
            module(x).square().sum().backward()
            optimizer.step()
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_outer_objective_in_one_pass_equals_two_passes():
    from hycnn_sc.models import HyCNN
    from hycnn_sc.models.objectives import outer_objective

    f = HyCNN(3, (8, 8), tau=0.3, n_models=2)
    source, mapped = torch.randn(2, 10, 3), torch.randn(2, 6, 3)
    expected = f(source).mean(-1) - f(mapped).mean(-1)
    torch.testing.assert_close(outer_objective(f, source, mapped), expected)


def test_independent_models_need_one_validation_cloud_each():
    f, g, source, target, (held, targets) = _problem()
    two_clouds = (StackedSamples([held.values.numpy()] * 2, torch.device("cpu")), targets * 2)
    with pytest.raises(ValueError, match="2 validation clouds for 1 stacked models"):
        train_minimax(f, g, source, target, _settings(), torch.Generator().manual_seed(0), two_clouds)
