"""Four architectures the zoo does not have, written the way their users write them: no jaxfold import in the
model code, no fold spec. They are folded by tracing (``jaxfold.derive_spec`` / ``fold_traced`` / ``fold_nnx``);
tests/test_own_models.py checks what derives and that a network widened with duplicated channels folds back
losslessly.

Each ``build_*(width=w, **kw)`` returns ``(model, example_args)``: a linen ``nn.Module`` whose
``apply(variables, *example_args)`` is the inference forward pass (BatchNorm on running statistics), or an
``nnx.Module`` called as ``model(*example_args)``. ``width`` scales every foldable width (heads, KV groups, MLP
neurons, expansions, channels); ``build_*(width=2 * w)`` is the model a width-``w`` one widens to. Run
``python experiments/own_models.py`` for the derived groups and a fold of each at ratio 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def example_images(batch: int, size: int, channels: int) -> jax.Array:
    """A fixed example batch (NHWC) drawn on the host: nothing compiled."""
    return jnp.asarray(np.random.default_rng(1).normal(size=(batch, size, size, channels)), jnp.float32)


# --- (a) ViT --------------------------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    """Multi-head self-attention with its own q/k/v/o projections (heads split by a reshape)."""

    num_heads: int
    head_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        q, k, v = (nn.Dense(self.num_heads * self.head_dim, name=n)(x).reshape(b, t, self.num_heads, self.head_dim)
                   for n in ("query", "key", "value"))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.head_dim)
        out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
        return nn.Dense(d, name="out")(out.reshape(b, t, self.num_heads * self.head_dim))


class ViTBlock(nn.Module):
    num_heads: int
    head_dim: int
    mlp_dim: int
    attention: str = "own"  # "own" (SelfAttention above) or "flax" (nn.MultiHeadDotProductAttention)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.LayerNorm(name="ln1")(x)
        if self.attention == "flax":
            h = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, qkv_features=self.num_heads * self.head_dim,
                                                name="attn")(h, h)
        else:
            h = SelfAttention(self.num_heads, self.head_dim, name="attn")(h)
        x = x + h
        h = nn.LayerNorm(name="ln2")(x)
        h = nn.Dense(self.mlp_dim, name="mlp_in")(h)
        h = nn.Dense(x.shape[-1], name="mlp_out")(nn.gelu(h))
        return x + h


class ViT(nn.Module):
    num_classes: int = 10
    patch: int = 4
    dim: int = 32
    depth: int = 2
    num_heads: int = 4
    head_dim: int = 8
    mlp_dim: int = 64
    pool: str = "cls"  # "cls" (class token) or "mean" (mean over tokens)
    attention: str = "own"

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        x = nn.Conv(self.dim, (self.patch, self.patch), strides=(self.patch, self.patch), padding="VALID",
                    name="patch_embed")(images)
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        if self.pool == "cls":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, d))
            x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), x], axis=1)
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, x.shape[1], d))
        x = x + pos
        for i in range(self.depth):
            x = ViTBlock(self.num_heads, self.head_dim, self.mlp_dim, self.attention, name=f"block{i}")(x)
        x = nn.LayerNorm(name="ln_f")(x)
        x = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
        return nn.Dense(self.num_classes, name="head")(x)


def build_vit(width: int = 1, *, image_size: int = 8, batch: int = 2, **kw: Any) -> tuple[nn.Module, tuple]:
    """ViT with ``2·width`` heads and ``16·width`` MLP neurons (residual width ``dim``, fixed)."""
    kw = {"dim": 16, "depth": 2, "head_dim": 4, **kw}
    model = ViT(num_heads=2 * width, mlp_dim=16 * width, **kw)
    return model, (example_images(batch, image_size, 3),)


# --- (b) MobileNetV2 ------------------------------------------------------------------------------------------------
class InvertedResidual(nn.Module):
    """1×1 expand (skipped at expansion 1) → 3×3 depthwise → 1×1 project (linear bottleneck); residual when the
    shapes match."""

    out_channels: int
    expansion: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
        hidden = x.shape[-1] * self.expansion
        h = x
        if self.expansion != 1:
            h = nn.relu6(norm("expand_bn")(nn.Conv(hidden, (1, 1), use_bias=False, name="expand")(h)))
        h = nn.Conv(hidden, (3, 3), strides=self.stride, padding=1, feature_group_count=hidden, use_bias=False,
                    name="depthwise")(h)
        h = nn.relu6(norm("depthwise_bn")(h))
        h = norm("project_bn")(nn.Conv(self.out_channels, (1, 1), use_bias=False, name="project")(h))
        if self.stride == 1 and x.shape[-1] == self.out_channels:
            h = x + h
        return h


class MobileNetV2(nn.Module):
    num_classes: int = 10
    stem: int = 16
    # (expansion factor, output channels, blocks, first stride) per stage, as in MobileNetV2's table 2
    stages: tuple[tuple[int, int, int, int], ...] = ((1, 8, 1, 1), (4, 12, 2, 2), (4, 16, 2, 2))
    last: int = 64

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
        x = nn.relu6(norm("stem_bn")(nn.Conv(self.stem, (3, 3), strides=2, use_bias=False, name="stem")(images)))
        i = 0
        for expansion, channels, blocks, stride in self.stages:
            for j in range(blocks):
                x = InvertedResidual(channels, expansion, stride if j == 0 else 1, name=f"block{i}")(x, train)
                i += 1
        x = nn.relu6(norm("last_bn")(nn.Conv(self.last, (1, 1), use_bias=False, name="last")(x)))
        return nn.Dense(self.num_classes, name="classifier")(x.mean(axis=(1, 2)))


def build_mobilenet(width: int = 1, *, image_size: int = 16, batch: int = 2, **kw: Any) -> tuple[nn.Module, tuple]:
    """MobileNetV2 whose every channel count (stem, stages, expansions, last conv) is ``width`` × the base."""
    model = MobileNetV2(stem=8 * width, stages=((1, 4 * width, 1, 1), (2, 8 * width, 2, 2), (2, 8 * width, 2, 2)),
                        last=16 * width, **kw)
    return model, (example_images(batch, image_size, 3),)


# --- (c) Qwen2 / Mistral-style decoder, layers under nn.scan ---------------------------------------------------------
def rope(x: jax.Array, theta: float = 1e6) -> jax.Array:
    """Rotary position embedding (rotate-half form) of x: (batch, time, heads, head_dim)."""
    t, d = x.shape[1], x.shape[-1]
    inv_freq = 1.0 / theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    angles = jnp.arange(t, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)[None, :, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * jnp.cos(angles) + jnp.concatenate([-x2, x1], axis=-1) * jnp.sin(angles)


class DecoderLayer(nn.Module):
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x: jax.Array, _: Any) -> tuple[jax.Array, None]:
        b, t, d = x.shape
        h = nn.RMSNorm(epsilon=1e-6, name="input_norm")(x)
        q = nn.Dense(self.num_heads * self.head_dim, name="q_proj")(h).reshape(b, t, self.num_heads, self.head_dim)
        k = nn.Dense(self.num_kv_heads * self.head_dim, name="k_proj")(h).reshape(b, t, self.num_kv_heads,
                                                                                 self.head_dim)
        v = nn.Dense(self.num_kv_heads * self.head_dim, name="v_proj")(h).reshape(b, t, self.num_kv_heads,
                                                                                 self.head_dim)
        q, k = rope(q), rope(k)
        repeats = self.num_heads // self.num_kv_heads  # grouped-query attention: each KV head serves `repeats`
        k, v = jnp.repeat(k, repeats, axis=2), jnp.repeat(v, repeats, axis=2)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.head_dim)
        causal = jnp.tril(jnp.ones((t, t), bool))
        scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
        out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v).reshape(b, t, -1)
        x = x + nn.Dense(d, use_bias=False, name="o_proj")(out)
        h = nn.RMSNorm(epsilon=1e-6, name="post_attention_norm")(x)
        gate = nn.Dense(self.mlp_dim, use_bias=False, name="gate_proj")(h)
        up = nn.Dense(self.mlp_dim, use_bias=False, name="up_proj")(h)
        x = x + nn.Dense(d, use_bias=False, name="down_proj")(nn.silu(gate) * up)
        return x, None


class QwenDecoder(nn.Module):
    vocab_size: int = 64
    dim: int = 32
    depth: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 8
    mlp_dim: int = 64

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = nn.Embed(self.vocab_size, self.dim, name="embed_tokens")(tokens)
        layers = nn.scan(DecoderLayer, variable_axes={"params": 0}, split_rngs={"params": True},
                         length=self.depth)
        x, _ = layers(self.num_heads, self.num_kv_heads, self.head_dim, self.mlp_dim, name="layers")(x, None)
        return nn.Dense(self.vocab_size, use_bias=False, name="lm_head")(nn.RMSNorm(epsilon=1e-6, name="norm")(x))


def build_qwen_scan(width: int = 1, *, seq_len: int = 6, batch: int = 2, **kw: Any) -> tuple[nn.Module, tuple]:
    """Decoder with ``width`` KV heads (2 query heads each) and ``8·width`` MLP neurons per layer."""
    kw = {"vocab_size": 32, "dim": 16, "depth": 2, "head_dim": 4, **kw}
    model = QwenDecoder(num_heads=2 * width, num_kv_heads=width, mlp_dim=8 * width, **kw)
    tokens = np.random.default_rng(1).integers(0, kw["vocab_size"], (batch, seq_len))
    return model, (jnp.asarray(tokens, jnp.int32),)


# --- (d) a user's own NNX CNN ----------------------------------------------------------------------------------------
class CNN(nnx.Module):
    def __init__(self, width: int = 8, hidden: int = 32, num_classes: int = 10, in_channels: int = 1, *,
                 rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(in_channels, width, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(width, use_running_average=True, rngs=rngs)
        self.conv2 = nnx.Conv(width, 2 * width, (3, 3), rngs=rngs)
        self.bn2 = nnx.BatchNorm(2 * width, use_running_average=True, rngs=rngs)
        self.fc1 = nnx.Linear(2 * width * 4 * 4, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.max_pool(nnx.relu(self.bn1(self.conv1(x))), (2, 2), strides=(2, 2))
        x = nnx.avg_pool(nnx.relu(self.bn2(self.conv2(x))), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)  # NHWC flatten: fc1's input interleaves the channels
        return self.fc2(nnx.relu(self.fc1(x)))


def build_nnx_cnn(width: int = 1, *, batch: int = 2, seed: int = 0, **kw: Any) -> tuple[nnx.Module, tuple]:
    """The NNX CNN with ``4·width`` / ``8·width`` conv channels and ``16·width`` hidden units, 16×16 inputs."""
    model = CNN(width=4 * width, hidden=16 * width, rngs=nnx.Rngs(seed), **kw)
    return model, (example_images(batch, 16, kw.get("in_channels", 1)),)


BUILDERS: dict[str, Callable[..., tuple[Any, tuple]]] = {
    "vit": build_vit, "mobilenet": build_mobilenet, "qwen_scan": build_qwen_scan, "nnx_cnn": build_nnx_cnn,
}


def init_variables(model: nn.Module, example_args: tuple, key: jax.Array | None = None) -> dict[str, Any]:
    """A linen model's variables, ``model.init(key, *example_args)``, as plain dicts."""
    return dict(jax.jit(model.init)(key if key is not None else jax.random.key(0), *example_args))


def main() -> None:
    import jaxfold  # here, not at the top: the model code above does not depend on jaxfold

    key = jax.random.key(0)
    for name, build in BUILDERS.items():
        model, args = build(width=2)
        if isinstance(model, nnx.Module):
            result = jaxfold.fold_nnx(model, 0.5, key, *args)
        else:
            variables = init_variables(model, args)
            result = jaxfold.fold_traced(model.apply, variables, 0.5, key, *args)
        module = "" if result.module is None and result.module_note is None else (
            f"  module: {type(result.module).__name__}" if result.module is not None else f"  {result.module_note}")
        print(f"{name}: {result.widths}  param_sparsity={result.report['param_sparsity']:.3f}{module}")


if __name__ == "__main__":
    main()
