"""Shared test set-up: CPU only, rank promotion is an error (catches silent broadcasting bugs); the helpers several
test files use, as fixtures."""

import os
import pickle

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAXFOLD_COMPILE_CACHE", "0")  # the CLI's persistent cache would write into the user's home
# Tests run tiny models: compiling dominates, so XLA:CPU compiles without LLVM's expensive optimisations (≈ 2× less
# suite time on the 2-core CI machine; the HLO passes and the numerics are unchanged). JAXFOLD_TEST_FAST_COMPILE=0
# compiles as users do.
if os.environ.get("JAXFOLD_TEST_FAST_COMPILE", "1") != "0":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                               " --xla_llvm_disable_expensive_passes=true").strip()

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfold import tree

jax.config.update("jax_numpy_rank_promotion", "raise")


# --- models: random variables, logits, function equality (folding, clustering, corrections, baselines) -----------
def _random_variables(cfg, seed=0):
    """Random weights plus random BN statistics (so statistics that are mis-merged show up)."""
    v = cfg.init(jax.random.key(seed))
    rng = np.random.default_rng(seed)
    stats = {p: (rng.uniform(0.5, 2.0, np.shape(a)) if p.endswith("var") else rng.normal(0, 0.3, np.shape(a)))
             for p, a in tree.flatten(v.get("batch_stats", {})).items()}
    # perturb biases and BN scale/bias (1-D) so no vector is trivially constant; kernels keep their init scale
    scales = {p: a + rng.normal(0, 0.2, np.shape(a)) if np.ndim(a) == 1 else a
              for p, a in tree.flatten(v["params"]).items()}
    out = {"params": tree.unflatten({p: jnp.asarray(a, jnp.float32) for p, a in scales.items()})}
    if stats:
        out["batch_stats"] = tree.unflatten({p: jnp.asarray(a, jnp.float32) for p, a in stats.items()})
    return out


def _assert_same_function(a, b, what=""):
    """Equal logits up to float32 reassociation, relative to their scale (random deep nets have large logits)."""
    scale = max(1.0, float(np.abs(b).max()))
    diff = float(np.abs(a - b).max())
    assert diff <= 2e-5 * scale, f"{what}: max diff {diff:.3g} at logit scale {scale:.3g}"


@pytest.fixture(scope="session")
def random_variables():
    """``random_variables(cfg, seed=0)``: a CNN/MLP config's variables with random BN statistics."""
    return _random_variables


@pytest.fixture(scope="session")
def logits():
    """``logits(cfg, variables, seed=1)``: jitted eval-mode logits of a fixed random batch, compiled once per config
    for the whole session (reused across permutations, widths and test files)."""
    apply = {}

    def logits(cfg, variables, seed=1):
        if cfg not in apply:
            module = cfg.module()
            apply[cfg] = jax.jit(lambda v, x: module.apply(v, x, train=False))
        x = jax.random.normal(jax.random.key(seed), (4, *cfg.input_shape))
        return np.asarray(apply[cfg](variables, x))

    return logits


# --- language models: random LLaMA-style weights and their logits (transformer corrections) -------------------
@pytest.fixture(scope="session")
def lm_variables():
    """``lm_variables(cfg, seed=0)``: random weights large enough that attention and SiLU are far from linear; norm
    scales 1 ± 0.1."""

    def lm_variables(cfg, seed=0):
        rng = np.random.default_rng(seed)
        flat = {p: (1 + 0.1 * rng.normal(size=s) if p.endswith("scale") else 0.15 * rng.normal(size=s))
                .astype(np.float32) for p, (s, _) in tree.shapes(cfg.abstract_variables()).items()}
        return tree.unflatten(flat)

    return lm_variables


@pytest.fixture(scope="session")
def lm_logits():
    """``lm_logits(cfg, variables, ids)``: jitted logits, compiled once per config for the whole session."""
    apply = {}

    def lm_logits(cfg, variables, ids):
        if cfg not in apply:
            module = cfg.module()
            apply[cfg] = jax.jit(lambda v, x: module.apply(v, x))
        return np.asarray(apply[cfg](variables, ids))

    return lm_logits


@pytest.fixture(scope="session")
def assert_same_function():
    """``assert_same_function(a, b, what="")``: two logit arrays equal up to float32 reassociation."""
    return _assert_same_function


# --- data on disk: a tiny CIFAR-10 directory, a tiny language model with its text ---------------------------------
@pytest.fixture
def cifar_dir(tmp_path):
    """``tmp_path`` holding ``cifar-10-batches-py/`` (the python pickle batches) with 24 random images per file:
    the directory to give as ``--config.data.path``."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / f, "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 256, (24, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, 24).tolist()}, fh)
    return tmp_path


TINY_TEXT = "to be or not to be that is the question whether tis nobler in the mind to suffer " * 12


@pytest.fixture
def tiny_lm_dir(tmp_path):
    """``tmp_path`` holding ``lm/`` (a two-block GQA LLaMA checkpoint whose metadata names a character-level
    ``tokenizer.json``) and ``text.txt`` (the text it reads). Skipped without the tokenizers package."""
    tokenizers = pytest.importorskip("tokenizers")
    from jaxfold.io import checkpoint
    from jaxfold.models.llama import llama

    chars = sorted(set(TINY_TEXT))
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token=" "))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Split("", "isolated")
    tok.decoder = tokenizers.decoders.Fuse()
    tok.save(str(tmp_path / "tokenizer.json"))
    cfg = llama(vocab_size=32, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256,
                max_position_embeddings=64)
    checkpoint.save(tmp_path / "lm", cfg.init(jax.random.key(0)), cfg,
                    metadata={"tokenizer": str(tmp_path / "tokenizer.json")})
    (tmp_path / "text.txt").write_text(TINY_TEXT)
    return tmp_path
