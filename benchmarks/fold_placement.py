#!/usr/bin/env python
"""Where a fold merges an accelerator-resident model's leaves, and what that costs at every new ratio: XLA
compilations and seconds of successive folds in one process, of the full-width random ResNet18 (uniform ratios) or
SmolLM2-135M (the paper's recipe at successive parameter targets; ``--model smollm2``, needs its weights fetched).

    .venv/bin/python benchmarks/fold_placement.py --out benchmarks/results/fold_placement_cpu.json
    .venv/bin/python benchmarks/fold_placement.py --model smollm2 \
        --out benchmarks/results/fold_placement_smollm2_cpu.json

Modes, each in its own process: ``host`` (CPU arrays, merged in numpy: what a CPU run does), ``staged`` (the
arrays taken for an accelerator's, so leaves up to ``jaxfold.placement.HOST_STAGING_BYTES`` are copied to the host,
merged there and put back: what a GPU run does with ResNet-sized leaves) and ``device`` (the staging threshold at
0, so every leaf is merged on its device: what a GPU run does with leaves above it, e.g. LLM weights). On a CPU
the two accelerator modes are simulations: the compilation counts carry over to a GPU, the seconds do not.
"""
import argparse
import json
import subprocess
import sys
import time

import jax

from jaxfold import models, placement
from jaxfold.files import write_json_atomic
from jaxfold.folding import fold

RATIOS = {"resnet18": (0.25, 0.45, 0.35, 0.5), "smollm2": (0.1, 0.2, 0.15, 0.25)}


def _model(name: str, width: float):
    """(variables, fold spec, ratio → plan)."""
    if name == "resnet18":
        cfg = models.resnet18(stem="cifar", in_channels=3, num_classes=10, width=width)
        return cfg.init(jax.random.key(0)), cfg.fold_spec(), lambda ratio: ratio
    from jaxfold import schedules
    from jaxfold.llm import load_language_model

    lm = load_language_model("smollm2")
    variables = jax.device_put(lm.variables)  # as jax arrays, the way a device-resident model comes in
    return variables, lm.config.fold_spec(), lambda target: schedules.calibrate(lm.config, "recipe", target)[0]


def run(mode: str, model: str, width: float) -> list[dict]:
    if mode != "host":
        placement.host_resident = lambda array: False  # take the CPU arrays for an accelerator's
    if mode == "device":
        placement.HOST_STAGING_BYTES = 0
    compiles: list[float] = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **_: compiles.append(seconds) if event.endswith("backend_compile_duration") else None)
    variables, spec, plan_for = _model(model, width)
    rows = []
    for ratio in RATIOS[model]:
        plan = plan_for(ratio)
        compiles.clear()
        t0 = time.perf_counter()
        result = fold(variables, spec, plan, jax.random.key(1))
        jax.block_until_ready(result.variables)
        rows.append({"ratio": ratio, "seconds": time.perf_counter() - t0, "compilations": len(compiles),
                     "compile_seconds": sum(compiles),
                     "leaf_types": sorted({type(a).__name__ for a in jax.tree.leaves(result.variables)})})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(RATIOS), default="resnet18")
    p.add_argument("--width", type=float, default=1.0, help="ResNet18 width multiplier")
    p.add_argument("--out", default="")
    p.add_argument("--mode", choices=["host", "staged", "device"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        print(json.dumps(run(args.mode, args.model, args.width)))
        return
    result = {"benchmark": "fold_placement", "model": args.model, "width": args.width,
              "device_kind": jax.devices()[0].device_kind,
              "jax_version": jax.__version__, "modes": {}}
    print("| mode | fold | seconds | compilations | compile seconds |\n|---|---|---|---|---|")
    for mode in ("host", "staged", "device"):
        cmd = [sys.executable, __file__, "--mode", mode, "--model", args.model, "--width", str(args.width)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows = json.loads(out.stdout.strip().splitlines()[-1])
        result["modes"][mode] = rows
        for i, row in enumerate(rows):
            print(f"| {mode} | {'first' if i == 0 else 'next'}, {row['ratio']} | {row['seconds']:.2f} | "
                  f"{row['compilations']} | {row['compile_seconds']:.2f} |")
    if args.out:
        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
