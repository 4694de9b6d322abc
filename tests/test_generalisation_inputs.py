"""Bad input to the generalisation API (``groups``, ``holdout``, frame/shrinkage/residual).

Same pattern as ``test_tl_inputs.py``: every failing call is checked for the exception type, a
message fragment that names the problem and the fix, that it came before any training (the
training entry point is replaced by a trap) and, for AnnData input, that ``adata`` (obs,
obsm, uns, layers, X) is exactly as it was.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_FIT
from test_tl_inputs import assert_unchanged, no_training, snapshot  # noqa: F401 (no_training: fixture)

from hycnn_sc.models.transport import TransportMap
from hycnn_sc.tl import evaluate, fit_transport

#: Tiny TransportMap settings (no fit_transport-only keywords).
MODEL = dict(n_iters=10, inner_steps=2, hidden=(8,), warm_start_iters=10, batch_size=64,
             device="cpu", seed=0)
PATIENTS = ("p0", "p1", "p2", "p3")


def _with_patients(adata):
    """Add ``obs['patient_id']``: four patients, each with control and stimulated cells."""
    rng = np.random.default_rng(0)
    adata.obs["patient_id"] = pd.Categorical(rng.choice(PATIENTS, adata.n_obs))
    return adata


@pytest.fixture
def kang_patients(kang):
    return _with_patients(kang)


@pytest.fixture(scope="module")
def kang_grouped(kang_base):
    """Kang cells with patients, one tiny map fitted with ``groups='patient_id'``. Copy it."""
    adata = _with_patients(kang_base.copy())
    fit_transport(adata, groupby="condition", source="control", groups="patient_id", **TINY_FIT)
    return adata


@pytest.fixture(scope="module")
def kang_split(kang_base):
    """Kang cells with patients, maps fitted per stratum of ``split_by='half'``. Copy it."""
    adata = _with_patients(kang_base.copy())
    adata.obs["half"] = pd.Categorical(np.where(np.arange(adata.n_obs) % 2 == 0, "a", "b"))
    fit_transport(adata, groupby="condition", source="control", split_by="half", **TINY_FIT)
    return adata


# ------------------------------------------------------------------------------ fit_transport
def _nan_patients(adata):
    labels = adata.obs["patient_id"].astype(object).to_numpy().copy()
    labels[:3] = np.nan
    adata.obs["patient_id"] = pd.Categorical(labels)


def _one_patient(adata):
    adata.obs["patient_id"] = pd.Categorical(np.full(adata.n_obs, "p0"))


def _continuous_patients(adata):
    adata.obs["patient_id"] = np.random.default_rng(0).normal(size=adata.n_obs)


# id: (mutation or None, fit_transport arguments, exception, message fragment regex)
GROUP_FIT_CASES = {
    "groups missing": (None, dict(groups="patient"), KeyError,
                       r"groups='patient' is not a column of adata.obs; available: \[.*'patient_id'"),
    "groups not a str": (None, dict(groups=["patient_id"]), TypeError,
                         r"groups must be the name of an obs column \(a str\), got \['patient_id'\]"),
    "groups NaN labels": (_nan_patients, dict(groups="patient_id"), ValueError,
                          r"groups='patient_id': obs\['patient_id'\] has 3 missing \(NaN\) label"
                          r".*adata\.obs\['patient_id'\]\.notna\(\)"),
    "groups continuous": (_continuous_patients, dict(groups="patient_id"), ValueError,
                          r"groups='patient_id'.*looks continuous.*astype\(str\)"),
    "groups is groupby": (None, dict(groups="condition"), ValueError,
                          r"groups='condition' equals groupby.*must contain cells of the source and "
                          r"the target\. Pass another obs column, e\.g\. groups='patient_id'"),
    "groups is split_by": (None, dict(groups="cell_type", split_by="cell_type"), ValueError,
                           r"groups='cell_type' equals split_by.*Pass another obs column"),
    "groups: one group": (_one_patient, dict(groups="patient_id"), ValueError,
                          r"groups='patient_id': target 'stimulated' has source and target cells "
                          r"in 1 group\(s\) of obs\['patient_id'\] \(\['p0'\]\); at least 2 are "
                          r"needed.*Use another column, or groups=None"),
    # orig.ident is IMMUNE_CTRL for control and IMMUNE_STIM for stimulated cells: no shared unit
    "groups confounded with condition": (None, dict(groups="orig.ident"), ValueError,
                                         r"target 'stimulated' has source and target cells in 0 "
                                         r"group\(s\) of obs\['orig.ident'\] \(\[\]\); at least 2 "
                                         r"are needed"),
    "frame='patient'": (None, dict(groups="patient_id", frame="patient"), ValueError,
                        r"Unknown frame 'patient'; choose 'auto', 'global', 'group' or 'within'"),
    "shrinkage=1.5": (None, dict(shrinkage=1.5), ValueError,
                      r"shrinkage must lie in \[0, 1\] \(0: Gaussian OT map, 1: mean shift\), got 1.5"),
    "residual='none'": (None, dict(residual="none"), ValueError,
                        r"residual must be 'auto' or a number in \[0, 1\] \(0: the linear map, "
                        r"1: the network alone\), got 'none'"),
}


@pytest.mark.parametrize("case", list(GROUP_FIT_CASES), ids=list(GROUP_FIT_CASES))
@pytest.mark.usefixtures("no_training")
def test_fit_transport_bad_groups(case, kang_patients):
    mutate, arguments, error, fragment = GROUP_FIT_CASES[case]
    if mutate is not None:
        mutate(kang_patients)
    before = snapshot(kang_patients)
    call = dict(groupby="condition", source="control", **TINY_FIT)
    call.update(arguments)
    with pytest.raises(error, match=fragment):
        fit_transport(kang_patients, **call)
    assert_unchanged(kang_patients, before)


def test_fit_transport_small_source_only_group_is_left_nan_with_a_warning(kang_patients):
    """A group without target cells is predicted from its own controls, if it has 10 of them."""
    adata = kang_patients
    labels = adata.obs["patient_id"].astype(str).to_numpy().copy()
    labels[np.flatnonzero((adata.obs["condition"] == "control").to_numpy())[:5]] = "lonely"
    adata.obs["patient_id"] = pd.Categorical(labels)
    with pytest.warns(UserWarning, match=r"group\(s\) \['lonely'\] of obs\['patient_id'\] have "
                      r"fewer than 10 source cells and no target cells: their predictions are "
                      r"left NaN"):
        fit_transport(adata, groupby="condition", source="control", groups="patient_id",
                      frame="group", **TINY_FIT)
    predicted = adata.obsm["hycnn_stimulated"]
    control = (adata.obs["condition"] == "control").to_numpy()
    assert np.isnan(predicted[labels == "lonely"]).all()
    assert np.isfinite(predicted[control & (labels != "lonely")]).all()


# ------------------------------------------------------------------------------ evaluate(holdout=)
def _lonely_batch(adata):
    """obs['batch'] where one batch holds stimulated cells only (no control cells)."""
    batch = adata.obs["patient_id"].astype(str).to_numpy().copy()
    batch[np.flatnonzero((adata.obs["condition"] == "stimulated").to_numpy())[:6]] = "b_extra"
    adata.obs["batch"] = pd.Categorical(batch)


def _one_site(adata):
    adata.obs["site"] = pd.Categorical(np.full(adata.n_obs, "s0"))


# id: (mutation or None, evaluate arguments, exception, message fragment regex)
HOLDOUT_CASES = {
    "holdout missing": (None, dict(holdout="donor"), KeyError,
                        r"holdout='donor' is not a column of adata.obs; available: \[.*'patient_id'"),
    "holdout is groupby": (None, dict(holdout="condition"), ValueError,
                           r"holdout='condition' equals groupby: hold out units that contain both "
                           r"control and perturbed cells, e.g. holdout='patient_id'"),
    "holdout group without control": (
        _lonely_batch, dict(holdout="batch"), ValueError,
        r"holdout='batch': group\(s\) \['b_extra'\] have no 'control' \(source\) cells.*Leave them "
        r"out first: adata = adata\[~adata\.obs\['batch'\]\.isin\(\['b_extra'\]\)\]\.copy\(\)"),
    "holdout not a str": (None, dict(holdout=["patient_id"]), TypeError,
                          r"holdout must be the name of an obs column \(a str\), got \['patient_id'\]"),
    "holdout int": (None, dict(holdout=3), TypeError, r"holdout must be the name of an obs column"),
    "holdout one group": (_one_site, dict(holdout="site"), ValueError,
                          r"holdout='site' has 1 group; leave-one-group-out needs at least 2"),
    "holdout NaN labels": (_nan_patients, dict(holdout="patient_id"), ValueError,
                           r"holdout='patient_id': obs\['patient_id'\] has 3 missing \(NaN\)"),
}


@pytest.mark.parametrize("case", list(HOLDOUT_CASES), ids=list(HOLDOUT_CASES))
@pytest.mark.usefixtures("no_training")
def test_evaluate_holdout_bad_input(case, kang_grouped):
    mutate, arguments, error, fragment = HOLDOUT_CASES[case]
    adata = kang_grouped.copy()
    if mutate is not None:
        mutate(adata)
    before = snapshot(adata)
    with pytest.raises(error, match=fragment):
        evaluate(adata, **arguments)
    assert_unchanged(adata, before)


@pytest.mark.usefixtures("no_training")
def test_evaluate_holdout_refuses_split_by_maps(kang_split):
    adata = kang_split.copy()
    before = snapshot(adata)
    with pytest.raises(ValueError, match=r"evaluate\(holdout=...\) refits maps without split_by "
                                         r"strata; refit with split_by=None \(use groups="):
        evaluate(adata, holdout="patient_id")
    assert_unchanged(adata, before)


# ------------------------------------------------------------------------------ TransportMap
def _grouped_points(n_per_group=30, groups=PATIENTS, d=3, seed=0):
    """Source and target points of several groups (each its own offset), with their labels."""
    rng = np.random.default_rng(seed)
    source, target, source_labels, target_labels = [], [], [], []
    for k, group in enumerate(groups):
        offset = np.array([3.0 * k, -1.5 * k, 0.0])[:d]
        source.append(rng.normal(size=(n_per_group, d)) + offset)
        target.append(rng.normal(size=(n_per_group, d)) + offset + 1.0)
        source_labels += [group] * n_per_group
        target_labels += [group] * n_per_group
    return (np.concatenate(source), np.concatenate(target), np.array(source_labels),
            np.array(target_labels))


@pytest.fixture
def no_fitting(monkeypatch):
    """TransportMap.fit validates inside fit_many: trap what comes after validation."""

    def trap(*args, **kwargs):
        raise AssertionError("TransportMap._fit_pairs was called: the error came after fitting began")

    monkeypatch.setattr(TransportMap, "_fit_pairs", trap)


SOURCE, TARGET, SOURCE_LABELS, TARGET_LABELS = _grouped_points()
N = len(SOURCE)
# id: (TransportMap arguments, fit keyword arguments, exception, message fragment regex)
MAP_CASES = {
    "shrinkage=-0.1": (dict(shrinkage=-0.1), {}, ValueError,
                       r"shrinkage must lie in \[0, 1\] \(0: Gaussian OT map, 1: mean shift\), got -0.1"),
    "shrinkage=1.5": (dict(shrinkage=1.5), {}, ValueError,
                      r"shrinkage must lie in \[0, 1\] \(0: Gaussian OT map, 1: mean shift\), got 1.5"),
    "shrinkage='x'": (dict(shrinkage="x"), {}, ValueError,
                      r"shrinkage must be 'auto' or a number in \[0, 1\] \(0: Gaussian OT map, "
                      r"1: mean shift\), got 'x'"),
    "shrinkage=True": (dict(shrinkage=True), {}, TypeError,
                       r"shrinkage must be a number in \[0, 1\].*got True"),
    "shrinkage=nan": (dict(shrinkage=float("nan")), {}, ValueError,
                      r"shrinkage must lie in \[0, 1\].*got nan"),
    "residual=2": (dict(residual=2), {}, ValueError,
                   r"residual must lie in \[0, 1\] \(0: the linear map, 1: the network alone\), got 2"),
    "residual='none'": (dict(residual="none"), {}, ValueError,
                        r"residual must be 'auto' or a number in \[0, 1\] \(0: the linear map, "
                        r"1: the network alone\), got 'none'"),
    "residual=None": (dict(residual=None), {}, TypeError,
                      r"residual must be a number in \[0, 1\].*got None"),
    "frame='patient'": (dict(frame="patient"), {}, ValueError,
                        r"Unknown frame 'patient'; choose 'auto', 'global', 'group' or 'within'"),
    "frame='group' without groups": (
        dict(frame="group"), {}, ValueError,
        r"frame='group' needs group labels \(source_groups and target_groups\) with at least two "
        r"groups present on both sides; pass them, or use frame='auto' or 'global'"),
    "frame='group' with one shared group": (
        dict(frame="group"),
        dict(source_groups=np.full(N, "p0"), target_groups=np.full(N, "p0")), ValueError,
        r"frame='group' needs group labels.*at least two groups present on both sides"),
    "source_groups too short": (
        {}, dict(source_groups=SOURCE_LABELS[:-1], target_groups=TARGET_LABELS), ValueError,
        rf"source_groups must hold one group label per row \({N}\), got shape \({N - 1},\)"),
    "target_groups 2-D": (
        {}, dict(source_groups=SOURCE_LABELS, target_groups=TARGET_LABELS[:, None]), ValueError,
        rf"target_groups must hold one group label per row \({N}\), got shape \({N}, 1\)"),
    "labels on source only": (
        {}, dict(source_groups=SOURCE_LABELS), ValueError,
        r"Pass group labels for both sides or for neither \(source_groups and target_groups\)"),
    "labels on target only": (
        {}, dict(target_groups=TARGET_LABELS), ValueError,
        r"Pass group labels for both sides or for neither"),
    "no shared label": (
        {}, dict(source_groups=SOURCE_LABELS, target_groups=np.char.add("x", TARGET_LABELS)),
        ValueError,
        r"No group of source_groups also occurs in target_groups: the map is learned from groups "
        r"with cells on both sides"),
    "None label": (
        {}, dict(source_groups=[*SOURCE_LABELS[:-1], None], target_groups=TARGET_LABELS),
        ValueError, r"source_groups holds 1 missing label\(s\) \(None/NaN\); give every row a group"),
    "NaN float labels": (
        {}, dict(source_groups=np.r_[np.zeros(N - 1), np.nan], target_groups=np.zeros(N)),
        ValueError, r"source_groups holds 1 missing label\(s\) \(None/NaN\); give every row a group"),
}


@pytest.mark.parametrize("case", list(MAP_CASES), ids=list(MAP_CASES))
def test_transport_map_bad_input(case, no_fitting):
    params, fit_kwargs, error, fragment = MAP_CASES[case]
    tmap = TransportMap(**{**MODEL, **params})
    source, target = SOURCE.copy(), TARGET.copy()
    with pytest.raises(error, match=fragment):
        tmap.fit(source, target, **fit_kwargs)
    assert not hasattr(tmap, "f_")
    np.testing.assert_array_equal(source, SOURCE)
    np.testing.assert_array_equal(target, TARGET)


def test_fit_many_group_lists_of_wrong_length(no_fitting):
    with pytest.raises(ValueError, match=r"source_groups and target_groups need one entry \(labels "
                                         r"or None\) per pair \(2\), got 1 and 2"):
        TransportMap.fit_many([SOURCE, SOURCE], [TARGET, TARGET], source_groups=[SOURCE_LABELS],
                              target_groups=[TARGET_LABELS, TARGET_LABELS], **MODEL)
    with pytest.raises(ValueError, match=r"Pass group labels for both sides or for neither "
                                         r"\(source_groups\[1\] and target_groups\[1\]\)"):
        TransportMap.fit_many([SOURCE, SOURCE], [TARGET, TARGET],
                              source_groups=[SOURCE_LABELS, SOURCE_LABELS],
                              target_groups=[TARGET_LABELS, None], **MODEL)


@pytest.mark.parametrize("kind", ["series", "categorical", "list"])
def test_nan_labels_in_pandas_or_lists_are_refused(kind, no_fitting):
    labels = [*SOURCE_LABELS[:-1], np.nan]
    labels = {"series": pd.Series(labels, dtype=object), "categorical": pd.Categorical(labels),
              "list": labels}[kind]
    with pytest.raises(ValueError, match=r"source_groups holds 1 missing label\(s\)"):
        TransportMap(**MODEL).fit(SOURCE, TARGET, source_groups=labels,
                                  target_groups=TARGET_LABELS)


# ------------------------------------------------------------------------------ group-frame inference
@pytest.fixture(scope="module")
def group_map():
    """A tiny map fitted with groups in the ``"group"`` frame. Never modify it."""
    return TransportMap(frame="group", **MODEL).fit(
        SOURCE, TARGET, source_groups=SOURCE_LABELS, target_groups=TARGET_LABELS
    )


def test_group_map_is_in_group_frame(group_map):
    assert group_map.frame_ == "group"
    assert sorted(group_map.group_means_) == list(PATIENTS)


def test_transport_of_few_rows_of_a_new_group(group_map):
    x = np.random.default_rng(1).normal(size=(5, 3))
    before = x.copy()
    # (the label is shown as np.str_('new') by the current message: accept both forms)
    with pytest.raises(ValueError, match=r"frame_='group'.*group (np\.str_\()?'new'\)? has only 5 "
                                         r"row\(s\), at least 10 are needed to estimate its mean\. "
                                         r"Pass all source \(control\) cells of the group, with "
                                         r"groups=labels"):
        group_map.transport(x, groups=["new"] * 5)
    with pytest.raises(ValueError, match=r"these points has only 5 row\(s\), at least 10"):
        group_map.transport(x)
    with pytest.raises(ValueError, match=r"has only 5 row\(s\), at least 10"):
        group_map.potential(x, groups=["new"] * 5)
    # A mix: the seen group is fine, the new one has too few rows.
    with pytest.raises(ValueError, match=r"'new'\)? has only 3 row\(s\)"):
        group_map.transport(x, groups=["p0", "p0", "new", "new", "new"])
    np.testing.assert_array_equal(x, before)
    # Seen groups need no minimum; 10 rows of a new group are enough.
    assert np.isfinite(group_map.transport(x, groups=["p1"] * 5)).all()
    assert np.isfinite(group_map.transport(np.tile(x, (2, 1)), groups=["new"] * 10)).all()


def test_inverse_of_an_unseen_group(group_map):
    y = np.random.default_rng(2).normal(size=(20, 3))
    with pytest.raises(ValueError, match=r"frame_='group'.*the inverse needs groups seen at fit "
                                         r"time, got (np\.str_\()?'new'\)?\. Known groups: "
                                         r"\['p0', 'p1', 'p2', 'p3'\]"):
        group_map.inverse(y, groups=["new"] * 20)
    with pytest.raises(ValueError, match=r"the inverse needs groups seen at fit time"):
        group_map.inverse(y)  # groups=None: not a group seen at fit time
    assert np.isfinite(group_map.inverse(y, groups=["p2"] * 20)).all()


def test_group_labels_of_wrong_length_at_inference(group_map):
    x = np.random.default_rng(3).normal(size=(20, 3))
    with pytest.raises(ValueError, match=r"groups must hold one group label per row \(20\), got "
                                         r"shape \(19,\)"):
        group_map.transport(x, groups=["p0"] * 19)
    with pytest.raises(ValueError, match=r"groups holds 1 missing label\(s\)"):
        group_map.transport(x, groups=["p0"] * 19 + [None])


def test_evaluate_holdout_group_with_few_controls(kang_patients, monkeypatch):
    adata = kang_patients
    fit_transport(adata, groupby="condition", source="control", groups="patient_id",
                  frame="group", **{**TINY_FIT, "holdout_fraction": 0.0})
    labels = adata.obs["patient_id"].astype(str).to_numpy().copy()
    control_p3 = np.flatnonzero((labels == "p3") & (adata.obs["condition"] == "control").to_numpy())
    labels[control_p3[6:]] = "p0"  # p3 keeps 6 control cells and all its stimulated cells
    adata.obs["patient_id"] = pd.Categorical(labels)
    calls = []
    original = TransportMap.fit_many.__func__

    def counting(cls, *args, **kwargs):
        calls.append(1)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(TransportMap, "fit_many", classmethod(counting))
    before = snapshot(adata)
    try:
        table = evaluate(adata, holdout="patient_id")
    except ValueError:
        assert not calls, "the error came after refitting began"
        assert_unchanged(adata, before)
    else:
        assert set(table["holdout"]) <= set(PATIENTS)
