"""Download and parse the full Kang et al. 2018 IFN-β PBMC data from GEO (GSE96583, batch 2)."""

from __future__ import annotations

import os
import re
import tempfile
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

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
_USER_AGENT = "Mozilla/5.0 (compatible; hycnn_sc dataset loader)"
_TIMEOUT_S = 60.0
_CHUNK_BYTES = 1 << 20
_CONDITIONS = ("control", "stimulated")


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


def _geo_stub(accession: str) -> str:
    """GEO directory stub of an accession (``GSE96583`` -> ``GSE96nnn``).

    Parameters
    ----------
    accession
        A GEO series (GSE) or sample (GSM) accession.

    Returns
    -------
    str
        The accession with its last three digits replaced by ``nnn``.

    Examples
    --------
    >>> _geo_stub("GSM2560248")
    'GSM2560nnn'
    """
    return accession[:-3] + "nnn"


def _series_url(filename: str) -> str:
    """URL of a supplementary file of the GSE96583 series.

    Parameters
    ----------
    filename
        Supplementary file name.

    Returns
    -------
    str
        The HTTPS download URL on the NCBI GEO FTP server.

    Examples
    --------
    >>> _series_url("GSE96583_batch2.genes.tsv.gz")  # doctest: +ELLIPSIS
    'https://ftp.ncbi.nlm.nih.gov/geo/series/GSE96nnn/GSE96583/suppl/GSE96583_batch2...'
    """
    return f"{_GEO}/series/{_geo_stub(_SERIES)}/{_SERIES}/suppl/{filename}"


def _sample_url(gsm: str, filename: str) -> str:
    """URL of a supplementary file of one GEO sample.

    Parameters
    ----------
    gsm
        The sample accession.
    filename
        Supplementary file name.

    Returns
    -------
    str
        The HTTPS download URL on the NCBI GEO FTP server.

    Examples
    --------
    >>> _sample_url("GSM2560248", "GSM2560248_barcodes.tsv.gz")  # doctest: +ELLIPSIS
    'https://ftp.ncbi.nlm.nih.gov/geo/samples/GSM2560nnn/GSM2560248/suppl/GSM2560248_barcodes...'
    """
    return f"{_GEO}/samples/{_geo_stub(gsm)}/{gsm}/suppl/{filename}"


def _remote_files() -> dict[str, str]:
    """All raw files needed by :func:`kang2018`, mapped to their download URLs.

    Returns
    -------
    dict of str to str
        File name -> URL, in download order.

    Examples
    --------
    >>> sorted(_remote_files())[0]
    'GSE96583_batch2.genes.tsv.gz'
    """
    files = {}
    for sample in _SAMPLES:
        files[sample.matrix] = _sample_url(sample.gsm, sample.matrix)
        files[sample.barcodes] = _sample_url(sample.gsm, sample.barcodes)
    files[_GENES_FILE] = _series_url(_GENES_FILE)
    files[_METADATA_FILE] = _series_url(_METADATA_FILE)
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
    directory = _resolve_cache_dir(cache_dir)
    processed = directory / _PROCESSED_FILE
    if processed.is_file() and not force_download:
        return _read_processed(processed)
    _fetch_files(directory, force=force_download, progress=progress)
    adata = _read_kang2018_files(directory)
    _write_processed(adata, processed)
    return adata


def _resolve_cache_dir(
    cache_dir: str | os.PathLike[str] | None, subdir: str = _CACHE_SUBDIR
) -> Path:
    """Cache directory to use, created if needed.

    Parameters
    ----------
    cache_dir
        User choice, or ``None`` for ``scanpy.settings.datasetdir / subdir``.
    subdir
        Folder of this data set under scanpy's dataset directory.

    Returns
    -------
    Path
        An existing directory.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _resolve_cache_dir(Path(tmp) / "kang2018").is_dir()
    True
    """
    if cache_dir is None:
        import scanpy as sc

        directory = Path(sc.settings.datasetdir) / subdir
    else:
        directory = Path(cache_dir)
    directory = directory.expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _fetch_files(directory: Path, *, force: bool, progress: bool) -> None:
    """Download the raw files that are not in ``directory`` yet.

    Parameters
    ----------
    directory
        Cache directory.
    force
        Download every file again, even if present.
    progress
        Show progress bars.

    Raises
    ------
    ConnectionError
        Naming the URL that failed and how to place the files by hand.

    Examples
    --------
    >>> _fetch_files(Path("kang2018"), force=False, progress=False)  # doctest: +SKIP
    """
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


def _download(url: str, destination: Path, *, progress: bool = True) -> None:
    """Download ``url`` to ``destination`` atomically.

    The data go to a temporary file in the destination directory, which is renamed
    to ``destination`` only after the whole body has arrived (and matched the
    announced ``Content-Length``), so an interrupted download never leaves a
    half-written file under the final name.

    Parameters
    ----------
    url
        Source URL (``https://``, ``ftp://`` or ``file://``).
    destination
        Final path of the file.
    progress
        Show a :mod:`tqdm` progress bar.

    Raises
    ------
    OSError
        On any network or file-system error, or a truncated transfer.

    Examples
    --------
    >>> _download(_series_url(_GENES_FILE), Path("genes.tsv.gz"))  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=".part", dir=destination.parent
    )
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
            with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                received = 0
                with tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=destination.name,
                    disable=not progress,
                ) as bar:
                    while chunk := response.read(_CHUNK_BYTES):
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        if total is not None and received != total:
            raise OSError(f"incomplete download: got {received} of {total} bytes")
        os.replace(tmp, destination)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_processed(path: Path) -> AnnData:
    """Read the cached, parsed data set.

    Parameters
    ----------
    path
        The cached ``.h5ad`` file.

    Returns
    -------
    AnnData
        The data set, with categorical label columns.

    Examples
    --------
    >>> _read_processed(Path("kang2018_singlets_v1.h5ad"))  # doctest: +SKIP
    """
    import anndata

    adata = anndata.read_h5ad(path)
    _ensure_categoricals(adata.obs)
    return adata


def _write_processed(adata: AnnData, path: Path) -> None:
    """Save the parsed data set to the cache atomically; warn (only) if that fails.

    Parameters
    ----------
    adata
        Parsed data set.
    path
        Destination ``.h5ad`` file.

    Examples
    --------
    >>> _write_processed(adata, Path("kang2018_singlets_v1.h5ad"))  # doctest: +SKIP
    """
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
        warnings.warn(
            f"Could not cache the parsed Kang 2018 data at {path} ({err}); "
            "the raw files will be parsed again next time.",
            stacklevel=3,
        )


# --------------------------------------------------------------------------- parsing


def _read_kang2018_files(directory: str | os.PathLike[str]) -> AnnData:
    """Parse the raw GEO files of GSE96583 batch 2 into an AnnData of singlets.

    Reads the two MatrixMarket count matrices (genes × cells in the files), their
    barcode lists, the shared gene table and the authors' per-cell table
    (``GSE96583_batch2.total.tsne.df.tsv.gz``), matches each table row to its
    library via the ``stim`` column and the barcode sequence (the table writes
    ``-11`` for stimulated barcodes that repeat a control barcode), and keeps the
    rows whose ``multiplets`` value is ``singlet``.

    Parameters
    ----------
    directory
        Directory holding the six files under their GEO names.

    Returns
    -------
    AnnData
        Cells × genes, laid out as documented in :func:`kang2018`; control cells
        first, each library in barcode-file order.

    Raises
    ------
    FileNotFoundError
        If a file is missing.
    ValueError
        If the files do not agree (matrix shape, barcodes, table columns).

    Examples
    --------
    >>> adata = _read_kang2018_files("~/data/kang2018")  # doctest: +SKIP
    """
    import anndata

    directory = Path(directory).expanduser()
    missing = [name for name in _remote_files() if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"Missing Kang 2018 files in {directory}: {', '.join(missing)}")

    gene_ids, symbols = _read_genes(directory / _GENES_FILE)
    table = _read_metadata(directory / _METADATA_FILE)
    stim_column = _find_column(table, "stim")
    if stim_column is None:
        raise ValueError(f"{_METADATA_FILE} has no 'stim' column (columns: {list(table.columns)}).")
    multiplets_column = _find_column(table, "multiplets")
    if multiplets_column is None:
        warnings.warn(
            f"{_METADATA_FILE} has no 'multiplets' column; keeping every annotated cell.",
            stacklevel=2,
        )
        table = table.copy()
    else:
        calls = table[multiplets_column].astype(str).str.strip().str.lower()
        table = table.loc[calls.eq("singlet").to_numpy()].copy()
    stim_labels = table[stim_column].astype(str).str.strip().str.lower()

    blocks: list[sp.csr_matrix] = []
    obs_parts: list[pd.DataFrame] = []
    tsne_parts: list[np.ndarray] = []
    tsne_columns = [_find_column(table, "tsne1", "tSNE_1"), _find_column(table, "tsne2", "tSNE_2")]
    has_tsne = None not in tsne_columns
    for sample in _SAMPLES:
        barcodes = _read_barcodes(directory / sample.barcodes)
        counts = _read_counts(
            directory / sample.matrix, n_genes=len(gene_ids), n_cells=len(barcodes)
        )
        rows, part = _match_rows(
            table.loc[stim_labels.eq(sample.stim).to_numpy()], barcodes, sample
        )
        blocks.append(counts[rows])
        obs_parts.append(_sample_obs(part, barcodes[rows], sample))
        if has_tsne:
            tsne_parts.append(part[tsne_columns].to_numpy(dtype=np.float64))

    obs = pd.concat(obs_parts)
    if obs.shape[0] == 0:
        raise ValueError(
            f"No singlet in {_METADATA_FILE} matched a barcode of the two libraries; "
            "are the files from GSE96583 batch 2?"
        )
    for column in ("sample", "stim", "donor", "cluster", "cell_type"):
        if column in obs.columns:
            obs[column] = obs[column].astype("category")
    obs["condition"] = pd.Categorical(obs["condition"], categories=list(_CONDITIONS))

    var_names = anndata.utils.make_index_unique(pd.Index(symbols, dtype=object))
    var = pd.DataFrame({"gene_ids": gene_ids}, index=var_names)
    x = sp.vstack(blocks, format="csr", dtype=np.float32)
    adata = anndata.AnnData(X=x, obs=obs, var=var)
    if has_tsne:
        adata.obsm["X_tsne"] = np.concatenate(tsne_parts, axis=0)
    if not adata.obs_names.is_unique:
        adata.obs_names_make_unique()
    adata.uns["source"] = {
        "geo_series": _SERIES,
        "geo_samples": [sample.gsm for sample in _SAMPLES],
        "files": list(_remote_files()),
        "reference": (
            "Kang HM et al. Multiplexed droplet single-cell RNA-sequencing using natural "
            "genetic variation. Nat Biotechnol 36, 89-94 (2018). doi:10.1038/nbt.4042"
        ),
    }
    return adata


def _find_column(table: pd.DataFrame, *names: str) -> str | None:
    """First column of ``table`` matching one of ``names`` (case-insensitive).

    Parameters
    ----------
    table
        Table to search.
    *names
        Candidate column names, in order of preference.

    Returns
    -------
    str or None
        The matching column name as spelled in ``table``, or ``None``.

    Examples
    --------
    >>> _find_column(pd.DataFrame(columns=["Cell", "stim"]), "cell.type", "cell")
    'Cell'
    """
    lookup = {str(column).strip().lower(): column for column in table.columns}
    for name in names:
        if name.lower() in lookup:
            return lookup[name.lower()]
    return None


def _barcode_core(barcodes: pd.Index | np.ndarray) -> pd.Index:
    """Barcode sequences without the trailing ``-<digits>`` (or ``.<digits>``) suffix.

    Parameters
    ----------
    barcodes
        Barcodes such as ``"AAACATACAATGCC-1"`` or ``"AAACATACAATGCC-11"``.

    Returns
    -------
    pandas.Index
        The bare sequences.

    Examples
    --------
    >>> list(_barcode_core(pd.Index(["AAAC-1", "AAAC-11", "GGTT"])))
    ['AAAC', 'AAAC', 'GGTT']
    """
    return pd.Index(barcodes).astype(str).str.strip().str.replace(r"[-.]\d+$", "", regex=True)


def _match_rows(
    table: pd.DataFrame, barcodes: np.ndarray, sample: _Sample
) -> tuple[np.ndarray, pd.DataFrame]:
    """Rows of one library's count matrix for the table rows of that library.

    Parameters
    ----------
    table
        The singlet rows of the tsne.df table whose ``stim`` is ``sample.stim``.
    barcodes
        The library's barcodes, in matrix order.
    sample
        The library.

    Returns
    -------
    rows : numpy.ndarray
        Row indices into the library's matrix, increasing.
    table : pandas.DataFrame
        The matched table rows, in the same order.

    Examples
    --------
    >>> table = pd.DataFrame({"stim": ["stim"]}, index=["AAAC-11"])
    >>> _match_rows(table, np.array(["GGTT-1", "AAAC-1"]), _SAMPLES[1])[0]
    array([1])
    """
    keys = _barcode_core(barcodes)
    if not keys.is_unique:
        raise ValueError(f"{sample.barcodes} repeats barcode sequences.")
    wanted = _barcode_core(table.index)
    if not wanted.is_unique:
        raise ValueError(f"{_METADATA_FILE} lists a barcode of {sample.gsm} more than once.")
    found = wanted.isin(keys)
    if not found.all():
        warnings.warn(
            f"{int((~found).sum())} {sample.stim} cells of {_METADATA_FILE} are not in "
            f"{sample.barcodes}; dropping them.",
            stacklevel=3,
        )
    position = pd.Series(np.arange(len(keys)), index=keys)
    rows = position.loc[wanted[found]].to_numpy()
    order = np.argsort(rows, kind="stable")
    return rows[order], table.loc[found].iloc[order]


def _as_labels(values: pd.Series) -> list[str | None]:
    """String labels of a column, keeping missing values missing (``101.0`` -> ``'101'``).

    Parameters
    ----------
    values
        Column of the tsne.df table.

    Returns
    -------
    list of str or None
        One label per value.

    Examples
    --------
    >>> _as_labels(pd.Series([101.0, None]))
    ['101', None]
    """
    labels: list[str | None] = []
    for value in values.tolist():
        if pd.isna(value):
            labels.append(None)
        elif isinstance(value, float) and value.is_integer():
            labels.append(str(int(value)))
        else:
            labels.append(str(value).strip())
    return labels


def _sample_obs(table: pd.DataFrame, barcodes: np.ndarray, sample: _Sample) -> pd.DataFrame:
    """Cell annotations of one library's matched singlets.

    Parameters
    ----------
    table
        Matched tsne.df rows.
    barcodes
        The matching barcodes from the library's barcodes file.
    sample
        The library.

    Returns
    -------
    pandas.DataFrame
        ``condition``, ``cell_type``, ``donor``, ``cluster``, ``stim``, ``sample``
        and ``barcode`` (columns absent from the table are left out), indexed by the
        table's barcodes.

    Examples
    --------
    >>> table = pd.DataFrame({"ind": [101], "cell": ["B cells"]}, index=["AAAC-1"])
    >>> _sample_obs(table, np.array(["AAAC-1"]), _SAMPLES[0])["cell_type"].tolist()
    ['B cells']
    """
    obs = pd.DataFrame(index=pd.Index(table.index.astype(str), name=None))
    obs["condition"] = sample.condition
    cell_column = _find_column(table, "cell", "cell.type", "cell_type")
    if cell_column is not None:
        obs["cell_type"] = _as_labels(table[cell_column])
    donor_column = _find_column(table, "ind", "donor")
    if donor_column is not None:
        obs["donor"] = _as_labels(table[donor_column])
    cluster_column = _find_column(table, "cluster")
    if cluster_column is not None:
        obs["cluster"] = _as_labels(table[cluster_column])
    obs["stim"] = sample.stim
    obs["sample"] = sample.gsm
    obs["barcode"] = np.asarray(barcodes, dtype=str)
    return obs


def _read_genes(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a 10x ``genes.tsv`` table (Ensembl id, symbol; no header).

    Parameters
    ----------
    path
        The (optionally gzip-compressed) table.

    Returns
    -------
    gene_ids, symbols : numpy.ndarray
        Ensembl ids and symbols (the id where a symbol is missing).

    Examples
    --------
    >>> ids, symbols = _read_genes(Path("GSE96583_batch2.genes.tsv.gz"))  # doctest: +SKIP
    """
    genes = pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False)
    gene_ids = genes.iloc[:, 0].str.strip()
    symbols = genes.iloc[:, 1].str.strip() if genes.shape[1] > 1 else gene_ids
    symbols = symbols.where(symbols.ne(""), gene_ids)
    return gene_ids.to_numpy(dtype=object), symbols.to_numpy(dtype=object)


def _read_barcodes(path: Path) -> np.ndarray:
    """Read a 10x ``barcodes.tsv`` file (one barcode per line, no header).

    Parameters
    ----------
    path
        The (optionally gzip-compressed) file.

    Returns
    -------
    numpy.ndarray
        The barcodes, as strings.

    Examples
    --------
    >>> _read_barcodes(Path("GSM2560248_barcodes.tsv.gz"))  # doctest: +SKIP
    """
    barcodes = pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False)
    return barcodes.iloc[:, 0].str.strip().to_numpy(dtype=str)


def _read_metadata(path: Path) -> pd.DataFrame:
    """Read the authors' per-cell table (``*.total.tsne.df.tsv.gz``), indexed by barcode.

    The file is written by R (``write.table``), so its header has one field fewer
    than the rows; the first column holds the barcodes.

    Parameters
    ----------
    path
        The (optionally gzip-compressed) table.

    Returns
    -------
    pandas.DataFrame
        One row per barcode, with columns such as ``tsne1``, ``tsne2``, ``ind``,
        ``stim``, ``cluster``, ``cell`` and ``multiplets``.

    Examples
    --------
    >>> _read_metadata(Path("GSE96583_batch2.total.tsne.df.tsv.gz"))  # doctest: +SKIP
    """
    table = pd.read_csv(path, sep="\t", index_col=0)
    table.index = table.index.astype(str).str.strip()
    table.columns = [re.sub(r"\s+", "", str(column)) for column in table.columns]
    return table


def _read_counts(path: Path, *, n_genes: int, n_cells: int) -> sp.csr_matrix:
    """Read a MatrixMarket count matrix as cells × genes CSR ``float32``.

    GEO's 10x matrices store genes × cells; a matrix already stored as cells ×
    genes is accepted too.

    Parameters
    ----------
    path
        The (optionally gzip-compressed) ``.mtx`` file.
    n_genes
        Number of genes in the gene table.
    n_cells
        Number of barcodes of the library.

    Returns
    -------
    scipy.sparse.csr_matrix
        Counts, shape ``(n_cells, n_genes)``.

    Examples
    --------
    >>> _read_counts(Path("GSM2560248_2.1.mtx.gz"), n_genes=35635, n_cells=1000)  # doctest: +SKIP
    """
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
