#!/usr/bin/env python
"""Where a fold merges an accelerator-resident model's leaves, and what that costs at every new ratio: XLA
compilations and seconds of successive folds of the full-width random ResNet18 in one process.

    .venv/bin/python benchmarks/fold_placement.py --out benchmarks/results/fold_placement_cpu.json

Modes, each in its own process: ``host`` (CPU arrays, merged in numpy: what a CPU run does), ``staged`` (the
arrays taken for an accelerator's, so leaves up to ``jaxfold.fold.HOST_STAGING_BYTES`` are copied to the host,
merged there and put back: what a GPU run does with ResNet-sized leaves) and ``device`` (the staging threshold at
0, so every leaf is merged on its device: what a GPU run does with leaves above it, e.g. LLM weights). On a CPU
the two accelerator modes are simulations: the compilation counts carry over to a GPU, the seconds do not.
"""
import argparse
import importlib
import json
import subprocess
import sys
import time

import jax

from jaxfold import models
from jaxfold.files import write_json_atomic

RATIOS = (0.25, 0.45, 0.35, 0.5)


def run(mode: str, width: float) -> list[dict]:
    fold_module = importlib.import_module("jaxfold.fold")  # the package's `fold` is the function
    if mode != "host":
        fold_module._on_cpu = lambda array: False  # take the CPU arrays for an accelerator's
    if mode == "device":
        fold_module.HOST_STAGING_BYTES = 0
    compiles: list[float] = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **_: compiles.append(seconds) if event.endswith("backend_compile_duration") else None)
    cfg = models.resnet18(stem="cifar", in_channels=3, num_classes=10, width=width)
    variables = cfg.init(jax.random.key(0))
    rows = []
    for ratio in RATIOS:
        compiles.clear()
        t0 = time.perf_counter()
        result = fold_module.fold(variables, cfg.fold_spec(), ratio, jax.random.key(1))
        jax.block_until_ready(result.variables)
        rows.append({"ratio": ratio, "seconds": time.perf_counter() - t0, "compilations": len(compiles),
                     "compile_seconds": sum(compiles),
                     "leaf_types": sorted({type(a).__name__ for a in jax.tree.leaves(result.variables)})})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--out", default="")
    p.add_argument("--mode", choices=["host", "staged", "device"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        print(json.dumps(run(args.mode, args.width)))
        return
    result = {"benchmark": "fold_placement", "width": args.width, "device_kind": jax.devices()[0].device_kind,
              "jax_version": jax.__version__, "modes": {}}
    print("| mode | fold | seconds | compilations | compile seconds |\n|---|---|---|---|---|")
    for mode in ("host", "staged", "device"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--width", str(args.width)],
                             capture_output=True, text=True, check=True)
        rows = json.loads(out.stdout.strip().splitlines()[-1])
        result["modes"][mode] = rows
        for i, row in enumerate(rows):
            print(f"| {mode} | {'first' if i == 0 else 'next'}, r = {row['ratio']} | {row['seconds']:.2f} | "
                  f"{row['compilations']} | {row['compile_seconds']:.2f} |")
    if args.out:
        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
