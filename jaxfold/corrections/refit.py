"""``refit``: re-solve a compressed transformer's consumer projections in closed form on calibration tokens.

After folding or pruning a LLaMA's MLP neurons (or attention heads) the producers (gate/up, q/k/v) are what the
compression made them, but each block's *consumer* (``mlp/down``; ``attn/o`` where heads were compressed) is a
linear map of the compressed features and can be re-fitted by least squares so that the compressed block
reproduces the dense one:

* Block after block, the calibration windows are propagated through the dense model (stream X_d) and through the
  already-refitted compressed model (stream X_c), so every block is fitted on the inputs it will really see.
* For a consumer with input H (k features on X_c) and target Y, W' = argmin ‖H W − Y‖² + λ‖W‖², from Gram
  matrices accumulated chunk by chunk (only one block's activations live at a time):
  W' = (HᵀH + λ·mean(diag HᵀH)·I)⁻¹ HᵀY, solved in float64 on the host.
* ``target="dense"``: Y = the dense sub-layer's output on the dense stream (Hᵀ(H_d W_dense) = (HᵀH_d) W_dense,
  the block's own map). ``target="residual"``: Y = dense stream after the sub-layer − the compressed stream
  before it, so x_c + H W' ≈ the dense stream: the consumer also absorbs the drift that earlier blocks left.
* ``which="compressed"`` refits only the consumers whose input width changed; ``which="all"`` every block's o and
  down (uncompressed blocks then correct upstream drift).

Defaults (``target="residual"``, ``which="compressed"``) are the best measured on SmolLM2-135M folded with the
``recipe_mlp`` schedule to 20 % of its parameters, 32 × 512 shakespeare:train tokens (benchmarks/refit_smollm2.py;
perplexity on 8 × 1024 shakespeare:test tokens, dense 38.7, fold 585): residual 69.6, dense 89.5; ``which="all"``
residual 74.8, dense 87.4. The streams are one until the first block that differs, so nothing upstream of the
first compressed block is recomputed.

The forward pass is the model's own :class:`jaxfold.models.llama.Block`, applied alone with a one-block config
of that block's widths (one compilation per distinct width), its consumer inputs read with a Flax method
interceptor as in :mod:`jaxfold.baselines.wanda`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from jaxfold.corrections.registry import CorrectionContext, register_correction
from jaxfold.errors import UserError

TARGETS = ("dense", "residual")
WHICH = ("compressed", "all")
CONSUMERS = ("attn/o", "mlp/down")
DEFAULT_BATCH = 8  # windows per chunk when an (N, T) array is given


def _block_config(cfg: Any, i: int) -> Any:
    """A one-block config with block ``i``'s widths: the jit cache key, so equal widths compile once."""
    return cfg.replace(num_layers=1, num_heads=(cfg.num_heads[i],), num_kv_heads=(cfg.num_kv_heads[i],),
                       intermediate_sizes=(cfg.intermediate_sizes[i],))


def _apply_block(cfg1: Any, params: Any, x: jax.Array) -> tuple[jax.Array, dict[str, tuple[jax.Array, Any]]]:
    """Block output and ``{module path: (input, output)}`` of its o, down and mlp_norm calls (mlp_norm's input is
    the stream between attention and MLP)."""
    from jaxfold.models.llama import Block, rope_tables

    found: dict[str, tuple[jax.Array, Any]] = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        path = "/".join(context.module.path)
        if context.method_name == "__call__" and path in (*CONSUMERS, "mlp_norm"):
            found[path] = (args[0], out)
        return out

    cos, sin = rope_tables(cfg1, jnp.arange(x.shape[1]))
    with nn.intercept_methods(record):
        y, _ = Block(cfg1, 0).apply({"params": params}, x, cos, sin, 0, None)
    return y, found


@functools.partial(jax.jit, static_argnums=0)
def _run_block(cfg1: Any, params: Any, x: jax.Array) -> tuple[jax.Array, ...]:
    """(block output, stream between attention and MLP, attention output, MLP output): one compilation per block
    width serves both models' propagation and the dense targets."""
    y, found = _apply_block(cfg1, params, x)
    return y, found["mlp_norm"][0], found["attn/o"][1], found["mlp/down"][1]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _grams(cfg1: Any, consumer: str, params: Any, x: jax.Array, target: jax.Array,
           residual: jax.Array) -> tuple[jax.Array, ...]:
    """HᵀH, HᵀY and ΣY² for the consumer's input H on stream ``x``, then H and the stream the consumer's output
    is added to; Y = target − residual · that stream, ``residual`` 0 or 1 (traced: both targets share one
    compilation)."""
    _, found = _apply_block(cfg1, params, x)
    h = found[consumer][0]
    before = x if consumer == "attn/o" else found["mlp_norm"][0]
    y = target.astype(jnp.float32) - residual * before.astype(jnp.float32)
    hf = h.reshape(-1, h.shape[-1]).astype(jnp.float32)
    y = y.reshape(-1, y.shape[-1])
    hi = jax.lax.Precision.HIGHEST
    return jnp.dot(hf.T, hf, precision=hi), jnp.dot(hf.T, y, precision=hi), jnp.sum(y * y), h, before


@jax.jit
def _add_projection(stream: jax.Array, h: jax.Array, kernel: jax.Array) -> jax.Array:
    """stream + h·kernel in the model dtype, as the block adds its MLP output."""
    return stream + jnp.dot(h, kernel.astype(h.dtype)).astype(stream.dtype)


def _same(a: Any, b: Any) -> bool:
    """Identical pytrees of arrays (same structure, shapes and values)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return (jax.tree.structure(a) == jax.tree.structure(b)
            and all(np.shape(x) == np.shape(y) and np.array_equal(np.asarray(x), np.asarray(y))
                    for x, y in zip(la, lb, strict=True)))


def ridge_solve(g: np.ndarray, c: np.ndarray, ridge: float) -> np.ndarray:
    """argmin_W tr(WᵀGW) − 2tr(WᵀC) + λ·mean(diag G)·‖W‖² in float64; ``ridge`` 0 gives the minimum-norm
    least-squares solution (G may then be singular)."""
    g, c = np.asarray(g, np.float64), np.asarray(c, np.float64)
    if ridge <= 0:
        return np.linalg.lstsq(g, c, rcond=None)[0]
    reg = ridge * max(float(np.trace(g)) / len(g), np.finfo(np.float64).tiny)
    return scipy.linalg.cho_solve(scipy.linalg.cho_factor(g + reg * np.eye(len(g))), c)


def _fit_error(g: np.ndarray, c: np.ndarray, yy: float, w: np.ndarray) -> float:
    """‖HW − Y‖² / ‖Y‖² from the Gram matrices."""
    err = float(np.sum(w * (g @ w)) - 2.0 * np.sum(w * c) + yy)
    return max(err, 0.0) / max(yy, np.finfo(np.float64).tiny)


def _check_configs(dense: Any, compressed: Any) -> None:
    from jaxfold.models.llama import LlamaConfig

    for name, cfg in (("dense", dense), ("compressed", compressed)):
        if not isinstance(cfg, LlamaConfig):
            raise UserError(f"refit works on LLaMA-style transformers (jaxfold.models.llama.LlamaConfig); the {name} "
                            f"model is a {type(cfg).__name__}: use a variance correction (repair, fold_ar) instead")
    for field in ("num_layers", "hidden_size", "head_dim", "vocab_size"):
        if getattr(dense, field) != getattr(compressed, field):
            raise UserError(f"refit: the compressed model's {field} ({getattr(compressed, field)}) differs from the "
                            f"dense model's ({getattr(dense, field)}); it must be a compression of that model")


def token_batches(windows: Any, vocab_size: int, batch_size: int = DEFAULT_BATCH) -> list[np.ndarray]:
    """The calibration windows as a list of int32 (B, T) batches, checked: an (N, T) integer array is cut into
    batches of ``batch_size`` windows, an iterable of (B, T) integer arrays is taken as it comes."""
    if isinstance(windows, (np.ndarray, jax.Array)) and np.ndim(windows) == 2:
        array = np.asarray(windows)
        windows = [array[i:i + batch_size] for i in range(0, len(array), batch_size)]
    elif isinstance(windows, (np.ndarray, jax.Array)) or not isinstance(windows, Iterable):
        raise UserError(f"refit needs calibration token windows: an (N, T) int array or an iterable of (B, T) int "
                        f"arrays, got {type(windows).__name__} of shape {np.shape(windows)}")
    out = []
    for batch in windows:
        batch = np.asarray(batch)
        if batch.ndim != 2 or batch.dtype.kind not in "iu" or batch.size == 0:
            raise UserError(f"refit needs int token windows of shape (B, T); got a {batch.dtype} array of shape "
                            f"{batch.shape} (image batches or float arrays are not token ids)")
        if batch.min() < 0 or batch.max() >= vocab_size:
            raise UserError(f"refit: token ids must be in [0, {vocab_size}), got [{batch.min()}, {batch.max()}]")
        out.append(batch.astype(np.int32))
    if not out:
        raise UserError("refit got no calibration data: the windows are empty (give token windows, e.g. "
                        "jaxfold.eval.perplexity.windows(model.encode(text), 512)[:32])")
    return out


def refit_with_report(dense_config: Any, dense_variables: Mapping[str, Any], compressed_config: Any,
                      compressed_variables: Mapping[str, Any], windows: Any, *, ridge: float = 1e-3,
                      target: str = "residual", which: str = "compressed",
                      batch_size: int = DEFAULT_BATCH) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`refit_consumers` plus a report: tokens used, and per refitted consumer the relative fit error
    ‖HW − Y‖²/‖Y‖² on the calibration tokens before and after."""
    _check_configs(dense_config, compressed_config)
    if target not in TARGETS:
        raise UserError(f"refit target must be one of {TARGETS}, got {target!r}")
    if which not in WHICH:
        raise UserError(f"refit which must be one of {WHICH}, got {which!r}")
    if ridge < 0:
        raise UserError(f"refit ridge must be ≥ 0, got {ridge}")
    batches = token_batches(windows, dense_config.vocab_size, batch_size)
    residual = target == "residual"
    dparams, cparams = dense_variables["params"], dict(compressed_variables["params"])
    embed_d, embed_c = jnp.asarray(dparams["embed"]["embedding"]), jnp.asarray(cparams["embed"]["embedding"])
    xs_d = [embed_d[jnp.asarray(b)].astype(dense_config.jnp_dtype) for b in batches]
    # the streams are one until the first block that differs (nothing upstream of a compression is recomputed)
    shared = dense_config.dtype == compressed_config.dtype and _same(embed_d, embed_c)
    xs_c = xs_d if shared else [embed_c[jnp.asarray(b)].astype(compressed_config.jnp_dtype) for b in batches]
    fit: dict[str, list[float]] = {}
    for i in range(dense_config.num_layers):
        name = f"block_{i}"
        cfg_d, cfg_c = _block_config(dense_config, i), _block_config(compressed_config, i)
        todo = [c for c, field in zip(CONSUMERS, ("num_heads", "intermediate_sizes"), strict=True)
                if which == "all" or getattr(dense_config, field)[i] != getattr(compressed_config, field)[i]]
        dense_out = [_run_block(cfg_d, dparams[name], x) for x in xs_d]
        xs_d = [out[0] for out in dense_out]
        shared = shared and not todo and _same(dparams[name], cparams[name])
        if shared:
            xs_c = xs_d
            continue
        last = []
        if todo:  # residual: the dense streams after attention and after the MLP; dense: the sub-layers' outputs
            targets = {"attn/o": [out[1 if residual else 2] for out in dense_out],
                       "mlp/down": [out[0 if residual else 3] for out in dense_out]}
            block = dict(cparams[name])
            for consumer in todo:
                g, c, yy, last = 0.0, 0.0, 0.0, []
                for x, t in zip(xs_c, targets[consumer], strict=True):
                    gi, ci, yi, h, before = _grams(cfg_c, consumer, block, x, t, jnp.float32(residual))
                    g, c, yy = g + np.asarray(gi, np.float64), c + np.asarray(ci, np.float64), yy + float(yi)
                    if consumer == "mlp/down":  # the block output is then before + h W': no second pass
                        last.append((before, h))
                module, _, dense_name = consumer.partition("/")
                old = block[module][dense_name]["kernel"]
                new = ridge_solve(g, c, ridge)
                fit[f"{name}/{consumer}"] = [round(_fit_error(g, c, yy, np.asarray(old, np.float64)), 6),
                                             round(_fit_error(g, c, yy, new), 6)]
                sub = dict(block[module])
                sub[dense_name] = {**sub[dense_name], "kernel": jnp.asarray(new, jnp.asarray(old).dtype)}
                block[module] = sub
            cparams[name] = block
            del targets
        del dense_out
        if last:
            kernel = cparams[name]["mlp"]["down"]["kernel"]
            xs_c = [_add_projection(before, h, kernel) for before, h in last]
        elif i + 1 < dense_config.num_layers:
            xs_c = [_run_block(cfg_c, cparams[name], x)[0] for x in xs_c]
        del last
    report = {"tokens": int(sum(b.size for b in batches)), "windows": int(sum(len(b) for b in batches)),
              "target": target, "which": which, "ridge": ridge, "fit": fit}
    return {**compressed_variables, "params": cparams}, report


def refit_consumers(dense_config: Any, dense_variables: Mapping[str, Any], compressed_config: Any,
                    compressed_variables: Mapping[str, Any], windows: Any, *, ridge: float = 1e-3,
                    target: str = "residual", which: str = "compressed",
                    batch_size: int = DEFAULT_BATCH) -> dict[str, Any]:
    """New compressed variables whose consumers (``mlp/down``; ``attn/o`` of blocks with compressed heads) are
    re-solved by ridge regression so each block reproduces the dense one on the calibration ``windows`` (an
    (N, T) int array, cut into batches of ``batch_size``, or an iterable of (B, T) int arrays). See the module
    docstring for ``target`` and ``which``; ``ridge`` is relative to the mean diagonal of HᵀH."""
    return refit_with_report(dense_config, dense_variables, compressed_config, compressed_variables, windows,
                             ridge=ridge, target=target, which=which, batch_size=batch_size)[0]


def block_errors(dense_config: Any, dense_variables: Mapping[str, Any], compressed_config: Any,
                 compressed_variables: Mapping[str, Any], windows: Any,
                 batch_size: int = DEFAULT_BATCH) -> list[float]:
    """Relative error ‖X_c − X_d‖ / ‖X_d‖ of every block's output (each model on its own stream) on ``windows``:
    how far the compressed model has drifted from the dense one, block by block."""
    _check_configs(dense_config, compressed_config)
    batches = token_batches(windows, dense_config.vocab_size, batch_size)
    dparams, cparams = dense_variables["params"], compressed_variables["params"]
    xs_d = [jnp.asarray(dparams["embed"]["embedding"])[b].astype(dense_config.jnp_dtype) for b in batches]
    xs_c = [jnp.asarray(cparams["embed"]["embedding"])[b].astype(compressed_config.jnp_dtype) for b in batches]
    out = []
    for i in range(dense_config.num_layers):
        cfg_d, cfg_c = _block_config(dense_config, i), _block_config(compressed_config, i)
        xs_d = [_run_block(cfg_d, dparams[f"block_{i}"], x)[0] for x in xs_d]
        xs_c = [_run_block(cfg_c, cparams[f"block_{i}"], x)[0] for x in xs_c]
        diff = sum(float(jnp.sum((c.astype(jnp.float32) - d.astype(jnp.float32)) ** 2))
                   for c, d in zip(xs_c, xs_d, strict=True))
        norm = sum(float(jnp.sum(d.astype(jnp.float32) ** 2)) for d in xs_d)
        out.append(float(np.sqrt(diff / max(norm, np.finfo(np.float64).tiny))))
    return out


@register_correction("refit", inputs="tokens", data_free=False,
                     description="re-solve each block's mlp/down (and attn/o of compressed heads) by ridge regression "
                                 "so the compressed block reproduces the dense one on calibration token windows")
def refit(ctx: CorrectionContext) -> dict[str, Any]:
    options = dict(ctx.options)
    unknown = sorted(set(options) - {"ridge", "target", "which", "batch_size"})
    if unknown:
        raise UserError(f"refit options are ridge, target, which, batch_size; got unknown {unknown}")
    variables, report = refit_with_report(ctx.config, ctx.variables, ctx.folded_config, ctx.folded,
                                          ctx.require_data("refit")(), **options)
    ctx.notes.update(calibration_tokens=report["tokens"], calibration_windows=report["windows"], refit=report)
    return variables

