"""Fold specs derived by tracing: how long the derivation takes, and what it adds to a fold.

1. Time to derive the spec (trace + analysis + spec, no permutation check) from *abstract* variables — nothing
   allocated — for ResNet18 (full width, CIFAR stem), SmolLM2-135M's shapes and LLaMA-7B's shapes; then the
   permutation check on concrete variables where they fit (ResNet18).
2. A warm fold of the Fashion-MNIST ResNet18 (width 0.125, 28 px) at channel ratio 0.5: ``fold`` with the
   zoo's hand-written spec vs ``fold_traced`` (derive + fold + the folded forward's construction; with the
   permutation check; with the spec derived once and passed back, as a sweep over ratios does), alternating,
   medians over rounds; the first folded forward call (trace + compile of the re-evaluated program) separately.

    .venv/bin/python benchmarks/derive_spec.py --rounds 5
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import jax
import jax.numpy as jnp

from jaxfold import derive_spec, fold, fold_traced, models


def _timed(fn, rounds):
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times


def _fmt(times):
    return f"median {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f}, n={len(times)})"


def derive_times(rounds: int) -> None:
    cases = {
        "resnet18 (CIFAR stem, full width)": models.build("resnet18", in_channels=3, image_size=32),
        "SmolLM2-135M shapes": models.build("llama", vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9,
                                            num_kv_heads=3, intermediate_size=1536, tie_word_embeddings=True),
        "LLaMA-7B shapes": models.build("llama"),
    }
    for name, cfg in cases.items():
        abstract = cfg.abstract_variables()
        if cfg.arch == "llama":
            apply_fn, args = cfg.module().apply, (jax.ShapeDtypeStruct((1, 128), jnp.int32),)
        else:
            apply_fn = functools.partial(cfg.module().apply, train=False)
            args = (jax.ShapeDtypeStruct((8, *cfg.input_shape), jnp.float32),)
        spec, times = _timed(lambda: derive_spec(apply_fn, abstract, *args), rounds)  # noqa: B023
        same = {frozenset((m.path, m.axis, m.role, m.block) for m in g.members) for g in spec.groups} == \
            {frozenset((m.path, m.axis, m.role, m.block) for m in g.members) for g in cfg.fold_spec().groups}
        print(f"derive {name}: {len(spec.groups)} groups (= hand-written: {same}), {cfg.param_count() / 1e6:.1f} M "
              f"params abstract: {_fmt(times)}")
        if cfg.arch != "llama":
            variables = cfg.init(jax.random.key(0))
            x = jax.random.normal(jax.random.key(1), (8, *cfg.input_shape))
            _, times = _timed(lambda: derive_spec(apply_fn, variables, x, verify=True), max(2, rounds // 2))  # noqa: B023
            print(f"derive {name} + permutation check (concrete, batch 8): {_fmt(times)} (first call compiles the "
                  "forward once)")


def fold_times(rounds: int) -> None:
    cfg = models.build("resnet18", in_channels=1, image_size=28, width=0.125)
    variables = cfg.init(jax.random.key(0))
    apply_fn = functools.partial(cfg.module().apply, train=False)
    x = jax.random.normal(jax.random.key(1), (8, *cfg.input_shape))
    spec = cfg.fold_spec()
    key = jax.random.key(2)
    written, traced, traced_checked, reused = [], [], [], []
    fold(variables, spec, 0.5, key)  # warm: the k-means cores of every group width
    first = fold_traced(apply_fn, variables, 0.5, key, x, verify=False)
    t0 = time.perf_counter()
    jax.block_until_ready(first.apply_fn(first.variables, x))
    first_call = time.perf_counter() - t0
    for r in range(rounds):
        order = [("w", written), ("t", traced), ("c", traced_checked), ("r", reused)]
        for tag, sink in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            if tag == "w":
                fold(variables, spec, 0.5, key)
            elif tag == "r":
                fold_traced(apply_fn, variables, 0.5, key, x, spec=first.spec)
            else:
                fold_traced(apply_fn, variables, 0.5, key, x, verify=(tag == "c"))
            sink.append(time.perf_counter() - t0)
    w, t, c, r = (statistics.median(s) for s in (written, traced, traced_checked, reused))
    print(f"fold resnet18 w0.125 r=0.5, hand-written spec: {_fmt(written)}")
    print(f"fold_traced (derive, no check):                {_fmt(traced)}  ratio {t / w:.2f}x")
    print(f"fold_traced (derive + permutation check):      {_fmt(traced_checked)}  ratio {c / w:.2f}x")
    print(f"fold_traced (spec derived once, reused):       {_fmt(reused)}  ratio {r / w:.2f}x")
    print(f"first call of the folded forward (trace + compile of the re-evaluated program): {first_call:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=["derive", "fold"], default=None)
    args = parser.parse_args()
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, load average {os.getloadavg()[0]:.2f}")
    if args.only in (None, "derive"):
        derive_times(args.rounds)
    if args.only in (None, "fold"):
        fold_times(args.rounds)


if __name__ == "__main__":
    main()
