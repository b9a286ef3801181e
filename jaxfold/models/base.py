"""What every model config shares: JSON round trip, a registry by architecture name, shared layer defaults.

A model is described completely by a frozen dataclass whose fields include every foldable width, so a folded
model is *rebuilt* from a config with new widths (``dataclasses.replace``), never patched in place.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfold.errors import UserError
from jaxfold.spec import FoldSpec

# PyTorch defaults, so imported weights behave identically (Flax momentum 0.9 ≙ torch momentum 0.1).
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5
BatchNorm = functools.partial(nn.BatchNorm, momentum=BN_MOMENTUM, epsilon=BN_EPSILON)
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision's kaiming_normal_(fan_out)

_REGISTRY: dict[str, type[ModelConfig]] = {}


def register(cls: type[ModelConfig]) -> type[ModelConfig]:
    _REGISTRY[cls.arch] = cls
    return cls


def _tuplify(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_tuplify(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Base class: subclasses set ``arch`` and implement ``module``, ``param_count`` and ``input_shape``."""

    arch: ClassVar[str] = ""

    def module(self) -> nn.Module:
        raise NotImplementedError

    def param_count(self) -> int:
        """Analytic number of trainable scalars (weights, biases, BN scale/bias; no running stats)."""
        raise NotImplementedError

    def flops(self) -> int:
        """Analytic forward FLOPs per example of the conv and dense layers (2 × multiply-accumulates); BN,
        activations and pooling are not counted, as in the usual model-compression tables."""
        raise NotImplementedError

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example (no batch axis): square NHWC images for every image model here."""
        return (self.image_size, self.image_size, self.in_channels)  # type: ignore[attr-defined]

    def forward_inputs(self, batch_size: int = 1) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Abstract positional and static keyword arguments of an inference forward pass,
        ``module().apply(variables, *args, **kwargs)``: what :mod:`jaxfold.measure` traces to count a model
        without analytic counts. A model whose ``init`` takes other inputs overrides it with ``init``."""
        return (jax.ShapeDtypeStruct((batch_size, *self.input_shape), jnp.float32),), {"train": False}

    def fold_spec(self) -> FoldSpec:
        """The architecture's fold spec (groups of jointly folded axes; see :mod:`jaxfold.spec`)."""
        raise NotImplementedError

    def with_widths(self, widths: Mapping[str, int]) -> ModelConfig:
        """The config of the same architecture with the given group widths (e.g. a fold's new widths)."""
        spec = self.fold_spec()
        d = json.loads(self.to_json())
        for name, width in widths.items():
            group = spec.group(name)
            if not group.config_fields:
                raise ValueError(f"group {name!r} maps to no config field")
            for ref, value in group.field_values(width):
                node = d
                for key in ref[:-1]:
                    node = node[key]
                node[ref[-1]] = value
        return config_from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["arch"] = self.arch
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **{k: _tuplify(v) for k, v in changes.items()})

    def init(self, key: jax.Array, batch_size: int = 1) -> dict[str, Any]:
        """Randomly initialised variables ``{'params': …, 'batch_stats': …}`` as plain dicts."""
        x = jnp.zeros((batch_size, *self.input_shape), jnp.float32)
        module = self.module()
        # Draw with the 'rbg' generator, seeded deterministically from ``key``: XLA compiles a ResNet's
        # threefry-based initialisers in ~15 s on a 2-core CPU, the rbg ones in ~3 s. Same distributions.
        seed = jax.random.randint(key, (), 0, jnp.iinfo(jnp.int32).max)
        rbg = jax.random.key(seed, impl="rbg")
        variables = jax.jit(lambda k: module.init({"params": k, "dropout": k}, x, train=False))(rbg)
        return jax.tree.map(lambda a: a, dict(variables))

    def abstract_variables(self) -> dict[str, Any]:
        """Shapes/dtypes of the variables without allocating them (``jax.eval_shape``)."""
        return jax.eval_shape(lambda k: self.init(k), jax.random.key(0))


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """Rebuild a config from :meth:`ModelConfig.to_dict` output; unknown arch or fields fail with the valid ones."""
    d = dict(d)
    arch = d.pop("arch", None)
    if arch not in _REGISTRY:
        raise UserError(f"unknown model arch {arch!r}; known: {sorted(_REGISTRY)}")
    cls = _REGISTRY[arch]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
        raise UserError(f"{arch} config has unknown fields {unknown}; valid fields: {sorted(fields)}")
    return cls(**{k: _tuplify(v) for k, v in d.items()})


def known_archs() -> list[str]:
    return sorted(_REGISTRY)


def scale(width: int, multiplier: float) -> int:
    """Width after a multiplier, at least 1 (used for quick CPU variants)."""
    return max(1, round(width * multiplier))


def conv_params(cin: int, cout: int, k: int, bias: bool) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def dense_params(cin: int, cout: int, bias: bool = True) -> int:
    return cin * cout + (cout if bias else 0)


def bn_params(c: int) -> int:
    return 2 * c


def conv_out_size(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1
