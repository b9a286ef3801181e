#!/usr/bin/env python
"""Host memory a fold needs beyond the weights: SmolLM2-135M folded with the paper's recipe, allocations traced
(tracemalloc sees every numpy buffer: features, Gram matrices, merged tensors) during one fold after a warm-up
fold. Prints one JSON line; 'transient_MB' = traced peak minus the merged tensors the fold returns.

    .venv/bin/python benchmarks/llm_fold_memory.py [--target 0.2] [--n-init 1]

XLA's own buffers (the compiled k-means' working set, a few (n, n) float32 arrays per group) are not traced.
"""
import argparse
import json
import tracemalloc

import jax
import numpy as np

from jaxfold import schedules, tree
from jaxfold.folding import fold
from jaxfold.llm import load_language_model
from jaxfold.merge import group_features


def _mb(nbytes: float) -> float:
    return round(nbytes / 1e6, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", type=float, default=0.2, help="fraction of parameters removed (recipe, calibrated)")
    p.add_argument("--n-init", type=int, default=1)
    args = p.parse_args()
    model = load_language_model("smollm2")
    spec = model.config.fold_spec()
    plan, _, achieved = schedules.calibrate(model.config, "recipe", args.target)
    fold(model.variables, spec, plan, jax.random.key(0), n_init=args.n_init)  # compile outside the trace
    tracemalloc.start()
    result = fold(model.variables, spec, plan, jax.random.key(0), n_init=args.n_init)
    jax.block_until_ready(result.variables)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    groups = result.report["groups"]
    largest = max((g for g in groups if g["k"] < g["n"]), key=lambda g: g["n"])
    flat = tree.flatten(model.variables)
    # the fold's output: the merged tensors (those of unfolded groups are the input's own arrays, not copies)
    new_bytes = sum(np.asarray(a).nbytes for p, a in tree.flatten(result.variables).items() if a is not flat[p])
    feature_bytes = group_features(flat, spec.group(largest["group"]), largest["n"]).nbytes
    print(json.dumps({
        "params_removed": round(achieved, 4),
        "weights_MB": _mb(sum(np.asarray(a).nbytes for a in flat.values())),
        "new_tensors_MB": _mb(new_bytes), "traced_peak_MB": _mb(peak), "transient_MB": _mb(peak - new_bytes),
        "largest_group": largest["group"], "its_features_MB": _mb(feature_bytes),
        "its_gram_MB": _mb(4 * largest["n"] ** 2)}))


if __name__ == "__main__":
    main()
