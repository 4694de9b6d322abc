"""Score exported prediction pairs with cell-eval itself (run by a cell-eval environment).

Used by ``gene_space.py --cell-eval PYTHON``: for every ``<name>.pred.h5ad`` /
``<name>.real.h5ad`` pair in FOLDER (obs 'target': 'stimulated' or 'control'), runs
``cell_eval.MetricsEvaluator`` (cell-eval 0.8.2 defaults: pdex Mann-Whitney U on log1p input,
FDR 0.05, |log2 fold change| ranking) and writes one CSV row per pair to OUT.

    /tmp/celleval/bin/python benchmarks/_cell_eval_score.py FOLDER OUT.csv
"""

import logging
import sys
import tempfile
from pathlib import Path

import anndata as ad
import pandas as pd
from cell_eval import MetricsEvaluator

#: The metrics compared; every other cell-eval metric is skipped (time).
KEEP = ["pearson_delta", "mse", "mae", "overlap_at_N", "overlap_at_50", "de_direction_match",
        "de_nsig_counts"]


def main(folder: Path, out: Path) -> None:
    logging.disable(logging.WARNING)
    from cell_eval.metrics import metrics_registry

    skip = [m for m in metrics_registry.list_metrics() if m not in KEEP]
    rows = []
    for pred_path in sorted(folder.glob("*.pred.h5ad")):
        name = pred_path.name.removesuffix(".pred.h5ad")
        real = ad.read_h5ad(folder / f"{name}.real.h5ad")
        with tempfile.TemporaryDirectory() as outdir:
            evaluator = MetricsEvaluator(
                adata_pred=ad.read_h5ad(pred_path), adata_real=real, control_pert="control",
                pert_col="target", num_threads=1, outdir=outdir,
            )
            results, _ = evaluator.compute(profile="full", skip_metrics=skip, write_csv=False)
        row = results.to_pandas().iloc[0].to_dict()
        row["name"] = name
        rows.append(row)
        print(f"cell-eval scored {name}", file=sys.stderr)
    pd.DataFrame(rows).to_csv(out, index=False)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
