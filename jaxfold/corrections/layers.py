"""Where a model's per-channel activations live, read off its fold spec: every producer module of a group either
feeds a BatchNorm (``spec.norms``) or is read directly (BN-free Dense/Conv layers). The variance-ratio diagnostic
and REPAIR both walk these layers in forward order (the norm pairs, then the BN-free producers, each list in spec
order)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxfold.spec import FoldSpec, Member


@dataclasses.dataclass(frozen=True)
class Layer:
    group: str  # the group whose channels are this layer's output channels
    producer: Member  # the kernel member producing them
    module: str  # module whose output is measured: the BN when there is one, else the producer itself
    normalized: bool  # True when ``module`` is a BatchNorm

    @property
    def producer_module(self) -> str:
        return self.producer.path.removeprefix("params/").removesuffix("/kernel")


def layers(spec: FoldSpec) -> list[Layer]:
    norm_of = dict(spec.norms)
    found: list[Layer] = []
    for group in spec.groups:
        for m in group.members:
            if m.role == "producer" and m.path.endswith("/kernel"):
                module = m.path.removeprefix("params/").removesuffix("/kernel")
                bn = norm_of.get(module)
                found.append(Layer(group.name, m, bn or module, bn is not None))
    order = {bn: i for i, (_, bn) in enumerate(spec.norms)}
    return sorted(found, key=lambda layer: (not layer.normalized, order.get(layer.module, 0)))


def capture(module: Any, variables: dict[str, Any], x: jax.Array, names: Sequence[str]) -> dict[str, jax.Array]:
    """Eval-mode outputs of the named submodules (paths like ``"layer1_0/bn1"``) for input ``x``."""
    wanted = set(names)

    def keep(mdl: Any, method: str) -> bool:
        return method == "__call__" and "/".join(mdl.scope.path) in wanted

    _, state = module.apply(variables, x, train=False, capture_intermediates=keep, mutable=["intermediates"])
    out: dict[str, jax.Array] = {}

    def walk(node: Any, prefix: tuple[str, ...]) -> None:
        for key, value in node.items():
            if key == "__call__":
                out["/".join(prefix)] = value[0]
            else:
                walk(value, (*prefix, key))

    walk(state["intermediates"], ())
    missing = wanted - set(out)
    if missing:
        raise ValueError(f"no module output captured for {sorted(missing)}: the spec names modules the model lacks")
    return out


def channel_moments(activation: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel (last axis) mean and biased variance over every other axis."""
    axes = tuple(range(activation.ndim - 1))
    a = activation.astype(jnp.float32)
    return a.mean(axes), a.var(axes)


@functools.cache
def moments_fn(config: Any, modules: tuple[str, ...]) -> Callable[[Any, jax.Array], dict[str, tuple]]:
    """A jitted ``(variables, x) -> {module: (per-channel mean, variance)}`` of eval-mode outputs, one per
    (config, modules), so repeated measurements (REPAIR's layer-by-layer pass, sweeps) compile once."""
    module = config.module()
    return jax.jit(lambda v, x: {m: channel_moments(a) for m, a in capture(module, v, x, modules).items()})
