"""Tests for hycnn_sc.datasets: shipped loaders and the GEO-backed Kang 2018 loader."""

from __future__ import annotations

import gzip
import urllib.error
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from hycnn_sc import datasets
from hycnn_sc.datasets import (
    _cache,
    _kang2018,
    _shipped,
    glioblastoma_panobinostat,
    kang2018,
    kang_ifnb1k,
    perturbseq_devel,
)

# ----------------------------------------------------------------------------- shipped data


def _is_categorical(series: pd.Series) -> bool:
    return isinstance(series.dtype, pd.CategoricalDtype)


def test_public_api():
    assert set(datasets.__all__) == {
        "GaussianMixture",
        "W2BenchmarkPair",
        "w2_benchmark_pair",
        "glioblastoma_panobinostat",
        "kang2018",
        "kang_ifnb1k",
        "perturbseq_devel",
    }


def test_kang_ifnb1k_contents():
    adata = kang_ifnb1k()
    assert adata.shape == (832, 14053)
    assert sp.issparse(adata.X) and adata.X.format == "csr"
    assert adata.X.dtype == np.float32
    # raw integer UMI counts
    data = adata.X.data
    assert np.all(data >= 0) and np.array_equal(data, np.round(data))
    assert data.max() == 862
    np.testing.assert_allclose(np.asarray(adata.X.sum(axis=1)).ravel(), adata.obs["nCount_RNA"])
    for column in ("condition", "cell_type"):
        assert _is_categorical(adata.obs[column])
    assert list(adata.obs["condition"].cat.categories) == ["control", "stimulated"]
    assert adata.obs["condition"].value_counts().to_dict() == {"stimulated": 441, "control": 391}
    assert set(adata.obs["cell_type"].cat.categories) == {
        "CD14 Mono",
        "CD4 Naive T",
        "CD4 Memory T",
        "CD16 Mono",
        "B",
        "CD8 T",
    }
    # every cell type occurs in both conditions
    table = pd.crosstab(adata.obs["cell_type"], adata.obs["condition"])
    assert (table.to_numpy() > 0).all()
    assert adata.obs_names.is_unique and adata.var_names.is_unique


def test_perturbseq_devel_contents():
    adata = perturbseq_devel()
    assert adata.shape == (5961, 500)
    assert sp.issparse(adata.X) and adata.X.format == "csr"
    assert adata.X.dtype == np.float64
    # log1p-normalised: non-negative, mostly non-integer, bounded
    data = adata.X.data
    assert data.min() >= 0 and data.max() < 7
    assert not np.array_equal(data, np.round(data))
    assert "log1p" in adata.uns
    for column in ("condition", "perturbation", "cell_type"):
        assert _is_categorical(adata.obs[column])
    conditions = adata.obs["condition"]
    assert conditions.cat.categories[0] == "control"
    assert len(conditions.cat.categories) == 34
    assert (conditions == "control").sum() == 400
    assert conditions.astype(str).equals(adata.obs["perturbation"].astype(str))
    assert adata.obs["cell_type"].value_counts().to_dict() == {
        "k562": 3375,
        "T98G": 871,
        "U87MG": 865,
        "A172": 850,
    }
    controls = adata.obs.loc[conditions == "control", "cell_type"].value_counts()
    assert (controls == 100).all()
    assert (conditions.astype(str).str.count(r"\+") == 1).groupby(
        conditions, observed=True
    ).all().sum() == 15


def test_glioblastoma_panobinostat_contents():
    adata = glioblastoma_panobinostat()
    assert adata.shape == (5000, 300)
    assert sp.issparse(adata.X) and adata.X.format == "csr"
    assert adata.X.dtype == np.float32
    # raw integer UMI counts
    data = adata.X.data
    assert np.all(data >= 0) and np.array_equal(data, np.round(data))
    assert data.max() == 1318
    assert np.asarray(adata.X.sum(axis=1)).min() > 0
    obs = adata.obs
    assert {"condition", "treatment", "patient_id", "sample_id", "treatment_id"} <= set(obs)
    for column in ("condition", "treatment", "patient_id", "sample_id"):
        assert _is_categorical(obs[column]), column
    assert list(obs["condition"].cat.categories) == ["ctrl", "panobinostat"]
    patients = ["PW030", "PW032", "PW034", "PW036", "PW040"]
    assert list(obs["patient_id"].cat.categories) == patients
    # 5 patients × (500 control + 500 treated)
    table = pd.crosstab(obs["patient_id"], obs["condition"])
    assert table.index.tolist() == patients
    assert (table.to_numpy() == 500).all() and table.shape == (5, 2)
    # treatment agrees with condition; one control and one treated sample per patient
    assert pd.crosstab(obs["treatment"], obs["condition"]).to_dict() == {
        "ctrl": {"0.2 uM panobinostat": 0, "vehicle (DMSO)": 2500},
        "panobinostat": {"0.2 uM panobinostat": 2500, "vehicle (DMSO)": 0},
    }
    assert obs["sample_id"].nunique() == 10
    assert (obs.groupby("sample_id", observed=True)["condition"].nunique() == 1).all()
    assert (
        obs["sample_id"].astype(str).str.split("-").str[0] == obs["patient_id"].astype(str)
    ).all()
    # genes: Ensembl IDs with symbols
    assert adata.var_names.str.startswith("ENSG").all()
    symbols = adata.var["symbol"]
    assert symbols.notna().all() and (symbols.astype(str).str.len() > 0).all()
    assert symbols.is_unique and "SPP1" in set(symbols)
    assert adata.obs_names.is_unique and adata.var_names.is_unique


def test_ensure_categoricals_puts_control_label_first():
    obs = pd.DataFrame(
        {
            "condition": ["panobinostat", "ctrl", "a"],
            "perturbation": ["b", "control", "ctrl"],  # "control" wins over "ctrl"
            "cell_type": ["x", "y", "x"],
            "patient_id": ["P2", "P1", "P2"],
            "other": ["ctrl", "b", "a"],  # not a label column: left alone
        }
    )
    _shipped._ensure_categoricals(obs)
    assert list(obs["condition"].cat.categories) == ["ctrl", "a", "panobinostat"]
    assert list(obs["perturbation"].cat.categories) == ["control", "b", "ctrl"]
    assert list(obs["cell_type"].cat.categories) == ["x", "y"]
    assert list(obs["patient_id"].cat.categories) == ["P1", "P2"]
    assert not _is_categorical(obs["other"])


@pytest.mark.parametrize("loader", [kang_ifnb1k, perturbseq_devel, glioblastoma_panobinostat])
def test_shipped_loaders_return_independent_objects(loader):
    first = loader()
    second = loader()
    assert first is not second
    first.X.data[:] = -1.0
    first.obs["condition"] = "changed"
    third = loader()
    assert second.X.data.min() >= 0 and third.X.data.min() >= 0
    assert (third.obs["condition"] != "changed").all()
    assert _is_categorical(third.obs["condition"])
    if "symbol" in first.var:  # gene annotation is not shared either
        first.var["symbol"] = "changed"
        assert (loader().var["symbol"] != "changed").all()


# ------------------------------------------------------------------------------- Kang 2018

_GENES = [
    ("ENSG00000000001", "GENEA"),
    ("ENSG00000000002", "GENEB"),
    ("ENSG00000000003", "DUP"),
    ("ENSG00000000004", "DUP"),
    ("ENSG00000000005", "GENEE"),
]
_CTRL_BARCODES = ["AAACATACAATGCC-1", "AAACATACATTTCC-1", "AAACATACCAGAAA-1", "AAACATACCAGCTA-1"]
_STIM_BARCODES = ["AAACATACAATGCC-1", "AAACATACCCCTCA-1", "AAACATACCGGAGA-1", "AAACATACCAGCTA-1"]


def _write_gz_text(path: Path, text: str) -> None:
    with gzip.open(path, "wt") as handle:
        handle.write(text)


def _write_gz_mtx(path: Path, genes_by_cells: np.ndarray) -> None:
    raw = path.with_suffix("")  # drop .gz
    scipy.io.mmwrite(raw, sp.coo_matrix(genes_by_cells.astype(np.int64)), field="integer")
    path.write_bytes(gzip.compress(raw.read_bytes()))
    raw.unlink()


def _counts(n_cells: int, offset: int) -> np.ndarray:
    """Genes × cells counts whose entry (g, c) encodes its position: 10 * (offset + c) + g."""
    cells = np.arange(n_cells)[None, :] + offset
    genes = np.arange(len(_GENES))[:, None]
    counts = 10 * cells + genes
    counts[1, :] = 0  # one all-zero gene, as in real data
    return counts


def _write_fake_geo(directory: Path, *, header_style: str = "r") -> None:
    """Tiny GSE96583 batch-2 deposit in the GEO file formats."""
    directory.mkdir(parents=True, exist_ok=True)
    _write_gz_text(
        directory / "GSE96583_batch2.genes.tsv.gz", "".join(f"{i}\t{s}\n" for i, s in _GENES)
    )
    _write_gz_text(
        directory / "GSM2560248_barcodes.tsv.gz", "".join(f"{b}\n" for b in _CTRL_BARCODES)
    )
    _write_gz_text(
        directory / "GSM2560249_barcodes.tsv.gz", "".join(f"{b}\n" for b in _STIM_BARCODES)
    )
    _write_gz_mtx(directory / "GSM2560248_2.1.mtx.gz", _counts(len(_CTRL_BARCODES), 0))
    _write_gz_mtx(directory / "GSM2560249_2.2.mtx.gz", _counts(len(_STIM_BARCODES), 100))
    # The authors' table (R write.table): stimulated barcodes that repeat a control
    # barcode carry "-11"; it lists doublets/ambiguous droplets; a control barcode of the
    # matrix (AAACATACCAGCTA-1) is not in it, and it has one control singlet that is not
    # in the matrix (dropped with a warning). Rows are not in matrix order.
    rows = [
        ("AAACATACCAGAAA-1", -1.5, 2.5, 1015, "ctrl", 3, "CD14+ Monocytes", "singlet"),
        ("AAACATACAATGCC-1", 1.0, -2.0, 101, "ctrl", 1, "CD4 T cells", "singlet"),
        ("AAACATACATTTCC-1", 0.5, 0.5, 107, "ctrl", 2, "B cells", "doublet"),
        ("AAACATACAATGCC-11", 3.0, 4.0, 101, "stim", 1, "CD4 T cells", "singlet"),
        ("AAACATACCCCTCA-1", 5.0, 6.0, 1244, "stim", 5, "NK cells", "singlet"),
        ("AAACATACCGGAGA-1", 7.0, 8.0, 107, "stim", 2, "B cells", "ambs"),
        ("AAACATACCAGCTA-11", 9.0, 10.0, 1488, "stim", 6, "Dendritic cells", "singlet"),
        ("AAACATACGGGGGG-1", 0.0, 0.0, 1488, "ctrl", 6, "Dendritic cells", "singlet"),
    ]
    columns = ["tsne1", "tsne2", "ind", "stim", "cluster", "cell", "multiplets"]
    if header_style == "r":  # quoted, header one field shorter than the rows
        header = "\t".join(f'"{c}"' for c in columns)
        body = [
            "\t".join(
                [
                    f'"{r[0]}"',
                    *map(str, r[1:3]),
                    str(r[3]),
                    f'"{r[4]}"',
                    str(r[5]),
                    f'"{r[6]}"',
                    f'"{r[7]}"',
                ]
            )
            for r in rows
        ]
    else:  # unquoted, empty first header field
        header = "\t" + "\t".join(columns)
        body = ["\t".join(map(str, r)) for r in rows]
    _write_gz_text(
        directory / "GSE96583_batch2.total.tsne.df.tsv.gz", "\n".join([header, *body]) + "\n"
    )


@pytest.mark.parametrize("header_style", ["r", "plain"])
def test_read_kang2018_files_parses_geo_formats(tmp_path, header_style):
    _write_fake_geo(tmp_path, header_style=header_style)
    with pytest.warns(UserWarning, match="not in GSM2560248_barcodes"):
        adata = _kang2018._read_kang2018_files(tmp_path)

    # control singlets (matrix order), then stimulated singlets (matrix order)
    expected_names = [
        "AAACATACAATGCC-1",
        "AAACATACCAGAAA-1",
        "AAACATACAATGCC-11",
        "AAACATACCCCTCA-1",
        "AAACATACCAGCTA-11",
    ]
    assert adata.obs_names.tolist() == expected_names
    assert adata.shape == (5, len(_GENES))
    assert adata.var_names.tolist() == ["GENEA", "GENEB", "DUP", "DUP-1", "GENEE"]
    assert adata.var["gene_ids"].tolist() == [g for g, _ in _GENES]

    assert sp.issparse(adata.X) and adata.X.format == "csr" and adata.X.dtype == np.float32
    dense = adata.X.toarray()
    # rows come from the right library and column: ctrl cells 0, 2; stim cells 0, 1, 3
    for row, cell_code in enumerate([0, 2, 100, 101, 103]):
        expected = 10 * cell_code + np.arange(len(_GENES), dtype=np.float32)
        expected[1] = 0
        np.testing.assert_array_equal(dense[row], expected)

    obs = adata.obs
    for column in ("condition", "cell_type", "donor", "cluster", "stim", "sample"):
        assert isinstance(obs[column].dtype, pd.CategoricalDtype), column
    assert list(obs["condition"].cat.categories) == ["control", "stimulated"]
    assert obs["condition"].tolist() == ["control"] * 2 + ["stimulated"] * 3
    assert obs["cell_type"].tolist() == [
        "CD4 T cells",
        "CD14+ Monocytes",
        "CD4 T cells",
        "NK cells",
        "Dendritic cells",
    ]
    assert obs["donor"].tolist() == ["101", "1015", "101", "1244", "1488"]
    assert obs["cluster"].tolist() == ["1", "3", "1", "5", "6"]
    assert obs["sample"].tolist() == ["GSM2560248"] * 2 + ["GSM2560249"] * 3
    assert obs["barcode"].tolist() == [
        "AAACATACAATGCC-1",
        "AAACATACCAGAAA-1",
        "AAACATACAATGCC-1",
        "AAACATACCCCTCA-1",
        "AAACATACCAGCTA-1",
    ]
    np.testing.assert_array_equal(
        adata.obsm["X_tsne"], [[1.0, -2.0], [-1.5, 2.5], [3.0, 4.0], [5.0, 6.0], [9.0, 10.0]]
    )
    assert adata.uns["source"]["geo_series"] == "GSE96583"


def test_read_kang2018_files_rejects_mismatched_matrix(tmp_path):
    _write_fake_geo(tmp_path)
    _write_gz_mtx(tmp_path / "GSM2560248_2.1.mtx.gz", np.ones((len(_GENES) + 1, 2)))
    with pytest.raises(ValueError, match=r"GSM2560248_2\.1\.mtx\.gz has shape"):
        _kang2018._read_kang2018_files(tmp_path)


def test_kang2018_uses_cached_files_without_network(tmp_path, monkeypatch):
    _write_fake_geo(tmp_path)

    def no_network(*args, **kwargs):
        raise AssertionError("kang2018 tried to download although the files are cached")

    monkeypatch.setattr(_kang2018, "_download", no_network)
    with pytest.warns(UserWarning, match="not in GSM2560248_barcodes"):
        first = kang2018(cache_dir=tmp_path, progress=False)
    processed = tmp_path / _kang2018._PROCESSED_FILE
    assert processed.is_file()
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind
    assert first.n_obs == 5

    # second call: served from the cached h5ad, without re-parsing the raw files
    def no_parse(*args, **kwargs):
        raise AssertionError("kang2018 re-parsed the raw files although the h5ad is cached")

    monkeypatch.setattr(_kang2018, "_read_kang2018_files", no_parse)
    second = kang2018(cache_dir=tmp_path)
    assert second is not first
    assert second.obs_names.tolist() == first.obs_names.tolist()
    assert second.var_names.tolist() == first.var_names.tolist()
    np.testing.assert_array_equal(second.X.toarray(), first.X.toarray())
    assert isinstance(second.X, sp.csr_matrix | sp.csr_array)
    assert list(second.obs["condition"].cat.categories) == ["control", "stimulated"]
    pd.testing.assert_frame_equal(second.obs, first.obs)
    np.testing.assert_array_equal(second.obsm["X_tsne"], first.obsm["X_tsne"])


def test_kang2018_default_cache_dir_is_scanpy_datasetdir(tmp_path, monkeypatch):
    import scanpy as sc

    _write_fake_geo(tmp_path / "kang2018")
    monkeypatch.setattr(_kang2018, "_download", lambda *a, **k: pytest.fail("network access"))
    previous = sc.settings.datasetdir  # a class property: monkeypatch cannot restore it
    sc.settings.datasetdir = tmp_path
    try:
        with pytest.warns(UserWarning):
            adata = kang2018(progress=False)
    finally:
        sc.settings.datasetdir = previous
    assert adata.n_obs == 5
    assert (tmp_path / "kang2018" / _kang2018._PROCESSED_FILE).is_file()


def test_kang2018_offline_error_names_url_and_cache_dir(tmp_path, monkeypatch):
    _write_fake_geo(tmp_path)
    (tmp_path / "GSE96583_batch2.total.tsne.df.tsv.gz").unlink()
    requested = []

    def offline(url, destination, *, progress=True):
        requested.append(url)
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(_kang2018, "_download", offline)
    with pytest.raises(ConnectionError) as info:
        kang2018(cache_dir=tmp_path, progress=False)
    url = "https://ftp.ncbi.nlm.nih.gov/geo/series/GSE96nnn/GSE96583/suppl/GSE96583_batch2.total.tsne.df.tsv.gz"
    assert requested == [url]  # only the missing file is requested
    message = str(info.value)
    assert url in message and str(tmp_path) in message
    assert "GSM2560248_2.1.mtx.gz" in message  # lists every file to place by hand


def test_remote_urls_follow_geo_layout():
    urls = _kang2018._remote_files()
    assert urls["GSM2560248_2.1.mtx.gz"] == (
        "https://ftp.ncbi.nlm.nih.gov/geo/samples/GSM2560nnn/GSM2560248/suppl/GSM2560248_2.1.mtx.gz"
    )
    assert urls["GSM2560249_barcodes.tsv.gz"] == (
        "https://ftp.ncbi.nlm.nih.gov/geo/samples/GSM2560nnn/GSM2560249/suppl/GSM2560249_barcodes.tsv.gz"
    )
    assert urls["GSE96583_batch2.genes.tsv.gz"] == (
        "https://ftp.ncbi.nlm.nih.gov/geo/series/GSE96nnn/GSE96583/suppl/GSE96583_batch2.genes.tsv.gz"
    )
    assert len(urls) == 6


def test_parsing_helpers():
    assert _kang2018._geo_url("samples", "GSM2560248", "f.gz") == (
        "https://ftp.ncbi.nlm.nih.gov/geo/samples/GSM2560nnn/GSM2560248/suppl/f.gz"
    )
    assert _kang2018._find_column(pd.DataFrame(columns=["Cell", "stim"]), "cell.type", "cell") == "Cell"
    assert _kang2018._find_column(pd.DataFrame(columns=["stim"]), "cell") is None
    assert list(_kang2018._barcode_core(pd.Index(["AAAC-1", "AAAC-11", "GGTT.2", "CC"]))) == [
        "AAAC", "AAAC", "GGTT", "CC"
    ]
    assert _kang2018._as_labels(pd.Series([101.0, None, " B cells"])) == ["101", None, "B cells"]
    table = pd.DataFrame({"stim": ["stim"], "ind": [101.0]}, index=["AAAC-11"])
    rows, matched = _kang2018._match_rows(table, np.array(["GGTT-1", "AAAC-1"]), _kang2018._SAMPLES[1])
    assert rows.tolist() == [1] and matched.index.tolist() == ["AAAC-11"]
    obs = _kang2018._sample_obs(matched, np.array(["AAAC-1"]), _kang2018._SAMPLES[1])
    assert obs.to_dict("records") == [
        {"condition": "stimulated", "donor": "101", "stim": "stim", "sample": "GSM2560249",
         "barcode": "AAAC-1"}
    ]


def test_download_is_atomic(tmp_path):
    source = tmp_path / "source.bin"
    payload = np.random.default_rng(0).bytes(3 * _cache._CHUNK_BYTES + 17)
    source.write_bytes(payload)
    target = tmp_path / "cache" / "file.gz"
    _cache.download(source.as_uri(), target, progress=False)
    assert target.read_bytes() == payload
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.gz"]

    # a failing transfer leaves neither the final file nor a partial one
    missing = tmp_path / "cache" / "other.gz"
    with pytest.raises(OSError):
        _cache.download((tmp_path / "absent.bin").as_uri(), missing, progress=False)
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.gz"]
