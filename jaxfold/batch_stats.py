"""BatchNorm statistics of a forward pass, read with a Flax method interceptor: any Flax model works unchanged.

Every ``nn.BatchNorm`` call is intercepted and the mean and biased variance of its *input* over the non-feature
axes are recorded (differentiably), keyed by the module path (``"layer1_0/bn1"``, the key under
``batch_stats``). In train mode these are exactly the statistics the BN normalises with — what REPAIR averages
over data; in eval mode they are what DeepInversion matches to the running statistics.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfold import tree as tree_lib

Stats = dict[str, tuple[jax.Array, jax.Array]]


def forward_with_bn_statistics(module: nn.Module, variables: dict[str, Any], x: jax.Array,
                               train: bool) -> tuple[jax.Array, Stats]:
    """Logits and ``{bn path: (mean, biased var)}`` of every BN's input, in forward order."""
    stats: Stats = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
            h = jnp.asarray(args[0], jnp.float32)
            axis = context.module.axis
            feature_axes = {a % h.ndim for a in ((axis,) if isinstance(axis, int) else axis)}
            reduce = tuple(a for a in range(h.ndim) if a not in feature_axes)
            stats["/".join(context.module.path)] = (jnp.mean(h, axis=reduce), jnp.var(h, axis=reduce))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        if train:
            logits, _ = module.apply(variables, x, train=True, mutable=["batch_stats"],
                                     rngs={"dropout": jax.random.key(0)})
        else:
            logits = module.apply(variables, x, train=False)
    return logits, stats


def batch_statistics(module: nn.Module, variables: dict[str, Any], x: jax.Array) -> Stats:
    """Per-BN batch statistics of a train-mode pass: every BN normalises with its own batch, as in training."""
    return forward_with_bn_statistics(module, variables, x, train=True)[1]


def running_statistics(variables: dict[str, Any]) -> Stats:
    """``{bn path: (running mean, running var)}`` from ``variables['batch_stats']``."""
    flat = tree_lib.flatten(variables.get("batch_stats", {}))
    return {p[: -len("/mean")]: (flat[p], flat[p[: -len("mean")] + "var"]) for p in flat if p.endswith("/mean")}


def batchnorm_epsilons(module: nn.Module, variables: dict[str, Any], input_shape: tuple[int, ...]) -> dict[str, float]:
    """The ε of every BatchNorm (abstract pass, nothing computed): fusing BN into a kernel must use the model's."""
    found: dict[str, float] = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
            found["/".join(context.module.path)] = float(context.module.epsilon)
        return next_fun(*args, **kwargs)

    def run(v: Any) -> Any:
        with nn.intercept_methods(record):
            return module.apply(v, jnp.zeros((1, *input_shape), jnp.float32), train=False)

    jax.eval_shape(run, variables)
    return found
