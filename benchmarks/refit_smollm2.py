#!/usr/bin/env python
"""SmolLM2-135M compressed to ≈20 % of its parameters (recipe or recipe_mlp schedule), then ``refit`` on calibration
windows; perplexity on the first windows of shakespeare:test. One JSON line per variant (appended to --out as it
finishes), so a long run keeps what it measured.

A variant is ``method:target:which:windows[:ridge[:calibration]]`` — method fold|magnitude|wanda_sp, target
dense|residual|none (none: no refit), which compressed|all, windows the number of calibration windows,
calibration real (shakespeare:train) or self (windows sampled from the dense model, jaxfold.data.self_text)::

    .venv/bin/python benchmarks/refit_smollm2.py --out /tmp/refit.jsonl \\
        --variants fold:none,fold:dense:compressed:32,fold:residual:compressed:32,magnitude:dense:compressed:32
"""
import argparse
import json
import time

import jax
import numpy as np

from jaxfold import schedules
from jaxfold.baselines import prune_model, wanda_sp_model
from jaxfold.compress import correct, fold_model
from jaxfold.data.text import read_text_source
from jaxfold.eval.perplexity import perplexity, windows
from jaxfold.llm import load_language_model, logits_fn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", required=True, help="comma-separated method:target:which:windows[:ridge[:calib]]")
    p.add_argument("--schedule", default="recipe_mlp")
    p.add_argument("--target-sparsity", type=float, default=0.2)
    p.add_argument("--seqlen", type=int, default=1024, help="evaluation window length")
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--calibration-seqlen", type=int, default=512)
    p.add_argument("--batch", type=int, default=4, help="calibration windows per chunk")
    p.add_argument("--n-init", type=int, default=1)
    p.add_argument("--out", default="")
    args = p.parse_args()
    model = load_language_model("smollm2")
    cfg, dense = model.config, model.variables
    plan = schedules.calibrate(cfg, args.schedule, args.target_sparsity)[0]
    test_tokens = model.encode(read_text_source("shakespeare:test"))
    real = windows(model.encode(read_text_source("shakespeare:train")), args.calibration_seqlen)
    bases, calibrations = {}, {"real": real}

    def calibration(kind: str, count: int) -> np.ndarray:
        if kind not in calibrations:
            from jaxfold.data.self_text import calibration_windows

            calibrations[kind] = calibration_windows(model, kind, args.calibration_seqlen, count)[0]
        if len(calibrations[kind]) < count:
            raise SystemExit(f"only {len(calibrations[kind])} {kind} windows, {count} asked")
        return calibrations[kind][:count]

    def base(method: str) -> object:
        if method not in bases:
            t = time.perf_counter()
            if method == "fold":
                bases[method] = fold_model(cfg, dense, plan, jax.random.key(0), n_init=args.n_init)
            elif method == "magnitude":
                bases[method] = prune_model(cfg, dense, plan)
            else:
                bases[method] = wanda_sp_model(cfg, dense, plan, [w[None] for w in real[:32]], logits_fn(cfg))
            print(f"{method}: {time.perf_counter() - t:.1f} s", flush=True)
        return bases[method]

    for variant in args.variants.split(","):
        parts = variant.split(":")
        method, target = parts[0], parts[1]
        compressed = base(method)
        row = {"variant": variant, "method": method, "target": target, "schedule": args.schedule,
               "param_sparsity": round(compressed.report["param_sparsity"], 4)}
        if target != "none":
            which, count = parts[2], int(parts[3])
            ridge = float(parts[4]) if len(parts) > 4 else 1e-3
            kind = parts[5] if len(parts) > 5 else "real"
            cal = calibration(kind, count)
            compressed = correct(cfg, dense, compressed, "refit",
                                 data=lambda cal=cal: (cal[i:i + args.batch] for i in range(0, len(cal), args.batch)),
                                 options={"target": target, "which": which, "ridge": ridge})
            fit = compressed.report["refit"]["fit"]
            row.update(which=which, windows=count, ridge=ridge, calibration=kind,
                       calibration_tokens=compressed.report["calibration_tokens"],
                       refit_seconds=compressed.report["correction_seconds"], consumers=len(fit),
                       mean_fit_before=round(float(np.mean([b for b, _ in fit.values()])), 4),
                       mean_fit_after=round(float(np.mean([a for _, a in fit.values()])), 4))
        result = perplexity(logits_fn(compressed.config), compressed.variables, test_tokens, args.seqlen, 1,
                            args.eval_windows)
        row.update(perplexity=round(result["perplexity"], 2), eval_seconds=result["seconds"])
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
