"""Read llama.cpp GGUF files of the LLaMA architecture: weights as HF-named float32 arrays in HF ``(out, in)``
layout, an HF-style ``config.json`` dict, and the embedded byte-level BPE tokenizer rebuilt with ``tokenizers``.

This is how the real pretrained model reachable here (SmolLM2-135M-Instruct, `jaxfold data fetch smollm2`) gets
in: :func:`load_gguf` hands the tensors to the HF importer (`jaxfold.io.hf_import`), which checks them strictly.
Every tensor is dequantised to float32 with ``gguf.quants.dequantize`` (Q4_1/Q8_0/F16/… alike), so the weights are
exactly what llama.cpp computes with.

Three things differ from an HF checkpoint and are undone here:
- GGUF lists a tensor's dims fastest-first (``[in, out]`` for a Linear); the reader's numpy arrays are already
  ``(out, in)``, which is HF's layout.
- llama.cpp's converter permutes the rows of ``q_proj`` / ``k_proj`` within each head, from HF's rotate-half RoPE
  layout (first half of the head dims, then second half) to interleaved pairs; :func:`unpermute_qk` inverts it.
- Names: ``blk.{i}.attn_q.weight`` → ``model.layers.{i}.self_attn.q_proj.weight`` and so on (``_LAYER_NAMES``).

The reader is strict: an architecture other than ``llama``, RoPE scaling, an unknown tensor, a missing one or a shape
the metadata does not imply all fail loudly instead of converting something else silently.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxfold.errors import UserError
from jaxfold.io.hf_import import convert_state_dict, llama_config_from_hf
from jaxfold.models.llama import LlamaConfig

# llama.cpp per-block tensor name → HF name inside ``model.layers.{i}.``
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# tokenizer.ggml.pre → the pre-tokenizer of the model's own tokenizer.json. llama.cpp's "smollm" (like "starcoder")
# splits every digit off, then applies the GPT-2 regex: HF's Sequence[Digits(individual), ByteLevel].
_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact")
_GPT2 = ("gpt-2", "gpt2")
_CONTROL, _USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values (llama.cpp's LLAMA_TOKEN_TYPE_*)


def _f32(x: Any) -> float:
    """A float32 metadata value as the decimal it was written from (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(x)))


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Invert llama.cpp's q/k row permutation: per head, interleaved (x0, y0, x1, y1, …) → halves (x…, y…)."""
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation (``convert_hf_to_gguf.LlamaModel.permute``), the inverse of :func:`unpermute_qk`."""
    rows, cols = w.shape
    return w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _metadata(reader) -> dict[str, Any]:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def _hf_config(meta: Mapping[str, Any], tensor_names: set[str], source: str) -> dict[str, Any]:
    def get(key: str, default: Any = KeyError) -> Any:
        if key in meta:
            return meta[key]
        if default is KeyError:
            raise UserError(f"{source}: GGUF metadata lacks {key!r}")
        return default

    arch = get("general.architecture")
    if arch != "llama":
        raise UserError(f"{source}: architecture {arch!r} is not supported (only 'llama')")
    scaling = get("llama.rope.scaling.type", "none")
    if scaling != "none" or "rope_freqs.weight" in tensor_names:
        raise UserError(f"{source}: RoPE scaling ({scaling}, rope_freqs) is not supported")
    for key in ("llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv"):
        if isinstance(meta.get(key), list):
            raise UserError(f"{source}: per-layer {key} is not supported")
    hidden, heads = int(get("llama.embedding_length")), int(get("llama.attention.head_count"))
    head_dim = int(get("llama.attention.key_length", hidden // heads))
    if int(get("llama.attention.value_length", head_dim)) != head_dim:
        raise UserError(f"{source}: key and value head sizes differ")
    if int(get("llama.rope.dimension_count", head_dim)) != head_dim:
        raise UserError(f"{source}: partial rotary embeddings are not supported")
    tokens = get("tokenizer.ggml.tokens")
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "vocab_size": len(tokens), "hidden_size": hidden, "intermediate_size": int(get("llama.feed_forward_length")),
        "num_hidden_layers": int(get("llama.block_count")), "num_attention_heads": heads,
        "num_key_value_heads": int(get("llama.attention.head_count_kv", heads)), "head_dim": head_dim,
        "rms_norm_eps": _f32(get("llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32(get("llama.rope.freq_base", 10000.0)), "rope_scaling": None,
        "max_position_embeddings": int(get("llama.context_length")),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
    }
    for ours, theirs in (("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
        if f"tokenizer.ggml.{theirs}_token_id" in meta:
            config[f"{ours}_token_id"] = int(meta[f"tokenizer.ggml.{theirs}_token_id"])
    if int(get("llama.vocab_size", len(tokens))) != len(tokens):
        raise UserError(f"{source}: llama.vocab_size {meta['llama.vocab_size']} != {len(tokens)} tokens")
    return config


def _hf_name(name: str) -> str:
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES and parts[3] == "weight":
        return f"model.layers.{int(parts[1])}.{_LAYER_NAMES[parts[2]]}.weight"
    if len(parts) == 2 and parts[0] in _GLOBAL_NAMES and parts[1] == "weight":
        return f"{_GLOBAL_NAMES[parts[0]]}.weight"
    raise UserError(f"unexpected GGUF tensor {name!r} for a llama model")


def expected_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """HF tensor name → shape that an HF-style llama config implies (``(out, in)`` for Linears)."""
    h, v, f = config["hidden_size"], config["vocab_size"], config["intermediate_size"]
    q, kv = config["num_attention_heads"] * config["head_dim"], config["num_key_value_heads"] * config["head_dim"]
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, h)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                   p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                   p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                   p + "mlp.down_proj.weight": (h, f), p + "input_layernorm.weight": (h,),
                   p + "post_attention_layernorm.weight": (h,)}
    return shapes


def read_gguf_metadata(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(hf_config, tokenizer_metadata)`` without dequantising any tensor (the reader memory-maps the file)."""
    import gguf

    reader = gguf.GGUFReader(os.fspath(path))
    meta = _metadata(reader)
    config = _hf_config(meta, {t.name for t in reader.tensors}, os.fspath(path))
    return config, {k: v for k, v in meta.items() if k.startswith("tokenizer.")}


def read_gguf(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    """``(hf_config, tensors, tokenizer_metadata)``: an HF-style config dict, HF-named float32 arrays in HF layout
    (q/k rows un-permuted, no ``lm_head.weight`` when the embeddings are tied) and the ``tokenizer.*`` metadata that
    :func:`gguf_tokenizer` rebuilds a tokenizer from."""
    import gguf
    from gguf.quants import dequantize

    source = os.fspath(path)
    reader = gguf.GGUFReader(source)
    meta = _metadata(reader)
    config = _hf_config(meta, {t.name for t in reader.tensors}, source)
    heads = {"self_attn.q_proj": config["num_attention_heads"], "self_attn.k_proj": config["num_key_value_heads"]}
    shapes = expected_shapes(config)
    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        name = _hf_name(t.name)
        if name not in shapes:
            raise UserError(f"{source}: tensor {t.name} ({name}) is not part of a {config['num_hidden_layers']}"
                            "-block llama with these settings")
        w = np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)  # a copy: the reader's data is a memmap
        if w.shape != shapes[name]:
            raise UserError(f"{source}: {t.name} has shape {w.shape} (GGUF dims {list(t.shape)}), the metadata "
                            f"implies {shapes[name]} for {name}")
        module = name.split(".")[-2]
        if (key := f"self_attn.{module}") in heads:
            w = unpermute_qk(w, heads[key])
        tensors[name] = w
    if missing := sorted(set(shapes) - set(tensors)):
        raise UserError(f"{source}: {len(missing)} tensor(s) missing, e.g. {missing[:3]}")
    return config, tensors, {k: v for k, v in meta.items() if k.startswith("tokenizer.")}


def gguf_tokenizer(path_or_metadata: str | os.PathLike | Mapping[str, Any]):
    """The GGUF's GPT-2-style byte-level BPE tokenizer as a ``tokenizers.Tokenizer``.

    Vocab from ``tokenizer.ggml.tokens`` (ids are positions), merges from ``tokenizer.ggml.merges``, control tokens
    (``<|im_start|>`` …) as special added tokens, the pre-tokenizer that ``tokenizer.ggml.pre`` names, a byte-level
    decoder (so ``decode(encode(s)) == s``), and a BOS prepended only where ``tokenizer.ggml.add_bos_token`` says so
    (SmolLM2: no). Encode with ``tok.encode(text).ids``.

    This follows llama.cpp and the model's own tokenizer.json. transformers' GGUF conversion ignores
    ``tokenizer.ggml.pre`` (plain ByteLevel, no digit split) and so differs where a run of spaces precedes a digit:
    "a  3" → ours ``a, ĠĠ, 3`` (as llama.cpp), transformers' ``a, Ġ, Ġ3``→``a, Ġ, Ġ, 3``.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    meta = path_or_metadata if isinstance(path_or_metadata, Mapping) else read_gguf_metadata(path_or_metadata)[1]
    kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "gpt-2")
    if kind != "gpt2":
        raise UserError(f"tokenizer.ggml.model {kind!r} is not supported (only the byte-level BPE 'gpt2')")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGITS_THEN_GPT2:
        pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in _GPT2:
        pre_tokenizer = byte_level
    else:
        raise UserError(f"tokenizer.ggml.pre {pre!r} is not supported (known: {[*_DIGITS_THEN_GPT2, *_GPT2]})")
    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
    typed = list(zip(tokens, types, strict=True))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in typed if ty == _CONTROL])
    tok.add_tokens([AddedToken(t, normalized=False) for t, ty in typed if ty == _USER_DEFINED])
    if meta.get("tokenizer.ggml.add_bos_token", False):
        bos_id = int(meta["tokenizer.ggml.bos_token_id"])
        bos = tokens[bos_id]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                           special_tokens=[(bos, bos_id)])
    return tok


def load_gguf(path: str | os.PathLike, dtype: str = "float32") -> tuple[LlamaConfig, dict[str, Any], Any]:
    """``(config, variables, tokenizer)`` of a LLaMA GGUF file: the HF-style config and tensors of :func:`read_gguf`
    through the HF importer, and :func:`gguf_tokenizer`. Parameters are numpy arrays in ``dtype``."""
    hf_config, tensors, tokenizer_metadata = read_gguf(path)
    config = llama_config_from_hf(hf_config, dtype=dtype)
    return config, convert_state_dict(config, tensors), gguf_tokenizer(tokenizer_metadata)
