#!/usr/bin/env python
"""What compiling the k-means core costs: tracing, lowering and XLA compilation of ``jaxfold.kmeans._core`` for a
group of n rows (what a fold pays once per distinct group width), its parts compiled alone, and the number of
fused kernels XLA emits. Random data: compilation depends on shapes only.

    .venv/bin/python benchmarks/kmeans_compile.py [--n 64 512 1536]
    .venv/bin/python benchmarks/kmeans_compile.py --n 512 --profile   # where one compilation's time goes
"""
import argparse
import collections
import glob
import importlib
import json
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

km = importlib.import_module("jaxfold.kmeans")  # the package re-exports a function of the same name


def compile_seconds(fn, *args, **static) -> dict:
    t0 = time.perf_counter()
    lowered = fn.lower(*args, **static)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return {"trace_and_lower_s": round(t1 - t0, 3), "compile_s": round(t2 - t1, 3),
            "fusions": len(re.findall(r"= \S+ fusion\(", compiled.as_text()))}


def core_args(x: np.ndarray, k: int, key, n_init: int) -> tuple:
    """The positional arguments ``kmeans`` passes ``_core`` for host data x (Gram mode, sklearn's tol 1e-4)."""
    g, sq, var, _ = km._prepare_host(x)
    return (g, sq, var, np.float32(1e-4), km._uniforms(key, n_init, x.shape[0]), np.int32(k),
            np.int32(km._trials(k)))


def _random_core_args(n: int, n_init: int) -> tuple:
    """Random data, k = n / 2: compilation depends on shapes only."""
    x = np.random.default_rng(0).standard_normal((n, 300)).astype(np.float32)
    return core_args(x, n // 2, jax.random.key(0), n_init)


def parts(n: int, n_init: int) -> dict:
    """Compile the core and each of its stages alone (k and the trial count traced, as in the core)."""
    args = _random_core_args(n, n_init)
    g, sq, _, _, u, k, trials = args
    seeding = jax.jit(lambda u, g, sq, k, t: jax.vmap(lambda d: km._kmeanspp(d, g, sq, k, t, True))(u))
    lloyd = jax.jit(lambda s, g, sq, k: jax.lax.map(
        lambda s1: km._lloyd(s1, g, sq, 1e-4, k, max_iter=300, gram=True), s))
    hartigan = jax.jit(lambda lab, g, sq, k: km._hartigan(lab, g, sq, jnp.arange(n) < k, True))
    return {
        "core": compile_seconds(km._core, *args, max_iter=300, gram=True),
        "seeding": compile_seconds(seeding, u, g, sq, k, trials),
        "lloyd": compile_seconds(lloyd, np.zeros((n_init, n), np.int32), g, sq, k),
        "hartigan": compile_seconds(hartigan, np.zeros(n, np.int32), g, sq, k),
    }


def profile(n: int, n_init: int, top: int = 12) -> dict:
    """A profiler trace of one compilation of the core: total seconds and event count per XLA compiler phase
    (``FusionCompiler::Compile`` is one event per fused kernel). Events of parallel threads overlap."""
    lowered = km._core.lower(*_random_core_args(n, n_init), max_iter=300, gram=True)
    from jaxlib import _profile_data  # the trace reader jax ships (private API: a benchmark's convenience)

    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        t = time.perf_counter()
        lowered.compile()
        wall = time.perf_counter() - t
        jax.profiler.stop_trace()
        trace = _profile_data.ProfileData.from_file(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0])
    seconds, count = collections.Counter(), collections.Counter()
    for plane in trace.planes:
        for line in plane.lines:
            for event in line.events:
                if not event.name.startswith("$"):  # Python frames
                    seconds[event.name] += event.duration_ns / 1e9
                    count[event.name] += 1
    return {"n": n, "compile_wall_s": round(wall, 3),
            "phases": {name: {"s": round(s, 3), "events": count[name]} for name, s in seconds.most_common(top)}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, nargs="+", default=[64, 512])
    p.add_argument("--n-init", type=int, default=10)
    p.add_argument("--profile", action="store_true", help="profile one compilation of the core per n instead")
    args = p.parse_args()
    for n in args.n:
        if args.profile:
            print(json.dumps(profile(n, args.n_init)))
        else:
            print(json.dumps({"n": n, "n_init": args.n_init, **parts(n, args.n_init)}))


if __name__ == "__main__":
    main()
