"""MLP with BatchNorm — the paper's width-scaling model: ``len(hidden_widths)`` × [Linear–BN–ReLU] + classifier.

Each hidden layer's width is its own config field entry, so folded MLPs may have unequal hidden widths.
"""

from __future__ import annotations

import dataclasses
import itertools

import flax.linen as nn
import jax.numpy as jnp

from jaxfold.models.base import BatchNorm, ModelConfig, bn_params, dense_params, register
from jaxfold.models.base import scale as scale_width
from jaxfold.spec import FoldSpec, Group, batchnorm, dense_in, dense_out


@dataclasses.dataclass(frozen=True)
class MLPConfig(ModelConfig):
    arch = "mlp"

    in_channels: int = 3
    num_classes: int = 10
    image_size: int = 32
    hidden_widths: tuple[int, ...] = (512, 512, 512)

    def module(self) -> nn.Module:
        return MLP(self)

    def fold_spec(self) -> FoldSpec:
        n = len(self.hidden_widths)
        names = [f"fc{i}" for i in range(n)] + ["classifier"]
        groups = tuple(Group(f"hidden{i}", tuple(dense_out(names[i]) + batchnorm(f"bn{i}") + dense_in(names[i + 1])),
                             (("hidden_widths", i),)) for i in range(n))
        return FoldSpec(groups, (("params/fc0/kernel", 0), ("params/classifier/kernel", 1),
                                 ("params/classifier/bias", 0)), tuple((names[i], f"bn{i}") for i in range(n)))

    def flops(self) -> int:
        widths = (self.image_size**2 * self.in_channels, *self.hidden_widths, self.num_classes)
        return 2 * sum(a * b for a, b in itertools.pairwise(widths))

    def param_count(self) -> int:
        total, cin = 0, self.image_size**2 * self.in_channels
        for w in self.hidden_widths:
            total += dense_params(cin, w) + bn_params(w)
            cin = w
        return total + dense_params(cin, self.num_classes)


def mlp(in_channels: int = 3, num_classes: int = 10, width: float = 1.0, image_size: int = 32,
        hidden: int = 512, depth: int = 3) -> MLPConfig:
    """``width`` 1/2/3 gives the paper's 1×/2×/3× MLPs (hidden 512·width)."""
    return MLPConfig(in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                     hidden_widths=(scale_width(hidden, width),) * depth)


register(MLPConfig)


class MLP(nn.Module):
    config: MLPConfig

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = x.reshape(x.shape[0], -1)
        for i, w in enumerate(self.config.hidden_widths):
            x = nn.Dense(w, name=f"fc{i}")(x)
            x = nn.relu(BatchNorm(use_running_average=not train, name=f"bn{i}")(x))
        return nn.Dense(self.config.num_classes, name="classifier")(x)
