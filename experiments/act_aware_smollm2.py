#!/usr/bin/env python
"""Activation-aware folding on SmolLM2-135M, one change at a time: fold to ≈20 % fewer parameters (recipe_mlp
schedule) with correction none / act_cluster / act_merge / act_aware, calibration windows of shakespeare:train,
perplexity on the first windows of shakespeare:test. One JSON line per (correction, seed), appended to --out as
it finishes, so a long run keeps what it measured::

    .venv/bin/python experiments/act_aware_smollm2.py --out /tmp/act.jsonl \\
        --corrections none,act_cluster,act_merge,act_aware --seeds 0
"""

import argparse
import json
import time

import jax

from jaxfold import schedules
from jaxfold.compress import fold_model
from jaxfold.data.text import read_text_source
from jaxfold.eval.perplexity import perplexity, windows
from jaxfold.llm import load_language_model, logits_fn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corrections", default="none,act_cluster,act_merge,act_aware")
    p.add_argument("--seeds", default="0", help="comma-separated k-means seeds (jax.random.key(seed))")
    p.add_argument("--schedule", default="recipe_mlp")
    p.add_argument("--target-sparsity", type=float, default=0.2)
    p.add_argument("--calibration-windows", type=int, default=32)
    p.add_argument("--calibration-seqlen", type=int, default=512)
    p.add_argument("--batch", type=int, default=8, help="calibration windows per batch")
    p.add_argument("--seqlen", type=int, default=1024, help="evaluation window length")
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--n-init", type=int, default=1)
    p.add_argument("--dense", action="store_true", help="also measure the dense model")
    p.add_argument("--out", default="")
    args = p.parse_args()

    model = load_language_model("smollm2")
    cfg, dense = model.config, model.variables
    plan, _, achieved = schedules.calibrate(cfg, args.schedule, args.target_sparsity)
    calib = windows(model.encode(read_text_source("shakespeare:train")), args.calibration_seqlen)
    calib = calib[:args.calibration_windows]
    batches = [calib[i:i + args.batch] for i in range(0, len(calib), args.batch)]
    test_tokens = model.encode(read_text_source("shakespeare:test"))

    def emit(row: dict) -> None:
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")

    def evaluate(config, variables) -> dict:
        return perplexity(logits_fn(config), variables, test_tokens, args.seqlen, 1, args.eval_windows)

    if args.dense:
        ppl = evaluate(cfg, dense)
        emit({"variant": "dense", "perplexity": round(ppl["perplexity"], 3), "eval_seconds": round(ppl["seconds"], 1)})
    for seed in (int(s) for s in args.seeds.split(",")):
        for correction in args.corrections.split(","):
            t0 = time.perf_counter()
            out = fold_model(cfg, dense, plan, jax.random.key(seed), n_init=args.n_init, correction=correction,
                             data=lambda: batches)
            seconds = time.perf_counter() - t0
            ppl = evaluate(out.config, out.variables)
            emit({"variant": correction, "seed": seed, "perplexity": round(ppl["perplexity"], 3),
                  "fold_seconds": round(seconds, 1), "cluster_seconds": out.report["fold_seconds"],
                  "correction_seconds": out.report["correction_seconds"],
                  "param_sparsity": round(out.report["param_sparsity"], 4), "planned_sparsity": round(achieved, 4),
                  "calibration_tokens": int(calib.size), "eval_windows": ppl["windows"],
                  "eval_seconds": round(ppl["seconds"], 1)})


if __name__ == "__main__":
    main()
