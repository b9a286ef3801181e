#!/usr/bin/env python
"""The k-means core compiled with XLA compiler options against the default, on the feature matrices a fold really
clusters: compilation seconds (once per distinct group width), k-means seconds over all groups (medians of 3,
the two executables alternating) and whether the labels are identical. For the cold-fold question: can cheaper
compilation settings buy a faster first fold without slowing a warm one or changing results?

    .venv/bin/python benchmarks/kmeans_compile_options.py xla_cpu_use_fusion_emitters=false
    .venv/bin/python benchmarks/kmeans_compile_options.py xla_backend_optimization_level=0 --model smollm2

Models: the full-width random ResNet18 folded at r = 0.25 and 0.45 (default), the trained Fashion-MNIST ResNet18
(``--model fmnist``, needs workdirs/resnet18_fmnist/checkpoint) or SmolLM2 with the recipe at 20 % (``smollm2``).
"""
import argparse
import importlib
import json
import statistics
import time

import jax
import numpy as np
from kmeans_compile import core_args  # benchmarks/ is on sys.path when a script there runs

from jaxfold import models, schedules
from jaxfold.folding import fold

km = importlib.import_module("jaxfold.kmeans")  # the package re-exports a function of the same name


def _value(text: str):
    return {"true": True, "false": False}.get(text.lower(), int(text) if text.lstrip("-").isdigit() else text)


def recorded_groups(model: str) -> list[tuple[np.ndarray, int, jax.Array]]:
    """(features, k, key) of every group a fold clusters, recorded by a clusterer that returns trivial labels."""
    cases = []

    def record(x, k, key):
        cases.append((np.asarray(x, np.float32), k, key))
        return np.arange(x.shape[0]) % k

    if model == "resnet18":
        cfg = models.resnet18(stem="cifar", in_channels=3, num_classes=10, width=1.0)
        variables = cfg.init(jax.random.key(0))
        for ratio in (0.25, 0.45):
            fold(variables, cfg.fold_spec(), ratio, jax.random.key(1), clusterer=record)
    elif model == "fmnist":
        from jaxfold.io import checkpoint

        variables, cfg, _ = checkpoint.restore("workdirs/resnet18_fmnist/checkpoint")
        for ratio in (0.1, 0.25, 0.45, 0.65):
            fold(variables, cfg.fold_spec(), ratio, jax.random.key(1), clusterer=record)
    else:
        from jaxfold.llm import load_language_model

        lm = load_language_model("smollm2")
        plan, _, _ = schedules.calibrate(lm.config, "recipe", 0.2)
        fold(lm.variables, lm.config.fold_spec(), plan, jax.random.key(0), clusterer=record)
    return cases


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("options", nargs="+", help="KEY=VALUE XLA compiler options (true/false, integers, strings)")
    p.add_argument("--model", choices=["resnet18", "fmnist", "smollm2"], default="resnet18")
    p.add_argument("--n-init", type=int, default=10)
    args = p.parse_args()
    options = {k: _value(v) for k, v in (o.split("=", 1) for o in args.options)}
    inputs = [core_args(x, k, key, args.n_init) for x, k, key in recorded_groups(args.model)]
    executables, compile_s = {}, {"default": 0.0, "options": 0.0}

    def executable(which: str, a: tuple):
        n = a[1].shape[0]
        if (which, n) not in executables:
            lowered = km._core.lower(*a, max_iter=300, gram=True)
            t = time.perf_counter()
            executables[which, n] = lowered.compile(options) if which == "options" else lowered.compile()
            compile_s[which] += time.perf_counter() - t
        return executables[which, n]

    equal = sum(np.array_equal(np.asarray(executable("default", a)(*a)[0]), np.asarray(executable("options", a)(*a)[0]))
                for a in inputs)
    run_s = {"default": [], "options": []}
    for r in range(3):
        for which in ("default", "options") if r % 2 == 0 else ("options", "default"):
            t = time.perf_counter()
            for a in inputs:
                jax.block_until_ready(executable(which, a)(*a))
            run_s[which].append(time.perf_counter() - t)
    print(json.dumps({"model": args.model, "options": options, "groups": len(inputs),
                      "widths": sorted({a[1].shape[0] for a in inputs}), "labels_equal": int(equal),
                      "compile_seconds": {k: round(v, 2) for k, v in compile_s.items()},
                      "kmeans_seconds_median": {k: round(statistics.median(v), 3) for k, v in run_s.items()}}))


if __name__ == "__main__":
    main()
