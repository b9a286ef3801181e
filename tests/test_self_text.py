"""Self-generated calibration text: sampling with a KV cache (deterministic per key, greedy in the limits), windows
sampled from a tiny LLaMA and cached on disk by weights + options + seed, calibration sources, and an LM sweep that
calibrates Wanda-sp on the model's own text."""

import json
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxfold.data import self_text
from jaxfold.data.self_text import calibration_windows, self_generated_windows, start_token
from jaxfold.errors import UserError
from jaxfold.models.llama import _nucleus, generate, llama, sample

# the tiny_lm_dir model's config, so the decoding programs compile once for both
CFG = llama(vocab_size=32, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256,
            max_position_embeddings=64)


@pytest.fixture(scope="module")
def variables():
    return CFG.init(jax.random.key(0))


PROMPT = np.array([[3, 5], [7, 1], [2, 2]], np.int32)


def test_sample_is_deterministic_per_key_differs_across_keys_and_rows_are_independent(variables):
    a = sample(CFG, variables, PROMPT, 12, jax.random.key(0))
    assert a.shape == (3, 14) and a.dtype == np.int32
    np.testing.assert_array_equal(a[:, :2], PROMPT)
    np.testing.assert_array_equal(a, sample(CFG, variables, PROMPT, 12, jax.random.key(0)))
    assert not np.array_equal(a, sample(CFG, variables, PROMPT, 12, jax.random.key(1)))
    assert len({tuple(r[2:]) for r in a}) == 3  # near-uniform random model: the rows differ
    # row b draws with fold_in(key, b) whatever batch it is in
    alone = sample(CFG, variables, PROMPT[1:2], 12, jax.random.fold_in(jax.random.key(0), 1)[None])
    np.testing.assert_array_equal(alone[0], a[1])
    one = sample(CFG, variables, PROMPT[0], 12, jax.random.key(0))  # 1-D in, 1-D out
    assert one.shape == (14,)


def test_temperature_zero_small_temperature_and_tiny_top_p_are_greedy(variables):
    greedy = generate(CFG, variables, PROMPT, 12)
    for kwargs in (dict(temperature=0.0), dict(temperature=1e-6), dict(top_p=1e-6)):
        np.testing.assert_array_equal(sample(CFG, variables, PROMPT, 12, jax.random.key(3), **kwargs), greedy)


def test_nucleus_draws_only_inside_the_nucleus_in_proportion():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4000, jnp.float32))
    keys = jax.random.split(jax.random.key(0), 4000)
    nucleus = jax.jit(_nucleus)
    for top_p, allowed in ((0.7, {0, 1}), (0.85, {0, 1, 2}), (1e-3, {0})):
        draws = np.asarray(nucleus(logits, keys, jnp.float32(1.0), jnp.float32(top_p)))
        assert set(draws.tolist()) == allowed
    draws = np.asarray(nucleus(logits, keys, jnp.float32(1.0), jnp.float32(0.7)))
    assert abs(np.mean(draws == 0) - 0.5 / 0.8) < 0.03  # renormalised over the nucleus


def test_nucleus_cut_by_bisection_equals_the_sorted_cumulative_cut():
    """The cut found without sorting keeps the tokens a sort + cumulative sum keeps (ties included): same draws."""
    def sorted_cut(logits, keys, temperature, top_p):
        scaled = logits / temperature
        ranked = jnp.sort(scaled, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(ranked, axis=-1)
        kept = jnp.sum(jnp.cumsum(probs, axis=-1) - probs < top_p, axis=-1, keepdims=True)
        threshold = jnp.take_along_axis(ranked, kept - 1, axis=-1)
        return jax.vmap(jax.random.categorical)(keys, jnp.where(scaled >= threshold, scaled, -jnp.inf))

    rng = np.random.default_rng(0)
    logits = np.concatenate([rng.standard_normal((16, 300)) * 4, rng.integers(-3, 3, (16, 300)),  # ties
                             np.zeros((1, 300)), np.full((1, 300), -7.5)]).astype(np.float32)
    keys = jax.random.split(jax.random.key(0), len(logits))
    ours, reference = jax.jit(_nucleus), jax.jit(sorted_cut)
    for temperature, top_p in ((1.0, 1e-6), (1.0, 0.3), (0.5, 0.7), (1.0, 0.9), (2.0, 0.99)):
        args = (jnp.asarray(logits), keys, jnp.float32(temperature), jnp.float32(top_p))
        np.testing.assert_array_equal(ours(*args), reference(*args))


def test_sample_argument_errors(variables):
    with pytest.raises(UserError, match="temperature"):
        sample(CFG, variables, PROMPT, 4, jax.random.key(0), temperature=-1.0)
    with pytest.raises(UserError, match="top_p"):
        sample(CFG, variables, PROMPT, 4, jax.random.key(0), top_p=0.0)
    with pytest.raises(UserError, match="one per prompt row"):
        sample(CFG, variables, PROMPT, 4, jax.random.split(jax.random.key(0), 2))


def test_windows_shape_ids_and_disk_cache_round_trip(variables, tmp_path, monkeypatch):
    model = (CFG, variables)
    draw = self_text.generate_windows
    opts = dict(seed=0, num_windows=5, seqlen=12, start=4, batch_size=2, cache_dir=tmp_path)
    w = self_generated_windows(model, **opts)
    assert w.shape == (5, 12) and w.dtype == np.int32
    assert (w[:, 0] == 4).all() and w.min() >= 0 and w.max() < CFG.vocab_size
    files = list(tmp_path.glob("self-*.npy"))
    assert len(files) == 1 and files[0] == self_text.cache_path(model, **{k: v for k, v in opts.items()})

    def refuse(*args, **kwargs):
        raise AssertionError("a cached batch must be read, not sampled again")

    with monkeypatch.context() as m:
        m.setattr(self_text, "generate_windows", refuse)
        np.testing.assert_array_equal(self_generated_windows(model, **opts), w)
        # fewer windows: the cached sample's first ones, read, not sampled
        np.testing.assert_array_equal(self_generated_windows(model, **{**opts, "num_windows": 2}), w[:2])
    # ... which are what sampling them alone gives (window j uses fold_in(key, j), batches of one shape)
    alone = self_generated_windows(model, **{**opts, "num_windows": 3, "cache_dir": tmp_path / "b"})
    np.testing.assert_array_equal(alone, w[:3])
    # more windows than cached: only the two beyond the cached five are sampled, and the whole equals sampling seven
    sampled = []
    with monkeypatch.context() as m:
        m.setattr(self_text, "generate_windows", lambda *a, **k: sampled.append((a[3], k["first"])) or
                  draw(*a, **k))
        more = self_generated_windows(model, **{**opts, "num_windows": 7})
    assert sampled == [(2, 5)]
    np.testing.assert_array_equal(more, self_generated_windows(model, **{**opts, "num_windows": 7,
                                                                         "cache_dir": tmp_path / "c"}))
    # the next request extends the largest cached sample (seven), not the first one
    with monkeypatch.context() as m:
        m.setattr(self_text, "generate_windows", lambda *a, **k: sampled.append((a[3], k["first"])) or
                  draw(*a, **k))
        np.testing.assert_array_equal(self_generated_windows(model, **{**opts, "num_windows": 8})[:7], more)
    assert sampled == [(2, 5), (1, 7)]
    changed = self_generated_windows(model, **{**opts, "temperature": 0.5})
    other_weights = jax.tree.map(lambda a: a * 1.01, variables)
    self_generated_windows((CFG, other_weights), **opts)
    assert len(list(tmp_path.glob("self-*.npy"))) == 5 and not np.array_equal(changed, w)
    files[0].write_bytes(b"not a numpy file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        np.testing.assert_array_equal(self_generated_windows(model, **opts), w)
    assert any("regenerating" in str(c.message) for c in caught)


def test_calibration_windows_self_and_text(tiny_lm_dir):
    from jaxfold.eval.perplexity import windows
    from jaxfold.llm import load_language_model

    model = load_language_model(tiny_lm_dir / "lm")
    text = tiny_lm_dir / "text.txt"
    real, kind = calibration_windows(model, str(text), 16, 3, seed=5, temperature=0.7)  # self options: not used
    assert kind == "real"
    np.testing.assert_array_equal(real, windows(model.encode(text.read_text()), 16)[:3])
    mine, kind = calibration_windows(model, "self", 16, 3, seed=5, cache_dir=tiny_lm_dir / "cache")
    assert kind == "self" and mine.shape == (3, 16)
    # no <|endoftext|> and no declared BOS in the character tokenizer: the newline's single token (here its unk)
    assert (mine[:, 0] == model.tokenizer.encode("\n", add_special_tokens=False).ids[0]).all()
    for source, match in (("no/such/file.txt", "no such file"), ("", "calibration source")):
        with pytest.raises(UserError, match=match):
            calibration_windows(model, source, 16, 3)
    with pytest.raises(UserError, match="fewer than"):
        calibration_windows(model, str(text), 16, 10_000)
    with pytest.raises(UserError, match="num_windows"):
        calibration_windows(model, "self", 16, 0)
    with pytest.raises(UserError, match="unknown self-calibration options"):
        calibration_windows(model, "self", 16, 2, temprature=0.5)


def test_start_token_from_declared_bos_and_explicit(tiny_lm_dir):
    import dataclasses

    from jaxfold.llm import load_language_model

    model = load_language_model(tiny_lm_dir / "lm")
    with pytest.raises(UserError, match="declares no BOS"):
        start_token(model, "bos")
    (tiny_lm_dir / "config.json").write_text(json.dumps({"bos_token_id": 3}))  # beside tokenizer.json: an HF dir
    assert start_token(model, "bos") == 3 and start_token(model, "document") == 3
    assert start_token(model, 7) == 7 and start_token(model, "t") == model.tokenizer.token_to_id("t")
    with pytest.raises(UserError, match="outside the vocabulary"):
        start_token(model, CFG.vocab_size)
    with pytest.raises(UserError, match="needs the model's tokenizer"):
        start_token((model.config, model.variables), "document")
    tok = type(model.tokenizer).from_str(model.tokenizer.to_str())
    tok.add_special_tokens(["<|endoftext|>"])
    with_separator = dataclasses.replace(model, tokenizer=tok)
    assert start_token(with_separator, "document") == tok.token_to_id("<|endoftext|>") != 3  # before the BOS


def test_lm_sweep_calibrates_wanda_sp_on_self_generated_text(tiny_lm_dir, monkeypatch):
    from jaxfold.sweep import _LMRunner, read_results, run_sweep

    monkeypatch.setenv("JAXFOLD_DATA", str(tiny_lm_dir / "data"))  # the default cache, kept out of the home
    c = ml_collections.ConfigDict()
    c.lm = dict(source=str(tiny_lm_dir / "lm"), dtype="float32", text=str(tiny_lm_dir / "text.txt"), seqlen=32,
                max_windows=2, calibration="self", calibration_seqlen=16, calibration_windows=3,
                sparsity_tolerance=0.02, self_calibration=dict(temperature=0.9, seed=1))
    c.sweep = dict(variants=("wanda_sp:uniform",), ratios=(0.2,), seeds=(0,), imports=(), clusterer="kmeans",
                   n_init=1, max_iter=20)
    runner = _LMRunner(c)
    assert runner.calibration_kind == "self" and runner.calibration.shape == (3, 16)
    assert len(list((tiny_lm_dir / "data" / "self_text").glob("self-*.npy"))) == 1
    records = {r["id"]: r for r in run_sweep(c, tiny_lm_dir / "wd", progress=False)}
    wanda = [r for r in records.values() if r["method"] == "wanda_sp"]
    assert len(wanda) == 1 and np.isfinite(wanda[0]["value"]) and len(read_results(tiny_lm_dir / "wd")) == 2
