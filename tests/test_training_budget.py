"""Held-out-driven training budget (``n_iters="auto"``) and the noise-aware convergence test."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import hycnn_sc.models._minimax as minimax
from hycnn_sc.metrics import energy_distance
from hycnn_sc.models import ICNN, ConditionalTransportMap, HyCNN, TransportMap
from hycnn_sc.models._minimax import energy_profile, paired_standard_error, significant_improvement
from hycnn_sc.models._selection import paired_energy


def _profile(x, y):
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    return energy_profile(x, y, float(torch.cdist(y, y).mean()))


def test_profile_value_is_the_energy_distance():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(120, 4)), rng.normal(size=(90, 4)) + 0.5
    assert _profile(x, y).value == pytest.approx(energy_distance(x, y), rel=1e-9)


def test_paired_standard_error_matches_the_bootstrap():
    """The first-order standard error agrees with the paired bootstrap of the selection rule."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3))
    y = 1.3 * rng.normal(size=(400, 3)) + 0.4
    a, b = 1.2 * x + 0.3, x + 0.35
    bootstrap = paired_energy({"a": a, "b": b}, y, reference="b", rng=rng, n_bootstrap=400)
    analytic = paired_standard_error(_profile(a, y), _profile(b, y))
    assert analytic == pytest.approx(bootstrap.standard_error["a"], rel=0.3)


def test_significant_improvement_needs_more_than_noise():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) + 1.0
    far, near = _profile(x, y), _profile(x + 1.0, y)
    assert significant_improvement(near, far)
    assert not significant_improvement(far, near)
    assert not significant_improvement(_profile(x + 1.0 + 1e-4, y), near)


@pytest.fixture(scope="module")
def linear_data():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(600, 3)).astype(np.float32)
    return source, (1.5 * source + 1.0).astype(np.float32)


def test_auto_budget_runs_whole_cycles_up_to_its_cap(linear_data):
    """600 points a side (540 for training): the cap of 1,200 epochs, 2,532 iterations, admits
    a cycle of 500 and one of 1,000. Both lower the held-out semi-dual of the (gradient-matched,
    so not exact) warm start beyond its noise, so the map keeps the second cycle's end and,
    stopped by the cap while progressing, says it has not converged."""
    with pytest.warns(RuntimeWarning, match="semi-dual objective was still improving.*cap of 2532"):
        tmap = TransportMap(hidden=(8,), residual=1.0, seed=0, device="cpu").fit(*linear_data)
    assert len(tmap.history_["loss_f"]) == 1500
    assert list(tmap.history_["cycle_start"]) == [0, 500]
    assert tmap.best_iteration_ == 1500
    assert not tmap.converged_
    assert tmap.history_["selection_iteration"][-1] == 1500
    assert tmap.get_params()["n_iters"] == "auto"


def test_auto_budget_on_a_linear_truth_keeps_the_linear_map():
    """The cycles train the network (its held-out semi-dual improves on the gradient-matched
    warm start), but the residual test on the held-out energy distance keeps the linear part:
    the map is the closed-form Gaussian one."""
    rng = np.random.default_rng(1)
    source = rng.normal(size=(1200, 3)).astype(np.float32)
    target = (source @ np.array([[1.5, 0.3, 0], [0, 0.8, 0], [0, 0, 1.2]]) + 1.0).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        tmap = TransportMap(hidden=(8,), seed=0, device="cpu").fit(source, target)
    assert len(tmap.history_["loss_f"]) >= 1500
    assert tmap.residual_weight_ == 0.0
    standard = (source[:50] - tmap.center_) / tmap.scale_
    linear = tmap.center_ + tmap.scale_ * tmap.linear_.transport(standard)
    np.testing.assert_allclose(tmap.transport(source[:50]), linear, atol=1e-4)


def _dual(value: float, rng: np.random.Generator, scale: float = 1e-3) -> minimax.DualProfile:
    """A held-out semi-dual profile of the given value (its jitter sets the paired SE)."""
    return minimax.DualProfile(float(value), *torch.as_tensor(rng.normal(scale=scale, size=(2, 50))))


def _falling_profiles(monkeypatch):
    """Every measurement of the held-out criterion lower than the one before."""
    rng = np.random.default_rng(0)
    values = iter(1.0 / (1.0 + np.arange(10_000)))

    def falling(f, g, validation):  # one profile per model (condition)
        return [_dual(next(values), rng)] * len(validation[1])

    for criterion in ("held_out_dual", "held_out_energy"):  # TransportMap, conditional network
        monkeypatch.setattr(minimax, criterion, falling)


def test_auto_budget_doubles_while_it_improves(monkeypatch, linear_data):
    """A curve that keeps falling beyond its noise trains in doubling cycles up to the cap."""
    monkeypatch.setattr("hycnn_sc.models._estimator.AUTO_FIRST_CYCLE", 20)
    monkeypatch.setattr("hycnn_sc.models._estimator.AUTO_MIN_ITERS", 150)
    monkeypatch.setattr("hycnn_sc.models._estimator.AUTO_MAX_ITERS", 150)
    _falling_profiles(monkeypatch)
    with pytest.warns(RuntimeWarning, match=r"after 140 iterations.*cap of 150 iterations"):
        tmap = TransportMap(hidden=(8,), residual=1.0, seed=0, device="cpu").fit(*linear_data)
    assert list(tmap.history_["cycle_start"]) == [0, 20, 60]  # cycles of 20, 40 and 80
    assert len(tmap.history_["loss_f"]) == 140
    assert tmap.best_iteration_ == 140
    assert not tmap.converged_


def test_auto_budget_keeps_the_best_cycle(monkeypatch, linear_data):
    """A cycle that makes things worse is not kept: the map is the best iterate of all cycles."""
    _scripted_cycles(monkeypatch, (1.0, 0.5), (0.5, 1.0))
    tmap = TransportMap(hidden=(8,), residual=1.0, seed=0, device="cpu").fit(*linear_data)
    assert list(tmap.history_["cycle_start"]) == [0, 20]
    assert tmap.best_iteration_ == 20
    assert tmap.converged_


def _scripted_cycles(monkeypatch, *cycles):
    """Held-out semi-duals ``(start, end)`` of successive cycles of 20, 40, 80, ... iterations,
    with a small jitter for the paired SE. The budget measures the warm start and then each
    cycle's end (a cycle starts from the previous end, or from the kept weights when that
    cycle was undone), so the scripts' later starts are implied."""
    monkeypatch.setattr("hycnn_sc.models._estimator.AUTO_FIRST_CYCLE", 20)
    rng = np.random.default_rng(0)
    curve = iter([cycles[0][0]] + [end for _, end in cycles] + [9.0] * 400)

    def profiles(f, g, validation):  # one profile per model (condition)
        return [_dual(next(curve), rng)] * len(validation[1])

    for criterion in ("held_out_dual", "held_out_energy"):  # TransportMap, conditional network
        monkeypatch.setattr(minimax, criterion, profiles)


def test_auto_budget_explores_past_a_first_cycle_that_got_worse(monkeypatch, linear_data):
    """Still at the warm start: a worse first cycle is not undone; the next cycle, continued
    from its end, beats the warm start beyond the noise and is kept."""
    _scripted_cycles(monkeypatch, (1.0, 1.2), (1.2, 0.5), (0.5, 0.5))
    tmap = TransportMap(hidden=(8,), residual=1.0, seed=0, device="cpu").fit(*linear_data)
    assert list(tmap.history_["cycle_start"]) == [0, 20, 60]
    assert tmap.best_iteration_ == 60  # the end of the exploration; the flat third cycle undone
    assert tmap.converged_
    # the semi-dual that judged: the warm start, then every cycle's end (kept or not)
    np.testing.assert_allclose(tmap.history_["cycle_criterion"], [1.0, 1.2, 0.5, 0.5])


def _warm_start_map(linear_data):
    """The map of the same fit stopped after its first cycle (the warm start restored)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(minimax, "MAX_EXPLORATIONS", 0)
        _scripted_cycles(patch, (1.0, 1.2))
        return TransportMap(hidden=(8,), residual=1.0, seed=0, device="cpu").fit(*linear_data)


def test_auto_budget_restores_the_warm_start_after_exploring_in_vain(monkeypatch, linear_data):
    """Falling cycles that never beat the warm start: after MAX_EXPLORATIONS the warm start
    comes back, weights and all."""
    reference = _warm_start_map(linear_data)
    assert list(reference.history_["cycle_start"]) == [0]
    _scripted_cycles(monkeypatch, (1.0, 1.2), (1.2, 1.1), (1.1, 1.05), (1.05, 1.02))
    tmap = TransportMap(hidden=(8,), residual=1.0, seed=0, device="cpu").fit(*linear_data)
    assert minimax.MAX_EXPLORATIONS == 3
    assert list(tmap.history_["cycle_start"]) == [0, 20, 60, 140]
    assert tmap.best_iteration_ == 0
    np.testing.assert_array_equal(tmap.transport(linear_data[0]),
                                  reference.transport(linear_data[0]))


def test_an_interrupt_while_exploring_restores_the_warm_start(monkeypatch, linear_data):
    """Ctrl-C in the second cycle, which explores from a first cycle that got worse: the warm
    start comes back (the rejected cycle's end is not kept), and the warning does not blame
    the cap."""
    reference = _warm_start_map(linear_data)
    _scripted_cycles(monkeypatch, (1.0, 1.2), (1.2, 0.5))
    original, calls = minimax.outer_objective, {"n": 0}

    def interrupting(f, x, mapped):
        calls["n"] += 1
        if calls["n"] == 30:  # iteration 29: inside the second cycle (iterations 20-59)
            raise KeyboardInterrupt
        return original(f, x, mapped)

    monkeypatch.setattr(minimax, "outer_objective", interrupting)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tmap = TransportMap(hidden=(8,), residual=1.0, seed=0, device="cpu").fit(*linear_data)
    messages = [str(w.message) for w in caught]
    assert any("interrupted at iteration 9" in m for m in messages)  # 9 of the second cycle
    assert not any("cap of" in m for m in messages)
    assert tmap.interrupted_
    assert tmap.best_iteration_ == 0
    np.testing.assert_array_equal(tmap.transport(linear_data[0]),
                                  reference.transport(linear_data[0]))


def test_stacked_maps_are_kept_explored_and_undone_each_on_its_own(monkeypatch, linear_data):
    """Two maps fitted together, judged apart: the first keeps two cycles and undoes the next
    two; the second explores past a worse first cycle, climbs and is put back to its warm
    start, explores again from it and is put back again. Each map's history holds its own
    semi-duals."""
    monkeypatch.setattr("hycnn_sc.models._estimator.AUTO_FIRST_CYCLE", 20)
    rng = np.random.default_rng(0)
    scripts = [iter([1.0, 0.5, 0.3, 0.3, 0.3]), iter([1.0, 1.2, 1.3, 1.1, 1.15])]

    def profiles(f, g, validation):
        return [_dual(next(script), rng) for script in scripts]

    for criterion in ("held_out_dual", "held_out_energy"):  # TransportMap, conditional network
        monkeypatch.setattr(minimax, criterion, profiles)
    source, target = linear_data
    first, second = TransportMap.fit_many([source, source], [target, target], hidden=(8,),
                                          residual=1.0, seed=0, device="cpu")
    for tmap in (first, second):
        assert list(tmap.history_["cycle_start"]) == [0, 20, 60, 140]
        assert tmap.converged_
    assert first.best_iteration_ == 60 and second.best_iteration_ == 0
    np.testing.assert_allclose(first.history_["cycle_criterion"], [1.0, 0.5, 0.3, 0.3, 0.3])
    np.testing.assert_allclose(second.history_["cycle_criterion"], [1.0, 1.2, 1.3, 1.1, 1.15])


def test_an_interrupt_while_judging_keeps_the_weights_before_the_cycle(monkeypatch,
                                                                         linear_data):
    """Ctrl-C while the first cycle's end is being measured: the warm start is kept, the fit
    is marked interrupted, and the not-converged warning says training was cut short."""
    reference = _warm_start_map(linear_data)
    calls = {"n": 0}
    original = minimax.held_out_dual

    def interrupting(f, g, validation):
        calls["n"] += 1
        if calls["n"] == 2:  # the first call measures the warm start
            raise KeyboardInterrupt
        return original(f, g, validation)

    monkeypatch.setattr(minimax, "held_out_dual", interrupting)
    monkeypatch.setattr("hycnn_sc.models._estimator.AUTO_FIRST_CYCLE", 20)
    with pytest.warns(RuntimeWarning, match="cut short after 20 iterations"):
        tmap = TransportMap(hidden=(8,), residual=1.0, seed=0, device="cpu").fit(*linear_data)
    assert tmap.interrupted_ and not tmap.converged_
    np.testing.assert_array_equal(tmap.transport(linear_data[0]),
                                  reference.transport(linear_data[0]))


def test_auto_budget_stops_exploring_when_a_cycle_climbs(monkeypatch, linear_data):
    _scripted_cycles(monkeypatch, (1.0, 1.2), (1.2, 1.3))
    tmap = TransportMap(hidden=(8,), residual=1.0, seed=0, device="cpu").fit(*linear_data)
    assert list(tmap.history_["cycle_start"]) == [0, 20]
    assert tmap.best_iteration_ == 0


def test_exploration_needs_a_gain_beyond_the_noise(monkeypatch, linear_data):
    """An exploring cycle that ends barely below the warm start (within the noise) is not kept."""
    _scripted_cycles(monkeypatch, (1.0, 1.2), (1.2, 0.99995), (0.99995, 0.9999), (0.9999, 0.9998))
    tmap = TransportMap(hidden=(8,), residual=1.0, seed=0, device="cpu").fit(*linear_data)
    assert tmap.best_iteration_ == 0


# ---------------------------------------------------------------- the conditional network
CONDITIONAL = dict(hidden=(8,), residual=1.0, warm_start_iters=10, batch_size=32, seed=0,
                   device="cpu")


@pytest.fixture(scope="module")
def conditional_data():
    rng = np.random.default_rng(0)
    control = rng.normal(size=(200, 3)).astype(np.float32)
    shifts = {"A": [1.0, 0, 0], "B": [0, 1.0, 0], "C": [0, 0, 1.0]}
    targets = [(rng.normal(size=(200, 3)) + s).astype(np.float32) for s in shifts.values()]
    return [control] * 3, targets, list(shifts)


def test_auto_budget_stopped_by_its_cap_while_progressing_is_not_converged(monkeypatch,
                                                                          linear_data):
    """The last (doubled) cycle alone gains less than the noise, but the last two together gain
    beyond it, so the rule would train on: when the cap stops it, the map has not converged."""
    monkeypatch.setattr("hycnn_sc.models._estimator.AUTO_MIN_ITERS", 100)
    monkeypatch.setattr("hycnn_sc.models._estimator.AUTO_MAX_ITERS", 100)
    _scripted_cycles(monkeypatch, (1.0, 0.5), (0.5, 0.4999))
    with pytest.warns(RuntimeWarning, match=r"after 60 iterations.*cap of 100 iterations"):
        tmap = TransportMap(hidden=(8,), residual=1.0, seed=0, device="cpu").fit(*linear_data)
    assert list(tmap.history_["cycle_start"]) == [0, 20]  # a third cycle (80) would pass 100
    assert tmap.best_iteration_ == 60
    assert not tmap.converged_


def _only_first_cycle(patch):
    """Stop after the first cycle (the cap leaves no room for a second)."""
    for name in ("AUTO_MIN_ITERS", "AUTO_MAX_ITERS"):
        patch.setattr(f"hycnn_sc.models._estimator.{name}", 20)


def _first_cycle_only(patch, first, kept):
    """A fit stopped after its first cycle: by the cap when that cycle is kept (it warns that
    the map was still improving), else by allowing no exploration (the warm start restored)."""
    _scripted_cycles(patch, first)
    if kept:
        _only_first_cycle(patch)
        return pytest.warns(RuntimeWarning, match="cap of 20 iterations")
    patch.setattr(minimax, "MAX_EXPLORATIONS", 0)
    return warnings.catch_warnings()


@pytest.mark.parametrize(("cycles", "best"), [
    (((1.0, 0.5), (0.5, 1.0)), 20),  # the first cycle kept, the second (worse) undone
    (((1.0, 1.2), (1.2, 1.3)), 0),  # both worse: the warm-started network comes back
])
def test_conditional_auto_budget_keeps_or_restores_whole_weights(monkeypatch, conditional_data,
                                                                 cycles, best):
    """The shared network is one model for the cycle rule: an undone cycle puts back every
    weight of the network kept before it (compared with the same fit stopped there)."""
    sources, targets, labels = conditional_data
    with pytest.MonkeyPatch.context() as patch, _first_cycle_only(patch, cycles[0], best > 0):
        reference = ConditionalTransportMap(**CONDITIONAL).fit(sources, targets, labels)
    assert list(reference.history_["cycle_start"]) == [0]
    _scripted_cycles(monkeypatch, *cycles)
    cmap = ConditionalTransportMap(**CONDITIONAL).fit(sources, targets, labels)
    assert list(cmap.history_["cycle_start"]) == [0, 20]
    assert cmap.best_iteration_ == best
    assert cmap.converged_
    np.testing.assert_allclose(cmap.history_["cycle_criterion"],
                               [cycles[0][0], cycles[0][1], cycles[1][1]])
    for label in labels:
        np.testing.assert_array_equal(cmap.transport(sources[0], label),
                                      reference.transport(sources[0], label))


def test_conditional_auto_budget_stopped_by_its_cap_is_not_converged(monkeypatch,
                                                                     conditional_data):
    monkeypatch.setattr("hycnn_sc.models._estimator.AUTO_FIRST_CYCLE", 20)
    monkeypatch.setattr("hycnn_sc.models._estimator.AUTO_MIN_ITERS", 150)
    monkeypatch.setattr("hycnn_sc.models._estimator.AUTO_MAX_ITERS", 150)
    _falling_profiles(monkeypatch)
    with pytest.warns(RuntimeWarning, match=r"conditional network.*after 140 iterations.*cap of 150"):
        cmap = ConditionalTransportMap(**CONDITIONAL).fit(*conditional_data)
    assert list(cmap.history_["cycle_start"]) == [0, 20, 60]
    assert cmap.best_iteration_ == 140
    assert not cmap.converged_


@pytest.mark.parametrize(("points", "cycles_run"),
                         [(500, 2), (1_600, 4), (7_000, 6), (9_000, 6), (100_000, 6)])
def test_auto_budget_cap_in_epochs(points, cycles_run):
    """The cap grows with the training points (1,200 epochs at batch 256) between its floor
    and ceiling: 1,600 points run four cycles (two at 500 epochs), 7,000 six (four), and
    9,000 training points (10,000 a side, 10 % held out) the sixth, to 31,500 iterations,
    where the Wasserstein-2 benchmark still improved."""
    first, cap = TransportMap()._schedule(points, 256, use_validation=True)
    ends = first * (2 ** np.arange(1, 8) - 1)  # where cycles 1, 2, ... end
    assert int((ends <= cap).sum()) == cycles_run


def test_auto_budget_without_validation_or_with_a_fixed_budget_has_no_cap():
    assert TransportMap()._schedule(9_000, 256, use_validation=False) == (1000, None)
    assert TransportMap(n_iters=300)._schedule(9_000, 256, use_validation=True) == (300, None)


@pytest.mark.parametrize(("per_step", "cap"), [(1, 34), (3, 12)])
def test_conditional_auto_budget_cap_counts_conditions_per_step(monkeypatch, conditional_data,
                                                               per_step, cap):
    """An epoch is every condition's larger training side (180 of 200 points, 32 a batch)
    drawn once, ``conditions_per_step`` conditions at a time: 2 epochs are
    ⌈2 · 180/32 · 3/per_step⌉ iterations."""
    monkeypatch.setattr("hycnn_sc.models._estimator.AUTO_EPOCHS", 2)
    monkeypatch.setattr("hycnn_sc.models._estimator.AUTO_MIN_ITERS", 1)
    _scripted_cycles(monkeypatch, (1.0, 0.5))
    with pytest.warns(RuntimeWarning, match=f"cap of {cap} iterations"):
        ConditionalTransportMap(**CONDITIONAL, conditions_per_step=per_step).fit(*conditional_data)


#: Held-out energies of a HyCNN fit (Wasserstein-2 benchmark, D = 16, n_iters=1000) every 50
#: iterations: its 5x longer schedule cut the error to the true map from 21 % to 6 %.
W2_D16_CHECKS = [0.04199, 0.05235, 0.05516, 0.04003, 0.04445, 0.04142, 0.02886, 0.04146, 0.02839,
                 0.03791, 0.02562, 0.03125, 0.0264, 0.02591, 0.02945, 0.02357, 0.02339, 0.02446,
                 0.02317, 0.02155, 0.02193]


def _profiles(values, rng, scale, n_models=1):
    """One jittered profile per check and model (the jitter sets the paired standard error)."""
    return [[minimax.EnergyProfile(float(v), *torch.as_tensor(rng.normal(scale=scale, size=(3, 50))))
             for _ in range(n_models)] for v in values]


@pytest.mark.parametrize("shared", [False, True])
def test_a_falling_trend_is_not_converged_when_the_halfway_gain_is_noise(shared):
    """The halfway comparison alone calls the D = 16 run converged; its second-half trend does
    not. The jitter gives a paired standard error of about 0.0035, as the run's 1,000 held-out
    points did (halfway gain 1.0 standard error, trend drop 1.7); both at the fixed budget's
    level."""
    checks = list(range(0, 1001, 50))
    # a shared network averages three conditions' (independent) noise: √3 more per condition
    scale = 0.005 * (np.sqrt(3) if shared else 1.0)
    profiles = _profiles(W2_D16_CHECKS, np.random.default_rng(2), scale=scale, n_models=3)
    level = minimax.CONVERGENCE_Z
    assert not minimax.improved_beyond_noise(profiles[-1], profiles[10], shared, level).any()
    assert minimax._falling_trend(checks[10:], profiles[10:], shared, level).all()
    assert not minimax._converged(checks, profiles, shared).any()


#: Held-out energies of the same benchmark at n_iters=5000 (seed 0), every 250 iterations: the
#: final iterate is 1.44 paired standard errors (0.0062) below the halfway one; 25,000
#: iterations then lowered an independent held-out energy by 1.9 standard errors.
W2_D16_5000_CHECKS = [0.04199, 0.0512, 0.03156, 0.05234, 0.04359, 0.03208, 0.02676, 0.02983,
                      0.02127, 0.02368, 0.02587, 0.01908, 0.01712, 0.01979, 0.01954, 0.02793,
                      0.02366, 0.01682, 0.01761, 0.01659, 0.01688]


def test_a_halfway_gain_short_of_the_5_percent_bar_is_not_converged():
    """A fixed budget is judged at the one-sided 10 % level: the 1.44-standard-error halfway
    gain of the D = 16 run, which the 5 % bar (1.645) called converged, is not."""
    checks = list(range(0, 5001, 250))
    profiles = _profiles(W2_D16_5000_CHECKS, np.random.default_rng(5), scale=0.0089)
    gain = W2_D16_5000_CHECKS[10] - W2_D16_5000_CHECKS[-1]
    z = gain / minimax.paired_standard_error(profiles[-1][0], profiles[10][0])
    assert minimax.CONVERGENCE_Z < z < minimax.IMPROVEMENT_Z
    assert not minimax.improved_beyond_noise(profiles[-1], profiles[10], False).any()
    assert not minimax._converged(checks, profiles, False).any()


def test_a_flat_noisy_curve_is_converged():
    rng = np.random.default_rng(1)
    values = 0.02 + rng.normal(scale=0.003, size=21)
    checks = list(range(0, 1001, 50))
    assert minimax._converged(checks, _profiles(values, rng, scale=0.005), False).all()
    # too few checks in the second half for a trend: only the halfway comparison counts
    assert not minimax._falling_trend(checks[:4], _profiles(values[:4], rng, 0.005), False,
                                      minimax.CONVERGENCE_Z).any()


def test_a_smooth_drift_within_the_held_out_noise_is_converged():
    """A late, nearly noiseless decline (tiny scatter around the line) that the held-out
    points cannot resolve does not count: the trend's error includes their paired noise."""
    checks = list(range(500, 1001, 50))
    values = np.linspace(0.0210, 0.0200, len(checks))  # a drop of 0.001, no scatter
    profiles = _profiles(values, np.random.default_rng(2), scale=0.005)
    assert not minimax._falling_trend(checks, profiles, False, minimax.CONVERGENCE_Z).any()


def test_short_fixed_budget_on_a_moving_target_is_not_converged():
    """Far from the optimum after a short budget: the flag is false and a warning says why."""
    rng = np.random.default_rng(3)
    source = rng.normal(size=(1000, 2)).astype(np.float32)
    target = (source + 4.0).astype(np.float32)
    with pytest.warns(RuntimeWarning, match="still improving beyond its noise"):
        tmap = TransportMap(hidden=(8,), residual=1.0, warm_start="identity", n_iters=60,
                            lr=1e-3, selection_every=5, seed=0, device="cpu").fit(source, target)
    assert not tmap.converged_


def test_auto_without_validation_is_a_fixed_budget(linear_data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tmap = TransportMap(hidden=(8,), residual=1.0, selection_fraction=0.0, seed=0,
                            device="cpu").fit(*linear_data)
    assert len(tmap.history_["loss_f"]) == 1000


@pytest.mark.parametrize(("value", "error", "match"), [
    ("longer", ValueError, "'auto' or a positive integer"),
    (0, ValueError, "n_iters must be > 0"),
    (2.5, TypeError, "n_iters must be an integer"),
    (None, TypeError, "n_iters must be an integer"),
])
def test_bad_n_iters(linear_data, value, error, match):
    with pytest.raises(error, match=match):
        TransportMap(n_iters=value).fit(*linear_data)


def test_auto_budget_and_tau_schedule_are_exclusive(linear_data):
    with pytest.raises(ValueError, match="integer n_iters"):
        TransportMap(tau_schedule="cosine").fit(*linear_data)


@pytest.mark.parametrize(("value", "error", "match"), [
    ("longer", ValueError, "'auto' or a positive integer"),
    (0, ValueError, "n_iters must be > 0"),
    (None, TypeError, "n_iters must be an integer"),
])
def test_conditional_bad_n_iters(value, error, match):
    with pytest.raises(error, match=match):
        ConditionalTransportMap(n_iters=value)._validate_params()


def test_conditional_auto_budget_and_tau_schedule_are_exclusive():
    with pytest.raises(ValueError, match="integer n_iters"):
        ConditionalTransportMap(tau_schedule="cosine")._validate_params()


@pytest.mark.parametrize("value", ["0", "-3", "many", "2.5"])
def test_demo_rejects_a_bad_budget(value, capsys):
    from hycnn_sc.__main__ import main

    with pytest.raises(SystemExit):
        main(["demo", "--n-iters", value, "--out", "unused"])
    assert "expected 'auto' or a positive integer" in capsys.readouterr().err


def test_restore_puts_back_only_the_masked_models():
    """A cycle that did not help one stacked map restores that map alone."""
    from hycnn_sc.models._factory import build_potential

    potential = build_potential("hycnn", 3, (4,), tau=0.3, n_models=2)
    before = minimax._snapshot(potential)
    with torch.no_grad():
        for parameter in potential.parameters():
            parameter.add_(1.0)
    after = minimax._snapshot(potential)
    minimax._restore(potential, before, np.array([True, False]), shared=False)
    for name, value in potential.state_dict().items():
        torch.testing.assert_close(value[0], before[name][0])
        torch.testing.assert_close(value[1], after[name][1])


@pytest.mark.parametrize(("model", "kwargs", "criterion"), [
    ("hycnn", {}, "held_out_dual"),
    ("hycnn", {"tau": 0.0}, "held_out_energy"),
    ("icnn", {}, "held_out_energy"),
    ("icnn", {"network_kwargs": {"activation": "softplus"}}, "held_out_dual"),
])
def test_auto_budget_judges_potentials_with_kinks_by_the_energy_distance(
        monkeypatch, linear_data, model, kwargs, criterion):
    """The semi-dual's excess bounds the map's error only for a Lipschitz ``∇f``: a ReLU ICNN
    or a HyCNN with ``τ = 0`` is judged by the held-out energy distance. Every measurement is
    scripted lower than the last, so the cap stops the fit and the warning names the
    criterion that judged it."""
    calls, rng = [], np.random.default_rng(0)
    values = iter(1.0 / (1.0 + np.arange(100)))
    for name in ("held_out_dual", "held_out_energy"):
        def scripted(f, g, validation, _name=name):
            calls.append(_name)
            return [_dual(next(values), rng)]
        monkeypatch.setattr(minimax, name, scripted)
    monkeypatch.setattr("hycnn_sc.models._estimator.AUTO_FIRST_CYCLE", 20)
    monkeypatch.setattr("hycnn_sc.models._estimator.AUTO_MAX_ITERS", 60)
    words = "semi-dual objective" if criterion == "held_out_dual" else "held-out energy distance"
    with pytest.warns(RuntimeWarning, match=f"{words} was still improving.*cap of 60"):
        tmap = TransportMap(model=model, hidden=(8,), residual=1.0, seed=0, device="cpu",
                            **kwargs).fit(*linear_data)
    assert set(calls) == {criterion}
    assert len(tmap.history_["cycle_criterion"]) == len(calls) == 3  # start, two cycles


def test_smoothness_of_the_potentials():
    """Lipschitz gradients: a HyCNN with ``τ > 0`` (live with the setter), an ICNN with softplus
    (with or without the squared first layer, whose leaky ReLU² has a Lipschitz derivative)."""
    hycnn = HyCNN(2, (4,), tau=0.3)
    assert hycnn.smooth
    hycnn.tau = 0.0
    assert not hycnn.smooth
    for quadratic in (False, True):
        assert ICNN(2, (4, 4), activation="softplus", quadratic=quadratic).smooth
        assert not ICNN(2, (4, 4), quadratic=quadratic).smooth
        assert not ICNN(2, (4, 4), activation="leaky_relu", quadratic=quadratic).smooth
