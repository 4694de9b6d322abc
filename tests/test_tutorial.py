"""The tutorial notebook runs end to end (with a tiny training budget) and is committed stripped."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "tutorials" / "kang_ifnb.ipynb"
#: Outer iterations the test trains with (the notebook's default is larger).
TEST_ITERS = 30

# Appended to the executed copy only: checks the notebook's results and reports them as JSON.
CHECK_CELL = """
import json as _json
_table = adata.uns["hycnn"]["evaluation"]
assert isinstance(_table, pd.DataFrame) and not _table.empty
assert table is _table or table.equals(_table)
print("TUTORIAL_CHECK " + _json.dumps({
    "n_iters": N_ITERS,
    "n_rows": len(_table),
    "columns": list(_table.columns),
    "methods": sorted(_table["method"].unique()),
    "groups": sorted(_table["group"].unique()),
    "pooled_index": list(pooled.index),
    "n_predicted": int(predicted.n_obs),
    "saved": bool(path.is_file()),
    "per_type_strata": sorted(split_rep.index),
}))
"""


def _load():
    return nbformat.read(NOTEBOOK, as_version=4)


def test_tutorial_is_committed_without_outputs():
    nb = _load()
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "the tutorial has no code cells"
    dirty = [i for i, cell in enumerate(code) if cell.outputs or cell.execution_count is not None]
    assert not dirty, f"code cells {dirty} hold outputs: clear them before committing"
    # The test's budget reaches the notebook through this variable, in its first code cell.
    assert "HYCNN_TUTORIAL_ITERS" in code[0].source and "N_ITERS" in code[0].source


def _execute(nb, check_cell: str, tmp_path, monkeypatch) -> dict:
    """Run ``nb`` with ``check_cell`` appended (tiny budget) and return its JSON report."""
    nb.cells.append(nbformat.v4.new_code_cell(check_cell))
    # The kernel is a subprocess: it sees the package through PYTHONPATH even when it is not
    # installed (pytest's own `pythonpath = ["src"]` only affects this process).
    python_path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(ROOT / "src"), python_path) if p)
    )
    monkeypatch.setenv("HYCNN_TUTORIAL_ITERS", str(TEST_ITERS))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # the notebook's working directory
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    errors = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors
    text = "".join(
        output.get("text", "") for output in nb.cells[-1].outputs if output.output_type == "stream"
    )
    line = next(row for row in text.splitlines() if row.startswith("TUTORIAL_CHECK "))
    return json.loads(line[len("TUTORIAL_CHECK ") :])


def _n_figures(nb) -> int:
    """Figures drawn by the executed notebook's code cells."""
    return sum(
        "image/png" in output.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def test_tutorial_runs(tmp_path, monkeypatch):
    nb = _load()
    report = _execute(nb, CHECK_CELL, tmp_path, monkeypatch)

    assert report["n_iters"] == TEST_ITERS
    assert {
        "target",
        "group",
        "space",
        "method",
        "energy_distance",
        "mmd",
        "r2_mean",
        "signature_l2",
    } <= set(report["columns"])
    assert report["methods"] == ["gaussian_ot", "hycnn", "identity", "mean_shift", "observed"]
    assert "all" in report["groups"] and "CD14 Mono" in report["groups"]
    assert report["n_rows"] > 0 and report["n_predicted"] > 0
    assert report["saved"] and (tmp_path / "results" / "kang_ifnb1k_hycnn.h5ad").is_file()
    assert len(report["per_type_strata"]) == 6
    # The notebook renders its evaluation table (the pivot of group "all").
    assert any(
        "text/html" in output.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code" and cell.source.strip().endswith("pooled")
        for output in cell.outputs
    )


GLIOBLASTOMA = ROOT / "tutorials" / "glioblastoma_panobinostat.ipynb"

# Appended to the executed copy of the drug tutorial: reports its results as JSON.
GLIOBLASTOMA_CHECK = """
import json as _json
print("TUTORIAL_CHECK " + _json.dumps({
    "n_iters": N_ITERS,
    "n_predicted": int(predicted.n_obs),
    "scores_index": list(scores.index),
    "holdouts": sorted(folds["holdout"].unique()),
    "methods": sorted(folds["method"].unique()),
    "finite": bool(np.isfinite(per_fold.to_numpy()).all()),
}))
"""


def test_glioblastoma_tutorial_is_committed_without_outputs():
    nb = nbformat.read(GLIOBLASTOMA, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    dirty = [i for i, cell in enumerate(code) if cell.outputs or cell.execution_count is not None]
    assert not dirty, f"code cells {dirty} hold outputs: clear them before committing"


def test_glioblastoma_tutorial_runs(tmp_path, monkeypatch):
    """The drug tutorial (new-patient prediction, leave-one-patient-out) runs end to end."""
    nb = nbformat.read(GLIOBLASTOMA, as_version=4)
    report = _execute(nb, GLIOBLASTOMA_CHECK, tmp_path, monkeypatch)
    assert report["n_iters"] == TEST_ITERS
    assert report["n_predicted"] == 500  # the new patient's control cells
    assert report["scores_index"] == ["hycnn", "identity", "mean_shift", "gaussian_ot", "observed"]
    assert report["holdouts"] == ["PW030", "PW032", "PW034", "PW036", "PW040"]
    assert report["methods"] == ["gaussian_ot", "hycnn", "identity", "mean_shift", "observed"]
    assert report["finite"]
    # Every figure cell drew something.
    assert _n_figures(nb) >= 4


SCVI_TUTORIAL = ROOT / "tutorials" / "kang_scvi.ipynb"
#: scVI epochs the test trains the tutorial's model for.
TEST_EPOCHS = 3

# Appended to the executed copy of the scVI tutorial: reports its results as JSON.
SCVI_CHECK = """
import json as _json
print("TUTORIAL_CHECK " + _json.dumps({
    "n_iters": N_ITERS,
    "n_epochs": N_EPOCHS,
    "decoded_shape": list(decoded.shape),
    "library_matches": bool(np.allclose(decoded.layers["expected_counts"].sum(axis=1),
                                        np.asarray(adata.layers["counts"][sources].sum(axis=1)).ravel(),
                                        rtol=1e-3)),
    "methods": sorted(pooled.index),
    "columns": list(pooled.columns),
    "groups": sorted(gene["group"].unique()),
    "hycnn_pearson_delta": float(pooled.loc["hycnn", "pearson_delta"]),
}))
"""


def test_scvi_tutorial_is_committed_without_outputs():
    nb = nbformat.read(SCVI_TUTORIAL, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    dirty = [i for i, cell in enumerate(code) if cell.outputs or cell.execution_count is not None]
    assert not dirty, f"code cells {dirty} hold outputs: clear them before committing"
    assert "HYCNN_TUTORIAL_EPOCHS" in code[0].source and "HYCNN_TUTORIAL_ITERS" in code[0].source


def test_scvi_tutorial_runs(tmp_path, monkeypatch):
    """scVI on counts -> X_scVI -> fit_transport -> decode -> gene-space scores, end to end."""
    pytest.importorskip("scvi")
    monkeypatch.setenv("HYCNN_TUTORIAL_EPOCHS", str(TEST_EPOCHS))
    nb = nbformat.read(SCVI_TUTORIAL, as_version=4)
    report = _execute(nb, SCVI_CHECK, tmp_path, monkeypatch)
    assert report["n_iters"] == TEST_ITERS and report["n_epochs"] == TEST_EPOCHS
    assert report["decoded_shape"][1] == 2000 and report["library_matches"]
    assert report["methods"] == ["gaussian_ot", "hycnn", "identity", "mean_shift", "observed"]
    assert {"pearson_delta", "overlap_at_N", "de_direction_match", "mae_mean"} <= set(
        report["columns"])
    assert "all" in report["groups"] and "CD14 Mono" in report["groups"]
    assert -1.0 <= report["hycnn_pearson_delta"] <= 1.0
    assert _n_figures(nb) >= 2
