"""Conditional potentials and ConditionalTransportMap: convexity laws, conditions, persistence."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from conftest import exact_softplus, with_pre_rename_names
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import NotFittedError

from hycnn_sc.models import (
    ConditionalHyCNN,
    ConditionalICNN,
    ConditionalTransportMap,
    potential_gradient,
)
from hycnn_sc.models.conditional import ConditionEncoder
from hycnn_sc.models.conditional_transport import _moments, shrunk_mean_shift


def _randomise(potential: torch.nn.Module, seed: int) -> None:
    """Move every parameter away from its (zero) start so the condition really acts."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in potential.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)


@settings(max_examples=25, deadline=None)
@given(
    width=st.integers(2, 12), depth=st.integers(1, 4), tau=st.sampled_from([0.0, 0.1, 1.0]),
    n_conditions=st.integers(1, 3), seed=st.integers(0, 10_000),
    family=st.sampled_from(["hycnn", "icnn"]),
)
def test_convex_in_x_for_every_condition(width, depth, tau, n_conditions, seed, family):
    torch.manual_seed(seed)
    d, c = 3, 4
    if family == "hycnn":
        f = ConditionalHyCNN(d, c, hidden=(width,) * depth, tau=tau, condition_hidden=(8,))
    else:
        f = ConditionalICNN(d, c, hidden=(width,) * depth, condition_hidden=(8,), activation="softplus")
    _randomise(f, seed)
    f = f.double()
    condition = torch.randn(n_conditions, c, dtype=torch.float64) * 2
    x, y = torch.randn(2, n_conditions, 64, d, dtype=torch.float64)
    t = torch.rand(n_conditions, 64, 1, dtype=torch.float64)
    with torch.no_grad():
        mixed = f(t * x + (1 - t) * y, condition)
        chord = t.squeeze(-1) * f(x, condition) + (1 - t.squeeze(-1)) * f(y, condition)
    assert (mixed <= chord + 1e-9 * (1 + chord.abs())).all()  # Jensen
    def at_condition(points):
        return f(points, condition)

    gx, gy = potential_gradient(at_condition, x), potential_gradient(at_condition, y)
    assert (((gx - gy) * (x - y)).sum(-1) >= -1e-9).all()  # monotone gradient


@settings(max_examples=20, deadline=None)
@given(
    depth=st.integers(1, 3), tau=st.sampled_from([0.0, 0.3]), single=st.booleans(),
    seed=st.integers(0, 10_000), family=st.sampled_from(["hycnn", "icnn"]),
)
def test_explicit_gradient_matches_autograd_for_every_condition(depth, tau, single, seed, family):
    torch.manual_seed(seed)
    d, c, m = 3, 4, 2
    if family == "hycnn":
        f = ConditionalHyCNN(d, c, hidden=(6,) * depth, tau=tau, condition_hidden=(8,))
    else:
        f = ConditionalICNN(d, c, hidden=(6,) * depth, condition_hidden=(8,), activation="softplus")
    _randomise(f, seed)
    f = f.double()
    condition = torch.randn(1 if single else m, c, dtype=torch.float64)
    x = torch.randn(*(() if single else (m,)), 9, d, dtype=torch.float64)
    with mock.patch.object(torch.nn.functional, "softplus", exact_softplus):
        values, gradient = f.value_and_gradient(x, condition)
        torch.testing.assert_close(values, f(x, condition))
        reference = potential_gradient(lambda points: f(points, condition), x, create_graph=True)
        torch.testing.assert_close(gradient, reference)
        # the conditional inner step differentiates ∇ₓf through the condition network as well
        params = list(f.parameters())
        ours = torch.autograd.grad(gradient.square().sum(), params, allow_unused=True,
                                   materialize_grads=True)
        theirs = torch.autograd.grad(reference.square().sum(), params, allow_unused=True,
                                     materialize_grads=True)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8 * (1 + float(b.abs().max())))


def test_condition_changes_the_potential_and_starts_neutral():
    f = ConditionalHyCNN(3, 2, hidden=(8, 8), tau=0.5)
    x = torch.randn(10, 3)
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 5.0])
    assert torch.allclose(f(x, a), f(x, b))  # zero-initialised heads: f(., c) = body
    _randomise(f, 0)
    assert not torch.allclose(f(x, a), f(x, b))


def test_condition_shape_errors():
    f = ConditionalHyCNN(3, 2, hidden=(8,), tau=0.5)
    with pytest.raises(ValueError, match="condition vectors of length 2"):
        f(torch.randn(5, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="one condition per leading index"):
        f(torch.randn(2, 5, 3), torch.zeros(3, 2))


def test_encoder_sums_the_singles_of_a_combination():
    encoder = ConditionEncoder(3, [], summary_features=0, dose=False, embedding_dim=4)
    singles = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 1.0, 0]])
    codes = encoder(singles, torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, 0), None)
    assert torch.allclose(codes[2], codes[0] + codes[1])


# ---------------------------------------------------------------------- the estimator
FAST = dict(n_iters=40, hidden=(16, 16), warm_start_iters=30, seed=0, batch_size=64)


def _three_conditions(rng):
    control = rng.normal(size=(300, 4))
    shifts = {"A": [2, 0, 0, 0], "B": [0, 2, 0, 0], "A+B": [2, 2, 0, 0]}
    targets = [rng.normal(size=(250, 4)) + s for s in shifts.values()]
    return control, list(shifts), targets


def test_fit_transport_seen_and_unseen_conditions():
    rng = np.random.default_rng(0)
    control, labels, targets = _three_conditions(rng)
    cmap = ConditionalTransportMap(**FAST).fit([control] * 3, targets, labels)
    assert cmap.singles_ == ["A", "B"]
    assert 0.0 <= cmap.residual_weight_ <= 1.0
    moved = cmap.transport(control, "A+B")
    assert moved.shape == control.shape
    np.testing.assert_allclose(moved.mean(0)[:2], [2, 2], atol=0.5)
    # "B+A" is the same combination as "A+B".
    np.testing.assert_allclose(cmap.transport(control, "B+A"), moved, atol=1e-5)
    # Linear parts: the condition's own for a seen one, additive for an unseen combination.
    only_singles = ConditionalTransportMap(**{**FAST, "residual": 0.0}).fit(
        [control] * 2, targets[:2], labels[:2])
    matrix, _, kind = only_singles.linear_part(only_singles.condition("A+B"))
    assert kind == "additive"
    np.testing.assert_allclose(matrix, np.eye(4))
    predicted = only_singles.transport(control, "A+B")
    np.testing.assert_allclose(predicted.mean(0)[:2], [2, 2], atol=0.3)


def _shrunk(source, target):
    return shrunk_mean_shift(*_moments(source), *_moments(target))


def test_shrunk_mean_shift_follows_the_james_stein_factor():
    rng = np.random.default_rng(0)
    source, target = rng.normal(size=(200, 8)), rng.normal(size=(100, 8)) + 0.3
    raw = target.mean(0) - source.mean(0)
    noise = source.var(0, ddof=1).sum() / 200 + target.var(0, ddof=1).sum() / 100
    factor = 1 - (8 - 2) * noise / (8 * raw @ raw)
    assert 0 < factor < 1
    np.testing.assert_allclose(_shrunk(source, target), factor * raw, rtol=1e-10)
    # A shift within its noise is set to zero (positive part), not flipped.
    np.testing.assert_array_equal(_shrunk(source, source[:100] + 1e-3), np.zeros(8))
    # Fewer than three features: James–Stein does not apply, the raw shift is returned.
    np.testing.assert_allclose(_shrunk(source[:, :2], target[:, :2]), raw[:2])
    # A clear shift is barely touched; a single cell has no noise estimate (raw shift).
    np.testing.assert_allclose(_shrunk(source, target + 5), raw + 5, rtol=0.01)
    assert _moments(target[:1])[1] == 0.0
    np.testing.assert_allclose(_shrunk(source[:1], target[:1]), target[0] - source[0])


def test_unseen_combination_does_not_add_a_single_without_effect():
    # "A" moves the cells; "N" is drawn from the control distribution (no effect). The additive
    # prediction of "A+N" should be A's shift, not A's plus N's sampling noise.
    rng = np.random.default_rng(3)
    d = 10
    control = rng.normal(size=(300, d))
    a_target = rng.normal(size=(120, d)) + np.r_[2.0, np.zeros(d - 1)]
    n_target = rng.normal(size=(120, d))
    cmap = ConditionalTransportMap(**{**FAST, "residual": 0.0}).fit(
        [control] * 2, [a_target, n_target], ["A", "N"])
    matrix, offset, kind = cmap.linear_part(cmap.condition("A+N"))
    assert kind == "additive"
    np.testing.assert_allclose(matrix, np.eye(d))
    np.testing.assert_allclose(offset, cmap.shift_[0] + cmap.shift_[1])
    raw_n = n_target.mean(0) - control.mean(0)
    assert np.linalg.norm(cmap.shift_[1]) < 0.5 * np.linalg.norm(raw_n / cmap.scale_)
    predicted = cmap.transport(control, "A+N").mean(0) - control.mean(0)
    raw_additive = a_target.mean(0) - control.mean(0) + raw_n
    truth = np.r_[2.0, np.zeros(d - 1)]
    assert np.linalg.norm(predicted - truth) < np.linalg.norm(raw_additive - truth)


def test_unseen_single_and_bad_conditions_are_refused():
    rng = np.random.default_rng(1)
    control, labels, targets = _three_conditions(rng)
    cmap = ConditionalTransportMap(**FAST).fit([control] * 3, targets, labels)
    with pytest.raises(ValueError, match=r"'C'.*never seen"):
        cmap.transport(control, "A+C")
    with pytest.raises(ValueError, match="empty single"):
        cmap.transport(control, "A++B")
    with pytest.raises(ValueError, match="fitted without doses"):
        cmap.transport(control, "A", dose=1.0)
    with pytest.raises(ValueError, match="0 context covariate"):
        cmap.transport(control, "A", context=("K562",))
    with pytest.raises(ValueError, match="same perturbation, context and dose"):
        ConditionalTransportMap(**FAST).fit([control] * 2, targets[:2], ["A", "A"])
    with pytest.raises(TypeError, match="doses must be numbers"):
        ConditionalTransportMap(**FAST).fit([control] * 2, targets[:2], ["A", "B"], doses=["x", 1])
    with pytest.raises(ValueError, match="context_dropout"):
        ConditionalTransportMap(context_dropout=1.5).fit([control], targets[:1], ["A"])


def test_contexts_new_context_from_its_own_controls():
    rng = np.random.default_rng(2)
    lines = {"L1": 0.0, "L2": 3.0, "L3": -3.0}
    sources, targets, perts, contexts = [], [], [], []
    for line, offset in lines.items():
        control = rng.normal(size=(200, 3)) + offset
        for pert, shift in (("P", [1.5, 0, 0]), ("Q", [0, 1.5, 0])):
            sources.append(control)
            targets.append(rng.normal(size=(200, 3)) + offset + shift)
            perts.append(pert)
            contexts.append((line,))
    cmap = ConditionalTransportMap(**FAST).fit(sources, targets, perts, contexts=contexts)
    assert cmap.context_values_ == [["L1", "L2", "L3"]]
    new_line = rng.normal(size=(150, 3)) + 10.0
    moved = cmap.transport(new_line, "P", context=("L4",))
    # Relative to the new line's own control mean, with the transferred response.
    np.testing.assert_allclose(moved.mean(0) - new_line.mean(0), [1.5, 0, 0], atol=0.5)
    with pytest.raises(ValueError, match="at least 10 needed"):
        cmap.transport(new_line[:3], "P", context=("L4",))
    kind = cmap.at("P", ("L4",)).linear_kind_
    assert kind == "transfer" and ("P", None) in cmap.transfer_
    again = ConditionalTransportMap.from_state(cmap.get_state(), device="cpu")
    np.testing.assert_array_equal(again.transport(new_line, "P", context=("L4",)), moved)


def test_doses_enter_the_condition():
    rng = np.random.default_rng(3)
    control = rng.normal(size=(200, 3))
    targets = [rng.normal(size=(200, 3)) + np.array([dose, 0, 0]) for dose in (0.5, 1.0, 2.0)]
    cmap = ConditionalTransportMap(**FAST).fit([control] * 3, targets, ["drug"] * 3,
                                               doses=[0.5, 1.0, 2.0])
    assert cmap.transport(control, "drug", dose=1.0).shape == control.shape
    with pytest.raises(ValueError, match="pass dose="):
        cmap.transport(control, "drug")


def test_state_and_save_load_identity(tmp_path):
    rng = np.random.default_rng(4)
    control, labels, targets = _three_conditions(rng)
    cmap = ConditionalTransportMap(**{**FAST, "residual": 0.5}).fit([control] * 3, targets, labels)
    cmap.save(tmp_path / "cmap")
    loaded = ConditionalTransportMap.load(tmp_path / "cmap", device="cpu")
    for label in ("A", "A+B"):
        np.testing.assert_array_equal(loaded.transport(control, label), cmap.transport(control, label))
    np.testing.assert_array_equal(loaded.inverse(targets[0], "A"), cmap.inverse(targets[0], "A"))
    state = cmap.get_state()
    del state["arrays"]["shift"]
    with pytest.raises(ValueError, match="Cannot rebuild a ConditionalTransportMap"):
        ConditionalTransportMap.from_state(state)


def test_same_seed_same_map():
    rng = np.random.default_rng(5)
    control, labels, targets = _three_conditions(rng)
    first = ConditionalTransportMap(**{**FAST, "residual": 1.0}).fit([control] * 3, targets, labels)
    second = ConditionalTransportMap(**{**FAST, "residual": 1.0}).fit([control] * 3, targets, labels)
    np.testing.assert_array_equal(first.transport(control, "A"), second.transport(control, "A"))


def test_not_fitted_error():
    for call in (lambda m: m.transport(np.zeros((3, 2)), "A"), lambda m: m.get_state(),
                 lambda m: m.at("A")):
        with pytest.raises(NotFittedError, match="not fitted"):
            call(ConditionalTransportMap())


def test_renamed_keywords_and_old_states(tmp_path):
    rng = np.random.default_rng(4)
    control, labels, targets = _three_conditions(rng)
    new = ConditionalTransportMap(**{**FAST, "residual": 1.0, "selection_fraction": 0.2})
    new = new.fit([control] * 3, targets, labels)
    with pytest.warns(FutureWarning, match="use selection_fraction="):
        old = ConditionalTransportMap(**{**FAST, "residual": 1.0, "validation_fraction": 0.2})
        old = old.fit([control] * 3, targets, labels)
    np.testing.assert_array_equal(new.transport(control, "A"), old.transport(control, "A"))
    state = old.get_state()
    assert "validation_fraction" not in state["params"]
    assert state["params"]["selection_fraction"] == 0.2
    # A state written before the rename: old parameter and history names.
    state = with_pre_rename_names(state)
    loaded = ConditionalTransportMap.from_state(state, device="cpu")
    assert loaded.selection_fraction == 0.2 and set(loaded.history_) == set(new.history_)
    np.testing.assert_array_equal(loaded.transport(control, "A+B"), new.transport(control, "A+B"))
    again = ConditionalTransportMap.from_state(loaded.get_state(), device="cpu")
    assert again.get_params() == loaded.get_params()
    for name, value in loaded.get_state()["fitted"].items():
        assert again.get_state()["fitted"][name] == value, name


def test_stacked_samples_draw_from_the_active_clouds_only():
    from hycnn_sc.models._minimax import StackedSamples

    clouds = [np.full((5, 2), float(k), dtype=np.float32) for k in range(4)]
    samples = StackedSamples(clouds, torch.device("cpu"))
    samples.active = torch.tensor([1, 3])
    batch = samples.sample(7, torch.Generator().manual_seed(0))
    assert batch.shape == (2, 7, 2)
    assert (batch[0] == 1).all() and (batch[1] == 3).all()
    samples.active = None
    assert samples.sample(3, torch.Generator().manual_seed(0)).shape == (4, 3, 2)


def test_fit_leaves_the_global_random_state_alone():
    rng = np.random.default_rng(6)
    control, labels, targets = _three_conditions(rng)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ConditionalTransportMap(**{**FAST, "n_iters": 2, "warm_start_iters": 0}).fit(
        [control] * 3, targets, labels)
    assert torch.equal(torch.rand(3), expected)


def test_pooled_scale_matches_the_concatenated_variance():
    from hycnn_sc.models.conditional_transport import _pooled_scale

    rng = np.random.default_rng(7)
    control = rng.normal(size=(50, 3)) * 2
    pairs = [(control, rng.normal(size=(30, 3)) + 1), (control, rng.normal(size=(20, 3)) * 3)]
    pooled = np.concatenate([np.concatenate(pair) for pair in pairs])
    assert _pooled_scale(pairs) == pytest.approx(np.sqrt(pooled.var(axis=0).mean()), rel=1e-10)


def test_shared_controls_are_stored_once(monkeypatch):
    from hycnn_sc.models import _minimax

    sizes = []
    original = _minimax.StackedSamples.__init__

    def record(self, arrays, device):
        original(self, arrays, device)
        sizes.append((len(arrays), len(self.values)))

    monkeypatch.setattr(_minimax.StackedSamples, "__init__", record)
    rng = np.random.default_rng(8)
    control, labels, targets = _three_conditions(rng)
    ConditionalTransportMap(**{**FAST, "n_iters": 2, "warm_start_iters": 0}).fit(
        [control] * 3, targets, labels)
    n_train_controls = sizes[0][1]
    assert sizes[0][0] == 3 and n_train_controls < len(control)  # one training control block


def _four_lines_two_perturbations(rng):
    sources, targets, perts, contexts = [], [], [], []
    for line, scale in (("L1", 0.5), ("L2", 1.0), ("L3", 1.5), ("L4", 2.0)):
        control = rng.normal(size=(150, 3))
        for pert, shift in (("P", [1.0, 0, 0]), ("Q", [0, 1.0, 0])):
            sources.append(control)
            targets.append(rng.normal(size=(150, 3)) + scale * np.asarray(shift))
            perts.append(pert)
            contexts.append((line,))
    return sources, targets, perts, contexts


def test_transfer_residual_is_chosen_on_withheld_conditions():
    sources, targets, perts, contexts = _four_lines_two_perturbations(np.random.default_rng(9))
    cmap = ConditionalTransportMap(**FAST).fit(sources, targets, perts, contexts=contexts)
    withheld = cmap.selection_["transfer_withheld"]
    assert len(withheld) == 1 and 0.0 <= cmap.residual_transfer_ <= 1.0
    pert, (line,) = withheld[0][0], withheld[0][1]
    assert cmap.residual_for(cmap.condition(pert, (line,))) == cmap.residual_weight_  # seen
    again = ConditionalTransportMap.from_state(cmap.get_state(), device="cpu")
    assert again.residual_transfer_ == cmap.residual_transfer_
    fixed = ConditionalTransportMap(**{**FAST, "residual": 0.5}).fit(
        sources, targets, perts, contexts=contexts)
    assert fixed.residual_transfer_ == 0.5 and "transfer_withheld" not in fixed.selection_


@pytest.mark.parametrize("n_iters", [40, "auto"])
def test_withheld_conditions_do_not_steer_training(monkeypatch, n_iters):
    # The conditions withheld to choose the transfer λ must stay unseen until that choice:
    # every held-out check (best iterate, cycles) maps and scores only the trained conditions.
    from hycnn_sc.models import _estimator, _minimax

    monkeypatch.setattr(_estimator, "AUTO_FIRST_CYCLE", 20)
    monkeypatch.setattr(_estimator, "AUTO_MIN_ITERS", 60)
    monkeypatch.setattr(_estimator, "AUTO_MAX_ITERS", 60)
    checked = []
    original = _minimax._validation_profiles

    def record(f, padded_source, sizes, targets, within_targets):
        checked.append((f.active.tolist(), len(sizes), len(targets)))
        return original(f, padded_source, sizes, targets, within_targets)

    monkeypatch.setattr(_minimax, "_validation_profiles", record)
    judged = []  # the cycles' criterion (n_iters="auto" only)
    original_judge = _minimax.held_out_energy

    def record_judge(f, g, validation):
        judged.append((f.active.tolist(), g.active.tolist(), len(validation[1])))
        return original_judge(f, g, validation)

    monkeypatch.setattr(_minimax, "held_out_energy", record_judge)
    sources, targets, perts, contexts = _four_lines_two_perturbations(np.random.default_rng(9))
    cmap = ConditionalTransportMap(**{**FAST, "n_iters": n_iters}).fit(
        sources, targets, perts, contexts=contexts)
    (pert, line), = cmap.selection_["transfer_withheld"]
    withheld = cmap.conditions_.index(cmap.condition(pert, line))
    trained = [k for k in range(len(cmap.conditions_)) if k != withheld]
    assert checked and all(check == (trained, 7, 7) for check in checked)
    assert all(check == (trained, trained, 7) for check in judged)
    assert bool(judged) == (n_iters == "auto")
    assert np.isfinite(cmap.history_["selection_energy"]).all()


def test_standardise_keeps_no_float64_copy_of_shared_controls():
    from hycnn_sc.models.conditional_transport import _standardise

    rng = np.random.default_rng(10)
    control = rng.normal(size=(40, 3)).astype(np.float32)
    targets = [rng.normal(size=(30, 3)).astype(np.float32) + k for k in range(3)]
    data = _standardise([(control, t) for t in targets], [()] * 3, 0.2, rng)
    kept = {what: value for (_, what), value in data.shared._made.items()}
    assert "centred" not in kept and kept["standard"].dtype == np.float32
    assert all(source is data.standard[0][0] for source, _ in data.standard)  # stored once
    centred = (control - control.mean(axis=0, dtype=np.float64)) / data.scale
    np.testing.assert_array_equal(data.standard[0][0], centred.astype(np.float32))
