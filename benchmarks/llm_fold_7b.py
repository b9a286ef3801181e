#!/usr/bin/env python
"""A LLaMA-7B-shaped model with random weights folded with the paper's block recipe, the way a user folds real
7B weights (`jaxfold.compress.fold_model`: fold spec, k-means per group, merges, rebuilt config checked against
the arrays). Prints one JSON line: seconds, peak host memory, parameter counts, per-group-kind seconds.

    .venv/bin/python benchmarks/llm_fold_7b.py --dtype bfloat16 --target 0.2 --n-init 1 \
        --out benchmarks/results/llm_fold_7b_cpu.json

Weights are drawn on the host (normal, std 0.02 like HF's initializer; norms 1), no compiled init: a 7B init
would otherwise hold a float32 copy. On an accelerator the weights are put on the device first, so features,
Gram matrices and k-means all run there. ``--layers`` shrinks the depth for a quick check of the script.
'fold_seconds' is the process's first fold, compilation included. 'group_seconds_sum' adds the fold report's
per-group seconds (each group's host work plus the wait for its labels, since commit 048734d; the JSON of
benchmarks/results/llm_fold_7b_cpu.json predates it, when those clocks overlapped and their sums exceeded the fold).
"""
import argparse
import json
import re
import resource
import time

import jax
import ml_dtypes
import numpy as np

from jaxfold import schedules, tree
from jaxfold.compress import fold_model
from jaxfold.files import write_json_atomic
from jaxfold.models.llama import llama

NUMPY_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def random_variables(config, seed: int, shared: frozenset[int] = frozenset()) -> dict:
    """Variables of ``config``'s shapes, drawn leaf by leaf in numpy (peak: one float32 leaf beyond the weights).
    The blocks in ``shared`` all hold the same arrays (one draw): the fold leaves them as they are, and sharing
    keeps a 7B model's weights within a 24 GB machine next to the fold's output."""
    rng = np.random.default_rng(seed)
    dtype = NUMPY_DTYPES[config.dtype]
    flat, drawn = {}, {}
    for path, leaf in tree.flatten(config.abstract_variables()).items():
        block = re.search(r"block_(\d+)/", path)
        key = re.sub(r"block_\d+/", "block_*/", path) if block and int(block.group(1)) in shared else path
        if key not in drawn:
            if path.endswith("scale"):  # RMSNorm weights
                drawn[key] = np.ones(leaf.shape, dtype)
            else:
                drawn[key] = (rng.standard_normal(leaf.shape, dtype=np.float32) * 0.02).astype(dtype)
        flat[path] = drawn[key]
    return tree.unflatten(flat)


def unfolded_blocks(config, plan) -> frozenset[int]:
    """Blocks whose every group the plan keeps at full width."""
    widths = schedules.group_widths(config)
    folded = {int(re.match(r"block(\d+)\.", g).group(1)) for g, n in widths.items() if plan(g, n) < n}
    return frozenset(range(config.num_layers)) - folded


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", default="bfloat16", choices=sorted(NUMPY_DTYPES))
    p.add_argument("--layers", type=int, default=32, help="depth (32 = LLaMA-7B; fewer for a quick check)")
    p.add_argument("--target", type=float, default=0.2, help="fraction of parameters removed (recipe, calibrated)")
    p.add_argument("--n-init", type=int, default=1, help="k-means restarts per group")
    p.add_argument("--distinct", action="store_true",
                   help="draw every block (default: the blocks the recipe leaves whole share one draw)")
    p.add_argument("--out", default="")
    args = p.parse_args()

    config = llama(num_layers=args.layers, dtype=args.dtype)
    plan, scale, achieved = schedules.calibrate(config, "recipe", args.target)
    t = time.perf_counter()
    shared = frozenset() if args.distinct else unfolded_blocks(config, plan)
    variables = random_variables(config, seed=0, shared=shared)
    if jax.default_backend() != "cpu":
        variables = jax.block_until_ready(jax.device_put(variables))
    init_seconds = time.perf_counter() - t
    rss_weights = peak_rss_gb()

    t = time.perf_counter()
    folded = fold_model(config, variables, plan, jax.random.key(0), n_init=args.n_init)
    jax.block_until_ready(folded.variables)
    seconds = time.perf_counter() - t

    report = folded.report
    groups = [g for g in report["groups"] if g["k"] < g["n"]]
    by_kind = {kind: [g for g in groups if g["group"].endswith(kind)] for kind in (".attn", ".mlp")}
    out = {
        "layers": args.layers, "dtype": args.dtype, "n_init": args.n_init, "recipe_scale": round(scale, 4),
        "device": jax.devices()[0].device_kind, "backend": jax.default_backend(), "jax_version": jax.__version__,
        "blocks_sharing_one_draw": sorted(shared),
        "init_seconds": round(init_seconds, 1), "fold_seconds": round(seconds, 1),
        "params_before": report["params_before"], "params_after": report["params_after"],
        "params_analytic": report["params_analytic"], "param_sparsity": round(report["param_sparsity"], 4),
        "planned_sparsity": round(achieved, 4),
        "groups_folded": {kind: len(gs) for kind, gs in by_kind.items()},
        "group_seconds_sum": {kind: round(sum(g["seconds"] for g in gs), 1) for kind, gs in by_kind.items()},
        "largest_mlp_group": max(((g["n"], g["k"], g["seconds"]) for g in by_kind[".mlp"]), default=None),
        "peak_rss_GB_after_weights": round(rss_weights, 2), "peak_rss_GB": round(peak_rss_gb(), 2),
    }
    print(json.dumps(out), flush=True)
    if args.out:
        write_json_atomic(args.out, out)


if __name__ == "__main__":
    main()
