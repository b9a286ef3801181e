#!/usr/bin/env python
"""KV-cache decoding speed of SmolLM2-135M (fp32, XLA:CPU): this tree's ``jaxfold.models.llama`` against the
``llama.py`` of a baseline git revision, loaded side by side in one process and run alternately (the machine is
shared, so only ratios measured back to back mean much).

    .venv/bin/python benchmarks/decode_speed.py [--baseline REV] [--batch 16] [--seqlen 512] [--rounds 1]
        [--lengths 65,129,257,513] [--step-repeats 7] [--check self-db4bff9ba69ceb92.npy] [--parts choose,step,decode]

Prints, as JSON lines:

* ``decode``: tokens/s (compiled beforehand) of the self-generated calibration batch — ``generate_windows``
  (``sample`` at temperature 1, top_p 1, row j drawn with ``fold_in(key(0), j)``) of ``--batch`` windows of
  ``--seqlen`` tokens, i.e. ``--batch`` × (seqlen − 1) new tokens over a cache of seqlen positions — for both
  implementations, whether their tokens are equal, and with ``--check`` whether they equal the first ``--batch``
  rows of that cached windows file (``seed=0`` windows).
* ``step``: one jitted decoding step (``apply`` of one token per row with a donated cache) vs the cache length.
* ``choose``: the per-step token choice on (batch, vocab) logits: greedy, categorical, top-p 0.9.
"""
import argparse
import dataclasses
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxfold.data import self_text
from jaxfold.llm import load_language_model
from jaxfold.models import base

current = importlib.import_module("jaxfold.models.llama")  # the package re-exports a function of the same name
REPO = Path(__file__).resolve().parents[1]


def load_baseline(rev: str):
    """``jaxfold/models/llama.py`` at git revision ``rev`` as a separate module (the registry entry restored)."""
    src = subprocess.run(["git", "show", f"{rev}:jaxfold/models/llama.py"], cwd=REPO, check=True, capture_output=True,
                         text=True).stdout
    name = "jaxfold_llama_baseline"
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
    sys.modules[name] = module
    registered = dict(base._REGISTRY)
    exec(compile(src, f"{rev}:jaxfold/models/llama.py", "exec"), module.__dict__)
    base._REGISTRY.clear()
    base._REGISTRY.update(registered)
    return module


def convert(module, cfg):
    """``cfg`` as ``module``'s own LlamaConfig (so ``config.module()`` builds that implementation's Llama)."""
    return module.LlamaConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})


def median_ms(times: list[float]) -> float:
    return round(1e3 * statistics.median(times), 1)


def decode(impls: dict, model, args) -> None:
    """The first self-generated calibration batch with each implementation, alternating over ``--rounds``."""
    start = self_text.start_token(model)
    samplers = {name: module.sample for name, module in impls.items()}  # before current.sample is swapped
    compile_s = {}
    for name, module in impls.items():  # compiled before timing (the jitted calls below reuse the executable)
        prompt = jnp.full((args.batch, 1), start, jnp.int32)
        keys = jax.random.split(jax.random.key(0), args.batch)
        t = time.perf_counter()
        module._decode.lower(convert(module, model.config), model.variables, prompt, args.seqlen - 1, jnp.int32(-1),
                             module._categorical, keys, jnp.float32(1.0), jnp.float32(1.0)).compile()
        compile_s[name] = round(time.perf_counter() - t, 1)
    runs, tokens = {name: [] for name in impls}, {}
    for r in range(args.rounds):
        for name in (list(impls) if r % 2 == 0 else list(impls)[::-1]):
            def sample(config, *a, _module=impls[name], _sample=samplers[name], **k):
                return _sample(convert(_module, config), *a, **k)

            current_sample, current.sample = current.sample, sample  # generate_windows imports it at call time
            try:
                t = time.perf_counter()
                tokens[name] = self_text.generate_windows(model.config, model.variables, jax.random.key(0),
                                                          args.batch, args.seqlen, start, batch_size=args.batch)
                runs[name].append(time.perf_counter() - t)
            finally:
                current.sample = current_sample
            print(f"# round {r} {name}: {runs[name][-1]:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    new = args.batch * (args.seqlen - 1)
    out = {"what": "decode", "batch": args.batch, "new_tokens_per_row": args.seqlen - 1, "cache": args.seqlen,
           "seconds": {n: [round(t, 1) for t in ts] for n, ts in runs.items()},
           "tokens_per_s": {n: [round(new / t, 2) for t in ts] for n, ts in runs.items()},
           "compile_s": compile_s,
           "same_tokens": len({t.tobytes() for t in tokens.values()}) == 1}
    if len(impls) == 2:
        a, b = (statistics.median(runs[n]) for n in impls)
        out["speedup"] = round(a / b, 2)
    if args.check:
        path = Path(args.check)
        path = path if path.exists() else Path.home() / ".cache/jaxfold/self_text" / path
        stored = np.load(path)[: args.batch, : args.seqlen]
        out["equal_to_" + path.name] = {n: bool(np.array_equal(t, stored)) for n, t in tokens.items()}
    print(json.dumps(out), flush=True)


def steps(impls: dict, model, args) -> None:
    """One decoding step (batch × 1 token, donated cache) per cache length, implementations interleaved."""
    variables = jax.device_put(model.variables)
    token = jnp.ones((args.batch, 1), jnp.int32)
    for length in (int(x) for x in args.lengths.split(",")):
        fns, caches, times = {}, {}, {}
        for name, module in impls.items():
            llama = convert(module, model.config).module()
            fns[name] = jax.jit(lambda v, t, c, p, llama=llama: llama.apply(v, t, c, p), donate_argnums=(2,))
            caches[name] = [tuple(jnp.zeros_like(a) for a in kv)  # separate buffers: both are donated
                            for kv in module.init_cache(model.config, args.batch, length)]
            times[name] = []
        for r in range(args.step_repeats + 1):
            for name, fn in fns.items():
                t = time.perf_counter()
                logits, caches[name] = fn(variables, token, caches[name], jnp.int32(length // 2))
                logits.block_until_ready()
                if r:  # the first call compiles
                    times[name].append(time.perf_counter() - t)
        out = {"what": "step", "batch": args.batch, "cache": length,
               "ms": {n: median_ms(t) for n, t in times.items()},
               "min_ms": {n: round(1e3 * min(t), 1) for n, t in times.items()},
               "load": round(os.getloadavg()[0], 1)}
        print(json.dumps(out), flush=True)


def choose(impls: dict, model, args) -> None:
    """The token choice alone on (batch, vocab) logits, as each decoding step makes it."""
    logits = 3 * jax.random.normal(jax.random.key(0), (args.batch, model.config.vocab_size))
    keys = jax.random.split(jax.random.key(1), args.batch)
    for what, fn_name, top_p in (("greedy", "_greedy", 1.0), ("categorical", "_categorical", 1.0),
                                 ("top_p=0.9", "_nucleus", 0.9)):
        fns = {n: jax.jit(getattr(m, fn_name)) for n, m in impls.items()}
        times = {n: [] for n in fns}
        for r in range(args.step_repeats + 1):
            for name, fn in fns.items():
                t = time.perf_counter()
                fn(logits, keys, jnp.float32(1.0), jnp.float32(top_p)).block_until_ready()
                if r:
                    times[name].append(time.perf_counter() - t)
        print(json.dumps({"what": "choose", "choice": what, "batch": args.batch, "ms": {n: median_ms(t) for n, t
                                                                                       in times.items()}}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--baseline", default=None, help="git revision whose llama.py to compare with (default: none)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=512, help="window length: seqlen − 1 new tokens per row")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--lengths", default="65,129,257,513")
    p.add_argument("--step-repeats", type=int, default=7)
    p.add_argument("--check", default=None, help="a cached self_text .npy to compare the tokens with")
    p.add_argument("--parts", default="choose,step,decode", help="which measurements, comma-separated")
    args = p.parse_args()
    impls = {"current": current}
    if args.baseline:
        impls = {f"baseline {args.baseline}": load_baseline(args.baseline), **impls}
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    print(json.dumps({"jax": jax.__version__, "head": head.strip(), "cpus": os.cpu_count(),
                      "load": [round(x, 1) for x in os.getloadavg()]}), flush=True)
    model = load_language_model("smollm2")
    for part in args.parts.split(","):
        {"choose": choose, "step": steps, "decode": decode}[part](impls, model, args)


if __name__ == "__main__":
    main()
