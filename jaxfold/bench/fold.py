"""``jaxfold bench fold``: fold time of ResNet18 with jaxfold's jitted k-means vs the paper's clustering pipeline
(sklearn ``PCA(n)`` + ``KMeans(n_init=10, max_iter=20)`` per group), on the same features, in one run.

Only the clusterer differs: both sides build features and merge with the same code, so the comparison isolates
clustering. *Cold* = a fresh Python process from start to folded parameters (imports, model init, JIT compilation
included), timed from the parent; *warm* = a fold at a second ratio in a process that has already folded once.
Inertia is recomputed for both labellings on the same float64 features.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import numpy as np

from jaxfold import compile_cache, models
from jaxfold.bench import emit
from jaxfold.folding import fold


def sklearn_clusterer(seed: int = 0):
    """The official CV code's pipeline: full PCA (distance-preserving), then k-means with 10 restarts."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    def cluster(x: Any, k: int, key: Any) -> np.ndarray:
        del key
        x = np.asarray(x, np.float64)
        z = PCA(n_components=min(x.shape), random_state=seed).fit_transform(x)
        return KMeans(n_clusters=k, n_init=10, max_iter=20, random_state=seed).fit(z).labels_

    return cluster


def _setup(width: float, checkpoint_path: str = "") -> tuple[models.ModelConfig, dict]:
    if checkpoint_path:  # real trained features, e.g. the Fashion-MNIST ResNet18 of configs/resnet18_fmnist.py
        from jaxfold.io import checkpoint

        variables, cfg, _ = checkpoint.restore(checkpoint_path)
        return cfg, variables
    cfg = models.resnet18(stem="cifar", in_channels=3, num_classes=10, width=width)
    return cfg, cfg.init(jax.random.key(0))  # random weights: timing does not depend on training


def _fold(impl: str, cfg: models.ModelConfig, variables: dict, ratio: float, n_init: int) -> tuple[float, dict]:
    clusterer = "kmeans" if impl == "jaxfold" else sklearn_clusterer()
    t0 = time.perf_counter()
    result = fold(variables, cfg.fold_spec(), ratio, jax.random.key(1), clusterer=clusterer, n_init=n_init)
    jax.block_until_ready(result.variables)
    return time.perf_counter() - t0, result.report


def _child(impl: str, width: float, ratio: float, cache: str, checkpoint_path: str, n_init: int) -> None:
    if cache:
        compile_cache.enable(cache)
    cfg, variables = _setup(width, checkpoint_path)
    seconds, report = _fold(impl, cfg, variables, ratio, n_init)
    print(json.dumps({"fold_seconds": seconds, "inertia": {g["group"]: g["inertia"] for g in report["groups"]}}))


def _cold(impl: str, args: argparse.Namespace, cache: str) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "jaxfold.bench.fold", "--child", impl, "--width", str(args.width), "--ratio",
           str(args.cold_ratio), "--cache", cache, "--checkpoint", args.checkpoint, "--n-init", str(args.n_init)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"cold {impl} run failed:\n{out.stderr[-3000:]}")
    return wall, json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="jaxfold bench fold", description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=float, default=1.0, help="ResNet18 width multiplier (1.0: 11.17M params)")
    p.add_argument("--checkpoint", default="", help="fold this jaxfold checkpoint instead of a random ResNet18")
    p.add_argument("--cold-ratio", type=float, default=0.25)
    p.add_argument("--warm-ratio", type=float, default=0.45)
    p.add_argument("--repeats", type=int, default=3, help="cold processes and warm folds per implementation")
    p.add_argument("--n-init", type=int, default=10,
                   help="jaxfold k-means restarts (the reference always runs sklearn's n_init=10)")
    p.add_argument("--no-cold", action="store_true", help="only the warm rows (no fresh processes)")
    p.add_argument("--out", default="", help="also write the JSON here")
    p.add_argument("--child", choices=["jaxfold", "sklearn"], help=argparse.SUPPRESS)
    p.add_argument("--ratio", type=float, help=argparse.SUPPRESS)
    p.add_argument("--cache", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child, args.width, args.ratio, args.cache, args.checkpoint, args.n_init)
        return 0
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("jaxfold bench fold: the reference needs scikit-learn: pip install -e .[dev]", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"jaxfold bench: warning: 1-min load average is {load:.2f}; measure on a quiet machine", file=sys.stderr)

    impls = ("jaxfold", "sklearn")
    cold = {i: [] for i in impls}
    cold_inertia = {}
    # Cold: a fresh process each time, twice over for both: with an empty persistent compilation cache (a first run
    # ever) and with the cache a previous process left (what `jaxfold fold` sees from its second run on).
    cached = {i: [] for i in impls}
    with tempfile.TemporaryDirectory(prefix="jaxfold-xla-") as warm_cache:
        for r in range(0 if args.no_cold else args.repeats):  # alternate which goes first
            for impl in impls if r % 2 == 0 else impls[::-1]:
                with tempfile.TemporaryDirectory(prefix="jaxfold-xla-") as empty:
                    wall, child = _cold(impl, args, empty)
                cold[impl].append(wall)
                cold_inertia[impl] = child["inertia"]
                if r == 0:
                    _cold(impl, args, warm_cache)  # fills the cache
                cached[impl].append(_cold(impl, args, warm_cache)[0])
    cfg, variables = _setup(args.width, args.checkpoint)
    warm = {i: [] for i in impls}
    warm_inertia = {}
    for impl in impls:
        _fold(impl, cfg, variables, args.cold_ratio, args.n_init)  # the process has folded once: caches are warm
        for _ in range(args.repeats):
            seconds, report = _fold(impl, cfg, variables, args.warm_ratio, args.n_init)
            warm[impl].append(seconds)
        warm_inertia[impl] = {g["group"]: g["inertia"] for g in report["groups"]}

    def ratio_of(inertia: dict) -> float:
        return max(inertia["jaxfold"][g] / inertia["sklearn"][g] for g in inertia["jaxfold"] if inertia["sklearn"][g])

    kinds = ("warm",) if args.no_cold else ("cold", "cold_cached", "warm")
    med = {k: {i: statistics.median(v[i]) for i in impls}
           for k, v in (("cold", cold), ("cold_cached", cached), ("warm", warm)) if k in kinds}
    result = {
        "benchmark": "fold", "model": cfg.to_dict(), "checkpoint": args.checkpoint, "params": cfg.param_count(),
        "groups": len(cfg.fold_spec().groups), "cold_ratio": args.cold_ratio, "warm_ratio": args.warm_ratio,
        "n_init": args.n_init, "reference_n_init": 10,
        "repeats": args.repeats, "cold_seconds": cold, "cold_cached_seconds": cached, "warm_seconds": warm,
        "median": med, **{f"speedup_{k}": med[k]["sklearn"] / med[k]["jaxfold"] for k in kinds},
        "max_group_inertia_ratio_cold": ratio_of(cold_inertia) if cold_inertia else None,
        "max_group_inertia_ratio_warm": ratio_of(warm_inertia),
        "total_inertia_ratio_warm": sum(warm_inertia["jaxfold"].values()) / sum(warm_inertia["sklearn"].values()),
        "device_kind": jax.devices()[0].device_kind, "jax_version": jax.__version__, "cpu_count": os.cpu_count(),
        "load_avg_1min_before": load,
    }
    print(f"{args.checkpoint or f'random ResNet18 (CIFAR stem) width {args.width}'}, {result['params']:,} params, "
          f"{result['groups']} groups; jaxfold n_init={args.n_init} vs sklearn n_init=10; "
          f"{result['device_kind']}; medians of {args.repeats}\n")
    print("| | jaxfold (s) | sklearn PCA+KMeans (s) | speed-up | max per-group inertia ratio |\n|---|---|---|---|---|")
    rows = (("cold", "cold, empty compile cache", args.cold_ratio, "cold"),
            ("cold_cached", "cold, persistent compile cache", args.cold_ratio, "cold"),
            ("warm", "warm (second ratio, same process)", args.warm_ratio, "warm"))
    for kind, label, ratio, inertia_kind in rows:
        if kind not in kinds:
            continue
        print(f"| {label}, r = {ratio} | {med[kind]['jaxfold']:.2f} | {med[kind]['sklearn']:.2f} | "
              f"{result[f'speedup_{kind}']:.1f}× | {result[f'max_group_inertia_ratio_{inertia_kind}']:.4f} |")
    return emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
