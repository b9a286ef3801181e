"""Size and cost of any model, read off its arrays and its forward pass rather than an analytic formula.

* :func:`param_count` — trainable scalars: linen's ``params`` collection, NNX's ``nnx.Param`` variables (running
  statistics and other state excluded, as in the zoo's ``cfg.param_count()``; equal to it on every zoo model).
* :func:`matmul_flops` — 2 × multiply-accumulates of every ``dot_general`` and convolution in the traced forward
  pass (a trace, no compilation). With the default ``padding_taps=True`` it counts a convolution's kernel taps on
  its zero padding too: the convention of the zoo's analytic ``cfg.flops()`` and of compression tables, and equal
  to it on every zoo model (``cfg.flops(context=T)`` for a LLaMA fed T tokens).
* :func:`flops` — XLA's own count, ``cost_analysis()['flops']`` of the compiled forward pass, lowered on abstract
  inputs (``jax.ShapeDtypeStruct``: no array is allocated, so a 7B model's shapes cost nothing but the compile).

Why XLA's count differs from the analytic one (docs/benchmarks.md, "Measured size and FLOPs vs the analytic
counts", has the zoo's numbers): XLA also counts 2 flops per multiply-accumulate, but (1) for a convolution only
the taps that land on the input, not on its zero padding — a 3×3 'SAME' convolution on a 4×4 map has 44 of its
144 taps on padding, on a 1×1 map 8 of 9, so small-image CNNs with deep 3×3 stacks count up to 1/4 less;
(2) it adds every elementwise and reduction op the analytic count leaves out: bias adds, inference BatchNorm (3
flops per element: subtract the mean, scale, shift), ReLU, residual adds, pooling, RMSNorm, RoPE, softmax (exp
and rsqrt are *transcendentals*, counted apart and not included); about 4–6 flops per output element of each
conv/dense layer in the unoptimised program; (3) the compiled program is what the backend's passes made of it
(fusion may recompute an elementwise producer in two consumers; XLA:CPU counts up to ~9 per element on a
ResNet50). So ``flops ≥ matmul_flops(padding_taps=False)``, and XLA's count can be below the analytic one on
padded CNNs and above it on models without padding.

Per example: each function divides the count of the whole batch by ``batch_size``, by default the leading axis of
the first example argument. An inference forward pass treats examples independently (BatchNorm uses its running
statistics), so the division is exact for :func:`matmul_flops`; XLA's per-example count falls by ≤ 0.1 % from
batch 1 to 4 (per-channel work such as BatchNorm's scale is shared by the batch). Pass ``batch_size=B * T`` for
per-token counts of a sequence model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from jaxfold import layout
from jaxfold import tree as tree_lib


def param_count(model: Any) -> int:
    """Trainable scalars of linen variables (``{'params': …, 'batch_stats': …}``: the ``params`` collection only),
    an ``nnx.Module`` or an ``nnx.State`` (``nnx.Param`` variables only). Arrays may be abstract (shapes from
    ``jax.eval_shape`` / ``nnx.eval_shape``)."""
    if not layout.is_nnx(model) and isinstance(model, Mapping) and model and layout.TRAINABLE not in model:
        raise ValueError(f"no {layout.TRAINABLE!r} collection among {sorted(model)}: pass linen variables "
                         f"{{'params': …}} (a bare parameter tree as {{'params': tree}}), an nnx.Module or nnx.State")
    return tree_lib.count(layout.trainable(model))


def _abstract(tree: Any) -> Any:
    """Shapes and dtypes only; shardings dropped, so the count is of the whole, unpartitioned program."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype) if hasattr(a, "dtype") else a, tree)


def _batch(example_args: tuple[Any, ...], batch_size: int | None) -> int:
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        return batch_size
    leaves = jax.tree.leaves(example_args)
    if not leaves or not np.shape(leaves[0]):
        return 1
    return int(np.shape(leaves[0])[0])


def cost_flops(cost: Any) -> float:
    """``'flops'`` of a ``cost_analysis()`` result: a dict (JAX ≥ 0.4.32) or a list of dicts, one per program
    (older JAX). XLA leaves out properties that are zero, so a missing key is 0 flops; ``None`` means the backend
    has no cost analysis."""
    if cost is None:
        raise NotImplementedError("this backend provides no XLA cost analysis")
    if isinstance(cost, Mapping):
        return float(cost.get("flops", 0.0))
    return float(sum(c.get("flops", 0.0) for c in cost if c is not None))


def flops(apply_fn: Callable[..., Any], variables: Any, *example_args: Any, batch_size: int | None = None,
          compiled: bool = True, **kwargs: Any) -> float:
    """XLA's forward FLOPs per example of ``apply_fn(variables, *example_args, **kwargs)``.

    ``variables`` and ``example_args`` may be arrays or ``jax.ShapeDtypeStruct``: only their shapes and dtypes are
    used. ``kwargs`` are static (``train=False``). ``compiled=False`` reads the cost analysis of the lowered,
    unoptimised program instead: the same on every backend and no compilation (2–10× faster), but not what runs.
    For an NNX module: ``handle, v = layout.to_variables(model)``, then
    ``flops(lambda v, x: layout.from_variables(handle, v)(x), v, x)``.
    """
    fn = functools.partial(apply_fn, **kwargs) if kwargs else apply_fn
    lowered = jax.jit(fn).lower(_abstract(variables), *_abstract(example_args))
    cost = lowered.compile().cost_analysis() if compiled else lowered.cost_analysis()
    return cost_flops(cost) / _batch(example_args, batch_size)


def matmul_flops(apply_fn: Callable[..., Any], variables: Any, *example_args: Any, batch_size: int | None = None,
                 padding_taps: bool = True, **kwargs: Any) -> float:
    """2 × multiply-accumulates per example of every ``dot_general`` and convolution that
    ``apply_fn(variables, *example_args, **kwargs)`` traces (dense layers, convolutions, embeddings attended,
    attention products); elementwise ops, reductions and gathers are not counted. ``padding_taps=False`` skips a
    convolution's taps on its zero padding, as XLA's cost analysis does. Loops: a ``scan`` counts ``length`` times,
    a ``while`` once (its trip count is unknown), a ``cond`` its costliest branch."""
    fn = functools.partial(apply_fn, **kwargs) if kwargs else apply_fn
    closed = jax.make_jaxpr(fn)(_abstract(variables), *_abstract(example_args))
    return 2 * _macs(closed.jaxpr, padding_taps) / _batch(example_args, batch_size)


def _macs(jaxpr: Any, padding_taps: bool) -> int:
    from jax.extend.core import jaxprs_in_params

    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += _size(eqn.outvars[0].aval.shape) * _size(lhs[d] for d in contracting)
        elif name == "conv_general_dilated":
            total += _conv_macs(eqn, padding_taps)
        inner = [_macs(j, padding_taps) for j in jaxprs_in_params(eqn.params)]
        if inner:
            if name == "cond":
                total += max(inner)
            elif name == "scan":
                total += int(eqn.params["length"]) * sum(inner)
            else:
                total += sum(inner)
    return total


def _size(dims: Any) -> int:
    return int(np.prod(list(dims), dtype=np.int64))


def _conv_macs(eqn: Any, padding_taps: bool) -> int:
    """Batch × output features × input features per group × (output position, kernel tap) pairs, per spatial axis;
    without ``padding_taps`` only the pairs whose tap lands on an input element (with lhs dilation, on a real one
    rather than an inserted zero)."""
    p = eqn.params
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    lhs, rhs, out = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape, eqn.outvars[0].aval.shape
    macs = out[out_spec[0]] * out[out_spec[1]] * rhs[rhs_spec[1]]
    for i, (lo, _) in enumerate(p["padding"]):
        n, k, n_out = lhs[lhs_spec[2 + i]], rhs[rhs_spec[2 + i]], out[out_spec[2 + i]]
        if padding_taps:
            macs *= n_out * k
            continue
        stride, dilation, lhs_dilation = p["window_strides"][i], p["rhs_dilation"][i], p["lhs_dilation"][i]
        pos = np.arange(n_out)[:, None] * stride - lo + np.arange(k)[None, :] * dilation
        macs *= int(np.sum((pos >= 0) & (pos <= (n - 1) * lhs_dilation) & (pos % lhs_dilation == 0)))
    return int(macs)


def config_forward(config: Any, batch_size: int = 1) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """``(apply_fn, example_args)`` of a zoo-style config's inference forward pass, abstract: the config's
    ``forward_inputs(batch_size)`` (one ``(B, *input_shape)`` float32 batch and ``train=False`` for image models,
    one token per sequence for LLaMA) applied to ``module().apply``."""
    args, kwargs = config.forward_inputs(batch_size)
    module = config.module()
    return functools.partial(module.apply, **kwargs), args


def config_param_count(config: Any) -> int:
    """Measured :func:`param_count` of a config's abstract variables (nothing allocated)."""
    return param_count(config.abstract_variables())


def config_counts(config: Any) -> dict[str, Any]:
    """``{'params', 'flops', 'params_counted', 'flops_counted'}`` of a config: its analytic ``param_count()`` and
    ``flops()`` ('analytic'), or where it has none (``NotImplementedError``) :func:`config_param_count`
    ('measured') and :func:`config_flops` ('traced': the same conv/dense convention, a trace rather than XLA's
    compile; the measured ones are cached per config)."""
    out: dict[str, Any] = {}
    for name, analytic, measured in (("params", "param_count", config_param_count), ("flops", "flops", config_flops)):
        try:
            out[name], out[f"{name}_counted"] = getattr(config, analytic)(), "analytic"
        except NotImplementedError:
            out[name], out[f"{name}_counted"] = _cached(measured, config), "measured" if name == "params" else "traced"
    return out


@functools.lru_cache(maxsize=64)
def _cached_call(fn: Callable[[Any], Any], config: Any) -> Any:
    return fn(config)


def _cached(fn: Callable[[Any], Any], config: Any) -> Any:
    try:
        hash(config)
    except TypeError:  # a config with unhashable fields: measured every time
        return fn(config)
    return _cached_call(fn, config)


def config_flops(config: Any, *, xla: bool = False, compiled: bool = True) -> float:
    """Forward FLOPs per example of a config at batch 1, on abstract variables: :func:`matmul_flops` (the
    analytic convention; a trace) or with ``xla=True`` XLA's :func:`flops` (a compile unless ``compiled=False``)."""
    apply_fn, args = config_forward(config)
    variables = config.abstract_variables()
    if xla:
        return flops(apply_fn, variables, *args, compiled=compiled)
    return matmul_flops(apply_fn, variables, *args)
