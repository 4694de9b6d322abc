"""Why does training degrade a good (Gaussian) start of ``TransportMap`` on a linear-truth problem?

Problem: source N(m0, S0), target N(m1, S1), random SPD covariances S = Q diag(e) Qᵀ with
e log-uniform in [0.25, 4], random means m ~ N(0, I); n points per side. The true OT map is
the closed-form Gaussian map T*(x) = m1 + A (x − m0) of the TRUE covariances. Metric:
L2-UVP = 100 · E‖T̂(x) − T*(x)‖² / tr S1 on 5000 fresh test source points.

Each setting is one ``TransportMap.fit_many`` call on the problems of all seeds stacked
(independent maps trained as one batched computation, TransportMap seed 0; stacking costs little
on CPU). The training trajectory is read without touching the package: ``_validation_profiles`` of
``hycnn_sc.models._minimax`` (called at every validation check; iteration 0 is the state right
after the warm start) and ``train_minimax`` as imported by ``hycnn_sc.models._estimator`` (the shared minimax runner; to
reach ``g``) are wrapped from this script. Validation draws no random numbers, so the wrapper
does not change training. The default run is validated every ``iters // 40`` iterations for a
finer trajectory (same training; the shipped every-``iters // 20`` selection is replayed from
the recorded validation energies) and also fits the same problems with ``--big-n`` points per
side (more data, same truth: sample overfitting vs optimisation). On hycnn_sc versions with a
linear part / residual selection the fits are pinned to ``residual=1, shrinkage=0,
frame="global"`` (the network alone, as in 0.1).

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/diagnose_degradation.py \
        --dims 16 64 --seeds 2 [--settings ...] [--settings-high-d ...]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings

import numpy as np
import torch

torch.set_num_threads(1)

import hycnn_sc.models._estimator as estimator_module  # noqa: E402
import hycnn_sc.models._minimax as minimax_module  # noqa: E402
import hycnn_sc.models.transport as transport_module  # noqa: E402
from hycnn_sc.metrics import energy_distance  # noqa: E402
from hycnn_sc.models import GaussianTransportMap, TransportMap  # noqa: E402
from hycnn_sc.models._convex_base import potential_gradient  # noqa: E402
from hycnn_sc.models.gaussian import gaussian_transport_matrix  # noqa: E402
from hycnn_sc.models.schedules import cosine_factor  # noqa: E402

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import machine, print_table  # noqa: E402

N_TEST = 5000
N_VAL = 500  # held-out points per side at the defaults (10 % of 5000)
N_DRAWS = 20  # paired validation-set redraws for the criterion's noise
N_BIG_ED = 2000  # points per side of the (low-noise) energy distance
DETAIL_EVERY = 50  # checkpoints where the expensive diagnostics are computed


# ---------------------------------------------------------------------- problem
class Problem:
    """One Gaussian-to-Gaussian problem with its true map, test points and fresh draws."""

    def __init__(self, d: int, seed: int, n: int, big_n: int = 0) -> None:
        rng = np.random.default_rng(10_000 * d + seed)

        def spd() -> np.ndarray:
            q, r = np.linalg.qr(rng.normal(size=(d, d)))
            q = q * np.sign(np.diag(r))
            eig = np.exp(rng.uniform(math.log(0.25), math.log(4.0), size=d))
            return (q * eig) @ q.T, (q * np.sqrt(eig)) @ q.T

        (self.s0, root0), (self.s1, root1) = spd(), spd()
        self.m0, self.m1 = rng.normal(size=d), rng.normal(size=d)
        self.a = gaussian_transport_matrix(self.s0, self.s1)
        self.a_inv = np.linalg.inv(self.a)
        self.var_target, self.var_source = float(np.trace(self.s1)), float(np.trace(self.s0))
        draw0 = lambda k: (self.m0 + rng.normal(size=(k, d)) @ root0).astype(np.float32)  # noqa: E731
        draw1 = lambda k: (self.m1 + rng.normal(size=(k, d)) @ root1).astype(np.float32)  # noqa: E731
        self.test_x, self.test_y = draw0(N_TEST), draw1(N_TEST)
        self.test_y2 = draw1(N_TEST)  # a second independent target sample (noise floors)
        size = max(n, big_n)
        pool_x, pool_y = draw0(size), draw1(size)  # nested: the n-point data are a prefix
        self.source, self.target = pool_x[:n], pool_y[:n]
        self.big_source, self.big_target = (pool_x, pool_y) if big_n else (None, None)
        self.true_test = self.truth(self.test_x)
        self.draws = [(rng.choice(N_TEST, N_VAL, replace=False), rng.choice(N_TEST, N_VAL, replace=False))
                      for _ in range(N_DRAWS)]

    def truth(self, x: np.ndarray) -> np.ndarray:
        return self.m1 + (x.astype(np.float64) - self.m0) @ self.a

    def l2uvp(self, mapped: np.ndarray) -> float:
        return 100.0 * float(np.mean(np.sum((mapped - self.true_test) ** 2, 1))) / self.var_target

    def decompose(self, mapped: np.ndarray) -> tuple[float, float]:
        """L2-UVP of the best affine fit of the learned map, and of its non-affine residual."""
        design = np.hstack([self.test_x.astype(np.float64), np.ones((N_TEST, 1))])
        coef, *_ = np.linalg.lstsq(design, mapped.astype(np.float64), rcond=None)
        affine = design @ coef
        return self.l2uvp(affine), 100.0 * float(np.mean(np.sum((mapped - affine) ** 2, 1))) / self.var_target


# ---------------------------------------------------------------------- trajectory hook
class Recorder:
    """Collects per-checkpoint diagnostics of the stacked maps being trained."""

    def __init__(self) -> None:
        self.problems: list[tuple[Problem, np.ndarray, np.ndarray]] = []  # (problem, source, target)
        self.settings: dict = {}
        self.records: list[dict] = []
        self.g = None
        self.calls = 0

    def start(self, problems, params) -> None:
        self.records, self.g, self.calls = [], None, 0
        self.settings = params
        self.standard = []
        for _, source, target in problems:
            center, scale = transport_module._common_standardisation(source, target)
            self.standard.append((center.astype(np.float64), scale))
        self.problems = problems

    def _stack(self, arrays) -> torch.Tensor:
        return torch.as_tensor(np.stack([((a - c) / s).astype(np.float32)
                                         for a, (c, s) in zip(arrays, self.standard, strict=True)]))

    def __call__(self, f, padded_source, sizes, targets, within_targets):
        profiles = ORIGINAL_VALIDATION(f, padded_source, sizes, targets, within_targets)
        values = np.asarray([p.value for p in profiles])
        iteration = self.calls * self.settings["every"]
        iteration = min(iteration, self.settings["n_iters"])
        self.calls += 1
        detail = iteration % DETAIL_EVERY == 0 or iteration == self.settings["n_iters"]
        mapped = potential_gradient(f, self._stack([p.test_x for p, _, _ in self.problems])).detach()
        record = {"iteration": iteration, "val": values.copy(), "l2": [], "lin": [], "res": [],
                  "alpha": np.nan, "detail": detail}
        raw = getattr(f, "quadratic_weight_raw", None)
        if raw is not None:
            record["alpha"] = torch.nn.functional.softplus(raw.detach()).numpy().copy()
        if detail:
            record.update(ed_big=[], ed_draws=[], g_l2=[], g_lag=[])
            inverse = (potential_gradient(self.g, self._stack([p.test_y for p, _, _ in self.problems])).detach()
                       if self.g is not None else None)
            if inverse is not None:
                back = potential_gradient(f, inverse).detach()
        for k, (problem, _, _) in enumerate(self.problems):
            center, scale = self.standard[k]
            out = center + scale * mapped[k].double().numpy()
            record["l2"].append(problem.l2uvp(out))
            if not detail:
                continue
            lin, res = problem.decompose(out)
            record["lin"].append(lin)
            record["res"].append(res)
            std_out = torch.as_tensor((out - center) / scale)
            std_y = torch.as_tensor((problem.test_y - center) / scale)
            record["ed_big"].append(float(energy_distance(std_out[:N_BIG_ED], std_y[:N_BIG_ED])))
            record["ed_draws"].append(np.array([float(energy_distance(std_out[i], std_y[j]))
                                                for i, j in problem.draws]))
            if inverse is not None:
                inv = center + scale * inverse[k].double().numpy()
                true_inv = problem.m0 + (problem.test_y - problem.m1) @ problem.a_inv
                record["g_l2"].append(100 * float(np.mean(np.sum((inv - true_inv) ** 2, 1)))
                                      / problem.var_source)
                # How far g is from inverting the current f: ∇f(∇g(y)) vs y (standardised).
                record["g_lag"].append(100 * float(back[k].sub(std_y.float()).square().sum(-1).mean())
                                       / float(std_y.float().var(0).sum()))
        self.records.append(record)
        return values


RECORDER = Recorder()
ORIGINAL_VALIDATION = minimax_module._validation_profiles
ORIGINAL_TRAIN = estimator_module.train_minimax


def _train_and_remember(f, g, *args, **kwargs):
    RECORDER.g = g
    return ORIGINAL_TRAIN(f, g, *args, **kwargs)


minimax_module._validation_profiles = RECORDER
estimator_module.train_minimax = _train_and_remember


# ---------------------------------------------------------------------- experiment
#: key: (label, TransportMap arguments). "default" is handled separately (fine trajectory, big n).
VARIANTS = {
    "full_quadratic": ("(h) full_quadratic (exact Gaussian start)", {"network_kwargs": {"full_quadratic": True}}),
    "ws1000": ("warm_start_iters 1000 (better gradient-matching start)", {"warm_start_iters": 1000}),
    "lr1e-3": ("(d) lr 1e-3", {"lr": 1e-3}),
    "lr3e-4": ("(d) lr 3e-4", {"lr": 3e-4}),
    "inner10": ("(e) inner_steps 10", {"inner_steps": 10}),
    "batch1024": ("(f) batch_size 1024", {"batch_size": 1024}),
    "val0": ("(g) selection_fraction 0 (keeps the last iterate)", {"selection_fraction": 0.0}),
    "iso0": ("(h) isotropic_quadratic 0", {"network_kwargs": {"isotropic_quadratic": 0.0}}),
    "identity": ("(i) warm_start identity", {"warm_start": "identity"}),
    # From a good network start (1000 warm-start steps): is its degradation lr- or noise-driven?
    "ws1000_lr3e-4": ("warm_start_iters 1000 + lr 3e-4", {"warm_start_iters": 1000, "lr": 3e-4}),
    "ws1000_batch1024": ("warm_start_iters 1000 + batch_size 1024",
                         {"warm_start_iters": 1000, "batch_size": 1024}),
    "ws1000_inner10": ("warm_start_iters 1000 + inner_steps 10",
                       {"warm_start_iters": 1000, "inner_steps": 10}),
}
#: Warm-start-only probes (n_iters = 1 at lr 1e-12: the state right after the warm start).
PROBES = {
    "iso0": ("isotropic_quadratic 0", {"network_kwargs": {"isotropic_quadratic": 0.0}}),
    "ws0": ("no warm-start steps (initialisation)", {"warm_start_iters": 0}),
}
#: Arguments that pin newer hycnn_sc versions (linear part + residual selection) to the network
#: alone with an unshrunk Gaussian warm start, i.e. the behaviour under study.
NEWER = {"residual": 1.0, "shrinkage": 0.0, "frame": "global"}


def fmt(values, digits: int = 2) -> str:
    array = np.asarray(values, dtype=float)
    if array.size == 0 or np.all(np.isnan(array)):
        return "-"
    if array.size == 1:
        return f"{array.item():.{digits}f}"
    return f"{np.nanmean(array):.{digits}f} ± {np.nanstd(array, ddof=1):.{digits}f}"


def pinned() -> dict:
    names = TransportMap._get_param_names()
    return {k: v for k, v in NEWER.items() if k in names}


def learning_rate(params: dict, iteration: int) -> float:
    n_iters, lr = params["n_iters"], params.get("lr", 3e-3)
    warmup = max(int(0.1 * n_iters), 1)
    step = min(max(iteration - 1, 0), n_iters - 1)  # rate of the last update before the check
    return lr * min(1.0, (step + 1) / warmup) * cosine_factor(step, n_iters, 0.01)


def run_setting(pairs, params: dict) -> dict:
    """Fit all pairs stacked; return per-pair start/best/last L2-UVP, the maps and the records."""
    n_iters = params["n_iters"]
    every = params.get("selection_every") or max(n_iters // 20, 1)
    RECORDER.start(pairs, {"every": every, "n_iters": n_iters})
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        maps = TransportMap.fit_many([s for _, s, _ in pairs], [t for _, _, t in pairs],
                                     device="cpu", seed=0, **pinned(), **params)
    seconds = time.perf_counter() - start
    if any(m.nonfinite_recoveries_ for m in maps):
        print(f"  ! {params}: non-finite losses ({[m.nonfinite_recoveries_ for m in maps]} "
              "recoveries); the recorded iteration numbers after it are shifted", flush=True)
    returned = [p.l2uvp(m.transport(p.test_x)) for (p, _, _), m in zip(pairs, maps, strict=True)]
    records = RECORDER.records
    out = {"seconds": seconds, "returned": returned, "maps": maps, "records": records,
           "best_iteration": [m.best_iteration_ for m in maps], "params": params}
    if records:
        out["start"] = records[0]["l2"]
        out["last"] = records[-1]["l2"]
        # Sanity: the returned map is the recorded iterate at best_iteration_.
        by_iter = {r["iteration"]: r for r in records}
        for k, m in enumerate(maps):
            recorded = by_iter[m.best_iteration_]["l2"][k]
            if abs(recorded - returned[k]) > 1e-3 * max(1.0, returned[k]):
                print(f"  ! map {k}: recorded {recorded:.4f} vs returned {returned[k]:.4f}", flush=True)
    else:
        out["start"] = [np.nan] * len(pairs)
        out["last"] = returned  # selection_fraction 0 keeps the last iterate
    return out


def replay_selection(records, k: int, every: int) -> dict:
    """The iterate ``train_minimax`` would keep when validating every ``every`` iterations."""
    last = records[-1]["iteration"]
    eligible = [r for r in records if r["iteration"] % every == 0 or r["iteration"] == last]
    best = None
    for r in eligible:  # strict improvement, first minimum, as in train_minimax
        if best is None or r["val"][k] < best["val"][k]:
            best = r
    return best


def trajectory_table(res: dict, ns: int, big_label: str | None) -> None:
    params = {"n_iters": res["params"]["n_iters"], **res["params"]}
    n_iters = params["n_iters"]
    show = {round(s * n_iters / 1000) for s in
            (0, 25, 50, 75, 100, 150, 200, 300, 400, 500, 600, 700, 800, 900, 1000)}
    rows = []
    for r in res["records"]:
        if r["iteration"] not in show:
            continue
        detail = r["detail"]
        row = [str(r["iteration"]), f"{learning_rate(params, r['iteration']):.1e}", fmt(r["l2"][:ns])]
        if big_label:
            row.append(fmt(r["l2"][ns:]))
        row += [fmt(r["lin"][:ns]) if detail else "", fmt(r["res"][:ns]) if detail else "",
                fmt(r["g_l2"][:ns]) if detail else "", fmt(r["g_lag"][:ns]) if detail else "",
                fmt(np.ravel(r["alpha"])[:ns], 3), fmt(r["val"][:ns], 4),
                fmt(r["ed_big"][:ns], 4) if detail else ""]
        rows.append(row)
    header = ["iter", "lr", "L2-UVP"] + ([big_label] if big_label else []) + [
        "lin", "nonlin", "g L2-UVP", "g-lag", "alpha", "val ED", f"ED{N_BIG_ED}"]
    print_table(header, rows)


def diagnose(d: int, args) -> None:
    problems = [Problem(d, s, args.n, args.big_n) for s in range(args.seeds)]
    small = [(p, p.source, p.target) for p in problems]
    big = [(p, p.big_source, p.big_target) for p in problems] if args.big_n else []
    ns = len(small)
    base = {"n_iters": args.iters}
    keys = args.settings if d <= 16 else args.settings_high_d
    print(f"\n## d = {d}: {args.seeds} seed(s), n = {args.n} per side, {args.iters} iterations\n",
          flush=True)
    rows, results = [], {}

    gauss = [p.l2uvp(GaussianTransportMap().fit(p.source, p.target).transport(p.test_x)) for p in problems]
    rows.append(["(a) closed-form Gaussian map fitted on the sample", "", fmt(gauss), "", "", ""])
    if big:
        gauss_big = [p.l2uvp(GaussianTransportMap().fit(p.big_source, p.big_target).transport(p.test_x))
                     for p in problems]
        rows.append([f"(a') closed-form Gaussian map, n = {args.big_n}", "", fmt(gauss_big), "", "", ""])

    if not args.no_default:
        # ---- default run (finer validation cadence for the trajectory), stacked with big-n problems
        fine = max(args.iters // 40, 1)
        default = run_setting(small + big, {**base, "selection_every": fine})
        results["default"] = default
        recs = default["records"]
        ship = max(args.iters // 20, 1)
        shipped = [replay_selection(recs, k, ship) for k in range(ns)]
        rows.append(["(b) warm start = iteration 0 of the default run", "", fmt(default["start"][:ns]),
                     "", "", ""])
        rows.append([f"(c) defaults: best iterate (validated every {ship}, as shipped)",
                     fmt(default["start"][:ns]), fmt([r["l2"][k] for k, r in enumerate(shipped)]),
                     fmt(default["last"][:ns]), ",".join(str(r["iteration"]) for r in shipped),
                     f"{default['seconds']:.0f}*"])
        rows.append([f"(c') defaults, validated every {fine}: best iterate", fmt(default["start"][:ns]),
                     fmt(default["returned"][:ns]), fmt(default["last"][:ns]),
                     ",".join(map(str, default["best_iteration"][:ns])), "(same run)"])
        if big:
            rows.append([f"(k) defaults, n = {args.big_n} per side (same run)",
                         fmt(default["start"][ns:]), fmt(default["returned"][ns:]), fmt(default["last"][ns:]),
                         ",".join(map(str, default["best_iteration"][ns:])), "(same run)"])
        print(f"  defaults: start {fmt(default['start'][:ns])}, returned {fmt(default['returned'][:ns])}, "
              f"last {fmt(default['last'][:ns])}, {default['seconds']:.0f}s", flush=True)

    for key in keys:
        label, params = VARIANTS[key]
        res = run_setting(small, {**base, **params})
        results[key] = res
        rows.append([label, fmt(res["start"]), fmt(res["returned"]), fmt(res["last"]),
                     ",".join(map(str, res["best_iteration"])), f"{res['seconds']:.0f}"])
        print(f"  {label}: start {fmt(res['start'])}, returned {fmt(res['returned'])}, "
              f"last {fmt(res['last'])}, {res['seconds']:.0f}s", flush=True)
    for key in args.probes:
        label, params = PROBES[key]
        res = run_setting(small, {"n_iters": 1, "lr": 1e-12, **params})
        rows.append([f"warm start only: {label}", fmt(res["start"]), "", "", "", f"{res['seconds']:.0f}"])

    print("\nL2-UVP in % (mean ± sd over seeds). start = iteration 0 (right after the warm start); "
          "returned = the map fit() keeps (best validation energy); last = final iterate. "
          "s = wall seconds of one stacked fit of all seeds (* also holds the big-n maps).\n")
    print_table(["setting", "start", "returned (best)", "last iterate", "best_iteration_", "s"], rows)

    if "default" in results:
        print(f"\nTrajectory of the default run (mean ± sd over seeds). lin / nonlin: L2-UVP of the best "
              "affine fit of the learned map on the test points and of its non-affine residual (they "
              "add up); g L2-UVP: ∇g vs the true inverse map (relative to tr S0); g-lag: "
              "100·E‖∇f(∇g(y)) − y‖²/Var(y), how far g is from inverting the current f; alpha: "
              f"isotropic quadratic weight of f; val ED: validation energy distance ({N_VAL} vs {N_VAL}, "
              f"what selection sees); ED{N_BIG_ED}: fresh {N_BIG_ED} vs {N_BIG_ED}; energies in "
              "standardised units. lr: learning rate of the last update.\n")
    if "default" in results:
        trajectory_table(results["default"], ns, f"L2-UVP n={args.big_n}" if big else None)
    if "full_quadratic" in results:
        print("\nTrajectory of full_quadratic (exact Gaussian start):\n")
        trajectory_table(results["full_quadratic"], ns, None)

    print("\nL2-UVP trajectories of all settings (mean over seeds):\n")
    marks = [round(s * args.iters / 1000) for s in (0, 50, 100, 200, 300, 500, 700, 1000)]
    other = []
    for key, res in results.items():
        by_iter = {r["iteration"]: r for r in res["records"]}
        if by_iter:
            other.append([key] + [f"{np.mean(by_iter[m]['l2'][:ns]):.2f}" if m in by_iter else ""
                                  for m in marks])
    print_table(["setting"] + [str(m) for m in marks], other)

    # ---- can the validation criterion see the change?
    floors, floors_big, true_eds = [], [], []
    for p in problems:
        center, scale = standardisation(p)
        std_y, std_y2 = (p.test_y - center) / scale, (p.test_y2 - center) / scale
        std_true = (p.true_test - center) / scale
        floors.append([float(energy_distance(std_y[i], std_y2[j])) for i, j in p.draws])
        true_eds.append([float(energy_distance(std_true[i], std_y[j])) for i, j in p.draws])
        floors_big.append(float(energy_distance(std_y[:N_BIG_ED], std_y2[:N_BIG_ED])))
    print(f"\nCan the selection criterion see it? Energy distances in standardised units. Noise: "
          f"ED between two independent {N_VAL}-point target samples, {N_DRAWS} draws: "
          f"{fmt(np.ravel(floors), 4)}; ED of the TRUE map's {N_VAL} mapped points vs {N_VAL} target "
          f"points: {fmt(np.ravel(true_eds), 4)}; ED(y, y') with {N_BIG_ED} per side: "
          f"{fmt(floors_big, 4)}.\nPaired Δ: ED(last iterate) − ED(start) on the same {N_DRAWS} "
          f"redrawn validation sets ({N_VAL} source points mapped vs {N_VAL} target points); "
          "P: share of draws on which the last iterate scores better than the start.\n")
    crit = []
    for key, res in results.items():
        detailed = [r for r in res["records"] if r["detail"]]
        if not detailed:
            continue
        r0, rl = detailed[0], detailed[-1]
        for k in range(ns):
            diff = rl["ed_draws"][k] - r0["ed_draws"][k]
            crit.append([
                key, str(k), f"{r0['l2'][k]:.2f} → {res['returned'][k]:.2f} → {rl['l2'][k]:.2f}",
                f"{r0['val'][k]:.4f} → {min(r['val'][k] for r in res['records']):.4f} → {rl['val'][k]:.4f}",
                f"{diff.mean():+.4f} ± {diff.std(ddof=1):.4f}", f"{np.mean(diff < 0):.2f}",
                f"{r0['ed_big'][k]:.4f} → {rl['ed_big'][k]:.4f}",
            ])
    print_table(["setting", "seed", "L2-UVP start → returned → last", "val ED start → min → last",
                 "paired Δ ED (last − start)", "P(last better)", f"ED{N_BIG_ED} start → last"], crit)
    if "default" not in results:
        return
    vals = np.array([r["val"][:ns] for r in results["default"]["records"]])
    half = vals[len(vals) // 2:]
    print(f"\nDefault run, val ED in history_: start {fmt(vals[0], 4)}, min {vals.min():.4f}, max "
          f"{vals.max():.4f}; median |change| between consecutive checkpoints "
          f"{np.median(np.abs(np.diff(vals, axis=0))):.4f}; sd over the second half of training "
          f"{fmt(half.std(axis=0, ddof=1), 4)}", flush=True)


def standardisation(problem: Problem):
    center, scale = transport_module._common_standardisation(problem.source, problem.target)
    return center.astype(np.float64), scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--big-n", type=int, default=50000,
                        help="also fit the defaults on this many points per side (0: skip)")
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--settings", nargs="*", choices=sorted(VARIANTS),
                        default=["full_quadratic", "ws1000", "lr3e-4", "batch1024"],
                        help="variants run for d <= 16 (besides the defaults)")
    parser.add_argument("--settings-high-d", nargs="*", choices=sorted(VARIANTS),
                        default=["full_quadratic", "ws1000"],
                        help="variants run for d > 16 (besides the defaults)")
    parser.add_argument("--no-default", action="store_true",
                        help="skip the default run (e.g. a second invocation for more settings)")
    parser.add_argument("--probes", nargs="*", choices=sorted(PROBES), default=["iso0"],
                        help="warm-start-only probes")
    args = parser.parse_args()
    command = "OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python " + " ".join(sys.argv)
    print(f"# {command}\n# {machine()}; torch CPU, 1 thread; machine shared with other jobs "
          "(wall times are indicative)")
    import hycnn_sc
    extra = f"; pinned {pinned()} (network alone, unshrunk Gaussian start)" if pinned() else ""
    print(f"# hycnn_sc from {hycnn_sc.__file__}{extra}")
    total = time.perf_counter()
    for d in args.dims:
        diagnose(d, args)
    print(f"\ntotal wall time {time.perf_counter() - total:.0f} s")


if __name__ == "__main__":
    main()
