#!/usr/bin/env python
"""KV-cache decoding speed of SmolLM2-135M (fp32, XLA:CPU): this tree's ``jaxfold.models.llama`` against the
``llama.py`` of a baseline git revision, loaded side by side in one process and run alternately (the machine is
shared, so only ratios measured back to back mean much).

    .venv/bin/python benchmarks/decode_speed.py [--baseline REV] [--batch 16] [--seqlen 512] [--rounds 1]
        [--lengths 65,129,257,513] [--step-repeats 4] [--loop-steps 24] [--check self-db4bff9ba69ceb92.npy]
        [--parts choose,step,decode]

Prints, as JSON lines:

* ``decode``: tokens/s (compiled beforehand) of the self-generated calibration batch — ``generate_windows``
  (``sample`` at temperature 1, top_p 1, row j drawn with ``fold_in(key(0), j)``) of ``--batch`` windows of
  ``--seqlen`` tokens, i.e. ``--batch`` × (seqlen − 1) new tokens over a cache of seqlen positions — for both
  implementations, whether their tokens are equal, and with ``--check`` whether they equal the first ``--batch``
  rows of that cached windows file (``seed=0`` windows).
* ``step``: milliseconds per decoding step vs the cache length (``--lengths``): ``_decode``'s while loop, run for
  ``--loop-steps`` steps over a cache of that many positions (:func:`decode_loop`), ``--step-repeats`` calls.
* ``choose``: the per-step token choice on (batch, vocab) logits: greedy, categorical, top-p 0.9.
* ``profile`` (not in the default parts): where a step over the longest ``--lengths`` spends its time, from a
  ``jax.profiler`` trace of one :func:`decode_loop` call: milliseconds per step by the op XLA:CPU ran inside the
  loop (its ``op_name``, blocks merged; the sum exceeds the wall time when ops run concurrently), per implementation.
"""
import argparse
import collections
import dataclasses
import gzip
import importlib
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
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


def decode_loop(module, config, batch: int, length: int, steps: int):
    """``_decode``'s loop with the cache length set apart from the step count: a prompt of one token, then
    ``steps`` one-token steps (``lax.while_loop``, categorical draws) over a cache of ``length`` positions. Jitted:
    ``f(variables) -> tokens``."""
    config = convert(module, config)
    llama = config.module()
    keys = jax.random.split(jax.random.key(0), batch)

    def pick(logits, i):
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, i)
        return module._categorical(logits[:, -1], step_keys, jnp.float32(1.0), jnp.float32(1.0))

    @jax.jit
    def run(variables):
        prompt = jnp.zeros((batch, 1), jnp.int32)
        logits, cache = llama.apply(variables, prompt, module.init_cache(config, batch, length), 0)

        def body(state):
            i, token, cache, out = state
            logits, cache = llama.apply(variables, token[:, None], cache, 1 + i)
            return i + 1, pick(logits, i + 1), cache, out.at[:, i].set(token)

        state = (jnp.int32(0), pick(logits, jnp.int32(0)), cache, jnp.zeros((batch, steps), jnp.int32))
        return jax.lax.while_loop(lambda state: state[0] < steps, body, state)[3]

    return run


def steps(impls: dict, model, args) -> None:
    """Milliseconds per decoding step vs the cache length: ``--loop-steps`` steps of :func:`decode_loop` per call,
    ``--step-repeats`` calls per implementation, interleaved."""
    variables = jax.device_put(model.variables)
    for length in (int(x) for x in args.lengths.split(",")):
        runs = {n: decode_loop(m, model.config, args.batch, length, args.loop_steps) for n, m in impls.items()}
        tokens = {n: np.asarray(run(variables)) for n, run in runs.items()}  # compiles
        times = {n: [] for n in runs}
        for r in range(args.step_repeats):
            for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                t = time.perf_counter()
                runs[name](variables).block_until_ready()
                times[name].append((time.perf_counter() - t) / args.loop_steps)
        out = {"what": "step", "batch": args.batch, "cache": length, "steps_per_call": args.loop_steps,
               "ms": {n: median_ms(t) for n, t in times.items()},
               "min_ms": {n: round(1e3 * min(t), 1) for n, t in times.items()},
               "same_tokens": len({t.tobytes() for t in tokens.values()}) == 1, "load": round(os.getloadavg()[0], 1)}
        if len(impls) == 2:
            a, b = (statistics.median(times[n]) for n in impls)
            out["speedup"] = round(a / b, 2)
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


def profile(impls: dict, model, args) -> None:
    """Milliseconds per decoding step by XLA op (blocks merged), inside the loop of :func:`decode_loop` over a
    cache of the longest ``--lengths``."""
    variables = jax.device_put(model.variables)
    length = max(int(x) for x in args.lengths.split(","))
    for name, module in impls.items():
        run = decode_loop(module, model.config, args.batch, length, args.loop_steps)
        ops = {}  # instruction name → op_name with the block index dropped, for the loop body's instructions
        for line in run.lower(variables).compile().as_text().splitlines():
            if (m := re.match(r'\s*(?:ROOT )?%([\w.-]+) = .*op_name="([^"]*)"', line)) and "while/body/" in m[2]:
                ops[m[1]] = re.sub(r"block_\d+", "block_*", m[2].split("while/body/")[-1])
        run(variables).block_until_ready()
        with tempfile.TemporaryDirectory() as trace_dir:
            with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
                t = time.perf_counter()
                run(variables).block_until_ready()
                wall = time.perf_counter() - t
            with gzip.open(next(Path(trace_dir).rglob("*.json.gz"))) as f:
                trace = json.load(f)
        spent = collections.Counter()
        for event in trace["traceEvents"]:
            if event.get("ph") == "X" and event.get("name") in ops:
                spent[ops[event["name"]]] += event.get("dur", 0) / 1e3 / args.loop_steps
        print(json.dumps({"what": "profile", "impl": name, "batch": args.batch, "cache": length,
                          "wall_ms_per_step": round(1e3 * wall / args.loop_steps, 1),
                          "op_ms_per_step": round(sum(spent.values()), 1), "load": round(os.getloadavg()[0], 1),
                          "top_ops_ms": {op: round(ms, 1) for op, ms in spent.most_common(14)}}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--baseline", default=None, help="git revision whose llama.py to compare with (default: none)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=512, help="window length: seqlen − 1 new tokens per row")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--lengths", default="65,129,257,513")
    p.add_argument("--step-repeats", type=int, default=4)
    p.add_argument("--loop-steps", type=int, default=24)
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
        {"choose": choose, "step": steps, "decode": decode, "profile": profile}[part](impls, model, args)


if __name__ == "__main__":
    main()
