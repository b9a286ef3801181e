"""Flax NNX: fold an ``nnx.Module`` directly and get a new ``nnx.Module`` at the new widths.

The module is seen as linen-style variables by :mod:`jaxfold.layout` (``nnx.Param`` → ``params``,
``nnx.BatchStat`` → ``batch_stats``: running statistics are not clustering features, and corrections find
BatchNorms there), and folding is :func:`~jaxfold.trace.traced_fold.fold_traced` on that view. The new module
is the graph merged with the folded state, and the width attributes of the standard layers are set from their
new arrays so that they behave like freshly constructed ones (a stale ``num_heads`` or ``feature_group_count``
is the classic bug of NNX surgery). The new module is checked against the re-evaluated program on the example
input; a module whose own attributes we cannot update is not returned (``module`` is None and ``module_note``
says why) and the result's ``apply_fn`` runs the folded model instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxfold import layout
from jaxfold.plans import Plan
from jaxfold.result import Compressed
from jaxfold.trace.traced_fold import fold_traced


def _shape(variable: Any) -> tuple[int, ...]:
    return tuple(np.shape(variable.get_value() if hasattr(variable, "get_value") else variable.value))


def _update_linear(m: Any, old: Any) -> None:
    m.in_features, m.out_features = _shape(m.kernel)


def _update_linear_general(m: Any, old: Any) -> None:
    shape = _shape(m.kernel)
    n_in = len(m.in_features) if isinstance(m.in_features, tuple) else 1
    m.in_features = shape[:n_in] if isinstance(m.in_features, tuple) else shape[0]
    m.out_features = shape[n_in:] if isinstance(m.out_features, tuple) else shape[-1]


def _update_conv(m: Any, old: Any) -> None:
    shape = _shape(m.kernel)
    groups = old.feature_group_count
    if groups > 1 and groups == old.in_features:  # depthwise: one group per input channel, multiplier kept
        groups = shape[-1] * old.in_features // old.out_features
    m.feature_group_count = groups
    m.kernel_shape = shape
    m.in_features, m.out_features = shape[-2] * groups, shape[-1]


def _update_norm(m: Any, old: Any) -> None:
    for name in ("scale", "bias", "mean", "var"):
        variable = getattr(m, name, None)
        if variable is not None:
            m.num_features = _shape(variable)[0]
            return


def _update_embed(m: Any, old: Any) -> None:
    m.num_embeddings, m.features = _shape(m.embedding)


def _update_attention(m: Any, old: Any) -> None:
    in_features, heads, head_dim = _shape(m.query.kernel)
    m.num_heads, m.head_dim, m.qkv_features = heads, head_dim, heads * head_dim
    m.in_features = in_features
    m.in_kv_features = _shape(m.key.kernel)[0]
    m.out_features = _shape(m.out.kernel)[-1]


# nnx layer type → how its width attributes follow its arrays (extend for your own layers)
WIDTH_UPDATERS: dict[type, Callable[[Any, Any], None]] = {
    nnx.Linear: _update_linear, nnx.LinearGeneral: _update_linear_general, nnx.Conv: _update_conv,
    nnx.BatchNorm: _update_norm, nnx.LayerNorm: _update_norm, nnx.RMSNorm: _update_norm,
    nnx.GroupNorm: _update_norm, nnx.Embed: _update_embed, nnx.MultiHeadAttention: _update_attention,
}


def _rebuilt_module(handle: Any, original: nnx.Module, variables: dict[str, Any]
                    ) -> tuple[nnx.Module, list[str]]:
    new = layout.from_variables(handle, variables)
    old_modules = dict(nnx.iter_modules(original))
    unknown = []
    for path, m in nnx.iter_modules(new):
        updater = next((fn for cls, fn in WIDTH_UPDATERS.items() if type(m) is cls), None)
        if updater is not None:
            updater(m, old_modules[path])
        elif path and type(m).__module__.split(".")[0] != "flax":
            unknown.append("/".join(map(str, path)) + f" ({type(m).__name__})")
    return new, unknown


def _same(a: Any, b: Any) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(
        np.shape(x) == np.shape(y) and np.allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                                                   rtol=1e-4, atol=1e-5)
        for x, y in zip(la, lb, strict=True))


def fold_nnx(module: nnx.Module, plan: Plan, key: jax.Array, *example_args: Any, **fold_options: Any
             ) -> Compressed:
    """Fold an ``nnx.Module`` (untouched) and return the result with ``.module``, a new module at the new widths.

    ``fold_options`` are :func:`~jaxfold.trace.traced_fold.fold_traced`'s (rules, unfoldable, overrides, verify,
    clusterer, n_init, …). Group names and paths are the module's attribute paths under ``params/``.
    """
    if not isinstance(module, nnx.Module):
        raise TypeError(f"fold_nnx takes an nnx.Module; got {type(module).__name__} (for linen, use fold_traced("
                        "module.apply, variables, plan, key, *example_args))")
    handle, variables = layout.to_variables(module)
    result = fold_traced(lambda v, *a: layout.from_variables(handle, v)(*a), variables, plan, key, *example_args,
                         **fold_options)
    note = None
    try:
        new, unknown = _rebuilt_module(handle, module, result.variables)
        expected = result.apply_fn(result.variables, *example_args)
        if not _same(new(*example_args), expected):
            new = None
            note = ("the rebuilt module does not reproduce the folded program"
                    + (f"; modules whose width attributes jaxfold cannot update: {unknown}" if unknown else "")
                    + " — use result.apply_fn(result.variables, *args), or register an updater in "
                    "jaxfold.trace.nnx_fold.WIDTH_UPDATERS")
    except Exception as e:  # a module that cannot even run at the new widths: the traced function still can
        new, note = None, (f"the rebuilt module failed at the new widths ({type(e).__name__}: {e}); use "
                           "result.apply_fn(result.variables, *args)")
    return result.replace(module=new, module_note=note)
