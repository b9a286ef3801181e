"""Hugging Face LLaMA checkpoints (``config.json`` + safetensors) in and out of jaxfold.

The config importer works like penzai's: every field of the HF ``config.json`` is either used, known to be
harmless, or required to have the one value we implement — anything else (biases, another activation, a RoPE type
we do not implement, sliding windows, quantisation, remote code) is refused with an error naming the field, rather
than silently converted into a different model. Both the transformers 4.x (``rope_theta`` + ``rope_scaling``) and
5.x (``rope_parameters``) forms are read. The weight conversion is strict: every tensor must land in exactly one
variable of the config's shape and every variable must be filled.

safetensors (numpy API) is imported only when reading or writing files.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxfold import tree as tree_lib
from jaxfold.errors import MissingFile, UserError
from jaxfold.files import write_json_atomic
from jaxfold.models.llama import DTYPES, ROPE_SCALING_KEYS, LlamaConfig, rope_inv_freq

# HF LlamaConfig defaults (what transformers assumes for a missing field).
_DEFAULTS = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
             "num_attention_heads": 32, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
             "tie_word_embeddings": False}
_USED = {*_DEFAULTS, "num_key_value_heads", "head_dim", "rope_theta", "rope_scaling", "rope_parameters"}
# Fields that must have exactly this value (absent counts as the HF default, which is this value).
_REQUIRED = {"model_type": "llama", "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
             "attention_dropout": 0.0, "rope_interleaved": False, "sliding_window": None, "use_sliding_window": False,
             "partial_rotary_factor": 1.0, "is_encoder_decoder": False, "add_cross_attention": False,
             "pruned_heads": {}, "quantization_config": None, "auto_map": None}
# Fields that do not change the forward computation (token ids, bookkeeping, training-only and generation settings).
# pretraining_tp > 1 only splits the projections into slices in transformers 4.x: the same function.
_HARMLESS = {"architectures", "torch_dtype", "dtype", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id",
             "decoder_start_token_id", "transformers_version", "use_cache", "initializer_range", "pretraining_tp",
             "_name_or_path", "name_or_path", "is_llama_config", "tokenizer_class", "return_dict",
             "output_hidden_states", "output_attentions", "torchscript", "use_bfloat16", "tie_encoder_decoder",
             "is_decoder", "chunk_size_feed_forward", "id2label", "label2id", "problem_type", "finetuning_task",
             "prefix", "task_specific_params", "tf_legacy_loss", "max_length", "min_length", "do_sample",
             "early_stopping", "num_beams", "temperature", "top_k", "top_p", "repetition_penalty",
             "length_penalty", "no_repeat_ngram_size", "num_return_sequences", "bad_words_ids",
             "attn_implementation", "_attn_implementation"}
_ROPE_BASE_KEYS = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}


def _rope_from_hf(cfg: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling or None) from either form; conflicting or unsupported settings are refused."""
    scaling, params = cfg.get("rope_scaling"), cfg.get("rope_parameters")
    for name, value in (("rope_scaling", scaling), ("rope_parameters", params)):
        if value is not None and not isinstance(value, Mapping):
            raise UserError(f"config field {name}: expected a dict or null, got {value!r}")
        if isinstance(value, Mapping) and any(isinstance(v, Mapping) for v in value.values()):
            raise UserError(f"config field {name}: per-layer-type RoPE parameters are not supported: {value}")
    if scaling and params:  # transformers 5 gives rope_scaling priority; refuse if they would disagree
        clash = sorted(k for k in set(scaling) & set(params) if scaling[k] != params[k])
        if clash:
            raise UserError(f"config fields rope_scaling and rope_parameters disagree on {clash}")
    rope = {**(params or {}), **(scaling or {})}
    if "rope_theta" in rope and "rope_theta" in cfg and float(rope["rope_theta"]) != float(cfg["rope_theta"]):
        raise UserError(f"config field rope_theta {cfg['rope_theta']} disagrees with rope_parameters.rope_theta "
                        f"{rope['rope_theta']}")
    theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if float(rope.get("partial_rotary_factor", 1.0)) != 1.0:
        raise UserError(f"config field rope partial_rotary_factor={rope['partial_rotary_factor']} is not supported")
    if rope_type == "default":
        extra = sorted(set(rope) - _ROPE_BASE_KEYS)
        if extra:
            raise UserError(f"config field rope parameters {extra} are not supported with the default RoPE")
        return theta, None
    if rope_type not in ROPE_SCALING_KEYS:
        raise UserError(f"config field rope_type={rope_type!r} is not implemented; supported: "
                        f"{['default', *sorted(ROPE_SCALING_KEYS)]}")
    keys = ROPE_SCALING_KEYS[rope_type]
    if rope_type == "llama3" and "original_max_position_embeddings" not in rope:
        # transformers' fallback when a llama3 config omits it
        rope = {**rope, "original_max_position_embeddings": cfg.get("max_position_embeddings", 2048)}
    extra = sorted(set(rope) - _ROPE_BASE_KEYS - set(keys))
    missing = sorted(set(keys) - set(rope))
    if extra or missing:
        raise UserError(f"config field rope parameters for {rope_type!r}: unsupported {extra}, missing {missing}")
    out: dict[str, Any] = {"rope_type": rope_type}
    for k in keys:
        out[k] = int(rope[k]) if k == "original_max_position_embeddings" else float(rope[k])
    return theta, out


def llama_config_from_hf(config_json: Mapping[str, Any], dtype: str = "float32") -> LlamaConfig:
    """A :class:`LlamaConfig` from a HF LLaMA ``config.json`` dict (transformers 4.x or 5.x form).

    Fields outside the explicit allow-lists, or with a value that would change the computation, raise ValueError
    naming them.
    """
    cfg = dict(config_json)
    unknown = sorted(set(cfg) - _USED - set(_REQUIRED) - _HARMLESS)
    if unknown:
        raise UserError(f"unsupported config fields {unknown}: jaxfold's LLaMA does not know how they change the "
                        "model, so it refuses to convert it")
    for name, want in _REQUIRED.items():
        if name in cfg and cfg[name] != want and not (want in ({}, None) and not cfg[name]):
            raise UserError(f"unsupported config field {name}={cfg[name]!r}: only {want!r} is implemented")
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    get = lambda k: cfg[k] if cfg.get(k) is not None else _DEFAULTS[k]
    n_layers, heads = int(get("num_hidden_layers")), int(get("num_attention_heads"))
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = cfg.get("head_dim") or int(get("hidden_size")) // heads
    theta, scaling = _rope_from_hf(cfg)
    return LlamaConfig(vocab_size=int(get("vocab_size")), hidden_size=int(get("hidden_size")), num_layers=n_layers,
                       head_dim=int(head_dim), num_heads=(heads,) * n_layers, num_kv_heads=(kv_heads,) * n_layers,
                       intermediate_sizes=(int(get("intermediate_size")),) * n_layers,
                       rms_norm_eps=float(get("rms_norm_eps")), rope_theta=theta, rope_scaling=scaling,
                       max_position_embeddings=int(get("max_position_embeddings")),
                       tie_word_embeddings=bool(get("tie_word_embeddings")), dtype=dtype)


# --- weights --------------------------------------------------------------------------------------------------------
def _rules(cfg: LlamaConfig) -> list[tuple[str, str, bool]]:
    """(HF tensor name, our path, transpose) for every variable."""
    rules = [("model.embed_tokens.weight", "params/embed/embedding", False)]
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}", f"params/block_{i}"
        rules += [(f"{hf}.input_layernorm.weight", f"{ours}/attn_norm/scale", False),
                  (f"{hf}.post_attention_layernorm.weight", f"{ours}/mlp_norm/scale", False)]
        rules += [(f"{hf}.self_attn.{n}_proj.weight", f"{ours}/attn/{n}/kernel", True) for n in "qkvo"]
        rules += [(f"{hf}.mlp.{n}_proj.weight", f"{ours}/mlp/{n}/kernel", True) for n in ("gate", "up", "down")]
    rules.append(("model.norm.weight", "params/final_norm/scale", False))
    if not cfg.tie_word_embeddings:
        rules.append(("lm_head.weight", "params/lm_head/kernel", True))
    return rules


def _numpy(name: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; duck-typed so this module never needs torch
        value = value.detach().cpu()
        value = (value.float() if value.is_floating_point() else value).numpy()
    arr = np.asarray(value)
    if arr.dtype.kind not in "fV" and arr.dtype.name != "bfloat16":
        raise UserError(f"{name}: expected a floating-point tensor, got {arr.dtype}")
    return arr


def _is_rotary_buffer(name: str) -> bool:
    return name.startswith("model.layers.") and name.endswith(".self_attn.rotary_emb.inv_freq")


def convert_state_dict(config: LlamaConfig, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """``{'params': …}`` (numpy arrays in ``config.dtype``) from HF LLaMA tensors (numpy or torch).

    Strict: missing or unexpected tensors and shape mismatches raise ValueError listing them. With tied embeddings
    ``lm_head.weight`` may be absent or equal to the embedding. The ``rotary_emb.inv_freq`` buffers some older
    checkpoints carry are checked against our RoPE frequencies and otherwise ignored.
    """
    dtype = np.dtype(DTYPES[config.dtype])
    expected = {p: s for p, (s, _) in tree_lib.shapes(config.abstract_variables()).items()}
    problems: list[str] = []
    flat: dict[str, np.ndarray] = {}
    used: set[str] = set()
    for name, path, transpose in _rules(config):
        want = expected[path][::-1] if transpose else expected[path]
        if name not in tensors:
            problems.append(f"missing {name}: expected shape {want}")
            continue
        used.add(name)
        w = _numpy(name, tensors[name])
        if w.shape != want:
            problems.append(f"{name}: expected shape {want} (for {path}), got {w.shape}")
            continue
        flat[path] = np.ascontiguousarray((w.T if transpose else w).astype(dtype))
    inv_freq = rope_inv_freq(config)
    for name in tensors:
        if name in used:
            continue
        if name == "lm_head.weight" and config.tie_word_embeddings:
            w = _numpy(name, tensors[name])
            embed = tensors.get("model.embed_tokens.weight")
            if embed is None or w.shape != np.shape(embed) or not np.array_equal(w, _numpy("embed", embed)):
                problems.append("lm_head.weight differs from model.embed_tokens.weight but the config ties them")
        elif _is_rotary_buffer(name):
            w = _numpy(name, tensors[name]).astype(np.float32)
            if w.shape != inv_freq.shape or not np.allclose(w, inv_freq, rtol=1e-5, atol=0):
                problems.append(f"{name} does not match the config's RoPE frequencies (rope_theta/rope_scaling)")
        else:
            problems.append(f"unexpected {name}: shape {tuple(np.shape(tensors[name]))}")
    if problems:
        head = "\n  ".join(problems[:20]) + (f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise UserError(f"HF LLaMA tensors do not match the config:\n  {head}")
    return tree_lib.unflatten(flat)


# --- files ----------------------------------------------------------------------------------------------------------
def _safetensors() -> Any:
    try:
        import safetensors
        import safetensors.numpy
    except ImportError as e:
        raise ImportError("reading or writing HF checkpoints needs safetensors: pip install safetensors") from e
    return safetensors


class _LazyTensors(Mapping[str, np.ndarray]):
    """name → tensor over one or several safetensors files, read on access (peak memory ≈ one tensor)."""

    def __init__(self, files: Mapping[str, Path]) -> None:
        self._st = _safetensors()
        self._files = dict(files)

    def __getitem__(self, name: str) -> np.ndarray:
        with self._st.safe_open(str(self._files[name]), framework="numpy") as f:
            return f.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


def _tensor_files(path: Path) -> dict[str, Path]:
    st = _safetensors()
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        with st.safe_open(str(single), framework="numpy") as f:
            return {name: single for name in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UserError(f"{index} has no 'weight_map'")
        files = {name: path / shard for name, shard in weight_map.items()}
        absent = sorted({str(p.name) for p in files.values() if not p.is_file()})
        if absent:
            raise MissingFile(f"{path}: shards listed in model.safetensors.index.json are missing: {absent}")
        for shard in sorted(set(files.values())):  # the index must describe the shards exactly
            with st.safe_open(str(shard), framework="numpy") as f:
                names = set(f.keys())
            listed = {n for n, p in files.items() if p == shard}
            if names != listed:
                raise UserError(f"{shard.name}: holds {sorted(names - listed)[:5]} not in the index and lacks "
                                f"{sorted(listed - names)[:5]} that the index lists")
        return files
    have = sorted(p.name for p in path.iterdir())
    hint = " (PyTorch .bin checkpoints are not read: convert them to safetensors)" if any(
        h.endswith(".bin") for h in have) else ""
    raise MissingFile(f"{path} has neither model.safetensors nor model.safetensors.index.json; found "
                      f"{have}{hint}")


def load_hf_dir(path: str | os.PathLike, dtype: str = "float32") -> tuple[LlamaConfig, dict[str, Any]]:
    """(config, variables) from a HF LLaMA directory: ``config.json`` and ``model.safetensors`` or sharded
    ``model.safetensors.index.json`` + shards. Parameters are numpy arrays in ``dtype``."""
    path = Path(path)
    if not path.is_dir():
        raise MissingFile(f"no HF checkpoint directory at {path}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise MissingFile(f"{path} has no config.json (a HF checkpoint directory needs config.json and "
                          "model.safetensors or model.safetensors.index.json)")
    config = llama_config_from_hf(json.loads(config_file.read_text()), dtype=dtype)
    return config, convert_state_dict(config, _LazyTensors(_tensor_files(path)))


def hf_config_dict(config: LlamaConfig) -> dict[str, Any]:
    """The HF ``config.json`` of a uniform-width config, loadable by transformers 4.x (``rope_theta`` +
    ``rope_scaling``) and 5.x (``rope_parameters``, which 5.x reads in preference)."""
    if not config.is_uniform():
        raise UserError("HF LlamaConfig needs the same widths in every block; this model has per-block "
                        f"num_heads={config.num_heads}, num_kv_heads={config.num_kv_heads}, "
                        f"intermediate_sizes={config.intermediate_sizes}")
    scaling = dict(config.rope_scaling) if config.rope_scaling else None
    rope_parameters = {"rope_theta": config.rope_theta, **(scaling or {"rope_type": "default"})}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": config.vocab_size,
            "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_sizes[0],
            "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads[0],
            "num_key_value_heads": config.num_kv_heads[0], "head_dim": config.head_dim, "hidden_act": "silu",
            "max_position_embeddings": config.max_position_embeddings, "rms_norm_eps": config.rms_norm_eps,
            "rope_theta": config.rope_theta, "rope_scaling": scaling, "rope_parameters": rope_parameters,
            "tie_word_embeddings": config.tie_word_embeddings, "attention_bias": False, "mlp_bias": False,
            "attention_dropout": 0.0, "pretraining_tp": 1, "initializer_range": 0.02, "use_cache": True,
            "torch_dtype": config.dtype, "dtype": config.dtype}


def save_hf_dir(config: LlamaConfig, variables: Mapping[str, Any], path: str | os.PathLike,
                extra_config: Mapping[str, Any] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that ``LlamaForCausalLM.from_pretrained`` loads.

    Needs the same widths in every block (HF's config has one value per width). ``extra_config`` adds fields
    such as ``bos_token_id``/``eos_token_id``. Tensors are written in ``config.dtype``. transformers ≥ 5 refuses
    configs whose ``hidden_size`` is not a multiple of ``num_attention_heads`` even with an explicit ``head_dim``
    (a folded model can end up so); a warning says so, the files are still written (4.x and other readers load
    them).
    """
    st = _safetensors()
    hf_config = {**hf_config_dict(config), **dict(extra_config or {})}
    if config.hidden_size % config.num_heads[0]:
        warnings.warn(f"hidden_size {config.hidden_size} is not a multiple of num_attention_heads "
                      f"{config.num_heads[0]}: transformers ≥ 5 refuses to load this config (4.x loads it)",
                      stacklevel=2)
    want = {p: s for p, (s, _) in tree_lib.shapes(config.abstract_variables()["params"]).items()}
    have = {p: tuple(np.shape(a)) for p, a in tree_lib.flatten(variables["params"]).items()}
    problems = [f"{p}: expected {want.get(p)}, got {have.get(p)}" for p in sorted(set(want) | set(have))
                if want.get(p) != have.get(p)]
    if problems:
        raise ValueError(f"variables do not match the config: {problems[:5]}")
    flat = tree_lib.flatten(variables["params"])
    dtype = np.dtype(DTYPES[config.dtype])
    tensors = {}
    for name, ours, transpose in _rules(config):
        w = np.asarray(flat[ours.removeprefix("params/")]).astype(dtype)
        tensors[name] = np.ascontiguousarray(w.T if transpose else w)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".model.safetensors.tmp"
    st.numpy.save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)  # safetensors creates it 0600 whatever the umask; config.json is 0644 too
    os.replace(tmp, out / "model.safetensors")
    write_json_atomic(out / "config.json", hf_config)
    return out
