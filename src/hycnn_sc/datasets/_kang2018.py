"""Download and parse the full Kang et al. 2018 IFN-β PBMC data from GEO (GSE96583, batch 2)."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from .._warnings import warn_user
from ._cache import download as _download
from ._cache import resolve_cache_dir
from ._shipped import _ensure_categoricals

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["kang2018"]

_GEO = "https://ftp.ncbi.nlm.nih.gov/geo"
_SERIES = "GSE96583"
_GENES_FILE = "GSE96583_batch2.genes.tsv.gz"
_METADATA_FILE = "GSE96583_batch2.total.tsne.df.tsv.gz"
#: parsed singlet AnnData, written into the cache directory after the first parse.
#: The suffix is bumped whenever the parsed layout changes, so stale caches are ignored.
_PROCESSED_FILE = "kang2018_singlets_v1.h5ad"
_CACHE_SUBDIR = "kang2018"
_CONDITIONS = ("control", "stimulated")
_REFERENCE = (
    "Kang HM et al. Multiplexed droplet single-cell RNA-sequencing using natural "
    "genetic variation. Nat Biotechnol 36, 89-94 (2018). doi:10.1038/nbt.4042"
)


@dataclass(frozen=True)
class _Sample:
    """One 10x library of batch 2 (a GEO sample)."""

    gsm: str
    stim: str  # label used in the ``stim`` column of the tsne.df table
    condition: str
    matrix: str
    barcodes: str


_SAMPLES = (
    _Sample("GSM2560248", "ctrl", "control", "GSM2560248_2.1.mtx.gz", "GSM2560248_barcodes.tsv.gz"),
    _Sample(
        "GSM2560249", "stim", "stimulated", "GSM2560249_2.2.mtx.gz", "GSM2560249_barcodes.tsv.gz"
    ),
)


def _geo_url(kind: str, accession: str, filename: str) -> str:
    """HTTPS URL of a supplementary file of a GEO ``series`` (GSE) or ``samples`` (GSM) entry."""
    # GEO groups accessions in directories named after all but the last three digits:
    # GSE96583 -> series/GSE96nnn/GSE96583/suppl/<filename>.
    return f"{_GEO}/{kind}/{accession[:-3]}nnn/{accession}/suppl/{filename}"


def _remote_files() -> dict[str, str]:
    """The six raw files :func:`kang2018` needs, file name -> URL, in download order."""
    files = {}
    for sample in _SAMPLES:
        for name in (sample.matrix, sample.barcodes):
            files[name] = _geo_url("samples", sample.gsm, name)
    for name in (_GENES_FILE, _METADATA_FILE):
        files[name] = _geo_url("series", _SERIES, name)
    return files


def kang2018(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    force_download: bool = False,
    progress: bool = True,
) -> AnnData:
    """Full Kang et al. 2018 IFN-β PBMC data (GEO GSE96583, batch 2), downloaded and cached.

    Peripheral blood mononuclear cells pooled from eight lupus patients and
    profiled by 10x Genomics droplet scRNA-seq, either untreated (GSM2560248,
    library ``2.1``) or after 6 h of interferon-β stimulation (GSM2560249, library
    ``2.2``). Donor identity and doublets were called genetically with demuxlet
    (Kang et al., "Multiplexed droplet single-cell RNA-sequencing using natural
    genetic variation", Nat. Biotechnol. 36, 89–94, 2018). The GEO deposit holds
    35,635 genes × 29,065 barcodes; this loader keeps the demuxlet singlets.

    On the first call the six raw supplementary files are downloaded from GEO into
    the cache directory (each to a temporary file that is renamed into place only
    when complete), parsed, and the result is saved there as an ``.h5ad`` file that
    later calls read directly, without network access. Raw files already in the
    cache are never downloaded again (unless ``force_download``), so on an offline
    machine the files can be fetched elsewhere and copied into the cache directory
    under their GEO names:

    - ``GSM2560248_2.1.mtx.gz``, ``GSM2560248_barcodes.tsv.gz`` from
      https://ftp.ncbi.nlm.nih.gov/geo/samples/GSM2560nnn/GSM2560248/suppl/
    - ``GSM2560249_2.2.mtx.gz``, ``GSM2560249_barcodes.tsv.gz`` from
      https://ftp.ncbi.nlm.nih.gov/geo/samples/GSM2560nnn/GSM2560249/suppl/
    - ``GSE96583_batch2.genes.tsv.gz``, ``GSE96583_batch2.total.tsne.df.tsv.gz`` from
      https://ftp.ncbi.nlm.nih.gov/geo/series/GSE96nnn/GSE96583/suppl/

    Parameters
    ----------
    cache_dir
        Directory for the raw and parsed files. Defaults to
        ``scanpy.settings.datasetdir / "kang2018"``.
    force_download
        Download the raw files again and re-parse them, even when cached.
    progress
        Show a :mod:`tqdm` progress bar while downloading.

    Returns
    -------
    AnnData
        A new object on every call (cells × 35,635 genes) with

        ``X``
            Raw UMI counts, ``scipy.sparse`` CSR matrix of ``float32``.
        ``obs_names``
            Cell barcodes as in the authors' tsne.df table: the 10x barcode
            (``"AAACATACAATGCC-1"``), with ``"-11"`` instead of ``"-1"`` for
            stimulated barcodes that also occur in the control library.
        ``var_names``
            Gene symbols, made unique by appending ``-1``, ``-2``, ….
        ``var['gene_ids']``
            Ensembl gene ids.
        ``obs['condition']``
            Categorical, ``['control', 'stimulated']``.
        ``obs['cell_type']``
            Categorical, the authors' annotation (column ``cell``; e.g.
            ``CD4 T cells``, ``CD14+ Monocytes``, ``B cells``, ``NK cells``,
            ``CD8 T cells``, ``FCGR3A+ Monocytes``, ``Dendritic cells``,
            ``Megakaryocytes``).
        ``obs['donor']``
            Categorical demuxlet donor id (column ``ind``, eight donors).
        ``obs['cluster']``
            Categorical, the authors' cluster number.
        ``obs['stim']``
            Categorical, the original label, ``ctrl`` / ``stim``.
        ``obs['sample']``
            Categorical GEO sample, ``GSM2560248`` (control) / ``GSM2560249``.
        ``obs['barcode']``
            The barcode as written in the library's barcodes file.
        ``obsm['X_tsne']``
            The authors' t-SNE coordinates (columns ``tsne1``, ``tsne2``).
        ``uns['source']``
            GEO accessions, file names and the reference.

    Raises
    ------
    ConnectionError
        If a file cannot be downloaded (e.g. no network). The message names the
        URL that failed and the cache directory to place the files in manually.
    ValueError
        If the raw files are inconsistent with each other.

    See Also
    --------
    kang_ifnb1k : a shipped 832-cell subset of the same study.

    Examples
    --------
    >>> from hycnn_sc.datasets import kang2018
    >>> adata = kang2018()  # doctest: +SKIP
    >>> adata.obs["condition"].value_counts()  # doctest: +SKIP
    """
    directory = resolve_cache_dir(cache_dir, _CACHE_SUBDIR)
    processed = directory / _PROCESSED_FILE
    if processed.is_file() and not force_download:
        return _read_processed(processed)
    _fetch_files(directory, force=force_download, progress=progress)
    adata = _read_kang2018_files(directory)
    _write_processed(adata, processed)
    return adata


def _fetch_files(directory: Path, *, force: bool, progress: bool) -> None:
    """Download the raw files not in ``directory`` yet; ConnectionError says how to place them by hand."""
    remote = _remote_files()
    for name, url in remote.items():
        destination = directory / name
        if destination.is_file() and not force:
            continue
        try:
            _download(url, destination, progress=progress)
        except OSError as err:  # URLError, HTTPError, timeouts, truncated transfers
            listing = "\n".join(f"  {n}  <-  {u}" for n, u in remote.items())
            raise ConnectionError(
                f"Could not download {url} ({err}).\n"
                f"If this machine has no internet access, download the files below on "
                f"another machine and copy them, with these exact names, into\n  {directory}\n"
                f"then call kang2018(cache_dir={str(directory)!r}) again; files already "
                f"there are not downloaded again.\n{listing}"
            ) from err


def _read_processed(path: Path) -> AnnData:
    """Read the cached, parsed data set, with categorical label columns."""
    import anndata

    adata = anndata.read_h5ad(path)
    _ensure_categoricals(adata.obs)
    return adata


def _write_processed(adata: AnnData, path: Path) -> None:
    """Save the parsed data set to the cache atomically; warn (only) if that fails."""
    tmp: Path | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".h5ad", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        adata.write_h5ad(tmp, compression="lzf")
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if not isinstance(err, OSError):
            raise
        warn_user(
            f"Could not cache the parsed Kang 2018 data at {path} ({err}); "
            "the raw files will be parsed again next time.",
        )


# --------------------------------------------------------------------------- parsing
# The deposit: per library a MatrixMarket count matrix (genes x cells) and its barcode list,
# one shared gene table, and the authors' per-cell table (tsne.df) covering both libraries.
# A table row belongs to a library by its ``stim`` column and to a matrix row by its barcode
# sequence: the table writes ``-11`` for stimulated barcodes that repeat a control barcode.


def _read_kang2018_files(directory: str | os.PathLike[str]) -> AnnData:
    """Parse the six raw GEO files in ``directory`` into an AnnData of demuxlet singlets."""
    # Layout as documented in kang2018: control cells first, each library in barcode-file
    # order. FileNotFoundError for a missing file, ValueError where the files disagree.
    import anndata

    directory = Path(directory).expanduser()
    _check_files_present(directory)
    gene_ids, symbols = _read_genes(directory / _GENES_FILE)
    table, stim_labels = _read_singlets(directory / _METADATA_FILE)
    tsne_columns = [_find_column(table, "tsne1", "tSNE_1"), _find_column(table, "tsne2", "tSNE_2")]
    has_tsne = None not in tsne_columns
    libraries = []
    for sample in _SAMPLES:
        singlets = table.loc[stim_labels.eq(sample.stim).to_numpy()]
        libraries.append(
            _read_library(
                directory,
                sample,
                singlets,
                n_genes=len(gene_ids),
                tsne_columns=tsne_columns if has_tsne else None,
            )
        )
    counts, obs_parts, tsne_parts = zip(*libraries, strict=True)

    var_names = anndata.utils.make_index_unique(pd.Index(symbols, dtype=object))
    var = pd.DataFrame({"gene_ids": gene_ids}, index=var_names)
    x = sp.vstack(counts, format="csr", dtype=np.float32)
    adata = anndata.AnnData(X=x, obs=_combine_obs(obs_parts), var=var)
    if has_tsne:
        adata.obsm["X_tsne"] = np.concatenate(tsne_parts, axis=0)
    if not adata.obs_names.is_unique:
        adata.obs_names_make_unique()
    adata.uns["source"] = {
        "geo_series": _SERIES,
        "geo_samples": [sample.gsm for sample in _SAMPLES],
        "files": list(_remote_files()),
        "reference": _REFERENCE,
    }
    return adata


def _check_files_present(directory: Path) -> None:
    """Raise FileNotFoundError naming the raw files missing from ``directory``."""
    missing = [name for name in _remote_files() if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"Missing Kang 2018 files in {directory}: {', '.join(missing)}")


def _read_singlets(path: Path) -> tuple[pd.DataFrame, pd.Series]:
    """The authors' table restricted to demuxlet singlets, and its normalised ``stim`` labels."""
    table = _read_metadata(path)
    stim_column = _find_column(table, "stim")
    if stim_column is None:
        raise ValueError(f"{_METADATA_FILE} has no 'stim' column (columns: {list(table.columns)}).")
    multiplets_column = _find_column(table, "multiplets")
    if multiplets_column is None:
        warn_user(
            f"{_METADATA_FILE} has no 'multiplets' column; keeping every annotated cell.",
        )
        table = table.copy()
    else:
        calls = table[multiplets_column].astype(str).str.strip().str.lower()
        table = table.loc[calls.eq("singlet").to_numpy()].copy()
    return table, table[stim_column].astype(str).str.strip().str.lower()


def _read_library(
    directory: Path,
    sample: _Sample,
    table: pd.DataFrame,
    *,
    n_genes: int,
    tsne_columns: list[str] | None,
) -> tuple[sp.csr_matrix, pd.DataFrame, np.ndarray | None]:
    """Counts, obs and t-SNE rows (or ``None``) of one library's singlets listed in ``table``."""
    barcodes = _read_barcodes(directory / sample.barcodes)
    counts = _read_counts(directory / sample.matrix, n_genes=n_genes, n_cells=len(barcodes))
    rows, part = _match_rows(table, barcodes, sample)
    tsne = None if tsne_columns is None else part[tsne_columns].to_numpy(dtype=np.float64)
    return counts[rows], _sample_obs(part, barcodes[rows], sample), tsne


def _combine_obs(parts: tuple[pd.DataFrame, ...]) -> pd.DataFrame:
    """Concatenate the libraries' obs with categorical label columns; ValueError if empty."""
    obs = pd.concat(parts)
    if obs.shape[0] == 0:
        raise ValueError(
            f"No singlet in {_METADATA_FILE} matched a barcode of the two libraries; "
            "are the files from GSE96583 batch 2?"
        )
    for column in ("sample", "stim", "donor", "cluster", "cell_type"):
        if column in obs.columns:
            obs[column] = obs[column].astype("category")
    obs["condition"] = pd.Categorical(obs["condition"], categories=list(_CONDITIONS))
    return obs


def _find_column(table: pd.DataFrame, *names: str) -> str | None:
    """First column of ``table`` matching one of ``names`` (case-insensitive), else ``None``."""
    lookup = {str(column).strip().lower(): column for column in table.columns}
    for name in names:
        if name.lower() in lookup:
            return lookup[name.lower()]
    return None


def _barcode_core(barcodes: pd.Index | np.ndarray) -> pd.Index:
    """Barcode sequences without a trailing ``-<digits>`` or ``.<digits>`` (``AAAC-11`` -> ``AAAC``)."""
    return pd.Index(barcodes).astype(str).str.strip().str.replace(r"[-.]\d+$", "", regex=True)


def _match_rows(
    table: pd.DataFrame, barcodes: np.ndarray, sample: _Sample
) -> tuple[np.ndarray, pd.DataFrame]:
    """Increasing matrix rows of ``sample`` for the ``table`` rows found in it, and those rows."""
    # ``table`` holds the singlets whose ``stim`` is ``sample.stim``; rows missing from the
    # library's barcodes are dropped with a warning.
    keys = _barcode_core(barcodes)
    if not keys.is_unique:
        raise ValueError(f"{sample.barcodes} repeats barcode sequences.")
    wanted = _barcode_core(table.index)
    if not wanted.is_unique:
        raise ValueError(f"{_METADATA_FILE} lists a barcode of {sample.gsm} more than once.")
    found = wanted.isin(keys)
    if not found.all():
        warn_user(
            f"{int((~found).sum())} {sample.stim} cells of {_METADATA_FILE} are not in "
            f"{sample.barcodes}; dropping them.",
        )
    position = pd.Series(np.arange(len(keys)), index=keys)
    rows = position.loc[wanted[found]].to_numpy()
    order = np.argsort(rows, kind="stable")
    return rows[order], table.loc[found].iloc[order]


def _as_labels(values: pd.Series) -> list[str | None]:
    """String labels of a column, keeping missing values missing (``101.0`` -> ``'101'``)."""
    labels: list[str | None] = []
    for value in values.tolist():
        if pd.isna(value):
            labels.append(None)
        elif isinstance(value, float) and value.is_integer():
            labels.append(str(int(value)))
        else:
            labels.append(str(value).strip())
    return labels


#: obs column <- candidate columns of the authors' table (first present wins; none: left out).
_LABEL_COLUMNS = {
    "cell_type": ("cell", "cell.type", "cell_type"),
    "donor": ("ind", "donor"),
    "cluster": ("cluster",),
}


def _sample_obs(table: pd.DataFrame, barcodes: np.ndarray, sample: _Sample) -> pd.DataFrame:
    """obs of one library's matched singlets, indexed by the table's barcodes."""
    obs = pd.DataFrame(index=pd.Index(table.index.astype(str), name=None))
    obs["condition"] = sample.condition
    for name, candidates in _LABEL_COLUMNS.items():
        column = _find_column(table, *candidates)
        if column is not None:
            obs[name] = _as_labels(table[column])
    obs["stim"] = sample.stim
    obs["sample"] = sample.gsm
    obs["barcode"] = np.asarray(barcodes, dtype=str)
    return obs


def _read_plain_tsv(path: Path) -> pd.DataFrame:
    """A header-less, optionally gzip-compressed tab-separated table of strings (blanks kept)."""
    return pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False)


def _read_genes(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Ensembl ids and symbols (the id where a symbol is missing) of a 10x ``genes.tsv``."""
    # No header; column 0 the Ensembl id, column 1 the symbol.
    genes = _read_plain_tsv(path)
    gene_ids = genes.iloc[:, 0].str.strip()
    symbols = genes.iloc[:, 1].str.strip() if genes.shape[1] > 1 else gene_ids
    symbols = symbols.where(symbols.ne(""), gene_ids)
    return gene_ids.to_numpy(dtype=object), symbols.to_numpy(dtype=object)


def _read_barcodes(path: Path) -> np.ndarray:
    """Barcodes of a 10x ``barcodes.tsv`` (one per line, no header), as strings."""
    barcodes = _read_plain_tsv(path)
    return barcodes.iloc[:, 0].str.strip().to_numpy(dtype=str)


def _read_metadata(path: Path) -> pd.DataFrame:
    """The authors' per-cell table (``*.total.tsne.df.tsv.gz``), indexed by barcode."""
    # Written by R's write.table: the header has one field fewer than the rows, and the first
    # column holds the barcodes. Columns: tsne1, tsne2, ind, stim, cluster, cell, multiplets.
    table = pd.read_csv(path, sep="\t", index_col=0)
    table.index = table.index.astype(str).str.strip()
    table.columns = [re.sub(r"\s+", "", str(column)) for column in table.columns]
    return table


def _read_counts(path: Path, *, n_genes: int, n_cells: int) -> sp.csr_matrix:
    """A MatrixMarket count matrix as cells x genes CSR ``float32``."""
    # GEO's 10x matrices store genes x cells; a matrix already stored as cells x genes is
    # accepted too.
    matrix = scipy.io.mmread(path)
    if matrix.shape == (n_genes, n_cells):
        matrix = matrix.T
    elif matrix.shape != (n_cells, n_genes):
        raise ValueError(
            f"{path.name} has shape {matrix.shape}, expected genes × cells = "
            f"({n_genes}, {n_cells}) from the gene table and the barcodes file."
        )
    counts = sp.csr_matrix(matrix, dtype=np.float32)
    counts.sum_duplicates()
    counts.sort_indices()
    return counts
