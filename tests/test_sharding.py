"""Folding and evaluation with parameters sharded over a ``jax.sharding.Mesh`` of 8 virtual CPU devices give the
same result as unsharded. Runs in a subprocess: the device count is fixed when JAX starts."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jaxfold.compress import fold_model
    from jaxfold.eval.perplexity import perplexity
    from jaxfold.llm import logits_fn
    from jaxfold.models.llama import llama

    assert jax.device_count() == 8, jax.devices()
    cfg = llama(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
                max_position_embeddings=64)
    v = cfg.init(jax.random.key(0))
    mesh = Mesh(np.array(jax.devices()), ("model",))
    def shard(x):  # the last axis over the 8 devices where it divides, else replicated
        spec = P(*([None] * (x.ndim - 1)), "model") if x.shape[-1] % 8 == 0 else P()
        return jax.device_put(x, NamedSharding(mesh, spec))
    vs = jax.tree.map(shard, v)
    sharded = [len(x.sharding.device_set) for x in jax.tree.leaves(vs)]
    ids = np.random.default_rng(0).integers(0, 64, 400)
    plain = fold_model(cfg, v, 0.5, jax.random.key(1), n_init=2)
    split = fold_model(cfg, vs, 0.5, jax.random.key(1), n_init=2)
    same_labels = all(np.array_equal(plain.labels[g], split.labels[g]) for g in plain.labels)
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for a, b in zip(jax.tree.leaves(plain.variables), jax.tree.leaves(split.variables)))
    fn = logits_fn(cfg)
    ppl = [perplexity(fn, x, ids, 32)["perplexity"] for x in (v, vs)]
    folded_fn = logits_fn(plain.config)
    folded_sharded = jax.tree.map(shard, split.variables)
    fppl = [perplexity(folded_fn, x, ids, 32)["perplexity"] for x in (plain.variables, folded_sharded)]
    print(json.dumps({"devices_max": max(sharded), "same_labels": same_labels, "max_diff": diff,
                      "ppl": ppl, "folded_ppl": fppl}))
""")


@pytest.mark.slow
def test_sharded_fold_and_perplexity_match_unsharded():
    # conftest's compile-time XLA flags (in os.environ by now) kept, the 8 virtual devices added
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices_max"] == 8  # the parameters really were spread over the mesh
    assert result["same_labels"] and result["max_diff"] == 0.0
    a, b = result["ppl"]
    assert abs(a - b) <= 1e-5 * a
    a, b = result["folded_ppl"]
    assert abs(a - b) <= 1e-5 * a
