#!/usr/bin/env python
"""SmolLM2-135M compressed to ~20 % with ``recipe_mlp``, then its RMSNorm scales fine-tuned (``norm_tune``) on
calibration windows: perplexity on the first test windows of Shakespeare (Wanda's protocol) before and after, for
each requested run (loss, steps, lr, calibration text), with seconds per step, total seconds and peak memory.

    .venv/bin/python benchmarks/norm_tune_smollm2.py --runs lm:32:1e-2,distill:32:1e-2 \\
        --out benchmarks/results/norm_tune_smollm2.json

A run is ``loss:steps:lr[:calibration]`` with calibration ``real`` (the first --windows windows of --text, the
default) or ``self`` (sampled from the dense model, jaxfold.data.self_text, cached on disk). All runs share one
compressed model (one fold) and one process; the peak resident memory of each run is sampled while it trains.
"""
import argparse
import json
import os
import threading
import time

import jax
import numpy as np

from jaxfold.baselines import prune_model, wanda_sp_model
from jaxfold.compress import fold_model
from jaxfold.corrections.norm_tune import NormTuneOptions, tune_norms_with_history
from jaxfold.data.text import read_text_source
from jaxfold.eval.perplexity import perplexity, windows
from jaxfold.files import write_json_atomic
from jaxfold.llm import load_language_model, logits_fn
from jaxfold.schedules import calibrate


def rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


class PeakRSS:
    """The highest resident set size (GiB) seen while the block runs, sampled every 50 ms."""

    def __enter__(self):
        self.peak, self._stop = rss_gb(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_gb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_gb())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="fold", choices=["fold", "magnitude", "wanda_sp"])
    p.add_argument("--schedule", default="recipe_mlp")
    p.add_argument("--target", type=float, default=0.2)
    p.add_argument("--text", default="shakespeare:train", help="real calibration text")
    p.add_argument("--windows", type=int, default=32, help="calibration windows")
    p.add_argument("--seqlen", type=int, default=512, help="calibration window length")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--runs", default="lm:32:1e-2,distill:32:1e-2", help="loss:steps:lr[:real|self], comma-separated")
    p.add_argument("--eval-text", default="shakespeare:test")
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--eval-seqlen", type=int, default=1024)
    p.add_argument("--skip-baseline", action="store_true", help="do not evaluate the uncorrected compressed model")
    p.add_argument("--out", default="")
    args = p.parse_args()

    model = load_language_model("smollm2")
    cfg, dense = model.config, model.variables
    test = model.encode(read_text_source(args.eval_text))
    real = windows(model.encode(read_text_source(args.text)), args.seqlen)[: args.windows]
    plan, _, achieved = calibrate(cfg, args.schedule, args.target)
    t = time.perf_counter()
    if args.method == "fold":
        compressed = fold_model(cfg, dense, plan, jax.random.key(0), n_init=1)
    elif args.method == "magnitude":
        compressed = prune_model(cfg, dense, plan)
    else:
        compressed = wanda_sp_model(cfg, dense, plan, [w[None] for w in real], logits_fn(cfg))
    out = {"model": "smollm2", "method": args.method, "schedule": args.schedule, "target": args.target,
           "achieved_sparsity": achieved, "compress_seconds": round(time.perf_counter() - t, 1),
           "calibration": {"text": args.text, "windows": args.windows, "seqlen": args.seqlen},
           "eval": {"text": args.eval_text, "windows": args.eval_windows, "seqlen": args.eval_seqlen},
           "batch_size": args.batch_size, "load_avg_1min_before": os.getloadavg()[0], "jax_version": jax.__version__,
           "rss_gb_before_runs": round(rss_gb(), 2), "runs": []}

    def ppl(variables):
        return perplexity(logits_fn(compressed.config), variables, test, args.eval_seqlen, 1,
                          args.eval_windows)["perplexity"]

    def save():
        print(json.dumps(out["runs"][-1] if out["runs"] else out, indent=1), flush=True)
        if args.out:
            write_json_atomic(args.out, out)

    if not args.skip_baseline:
        out["perplexity_uncorrected"] = round(ppl(compressed.variables), 2)
        save()
    self_windows = None
    for spec in args.runs.split(","):
        loss, steps, lr, *calib = spec.split(":")
        calib = calib[0] if calib else "real"
        data, gen_seconds = real, None
        if calib == "self":
            if self_windows is None:
                from jaxfold.data.self_text import self_generated_windows

                t = time.perf_counter()
                self_windows = self_generated_windows(model, seed=0, num_windows=args.windows, seqlen=args.seqlen,
                                                      progress=True)
                gen_seconds = round(time.perf_counter() - t, 1)
            data = self_windows
        options = NormTuneOptions(steps=int(steps), lr=float(lr), batch_size=args.batch_size, loss=loss)
        teacher = (cfg, dense)
        with PeakRSS() as mem:
            # a one-step run compiles the step (and is discarded); the timed run then reuses the compiled step
            t = time.perf_counter()
            tune_norms_with_history(compressed.config, compressed.variables, data, jax.random.key(0),
                                    NormTuneOptions(steps=1, lr=options.lr, batch_size=options.batch_size,
                                                    loss=loss), teacher=teacher, progress=False)
            first = time.perf_counter() - t
            t = time.perf_counter()
            tuned, history = tune_norms_with_history(compressed.config, compressed.variables, data,
                                                     jax.random.key(0), options, teacher=teacher)
            seconds = time.perf_counter() - t
        loss_curve = history["loss"]
        k = max(1, len(loss_curve) // 8)
        out["runs"].append({
            "loss": loss, "steps": options.steps, "lr": options.lr, "calibration": calib,
            "self_generation_seconds": gen_seconds, "perplexity": round(ppl(tuned), 2),
            "seconds_per_step": round(seconds / options.steps, 2), "train_seconds": round(seconds, 1),
            "compile_and_first_step_seconds": round(first, 1), "peak_rss_gb": round(mem.peak, 2),
            "loss_first_steps": float(loss_curve[:k].mean()), "loss_last_steps": float(loss_curve[-k:].mean()),
            "grad_norm_first": float(history["grad_norm"][0]), "grad_norm_last": float(history["grad_norm"][-1]),
            "scale_change_max": float(max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max()
                                          for a, b in zip(jax.tree.leaves(tuned),
                                                          jax.tree.leaves(compressed.variables), strict=True))),
        })
        save()


if __name__ == "__main__":
    main()
