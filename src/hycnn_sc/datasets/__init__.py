"""Real single-cell perturbation data sets.

Shipped with the package (no download, a new object on every call):

- :func:`kang_ifnb1k` — 832 PBMCs, control vs IFN-β stimulated, raw counts
  (Kang et al. 2018 subset; MIT).
- :func:`perturbseq_devel` — 5,961 Perturb-seq cells, CRISPRa/CRISPRi, four cell
  lines, log1p-normalised, 500 genes (Norman et al. 2019 + McFaline-Figueroa et
  al.; PerturBench, BSD-3-Clause).
- :func:`glioblastoma_panobinostat` — 5,000 glioblastoma cells from five patients,
  DMSO vehicle vs the HDAC inhibitor panobinostat, raw counts, 300 genes (Zhao et
  al. 2021 subset; lemur, MIT).

Downloaded from the original public source and cached:

- :func:`kang2018` — the full Kang et al. 2018 batch-2 PBMC data from GEO
  (GSE96583), demuxlet singlets, raw counts, author cell types.

Optimal-transport problems with a known map (for benchmarking solvers):

- :func:`w2_benchmark_pair` — the "Mix3toMix10" pairs of Korotin et al. (2021): a
  Gaussian-mixture source and its image under the gradient of a pretrained convex
  network, D = 2 … 128 (checkpoints downloaded from the authors' repository, MIT).

Provenance, licences and copyright notices: ``hycnn_sc/datasets/data/README.md``.

Examples
--------
>>> from hycnn_sc import datasets
>>> adata = datasets.kang_ifnb1k()
>>> adata.obs["condition"].value_counts().to_dict()
{'stimulated': 441, 'control': 391}
"""

from ._kang2018 import kang2018
from ._shipped import glioblastoma_panobinostat, kang_ifnb1k, perturbseq_devel
from ._w2bench import GaussianMixture, W2BenchmarkPair, w2_benchmark_pair

__all__ = [
    "GaussianMixture",
    "W2BenchmarkPair",
    "glioblastoma_panobinostat",
    "kang2018",
    "kang_ifnb1k",
    "perturbseq_devel",
    "w2_benchmark_pair",
]
