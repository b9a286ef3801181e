#!/usr/bin/env python
"""Where a perplexity window's time goes on SmolLM2-135M: the whole jitted NLL of one window, then the same with
attention's softmax core or the MLPs replaced by a no-op, and the logits with a plain max instead of the NLL
(differences = the parts' shares inside the whole compiled model, where isolated timings mislead); then the NLL's
logsumexp alone over logits of that shape, ``jax.nn.logsumexp`` vs jaxfold's per-row form.

    .venv/bin/python benchmarks/llm_eval_breakdown.py [--seqlen 1024] [--repeats 8]
"""
import argparse
import functools
import importlib
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxfold.eval.perplexity import _nll_sum
from jaxfold.eval.token_logprob import logsumexp_last
from jaxfold.llm import load_language_model

llama = importlib.import_module("jaxfold.models.llama")  # the package re-exports a function of the same name


def interleaved_medians(calls: dict, repeats: int) -> dict:
    """Median seconds of each call, timed in alternating rounds (drift on a noisy machine hits all alike)."""
    for fn in calls.values():
        jax.block_until_ready(fn())  # compile
    times = {name: [] for name in calls}
    for r in range(repeats):
        for name in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
            t = time.perf_counter()
            jax.block_until_ready(calls[name]())
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


@functools.partial(jax.jit, static_argnums=0)
def _logits_only(logits_fn, variables, ids):
    return jnp.max(logits_fn(variables, ids))  # needs every logit (a slice could let XLA skip the LM head's columns)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seqlen", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=8)
    args = p.parse_args()
    model = load_language_model("smollm2")
    cfg, variables = model.config, model.variables
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (1, args.seqlen)), jnp.int32)
    mask = jnp.ones(1)

    def fresh_logits_fn():  # a new jit cache entry, traced at its first call (jaxfold.llm.logits_fn is cached)
        module = llama.Llama(cfg)
        return lambda v, i: module.apply(v, i)

    def nll_call():  # traced now, with the current patches
        fn = fresh_logits_fn()
        jax.block_until_ready(_nll_sum(fn, variables, ids, mask))
        return lambda: _nll_sum(fn, variables, ids, mask)

    calls = {"whole_nll_s": nll_call()}
    attend, mlp_call = llama._attend, llama.MLP.__call__
    try:
        llama._attend = lambda q, keys, values, qpos, kpos, dtype: q.reshape(q.shape[0], q.shape[1], -1)
        calls["without_attention_core_s"] = nll_call()
        llama._attend = attend
        llama.MLP.__call__ = lambda self, x: x
        calls["without_mlp_s"] = nll_call()
    finally:
        llama._attend, llama.MLP.__call__ = attend, mlp_call
    fn = fresh_logits_fn()
    calls["logits_without_nll_s"] = lambda: _logits_only(fn, variables, ids)
    out = {"seqlen": args.seqlen, "repeats": args.repeats, **interleaved_medians(calls, args.repeats)}
    for part, key in (("attention_core", "without_attention_core_s"), ("mlp", "without_mlp_s"),
                      ("nll_reduction", "logits_without_nll_s")):
        out[f"{part}_share_s"] = out["whole_nll_s"] - out[key]
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(args.seqlen - 1, cfg.vocab_size)), jnp.float32)
    reference, ours = jax.jit(lambda x: jax.nn.logsumexp(x, axis=-1)), jax.jit(logsumexp_last)
    lse = interleaved_medians({"jax_nn": lambda: reference(logits), "jaxfold": lambda: ours(logits)}, args.repeats)
    out.update({f"logsumexp_{name}_s": seconds for name, seconds in lse.items()})
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
