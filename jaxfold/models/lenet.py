"""LeNet-5 (the paper's edge-device model on Fashion-MNIST): two 5×5 convs with max-pools, three Linears.

28×28 inputs pad the first conv by 2 (classic LeNet on MNIST), 32×32 inputs use none; both give 5×5×c2 maps.
Foldable widths: ``conv_widths`` (2) and ``fc_widths`` (2 hidden Linears).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from jaxfold.errors import UserError
from jaxfold.models.base import ModelConfig, conv_params, dense_params, register
from jaxfold.models.base import scale as scale_width
from jaxfold.spec import FoldSpec, Group, conv_in, conv_out, conv_window, dense_in, dense_out


@dataclasses.dataclass(frozen=True)
class LeNetConfig(ModelConfig):
    arch = "lenet"

    in_channels: int = 1
    num_classes: int = 10
    image_size: int = 28
    conv_widths: tuple[int, int] = (6, 16)
    fc_widths: tuple[int, int] = (120, 84)

    def __post_init__(self) -> None:
        if self.image_size not in (28, 32):
            raise UserError(f"LeNet5 takes 28×28 or 32×32 inputs, got image_size={self.image_size}")

    def module(self) -> nn.Module:
        return LeNet5(self)

    def fold_spec(self) -> FoldSpec:
        """conv2's channels reach fc1 at 5×5 positions of the NHWC flatten (interleaved, channel fastest)."""
        groups = (
            Group("conv1", tuple(conv_out("conv1", bias=True) + conv_in("conv2")), (("conv_widths", 0),)),
            Group("conv2", tuple(conv_out("conv2", bias=True) + dense_in("fc1", repeat=25)), (("conv_widths", 1),)),
            Group("fc1", tuple(dense_out("fc1") + dense_in("fc2")), (("fc_widths", 0),)),
            Group("fc2", tuple(dense_out("fc2") + dense_in("fc3")), (("fc_widths", 1),)),
        )
        unfoldable = [("params/conv1/kernel", 2), ("params/fc3/kernel", 1), ("params/fc3/bias", 0)]
        return FoldSpec(groups, tuple(unfoldable + conv_window("conv1") + conv_window("conv2")))

    def flops(self) -> int:
        c1, c2 = self.conv_widths
        f1, f2 = self.fc_widths
        macs = 28 * 28 * 25 * self.in_channels * c1 + 10 * 10 * 25 * c1 * c2  # both input sizes give 28×28, 10×10
        return 2 * (macs + 25 * c2 * f1 + f1 * f2 + f2 * self.num_classes)

    def param_count(self) -> int:
        c1, c2 = self.conv_widths
        f1, f2 = self.fc_widths
        return (conv_params(self.in_channels, c1, 5, True) + conv_params(c1, c2, 5, True)
                + dense_params(c2 * 25, f1) + dense_params(f1, f2) + dense_params(f2, self.num_classes))


def lenet5(in_channels: int = 1, num_classes: int = 10, width: float = 1.0, image_size: int = 28) -> LeNetConfig:
    return LeNetConfig(in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                       conv_widths=(scale_width(6, width), scale_width(16, width)),
                       fc_widths=(scale_width(120, width), scale_width(84, width)))


register(LeNetConfig)


class LeNet5(nn.Module):
    config: LeNetConfig

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        cfg = self.config
        pad = (32 - cfg.image_size) // 2
        x = nn.relu(nn.Conv(cfg.conv_widths[0], (5, 5), padding=((pad, pad), (pad, pad)), name="conv1")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(cfg.conv_widths[1], (5, 5), padding="VALID", name="conv2")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(cfg.fc_widths[0], name="fc1")(x))
        x = nn.relu(nn.Dense(cfg.fc_widths[1], name="fc2")(x))
        return nn.Dense(cfg.num_classes, name="fc3")(x)
