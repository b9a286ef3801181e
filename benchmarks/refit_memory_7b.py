#!/usr/bin/env python
"""Host memory of the consumer refit on a LLaMA-7B-shaped model (hidden 4096, MLP 11008, 32 heads, vocabulary
32000) with random weights and ``--layers`` blocks, the way the refit runs after a 20 % MLP compression. The
claim to check: beyond the weights it holds about one block's activations for the calibration tokens (both
streams) plus one consumer's Gram matrices, so its memory does not grow with depth.

    .venv/bin/python benchmarks/refit_memory_7b.py --layers 1 2 4 --windows 4 --seqlen 512 \
        --out benchmarks/results/refit_memory_7b_cpu.jsonl

Each depth runs in a fresh process. The compression is magnitude pruning to the ``recipe_mlp`` widths (the
refit's cost does not depend on how the widths were chosen; k-means on 11008-dim groups would only add minutes).
Peak resident memory is read from ``/proc/self/status`` (VmHWM, reset through ``/proc/self/clear_refs`` just
before the refit), so the figure counts XLA's buffers too; ``beyond_weights_MB`` = peak during the refit − resident
memory just before it (the dense and the compressed weights, the calibration tokens).
"""
import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def middle_blocks(plan32, offset: int = 16):
    """Block i of the shallow model gets the plan of block ``offset`` + i of the 32-block one."""
    def plan(group: str, n: int) -> int:
        match = re.match(r"block(\d+)\.(attn|mlp)$", group)
        return plan32(f"block{int(match.group(1)) + offset}.{match.group(2)}", n) if match else n
    return plan


def one_depth(layers: int, windows: int, seqlen: int, dtype: str, target: float) -> dict:
    import jax
    import numpy as np

    sys.path.insert(0, str(Path(__file__).parent))
    from llm_fold_7b import random_variables

    from jaxfold import schedules, tree
    from jaxfold.baselines import prune_model
    from jaxfold.corrections.refit import refit_with_report
    from jaxfold.models.llama import llama

    shape = dict(vocab_size=32000, hidden_size=4096, num_heads=32, num_kv_heads=32, intermediate_size=11008,
                 max_position_embeddings=4096, dtype=dtype)
    config = llama(num_layers=layers, **shape)
    variables = random_variables(config, seed=0)
    # the widths the recipe gives the 32-block model's middle blocks at ``target`` (its first blocks keep more)
    plan32, _, achieved = schedules.calibrate(llama(num_layers=32, **shape), "recipe_mlp", target)
    pruned = prune_model(config, variables, middle_blocks(plan32))
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (windows, seqlen)).astype(np.int32)
    weights_mb = sum(np.asarray(a).nbytes for a in tree.flatten(variables).values()) / 1e6
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    before = _status_mb("VmRSS")
    t0 = time.perf_counter()
    out, report = refit_with_report(config, variables, pruned.config, pruned.variables, tokens)
    jax.block_until_ready(out)
    seconds = time.perf_counter() - t0
    peak = _status_mb("VmHWM")
    k = pruned.config.intermediate_sizes[0]
    return {"layers": layers, "dtype": dtype, "tokens": int(tokens.size),
            "params_removed_32_blocks": round(achieved, 4),
            "mlp_width": [config.intermediate_sizes[0], k], "weights_MB": round(weights_mb),
            "resident_before_MB": round(before), "peak_MB": round(peak), "beyond_weights_MB": round(peak - before),
            "refit_seconds": round(seconds, 1), "seconds_per_block": round(seconds / layers, 1),
            "gram_MB_float64": round((k * k + k * config.hidden_size) * 8 / 1e6),
            "fit_after": {name: errors[1] for name, errors in list(report["fit"].items())[:2]}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--target", type=float, default=0.2)
    p.add_argument("--out", help="append the JSON lines to this file as well")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: one depth in this process
    args = p.parse_args()
    if args.one:
        print(json.dumps(one_depth(args.layers[0], args.windows, args.seqlen, args.dtype, args.target)))
        return
    for layers in args.layers:  # a fresh process per depth: VmHWM and XLA's allocator start clean
        cmd = [sys.executable, __file__, "--one", "--layers", str(layers), "--windows", str(args.windows),
               "--seqlen", str(args.seqlen), "--dtype", args.dtype, "--target", str(args.target)]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
