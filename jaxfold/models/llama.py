"""Decoder-only LLaMA (LLaMA 1/2/3, TinyLlama, SmolLM2): RMSNorm, RoPE, grouped-query attention, SwiGLU MLP.

Numerics follow Hugging Face's ``LlamaForCausalLM`` so imported checkpoints give the same logits: RoPE in the
``rotate_half`` layout HF checkpoints store q/k in, RMSNorm in float32, a float32 softmax, query head ``h`` reading
KV head ``h // (Hq/Hkv)`` (HF's ``repeat_kv``), optional "linear" and "llama3" RoPE scaling.

Every foldable width is per block (``num_heads``, ``num_kv_heads``, ``intermediate_sizes``), so a folded model is a
real, smaller model rebuilt from its config. Parameter tree (the names other modules rely on)::

    params/embed/embedding (V, D)
    params/block_{i}/attn_norm/scale (D,)       params/block_{i}/mlp_norm/scale (D,)
    params/block_{i}/attn/{q,k,v}/kernel (D, H·hd)   with H = Hq for q, Hkv for k and v
    params/block_{i}/attn/o/kernel (Hq·hd, D)
    params/block_{i}/mlp/{gate,up}/kernel (D, F)     params/block_{i}/mlp/down/kernel (F, D)
    params/final_norm/scale (D,)                params/lm_head/kernel (D, V)   (absent when embeddings are tied)

Folding GQA attention (beyond the paper: the LLaMA models of its §4 have MHA heads) comes in two modes:

* ``"kv_groups"`` (**default**): the unit is a whole KV group — its Hq/Hkv query heads and its k/v head — so q/k/v
  are averaged and o summed per merged group, and ``num_kv_heads`` and ``num_heads`` shrink together. It is the
  paper's head unit ([q ‖ k ‖ v ‖ o] of a head) generalised, and identical to it for MHA. Chosen as the default
  because it is an ordinary fold-spec group, so everything built on specs (``fold``, ``fold_model``, SP-L1/L2,
  IFM, sweeps, diagnostics) applies unchanged and the baselines are compared at the same structure; it also removes
  k/v projections and shrinks the KV cache, and for the common LLaMA-3 layout (8 KV groups of 4 query heads) it is
  the finer-grained mode (8 units per block instead of 4 per group).
* ``"within_groups"``: query heads are folded inside each KV group (same k in every group), K/V untouched. A unit
  here is a slice of the q/o axis per KV group, which a fold-spec member cannot address (members span a whole
  axis), so this mode is :func:`fold_within_groups`, a separate function built on :func:`jaxfold.folding.fold`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxfold import tree as tree_lib
from jaxfold.errors import UserError
from jaxfold.models.base import ModelConfig, register
from jaxfold.result import Compressed, CompressionReport, GroupReport
from jaxfold.spec import FoldSpec, Group, Member

GQA_MODES = ("kv_groups", "within_groups")
DEFAULT_GQA = "kv_groups"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ROPE_SCALING_KEYS = {
    "linear": ("factor",),
    "llama3": ("factor", "high_freq_factor", "low_freq_factor", "original_max_position_embeddings"),
}
_INIT = nn.initializers.normal(0.02)  # HF's initializer_range


def _canonical_rope_scaling(value: Any) -> tuple[tuple[str, Any], ...] | None:
    """None, or ``(("factor", 8.0), …, ("rope_type", "llama3"))`` sorted by key (hashable, JSON round-trippable)."""
    if value is None:
        return None
    items = dict(value.items() if isinstance(value, Mapping) else value)
    rope_type = items.get("rope_type")
    if rope_type not in ROPE_SCALING_KEYS:
        raise UserError(f"rope_scaling: rope_type must be one of {sorted(ROPE_SCALING_KEYS)}, got {rope_type!r} "
                        "(use rope_scaling=None for plain RoPE)")
    want = {"rope_type", *ROPE_SCALING_KEYS[rope_type]}
    if set(items) != want:
        raise UserError(f"rope_scaling of type {rope_type!r} needs exactly the keys {sorted(want)}, got "
                        f"{sorted(items)}")
    return tuple(sorted((k, v) for k, v in items.items()))


@dataclasses.dataclass(frozen=True)
class LlamaConfig(ModelConfig):
    arch = "llama"

    vocab_size: int = 32000
    hidden_size: int = 4096
    num_layers: int = 32
    head_dim: int = 128
    num_heads: tuple[int, ...] = (32,) * 32
    num_kv_heads: tuple[int, ...] = (32,) * 32
    intermediate_sizes: tuple[int, ...] = (11008,) * 32
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # see ROPE_SCALING_KEYS; includes ("rope_type", …)
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    dtype: str = "float32"  # parameters and activations; norms and softmax always run in float32

    def __post_init__(self) -> None:
        for name in ("num_heads", "num_kv_heads", "intermediate_sizes"):
            value = tuple(int(v) for v in getattr(self, name))
            object.__setattr__(self, name, value)
            if len(value) != self.num_layers:
                raise UserError(f"{name} needs {self.num_layers} entries (one per block), got {len(value)}: {value}")
            if any(v < 1 for v in value):
                raise UserError(f"{name} entries must be ≥ 1, got {value}")
        object.__setattr__(self, "rope_scaling", _canonical_rope_scaling(self.rope_scaling))
        for i, (hq, hkv) in enumerate(zip(self.num_heads, self.num_kv_heads, strict=True)):
            if hq % hkv:
                raise UserError(f"block {i}: num_heads {hq} is not a multiple of num_kv_heads {hkv}")
        for name in ("vocab_size", "hidden_size", "num_layers", "head_dim", "max_position_embeddings"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.head_dim % 2:
            raise UserError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.dtype not in DTYPES:
            raise UserError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    @property
    def jnp_dtype(self) -> Any:
        return DTYPES[self.dtype]

    def groups_per_kv(self, i: int) -> int:
        """Query heads per KV head in block ``i`` (Hq / Hkv)."""
        return self.num_heads[i] // self.num_kv_heads[i]

    def is_uniform(self) -> bool:
        """Every block has the same widths (what an HF ``LlamaConfig`` can express)."""
        return all(len(set(w)) <= 1 for w in (self.num_heads, self.num_kv_heads, self.intermediate_sizes))

    def module(self) -> nn.Module:
        return Llama(self)

    def init(self, key: jax.Array, batch_size: int = 1) -> dict[str, Any]:
        """Randomly initialised ``{'params': …}`` (normal(0.02) weights as in HF, unit norm scales)."""
        ids = jnp.zeros((batch_size, 1), jnp.int32)
        module = self.module()
        seed = jax.random.randint(key, (), 0, jnp.iinfo(jnp.int32).max)  # rbg: much faster to compile (see base)
        rbg = jax.random.key(seed, impl="rbg")
        variables = jax.jit(lambda k: module.init({"params": k}, ids))(rbg)
        return jax.tree.map(lambda a: a, dict(variables))

    def forward_inputs(self, batch_size: int = 1) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """One token per sequence: counts per example are per token, attending to a context of 1."""
        return (jax.ShapeDtypeStruct((batch_size, 1), jnp.int32),), {}

    def fold_spec(self) -> FoldSpec:
        return fold_spec(self)

    def param_count(self) -> int:
        d, hd = self.hidden_size, self.head_dim
        total = self.vocab_size * d * (1 if self.tie_word_embeddings else 2) + d
        for hq, hkv, f in zip(self.num_heads, self.num_kv_heads, self.intermediate_sizes, strict=True):
            total += 2 * d + 2 * d * hq * hd + 2 * d * hkv * hd + 3 * d * f
        return total

    def flops(self, context: int = 0) -> int:
        """Forward FLOPs per token, 2 × MACs of every projection and the lm_head (tied or not). The attention
        score/value products depend on the sequence: they are excluded unless ``context`` (keys attended to) is
        given, which adds 2 · 2 · Hq · hd · context per block. Norms, RoPE, softmax and SiLU are not counted."""
        d, hd = self.hidden_size, self.head_dim
        macs = d * self.vocab_size
        for hq, hkv, f in zip(self.num_heads, self.num_kv_heads, self.intermediate_sizes, strict=True):
            macs += d * (2 * hq + 2 * hkv) * hd + 3 * d * f + 2 * hq * hd * context
        return 2 * macs


def llama(vocab_size: int = 32000, hidden_size: int = 4096, num_layers: int = 32, num_heads: int = 32,
          num_kv_heads: int | None = None, head_dim: int | None = None, intermediate_size: int = 11008,
          rms_norm_eps: float = 1e-6, rope_theta: float = 10000.0, rope_scaling: Mapping[str, Any] | None = None,
          max_position_embeddings: int = 2048, tie_word_embeddings: bool = False,
          dtype: str = "float32") -> LlamaConfig:
    """A LLaMA with the same widths in every block (defaults: LLaMA-7B). ``head_dim`` defaults to
    hidden_size // num_heads, ``num_kv_heads`` to num_heads (MHA)."""
    if head_dim is None:
        if hidden_size % num_heads:
            raise UserError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}; give head_dim")
        head_dim = hidden_size // num_heads
    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers, head_dim=head_dim,
                       num_heads=(num_heads,) * num_layers, num_kv_heads=(num_kv_heads or num_heads,) * num_layers,
                       intermediate_sizes=(intermediate_size,) * num_layers, rms_norm_eps=rms_norm_eps,
                       rope_theta=rope_theta, rope_scaling=rope_scaling,
                       max_position_embeddings=max_position_embeddings, tie_word_embeddings=tie_word_embeddings,
                       dtype=dtype)


register(LlamaConfig)


# --- RoPE -----------------------------------------------------------------------------------------------------------
def rope_inv_freq(cfg: LlamaConfig) -> np.ndarray:
    """The (head_dim/2,) float32 inverse frequencies, computed in float32 exactly as HF does (incl. scaling)."""
    hd = cfg.head_dim
    inv = np.float32(1.0) / (np.float32(cfg.rope_theta) ** (np.arange(0, hd, 2, dtype=np.int64).astype(np.float32)
                                                            / np.float32(hd)))
    if cfg.rope_scaling is None:
        return inv
    s = dict(cfg.rope_scaling)
    factor = np.float32(s["factor"])
    if s["rope_type"] == "linear":
        return inv / factor
    # llama3: long wavelengths divided by factor, short ones kept, a smooth interpolation in between
    low, high, old = s["low_freq_factor"], s["high_freq_factor"], s["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = np.float32(2 * math.pi) / inv
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (np.float32(old) / wavelen - np.float32(low)) / np.float32(high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_tables(cfg: LlamaConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape (T, head_dim) in the model dtype, HF layout (the frequencies repeated twice)."""
    freqs = positions.astype(jnp.float32)[:, None] * jnp.asarray(rope_inv_freq(cfg))[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(cfg.jnp_dtype), jnp.sin(emb).astype(cfg.jnp_dtype)


def _rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x (B, T, …, hd); cos/sin (T, hd) broadcast over batch and head axes."""
    shape = (1, cos.shape[0]) + (1,) * (x.ndim - 3) + (cos.shape[1],)
    return x * cos.reshape(shape) + _rotate_half(x) * sin.reshape(shape)


# --- the module -----------------------------------------------------------------------------------------------------
Cache = list[tuple[jax.Array, jax.Array]]  # per block: keys, values of shape (B, Hkv, L, hd)


class RMSNorm(nn.Module):
    eps: float
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return y.astype(self.dtype) * scale.reshape((1,) * (x.ndim - 1) + (-1,))


def _dense(features: int, dtype: Any, name: str) -> nn.Dense:
    return nn.Dense(features, use_bias=False, dtype=dtype, param_dtype=dtype, kernel_init=_INIT, name=name)


_MIN_CHUNK, _MAX_CHUNKS = 128, 8  # causal attention over long inputs: at most 8 query chunks of ≥ 128 positions


def _attend(q: jax.Array, keys: jax.Array, values: jax.Array, qpos: jax.Array, kpos: jax.Array,
            dtype: Any) -> jax.Array:
    """Masked softmax attention of q (b, t, groups, r, d) over keys/values (b, groups, s, d) → (b, t, groups·r·d).

    One plain batched matmul per KV group, its r heads × t positions as rows (a 5-D einsum with the heads as a free
    dimension ran 1.5× slower on XLA:CPU); softmax in float32, normalised after the value product (a (rows, d)
    division instead of a (rows, s) one). Keys and values come with the KV group before the positions, the layout
    the batched matmuls read, so a KV cache is read in place (no transposed copy of it per decoding step)."""
    b, t, groups, r, hd = q.shape
    rows = q.transpose(0, 2, 3, 1, 4).reshape(b, groups, r * t, hd)
    scores = jnp.einsum("bgqd,bgsd->bgqs", rows, keys,
                        preferred_element_type=jnp.float32) * (hd ** -0.5)
    mask = (kpos[None, :] <= jnp.tile(qpos, r)[:, None])[None, None]
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    out = jnp.einsum("bgqs,bgsd->bgqd", weights.astype(dtype), values.astype(dtype),
                     preferred_element_type=jnp.float32) / jnp.sum(weights, axis=-1, keepdims=True)
    return out.astype(dtype).reshape(b, groups, r, t, hd).transpose(0, 3, 1, 2, 4).reshape(b, t, groups * r * hd)


class Attention(nn.Module):
    """Causal grouped-query attention: queries reshaped to (KV group, head in group), one batched matmul per group;
    without a cache, long inputs go in query chunks that skip the keys after them (9/16 of the work at 1,024)."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, start: Any,
                 cache: tuple[jax.Array, jax.Array] | None) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        b, t, _ = x.shape
        hkv, hd = self.num_kv_heads, self.head_dim
        r = self.num_heads // hkv
        q = _dense(self.num_heads * hd, self.dtype, "q")(x).reshape(b, t, hkv, r, hd)  # head h = (h // r, h % r)
        k = _dense(hkv * hd, self.dtype, "k")(x).reshape(b, t, hkv, hd)
        v = _dense(hkv * hd, self.dtype, "v")(x).reshape(b, t, hkv, hd)
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        qpos = start + jnp.arange(t)
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # (b, hkv, t, hd), the cache's layout
        if cache is None:
            keys, values, kpos = k, v, qpos
        else:  # write this step's keys/values at [start, start + t) and attend over the whole (masked) cache
            keys = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, 0, start, 0))
            values = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, 0, start, 0))
            kpos = jnp.arange(keys.shape[2])
            cache = (keys, values)
        if cache is None and t > _MIN_CHUNK:  # causal: query chunk i needs only the keys up to its own end
            size = math.ceil(t / min(_MAX_CHUNKS, math.ceil(t / _MIN_CHUNK)))
            out = jnp.concatenate([_attend(q[:, i:i + size], keys[:, :, :i + size], values[:, :, :i + size],
                                           qpos[i:i + size], kpos[:i + size], self.dtype)
                                   for i in range(0, t, size)], axis=1)
        else:
            out = _attend(q, keys, values, qpos, kpos, self.dtype)
        return _dense(x.shape[-1], self.dtype, "o")(out), cache


class MLP(nn.Module):
    intermediate_size: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gate = _dense(self.intermediate_size, self.dtype, "gate")(x)
        up = _dense(self.intermediate_size, self.dtype, "up")(x)
        return _dense(x.shape[-1], self.dtype, "down")(nn.silu(gate) * up)


class Block(nn.Module):
    config: LlamaConfig
    index: int

    @nn.compact
    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, start: Any,
                 cache: tuple[jax.Array, jax.Array] | None) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        cfg, i = self.config, self.index
        dt = cfg.jnp_dtype
        h, cache = Attention(cfg.num_heads[i], cfg.num_kv_heads[i], cfg.head_dim, dt, name="attn")(
            RMSNorm(cfg.rms_norm_eps, dt, name="attn_norm")(x), cos, sin, start, cache)
        x = x + h
        x = x + MLP(cfg.intermediate_sizes[i], dt, name="mlp")(RMSNorm(cfg.rms_norm_eps, dt, name="mlp_norm")(x))
        return x, cache


class Llama(nn.Module):
    """``apply(variables, ids)`` → float32 logits (B, T, V). With ``cache`` (see :func:`init_cache`) it returns
    ``(logits, new_cache)``, the tokens being at positions ``start … start + T − 1``."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, cache: Cache | None = None, start: Any = 0) -> Any:
        cfg = self.config
        dt = cfg.jnp_dtype
        embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dt, param_dtype=dt, embedding_init=_INIT,
                         name="embed")
        x = embed(input_ids)
        cos, sin = rope_tables(cfg, start + jnp.arange(input_ids.shape[1]))
        new_cache = []
        for i in range(cfg.num_layers):
            x, layer_cache = Block(cfg, i, name=f"block_{i}")(x, cos, sin, start,
                                                               None if cache is None else cache[i])
            new_cache.append(layer_cache)
        x = RMSNorm(cfg.rms_norm_eps, dt, name="final_norm")(x)
        logits = embed.attend(x) if cfg.tie_word_embeddings else _dense(cfg.vocab_size, dt, "lm_head")(x)
        logits = logits.astype(jnp.float32)
        return logits if cache is None else (logits, new_cache)


def init_cache(cfg: LlamaConfig, batch: int, length: int) -> Cache:
    """An empty KV cache for ``length`` positions: per block, keys and values of shape (batch, Hkv, length, hd)."""
    return [(jnp.zeros((batch, h, length, cfg.head_dim), cfg.jnp_dtype),) * 2 for h in cfg.num_kv_heads]


# --- generation: greedy and sampled ---------------------------------------------------------------------------------
def _greedy(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_p: jax.Array) -> jax.Array:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def _categorical(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_p: jax.Array) -> jax.Array:
    """One draw per row from softmax(logits / temperature), row b with its own key ``keys[b]``."""
    return jax.vmap(jax.random.categorical)(keys, logits / temperature).astype(jnp.int32)


def _float_order(x: jax.Array) -> jax.Array:
    """float32 → uint32 with the same order (negative floats' bits reversed, positive ones' above them)."""
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def _from_order(key: jax.Array) -> jax.Array:
    """The inverse of :func:`_float_order`."""
    return jax.lax.bitcast_convert_type(jnp.where(key >> 31 == 1, key & jnp.uint32(0x7FFFFFFF), ~key), jnp.float32)


def _nucleus(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_p: jax.Array) -> jax.Array:
    """Top-p sampling (Holtzman et al., ICLR 2020, §3.1): draw from the smallest set of most likely tokens whose
    probability reaches ``top_p`` (always at least the most likely one, and every token tied with the least likely
    one kept), renormalised.

    The cut is the smallest logit whose strictly more likely tokens hold less than ``top_p``, found per row by
    bisection over the 2³² float32 values in order (32 masked sums over the vocabulary) instead of sorting it: a
    sort of SmolLM2's 49,152 logits cost more than the model's forward step on XLA:CPU (docs/benchmarks.md)."""
    scaled = logits / temperature
    probs = jax.nn.softmax(scaled, axis=-1)

    def halve(_: Any, bounds: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        lo, hi = bounds  # the cut's order key lies in [lo, hi]; hi always qualifies
        mid = lo + (hi - lo) // 2
        above = jnp.sum(jnp.where(scaled > _from_order(mid)[:, None], probs, 0.0), axis=-1)
        inside = above < top_p
        return jnp.where(inside, lo, mid + 1), jnp.where(inside, mid, hi)

    bounds = _float_order(jnp.min(scaled, axis=-1)), _float_order(jnp.max(scaled, axis=-1))
    _, cut = jax.lax.fori_loop(0, 32, halve, bounds)
    threshold = _from_order(cut)[:, None]
    return _categorical(jnp.where(scaled >= threshold, scaled, -jnp.inf), keys, jnp.float32(1.0), top_p)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "choose"))
def _decode(config: LlamaConfig, variables: Any, prompt: jax.Array, max_new_tokens: int, eos_id: jax.Array,
            choose: Any, keys: jax.Array, temperature: jax.Array, top_p: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Tokens (B, max_new_tokens) and how many steps ran: prefill, then one-token steps in a ``lax.while_loop``,
    each token picked by ``choose(logits (B, V), step keys (B,), temperature, top_p)``. The token of step i of row
    b uses ``fold_in(keys[b], i)``, so a row's draws do not depend on the other rows. ``eos_id`` < 0: none."""
    module = config.module()
    b, p = prompt.shape

    def pick(logits: jax.Array, i: jax.Array) -> jax.Array:
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, i)
        return choose(logits[:, -1], step_keys, temperature, top_p)

    logits, cache = module.apply(variables, prompt, init_cache(config, b, p + max_new_tokens), 0)
    token = pick(logits, jnp.int32(0))

    def cond(state: tuple) -> jax.Array:
        i, _, _, _, done = state
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(state: tuple) -> tuple:
        i, token, cache, out, done = state
        out = out.at[:, i].set(jnp.where(done, eos_id, token))
        done = done | (token == eos_id)
        logits, cache = module.apply(variables, token[:, None], cache, p + i)
        return i + 1, pick(logits, i + 1), cache, out, done

    out = jnp.full((b, max_new_tokens), eos_id, jnp.int32)
    state = (jnp.int32(0), token, cache, out, jnp.zeros((b,), bool))
    n, _, _, out, _ = jax.lax.while_loop(cond, body, state)
    return out, n


def _prompt_batch(config: LlamaConfig, prompt_ids: Any, max_new_tokens: int, eos_id: int | None) -> np.ndarray:
    """The prompt as a (B, P) int32 batch, after checking what ``generate`` and ``sample`` are given."""
    prompt = np.asarray(prompt_ids, np.int32)
    prompt = prompt[None] if prompt.ndim == 1 else prompt
    if prompt.ndim != 2 or prompt.shape[1] == 0:
        raise UserError(f"prompt_ids must be a non-empty 1-D sequence or a 2-D batch, got shape {prompt.shape}")
    if max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be ≥ 0, got {max_new_tokens}")
    if eos_id is not None and not 0 <= eos_id < config.vocab_size:
        raise UserError(f"eos_id must be a token id in [0, {config.vocab_size}), got {eos_id}")
    return prompt


def _run_decode(config: LlamaConfig, variables: Any, prompt_ids: Any, max_new_tokens: int, eos_id: int | None,
                choose: Any, keys: Any, temperature: float, top_p: float) -> np.ndarray:
    single = np.ndim(prompt_ids) == 1
    prompt = _prompt_batch(config, prompt_ids, max_new_tokens, eos_id)
    if max_new_tokens == 0:
        return prompt[0] if single else prompt
    if keys is None:  # greedy: the keys are never read
        keys = jnp.zeros((prompt.shape[0], 2), jnp.uint32)
    out, n = _decode(config, variables, jnp.asarray(prompt), int(max_new_tokens),
                     jnp.int32(-1 if eos_id is None else eos_id), choose, keys, jnp.float32(temperature),
                     jnp.float32(top_p))
    result = np.concatenate([prompt, np.asarray(out)[:, : int(n)]], axis=1)
    return result[0] if single else result


def generate(config: LlamaConfig, variables: Any, prompt_ids: Sequence[int] | np.ndarray, max_new_tokens: int,
             eos_id: int | None = None) -> np.ndarray:
    """Greedy decoding with a KV cache (jitted prefill, then single-token steps in a ``lax.while_loop``).

    ``prompt_ids`` is one prompt (1-D) or a batch of equal-length prompts (2-D). Returns the prompt followed by the
    generated tokens, same rank as the input; generation stops after ``eos_id`` (kept in the output) or
    ``max_new_tokens``. In a batch, rows that already stopped are padded with ``eos_id``.
    """
    return _run_decode(config, variables, prompt_ids, max_new_tokens, eos_id, _greedy, None, 1.0, 1.0)


def sample(config: LlamaConfig, variables: Any, prompt_ids: Sequence[int] | np.ndarray, max_new_tokens: int,
           key: jax.Array, *, temperature: float = 1.0, top_p: float = 1.0, eos_id: int | None = None) -> np.ndarray:
    """:func:`generate`, drawing each token from softmax(logits / ``temperature``) restricted to the top-``top_p``
    nucleus instead of taking the most likely one (same KV-cache decoding, same output and stopping rules).

    ``key`` is one PRNG key (row b of a batch then uses ``fold_in(key, b)``) or one key per row, shape (B,): a
    row's tokens depend only on its key and prompt, not on the batch around it. Bit-identical for the keys on one
    machine type and jax/XLA build (across CPU types logits may round differently and flip a near-tied draw).
    ``temperature=0`` is greedy decoding (exactly :func:`generate`); ``top_p=1`` samples the full distribution.
    """
    if not (isinstance(temperature, int | float | np.number) and np.isfinite(temperature) and temperature >= 0):
        raise UserError(f"temperature must be a finite number ≥ 0 (0 = greedy), got {temperature!r}")
    if not (isinstance(top_p, int | float | np.number) and 0 < top_p <= 1):
        raise UserError(f"top_p must be in (0, 1] (1 = no nucleus cut), got {top_p!r}")
    if temperature == 0:
        return generate(config, variables, prompt_ids, max_new_tokens, eos_id)
    rows = _prompt_batch(config, prompt_ids, max_new_tokens, eos_id).shape[0]
    keys = _row_keys(key, rows)
    return _run_decode(config, variables, prompt_ids, max_new_tokens, eos_id,
                       _categorical if top_p >= 1 else _nucleus, keys, float(temperature), float(top_p))


def _row_keys(key: jax.Array, rows: int) -> jax.Array:
    """One key per row: ``key`` itself when it already holds ``rows`` keys, else ``fold_in(key, b)`` for row b."""
    key = jnp.asarray(key)
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    batch_shape = key.shape if typed else key.shape[:-1]
    if batch_shape == (rows,):
        return key
    if batch_shape != ():
        raise UserError(f"key must be one PRNG key or one per prompt row ({rows}), got key shape {key.shape}")
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(rows))


# --- fold specs -----------------------------------------------------------------------------------------------------
def _attn_paths(i: int) -> dict[str, str]:
    return {n: f"params/block_{i}/attn/{n}/kernel" for n in ("q", "k", "v", "o")}


def fold_spec(cfg: LlamaConfig, gqa: str = DEFAULT_GQA) -> FoldSpec:
    """Per block ``block{i}.attn`` (attention heads, see the module docstring for ``gqa``) and ``block{i}.mlp``
    (the SwiGLU hidden neurons: gate/up columns averaged, down rows summed). The residual width, embeddings, norms
    and lm_head never fold.

    ``gqa="kv_groups"``: one unit = one KV group (its Hq/Hkv query heads + its k/v head); the width is the number of
    KV groups and sets ``num_kv_heads[i] = width``, ``num_heads[i] = width · Hq/Hkv``. ``gqa="within_groups"``:
    the attention of GQA blocks is left out of the spec (declared unfoldable) — fold it with
    :func:`fold_within_groups`; MHA blocks get the plain head group in both modes.
    """
    if gqa not in GQA_MODES:
        raise UserError(f"gqa must be one of {GQA_MODES}, got {gqa!r}")
    unfoldable = [("params/embed/embedding", 0), ("params/embed/embedding", 1), ("params/final_norm/scale", 0)]
    if not cfg.tie_word_embeddings:
        unfoldable += [("params/lm_head/kernel", 0), ("params/lm_head/kernel", 1)]
    groups = []
    hd = cfg.head_dim
    for i in range(cfg.num_layers):
        a, b = _attn_paths(i), f"params/block_{i}"
        unfoldable += [(f"{b}/attn_norm/scale", 0), (f"{b}/mlp_norm/scale", 0), (a["q"], 0), (a["k"], 0),
                       (a["v"], 0), (a["o"], 1), (f"{b}/mlp/gate/kernel", 0), (f"{b}/mlp/up/kernel", 0),
                       (f"{b}/mlp/down/kernel", 1)]
        r = cfg.groups_per_kv(i)
        if gqa == "kv_groups" or r == 1:
            members = (Member(a["q"], 1, "producer", block=r * hd), Member(a["k"], 1, "producer", block=hd),
                       Member(a["v"], 1, "producer", block=hd), Member(a["o"], 0, "consumer", block=r * hd))
            groups.append(Group(f"block{i}.attn", members, (("num_kv_heads", i), ("num_heads", i)), (1, r)))
        else:
            unfoldable += [(a["q"], 1), (a["k"], 1), (a["v"], 1), (a["o"], 0)]
        mlp = (Member(f"{b}/mlp/gate/kernel", 1, "producer"), Member(f"{b}/mlp/up/kernel", 1, "producer"),
               Member(f"{b}/mlp/down/kernel", 0, "consumer"))
        groups.append(Group(f"block{i}.mlp", mlp, (("intermediate_sizes", i),)))
    return FoldSpec(tuple(groups), tuple(unfoldable))


def permute_heads_within_groups(cfg: LlamaConfig, variables: Mapping[str, Any], block: int,
                                perms: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Reorder the query heads of every KV group of ``block`` (``perms[j]``: a permutation of range(Hq/Hkv)):
    the q columns and o rows move together, so the function is unchanged (the within-groups symmetry)."""
    r, hkv, hd = cfg.groups_per_kv(block), cfg.num_kv_heads[block], cfg.head_dim
    heads = np.concatenate([j * r + np.asarray(p) for j, p in enumerate(perms)])
    if len(perms) != hkv or sorted(heads.tolist()) != list(range(r * hkv)):
        raise ValueError(f"need {hkv} permutations of range({r}), got {perms}")
    cols = (heads[:, None] * hd + np.arange(hd)[None, :]).reshape(-1)
    a = _attn_paths(block)
    out = tree_lib.set_(variables, a["q"], jnp.asarray(tree_lib.get(variables, a["q"]))[:, cols])
    return tree_lib.set_(out, a["o"], jnp.asarray(tree_lib.get(variables, a["o"]))[cols, :])


def fold_within_groups(cfg: LlamaConfig, variables: Mapping[str, Any], plan: Any, key: jax.Array,
                       **fold_options: Any) -> tuple[LlamaConfig, Compressed]:
    """Fold with ``gqa="within_groups"``: in every GQA block, the query heads of each KV group are clustered and
    merged separately (features [q columns ‖ o rows] of a head; q averaged, o summed; K/V untouched), every group
    keeping the same k; MLPs (and the heads of MHA blocks) fold as in :func:`jaxfold.folding.fold`.

    ``plan`` is as for ``fold`` (a ratio, a {group: ratio} dict, or f(group, n) -> k); for a GQA block the group
    ``block{i}.attn`` has width n = Hq/Hkv (query heads per KV group). All clusterings use the original weights.
    Returns ``(new_config, Compressed)``; the result's ``channel_map["block{i}.attn"][h]`` is the new index of
    original query head h. ``fold_options`` go to ``fold`` (clusterer, n_init, max_iter).
    """
    from jaxfold.folding import fold
    from jaxfold.plans import resolve_plan
    from jaxfold.reports import size_report

    spec = fold_spec(cfg, "within_groups")
    gqa_blocks = [i for i in range(cfg.num_layers) if cfg.groups_per_kv(i) > 1]
    widths = {**spec.widths(variables), **{f"block{i}.attn": cfg.groups_per_kv(i) for i in gqa_blocks}}
    ks = resolve_plan(plan, widths)
    base = fold(variables, spec, lambda g, n: ks[g], key, **fold_options)
    flat = tree_lib.flatten(base.variables)
    labels, new_heads = dict(base.channel_map), {}
    reports: list[GroupReport] = list(base.report["groups"])
    hd = cfg.head_dim
    for i in gqa_blocks:
        name, r, hkv, k = f"block{i}.attn", cfg.groups_per_kv(i), cfg.num_kv_heads[i], ks[f"block{i}.attn"]
        new_heads[i] = k * hkv
        if k == r:
            labels[name] = np.arange(r * hkv)
            reports.append({"group": name, "n": r, "k": k, "channel_ratio": 0.0, "inertia": 0.0, "seconds": 0.0})
            continue
        a = _attn_paths(i)
        q, o = flat[a["q"]], flat[a["o"]]
        sub_group = Group("heads", (Member("q", 1, "producer", block=hd), Member("o", 0, "consumer", block=hd)))
        qs, os_, head_labels, inertia, seconds = [], [], [], 0.0, 0.0
        for j in range(hkv):
            cols = slice(j * r * hd, (j + 1) * r * hd)
            sub = fold({"q": q[:, cols], "o": o[cols, :]}, FoldSpec((sub_group,)), lambda g, n, k=k: k,
                       jax.random.fold_in(jax.random.fold_in(key, len(spec.groups) + i), j), check=False,
                       **fold_options)
            qs.append(sub.variables["q"])
            os_.append(sub.variables["o"])
            head_labels.append(j * k + sub.channel_map["heads"])
            inertia += sub.report["groups"][0]["inertia"]
            seconds += sub.report["groups"][0]["seconds"]
        xp = np if all(isinstance(x, np.ndarray) for x in qs + os_) else jnp
        flat[a["q"]], flat[a["o"]] = xp.concatenate(qs, axis=1), xp.concatenate(os_, axis=0)
        labels[name] = np.concatenate(head_labels)
        reports.append({"group": name, "n": r, "k": k, "channel_ratio": 1.0 - k / r, "inertia": inertia,
                        "seconds": round(seconds, 4)})
    new_variables = tree_lib.unflatten(flat)
    new_cfg = cfg.with_widths(base.widths)
    if new_heads:
        new_cfg = new_cfg.replace(num_heads=[new_heads.get(i, h) for i, h in enumerate(new_cfg.num_heads)])
    report: CompressionReport = {**base.report, "groups": reports, **size_report(variables, new_variables)}
    new_widths = {**base.widths, **{f"block{i}.attn": ks[f"block{i}.attn"] for i in gqa_blocks}}
    return new_cfg, Compressed(variables=new_variables, widths=new_widths, channel_map=labels, report=report,
                               config=new_cfg)
