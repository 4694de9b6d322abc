"""Small real data sets that ship inside the package.

The files live in ``hycnn_sc/datasets/data/`` and are read through
:mod:`importlib.resources`, so the loaders work from a source checkout, an
editable install and an installed wheel alike. Provenance, licences and the
copyright notices of the upstream sources are in ``data/README.md``.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["glioblastoma_panobinostat", "kang_ifnb1k", "perturbseq_devel"]

_DATA_PACKAGE = "hycnn_sc.datasets"
_DATA_DIR = "data"

#: obs columns that are always returned as pandas categoricals (when present).
_CATEGORICAL_COLUMNS = ("condition", "perturbation", "cell_type", "patient_id")
#: labels of the unperturbed population, in order of preference: the first of them
#: that is a category of a column is placed first among that column's categories.
_CONTROL_LABELS = ("control", "ctrl")


def _read_shipped(filename: str) -> AnnData:
    """A new AnnData read from ``hycnn_sc/datasets/data/<filename>`` (nothing shared between calls)."""
    import anndata

    resource = resources.files(_DATA_PACKAGE).joinpath(_DATA_DIR, filename)
    if not resource.is_file():
        raise FileNotFoundError(
            f"Shipped data file {filename!r} is missing from the installed package "
            f"({_DATA_PACKAGE}/{_DATA_DIR}); reinstall hycnn_sc."
        )
    # as_file gives a real file-system path even when the package is imported from a zip.
    with resources.as_file(resource) as path:
        adata = anndata.read_h5ad(path)
    _ensure_categoricals(adata.obs)
    return adata


def _ensure_categoricals(obs: pd.DataFrame) -> None:
    """Make ``obs``'s label columns categorical in place: control label first, others kept in order."""
    for column in _CATEGORICAL_COLUMNS:
        if column not in obs.columns:
            continue
        values = obs[column]
        if not isinstance(values.dtype, pd.CategoricalDtype):
            values = values.astype("category")
        categories = list(values.cat.categories)
        control = next((label for label in _CONTROL_LABELS if label in categories), None)
        if control is not None and categories[0] != control:
            categories.remove(control)
            values = values.cat.reorder_categories([control, *categories])
        obs[column] = values


def kang_ifnb1k() -> AnnData:
    """PBMCs before and after IFN-β stimulation: an 832-cell subset of Kang et al. 2018.

    Peripheral blood mononuclear cells from eight lupus patients, profiled with
    10x Genomics droplet scRNA-seq either untreated or after 6 h of interferon-β
    stimulation (Kang et al., Nat. Biotechnol. 36, 89–94, 2018; GEO GSE96583). This
    is the ``ifnb1k`` random subset distributed (MIT licence) by the seuratTools R
    package, itself drawn from the Seurat team's processed ``ifnb`` object, and
    converted to AnnData. It is small enough for tutorials and tests; use
    :func:`kang2018` for the full data.

    Returns
    -------
    AnnData
        A new object on every call (``832 × 14053``, cells × genes) with

        ``X``
            Raw UMI counts (integers up to 862; not normalised, not log-transformed)
            in a ``scipy.sparse`` CSR matrix of ``float32``.
        ``obs_names``
            Cell barcodes in Seurat style (``"AAACATACCAGAAA.1"``; ``".11"`` marks
            stimulated barcodes that also occur in the control library).
        ``var_names``
            14,053 unique gene symbols (``var`` has no further columns).
        ``obs['condition']``
            Categorical, categories ``['control', 'stimulated']``: 391 control and
            441 stimulated cells.
        ``obs['cell_type']``
            Categorical, 6 types: CD14 Mono (304), CD4 Naive T (197),
            CD4 Memory T (109), CD16 Mono (88), B (81), CD8 T (53). Every type is
            present in both conditions.
        ``obs['stim']``
            Categorical, original Seurat label, ``CTRL`` / ``STIM``.
        ``obs['orig.ident']``
            Categorical, ``IMMUNE_CTRL`` / ``IMMUNE_STIM``.
        ``obs['nCount_RNA']``
            Total UMI count per cell (float64; equals the row sums of ``X``).
        ``obs['nFeature_RNA']``
            Number of detected genes per cell (nullable ``Int32``).
        ``uns['source']``
            Provenance string (repository, commit, file, licence).

    See Also
    --------
    kang2018 : the full batch-2 data of the same study, downloaded from GEO.

    Examples
    --------
    >>> from hycnn_sc.datasets import kang_ifnb1k
    >>> adata = kang_ifnb1k()
    >>> adata.shape, int(adata.X.max())  # raw counts
    ((832, 14053), 862)
    >>> adata.obs["condition"].value_counts().to_dict()
    {'stimulated': 441, 'control': 391}
    """
    return _read_shipped("kang_ifnb1k.h5ad")


def perturbseq_devel() -> AnnData:
    """Genetic-perturbation Perturb-seq subset (CRISPRa in K562, CRISPRi in glioma lines).

    Real single-cell Perturb-seq measurements combined by the PerturBench project
    (BSD-3-Clause) into its development data set: CRISPR activation of single
    genes and gene pairs in K562 cells from Norman et al. (Science 365, 786–793,
    2019) and CRISPR interference of kinase genes in three glioblastoma cell lines
    from McFaline-Figueroa et al. (Cell Genomics, 2024). Each cell line has its
    own control population, so the object supports per-cell-line transport from
    control to each perturbation.

    Returns
    -------
    AnnData
        A new object on every call (``5961 × 500``, cells × genes) with

        ``X``
            ``log1p`` of library-size-normalised expression (natural log), a
            ``scipy.sparse`` CSR matrix of ``float64`` with values in ``[0, 7)``.
            Normalisation was done on the full transcriptome before keeping the
            500 highly variable genes, so the rows of ``expm1(X)`` do not sum to a
            common total. Raw counts are not included; ``obs['ncounts']`` holds the
            original library sizes.
        ``obs_names``
            10x cell barcodes (``"TGGTTAGCACATCCGG-3"``).
        ``var_names``
            500 unique gene symbols (index name ``gene_symbol``); ``var`` holds
            the scanpy ``seurat``-flavour HVG statistics ``highly_variable``,
            ``means``, ``dispersions`` and ``dispersions_norm``.
        ``obs['condition']``, ``obs['perturbation']``
            Categorical, identical to each other: ``'control'`` (400 cells, 100 per
            cell line; first category) and 33 perturbations. Combinations are
            joined by ``'+'`` (e.g. ``'KLF1+MAP2K6'``, 15 pairs). 24 perturbations
            occur in K562 only; 9 single-gene kinase knock-downs (MAP2K3, MAP2K6,
            MAP3K21, MAP4K3, MAP4K5, MAPK1, PLK4, SGK1, TGFBR2) occur in all four
            cell lines. Group sizes range from 46 to 100 cells per perturbation and
            cell line.
        ``obs['cell_type']``
            Categorical cell line: ``k562`` (3375 cells), ``T98G`` (871),
            ``U87MG`` (865), ``A172`` (850).
        ``obs['perturbation_type']``
            Categorical, ``CRISPRa`` (3375) / ``CRISPRi`` (2586).
        ``obs['dataset']``
            Categorical, ``norman19`` / ``mcfaline23``.
        ``obs['dose']``
            Categorical, ``'1'`` for single and ``'1+1'`` for paired perturbations.
        ``obs['treatment']``
            Categorical, always ``'none'``.
        ``obs['perturbation_raw']``
            Categorical, the perturbation label as first published (e.g.
            ``KIAA1804`` for what is now MAP3K21).
        ``obs['condition_cell_type']``
            Categorical, ``'<condition>_<cell_type>'`` (64 groups).
        ``obs['ncounts']``, ``obs['ngenes']``
            Raw library size (float64) and number of detected genes (int32).
        ``uns``
            ``'hvg'`` (``{'flavor': 'seurat'}``) and ``'log1p'`` from scanpy.

    Examples
    --------
    >>> from hycnn_sc.datasets import perturbseq_devel
    >>> adata = perturbseq_devel()
    >>> adata.shape
    (5961, 500)
    >>> adata.obs["condition"].cat.categories[0]
    'control'
    >>> sorted(adata.obs["cell_type"].cat.categories)
    ['A172', 'T98G', 'U87MG', 'k562']
    """
    return _read_shipped("perturbseq_devel.h5ad")


def glioblastoma_panobinostat() -> AnnData:
    """Patient-derived glioblastoma slices treated ex vivo with panobinostat: Zhao et al. 2021.

    A real **drug** perturbation: acute slices of surgically resected
    glioblastoma from five patients (PW030, PW032, PW034, PW036, PW040) were
    cultured ex vivo with the HDAC inhibitor panobinostat (0.2 µM) or with
    vehicle (DMSO) and profiled by single-cell RNA-seq (Zhao et al., Genome Med.
    13, 82, 2021; GEO GSE148842). This is the 5,000-cell, 300-gene subset that
    the lemur R package distributes (MIT licence) as its
    ``glioblastoma_example_data``, converted to AnnData with the counts
    unchanged: 500 control and 500 treated cells from each patient.

    One drug at one dose, with the same response measured in five patients, so
    the intended use is leave-one-patient-out prediction: fit a transport map
    from ``ctrl`` to ``panobinostat`` on four patients and predict the fifth
    patient's treated cells from its control cells.

    Returns
    -------
    AnnData
        A new object on every call (``5000 × 300``, cells × genes) with

        ``X``
            Raw integer UMI counts, stored as a ``scipy.sparse`` CSR matrix of
            ``float32`` (not normalised, not log-transformed; max 1318, 58% of
            the entries non-zero, 22 to 18,983 counts per cell).
        ``obs_names``
            Cell barcodes (``"CGCCAGAGCGCA"``), made unique by a suffix such as
            ``".1"`` where a barcode occurs more than once in the full study.
        ``var_names``
            300 unique Ensembl gene IDs (``"ENSG00000118785"``).
        ``var['symbol']``
            Gene symbols (``"SPP1"``), all present and unique.
        ``var['gene_id']``
            The Ensembl ID again (equal to ``var_names``).
        ``var['chromosome']``, ``var['strand.']``, ``var['gene_length']``, ``var['source']``
            Gene annotation: chromosome and strand (categorical), gene length in
            bases (int32) and annotation source (categorical, e.g.
            ``ensembl_havana``).
        ``obs['condition']``
            Categorical, categories ``['ctrl', 'panobinostat']``: 2,500 cells
            each.
        ``obs['treatment']``
            Categorical, the treatment as published: ``vehicle (DMSO)`` (the
            ``ctrl`` cells) or ``0.2 uM panobinostat``.
        ``obs['patient_id']``
            Categorical, ``PW030``, ``PW032``, ``PW034``, ``PW036``, ``PW040``:
            1,000 cells each, 500 per condition.
        ``obs['sample_id']``
            Categorical, ``'<patient_id>-<treatment_id>'``: 10 samples of 500
            cells, one control and one treated sample per patient.
        ``obs['treatment_id']``
            Categorical, the sample number of the original study (``'701'`` …
            ``'712'``). It identifies a sample only together with the patient:
            the same number can be a control sample in one patient and a treated
            one in another.
        ``obs['age']``, ``obs['gender']``, ``obs['location']``, ``obs['diagnosis']``
            Patient annotation: age in years (float64), ``F``/``M``, tumour
            location (4 categories) and diagnosis (always
            ``Glioblastoma, WHO Grade IV``).

    Notes
    -----
    Cite the original study when you use these data: Zhao, W. et al.
    Deconvolution of cell type-specific drug responses in human tumor tissue
    with single-cell RNA-seq. *Genome Medicine* 13, 82 (2021).
    doi:10.1186/s13073-021-00894-y. The file comes from
    https://github.com/const-ae/lemur (commit ``0e62bc12``,
    ``data/glioblastoma_example_data.rda``; MIT licence, "Copyright (c) 2023
    lemur authors"); its ``logcounts`` assay was dropped. The licence text is
    in ``hycnn_sc/datasets/data/README.md``.

    Examples
    --------
    >>> from hycnn_sc.datasets import glioblastoma_panobinostat
    >>> adata = glioblastoma_panobinostat()
    >>> adata.shape, list(adata.obs["condition"].cat.categories)
    ((5000, 300), ['ctrl', 'panobinostat'])
    >>> list(adata.obs["patient_id"].cat.categories)
    ['PW030', 'PW032', 'PW034', 'PW036', 'PW040']

    Leave one patient out: train on four patients, predict the fifth's treated cells
    from its 500 control cells.

    >>> held_out = (adata.obs["patient_id"] == "PW040").to_numpy()
    >>> train, test = adata[~held_out], adata[held_out]
    >>> train.obs["patient_id"].nunique(), int((test.obs["condition"] == "ctrl").sum())
    (4, 500)
    """
    return _read_shipped("glioblastoma_panobinostat.h5ad")
