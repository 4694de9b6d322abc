"""Benchmark 1 of the HyCNN paper: convex regression of f(x) = ‖x‖² in 50 dimensions.

x ~ U[-1, 1]^50, y = ‖x‖² + σ ε with σ = 1 (and the interpolation regime σ = 0),
n_train = 5000, test MSE on 1000 fresh noiseless points; Adam lr 1e-2, batch 1000,
100 epochs (cosine decay to 1 %). Prints the paper's single-run value beside ours
(mean ± sd over seeds) and the wall time per fit.

    python benchmarks/convex_regression.py [--seeds 3] [--noise 1 0]
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import machine, mean_spread, print_table, timed

from hycnn_sc.models import ConvexRegressor

CONFIGS = [  # (label, model, hidden, paper MSE at σ = 1)
    ("HyCNN 48x4", "hycnn", (48,) * 4, 1.15),
    ("HyCNN 48x8", "hycnn", (48,) * 8, 0.85),
    ("HyCNN 48x16", "hycnn", (48,) * 16, 0.76),
    ("ICNN 64x4", "icnn", (64,) * 4, 1.57),
    ("ICNN 64x8", "icnn", (64,) * 8, 4.68),
    ("MLP 64x4", "mlp", (64,) * 4, 5.23),
]


def data(seed: int, noise: float, d: int = 50, n_train: int = 5000, n_test: int = 1000):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n_train, d))
    y = (x**2).sum(1) + noise * rng.normal(size=n_train)
    x_test = rng.uniform(-1, 1, size=(n_test, d))
    return x, y, x_test, (x_test**2).sum(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--noise", type=float, nargs="+", default=[1.0, 0.0])
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()
    print(f"# Convex regression, d = 50, n = 5000, {args.epochs} epochs; {machine()}")
    for noise in args.noise:
        rows = []
        for label, model, hidden, paper in CONFIGS:
            errors, times = [], []
            for seed in range(args.seeds):
                x, y, x_test, y_test = data(seed, noise)
                regressor = ConvexRegressor(model=model, hidden=hidden, epochs=args.epochs,
                                            lr=1e-2, batch_size=1000, seed=seed, device="cpu")
                def fit_and_score(r=regressor, x=x, y=y, x_test=x_test, y_test=y_test):
                    return float(np.mean((r.fit(x, y).predict(x_test) - y_test) ** 2))

                error, seconds = timed(fit_and_score)
                errors.append(error)
                times.append(seconds)
            rows.append([label, f"{regressor.n_params_:,}", f"{paper:.2f}" if noise == 1 else "-",
                         mean_spread(errors), f"{np.mean(times):.1f}"])
        print(f"\n## noise σ = {noise:g} ({args.seeds} seeds)\n")
        print_table(["model", "params", "paper MSE", "our test MSE", "s / fit"], rows)


if __name__ == "__main__":
    main()
