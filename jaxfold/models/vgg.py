"""VGG11-BN (torchvision layout) with an ImageNet head (7×7 adaptive pool, 4096-4096 classifier) or a
CIFAR head (1×1 pool, small classifier).

Foldable widths: every conv's ``conv_widths`` entry and every hidden classifier layer's ``classifier_widths``
entry. Max-pools use ceil mode ('SAME'), so 28×28 inputs (Fashion-MNIST) go 28→14→7→4→2→1; on even sizes
(32, 224) this equals PyTorch's floor mode. With ``pool_size`` p the first classifier layer reads channel c at the
p² spatial positions of the NHWC flatten, where the channel is the fastest axis.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from jaxfold.errors import UserError
from jaxfold.models.base import BatchNorm, ModelConfig, bn_params, conv_init, conv_params, dense_params, register
from jaxfold.models.base import scale as scale_width
from jaxfold.spec import FoldSpec, Group, batchnorm, conv_in, conv_out, conv_window, dense_in, dense_out

VGG11_LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def adaptive_avg_pool(x: jnp.ndarray, out: int) -> jnp.ndarray:
    """PyTorch ``AdaptiveAvgPool2d(out)`` on NHWC: bin i spans [floor(i·H/out), ceil((i+1)·H/out))."""
    h, w = x.shape[1:3]
    if (h, w) == (out, out):
        return x
    rows = []
    for i in range(out):
        r0, r1 = (i * h) // out, -(-((i + 1) * h) // out)
        cols = []
        for j in range(out):
            c0, c1 = (j * w) // out, -(-((j + 1) * w) // out)
            cols.append(jnp.mean(x[:, r0:r1, c0:c1, :], axis=(1, 2)))
        rows.append(jnp.stack(cols, axis=1))
    return jnp.stack(rows, axis=1)


@dataclasses.dataclass(frozen=True)
class VGGConfig(ModelConfig):
    arch = "vgg"

    in_channels: int = 3
    num_classes: int = 10
    image_size: int = 32
    conv_widths: tuple[int, ...] = (64, 128, 256, 256, 512, 512, 512, 512)
    pools_after: tuple[int, ...] = (0, 1, 3, 5, 7)  # indices of convs followed by a 2×2 max-pool
    pool_size: int = 1  # adaptive average pool output side before the classifier (torchvision: 7)
    classifier_widths: tuple[int, ...] = (512, 512)  # hidden Linear widths (torchvision: 4096, 4096)
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if not self.conv_widths or any(i >= len(self.conv_widths) for i in self.pools_after):
            raise UserError(f"pools_after {self.pools_after} must index into conv_widths {self.conv_widths}")

    def module(self) -> nn.Module:
        return VGG(self)

    def fold_spec(self) -> FoldSpec:
        """One group per conv and per hidden Linear. The last conv's consumer is the first Linear, which reads
        channel c at every one of the pool_size² positions of the NHWC flatten (interleaved, channel fastest)."""
        groups, unfoldable = [], [("params/features_0/kernel", 2)]
        n_conv, n_fc = len(self.conv_widths), len(self.classifier_widths)
        for i in range(n_conv):
            consumer = conv_in(f"features_{i + 1}") if i + 1 < n_conv else dense_in("classifier_0", self.pool_size**2)
            groups.append(Group(f"conv{i}", tuple(conv_out(f"features_{i}", bias=True) + batchnorm(f"bn_{i}")
                                                  + consumer), (("conv_widths", i),)))
            unfoldable += conv_window(f"features_{i}")
        for j in range(n_fc):
            groups.append(Group(f"fc{j}", tuple(dense_out(f"classifier_{j}") + dense_in(f"classifier_{j + 1}")),
                                (("classifier_widths", j),)))
        unfoldable += [(f"params/classifier_{n_fc}/kernel", 1), (f"params/classifier_{n_fc}/bias", 0)]
        norms = tuple((f"features_{i}", f"bn_{i}") for i in range(n_conv))
        return FoldSpec(tuple(groups), tuple(unfoldable), norms)

    def flops(self) -> int:
        macs, cin, s = 0, self.in_channels, self.image_size
        for i, w in enumerate(self.conv_widths):
            macs += s * s * 9 * cin * w
            cin = w
            if i in self.pools_after:
                s = -(-s // 2)  # ceil-mode pool
        cin *= self.pool_size**2
        for w in (*self.classifier_widths, self.num_classes):
            macs += cin * w
            cin = w
        return 2 * macs

    def param_count(self) -> int:
        total, cin = 0, self.in_channels
        for w in self.conv_widths:
            total += conv_params(cin, w, 3, True) + bn_params(w)
            cin = w
        cin *= self.pool_size**2
        for w in (*self.classifier_widths, self.num_classes):
            total += dense_params(cin, w)
            cin = w
        return total


def vgg11_bn(head: str = "cifar", in_channels: int = 3, num_classes: int = 10, width: float = 1.0,
             image_size: int | None = None, dropout: float | None = None) -> VGGConfig:
    """``head='imagenet'`` is torchvision's ``vgg11_bn`` (the paper's CIFAR VGG too, at num_classes=10);
    ``head='cifar'`` is the compact 1×1-pool head used for quick CPU runs. ``width`` scales every conv width
    and the hidden classifier widths."""
    convs = tuple(scale_width(c, width) for c in VGG11_LAYOUT if c != "M")
    if head == "imagenet":
        pool, hidden = 7, (scale_width(4096, width),) * 2
    elif head == "cifar":
        pool, hidden = 1, (scale_width(512, width),) * 2
    else:
        raise UserError(f"head must be 'cifar' or 'imagenet', got {head!r}")
    return VGGConfig(in_channels=in_channels, num_classes=num_classes,
                     image_size=image_size or (224 if head == "imagenet" else 32), conv_widths=convs,
                     pool_size=pool, classifier_widths=hidden,
                     dropout=dropout if dropout is not None else (0.5 if head == "imagenet" else 0.0))


register(VGGConfig)


class VGG(nn.Module):
    """Parameter names: ``features_{i}`` / ``bn_{i}`` per conv, ``classifier_{j}`` per Linear."""

    config: VGGConfig

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        cfg = self.config
        for i, w in enumerate(cfg.conv_widths):
            x = nn.Conv(w, (3, 3), padding=((1, 1), (1, 1)), kernel_init=conv_init, name=f"features_{i}")(x)
            x = nn.relu(BatchNorm(use_running_average=not train, name=f"bn_{i}")(x))
            if i in cfg.pools_after:
                x = nn.max_pool(x, (2, 2), (2, 2), padding="SAME")
        x = adaptive_avg_pool(x, cfg.pool_size)
        x = x.reshape(x.shape[0], -1)  # NHWC flatten: channel fastest
        for j, w in enumerate(cfg.classifier_widths):
            x = nn.relu(nn.Dense(w, name=f"classifier_{j}")(x))
            if cfg.dropout > 0:
                x = nn.Dropout(cfg.dropout, deterministic=not train)(x)
        return nn.Dense(cfg.num_classes, name=f"classifier_{len(cfg.classifier_widths)}")(x)
