#!/usr/bin/env python
"""SmolLM2-135M folded with the paper's block recipe: jaxfold k-means vs the official LLM clustering (sklearn PCA
+ Ward agglomerative) on the same features, in one process. Both sides run the same `jaxfold.fold` (features,
merges, report); only the clusterer differs. Prints seconds per fold and the per-group inertia ratios.

    .venv/bin/python benchmarks/llm_fold.py --target 0.2 --repeats 2 --out benchmarks/results/llm_fold_cpu.json
"""
import argparse
import json
import os
import statistics
import time

import jax
import numpy as np
from sklearn.decomposition import PCA

from jaxfold import schedules
from jaxfold.clustering import ward_clusterer
from jaxfold.files import write_json_atomic
from jaxfold.folding import fold
from jaxfold.llm import load_language_model


def pca_ward(x, k, key):
    """The official LLM code's clustering: PCA (all components) then Ward."""
    return ward_clusterer(PCA(n_components=min(x.shape)).fit_transform(np.asarray(x, np.float64)), k, key)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", type=float, default=0.2, help="fraction of parameters removed (recipe, calibrated)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--n-init", default="1,3,10", help="k-means restart counts to time")
    p.add_argument("--out", default="")
    args = p.parse_args()
    model = load_language_model("smollm2")
    spec = model.config.fold_spec()
    plan, scale, achieved = schedules.calibrate(model.config, "recipe", args.target)
    runs = {"pca_ward": dict(clusterer=pca_ward)}
    for n_init in (int(v) for v in args.n_init.split(",")):
        runs[f"kmeans_n_init{n_init}"] = dict(clusterer="kmeans", n_init=n_init, max_iter=300)
    out = {"model": "smollm2", "target": args.target, "achieved_sparsity": achieved, "recipe_scale": scale,
           "load_avg_1min_before": os.getloadavg()[0], "device_kind": jax.devices()[0].device_kind,
           "jax_version": jax.__version__}
    inertia = {}
    for name, options in runs.items():
        t = time.perf_counter()
        result = fold(model.variables, spec, plan, jax.random.key(0), **options)  # first call: compiles (k-means)
        first = time.perf_counter() - t
        seconds = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            result = fold(model.variables, spec, plan, jax.random.key(0), **options)
            jax.block_until_ready(result.variables)
            seconds.append(time.perf_counter() - t)
        folded = [g for g in result.report["groups"] if g["k"] < g["n"]]
        inertia[name] = {g["group"]: g["inertia"] for g in folded}
        out[name] = {"first_call_seconds": round(first, 2), "seconds": [round(s, 2) for s in seconds],
                     "median_seconds": round(statistics.median(seconds), 2), "groups_folded": len(folded),
                     "total_inertia": round(sum(inertia[name].values()), 1)}
        print(name, json.dumps(out[name]), flush=True)
    ref = inertia["pca_ward"]
    for name in runs:
        if name == "pca_ward":
            continue
        ratios = [inertia[name][g] / ref[g] for g in ref if ref[g] > 0]
        out[name].update(speedup_vs_ward=round(out["pca_ward"]["median_seconds"] / out[name]["median_seconds"], 2),
                         max_group_inertia_ratio=round(max(ratios), 4),
                         groups_above_ward=sum(r > 1 for r in ratios),
                         total_inertia_ratio=round(sum(inertia[name].values()) / sum(ref.values()), 4))
    print(json.dumps(out, indent=1))
    if args.out:
        write_json_atomic(args.out, out)


if __name__ == "__main__":
    main()
