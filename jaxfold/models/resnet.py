"""ResNet18/50 with a CIFAR stem (3×3 conv, no max-pool — the paper's variant) or the ImageNet stem.

Every foldable width is a config field: ``stem_width``, one ``stream_widths`` entry per stage (the residual
stream that every block of the stage reads and writes) and ``inner_widths`` per block (1 for a basic block, 2 for
a bottleneck). Which blocks carry a projection shortcut is fixed structure (``projections``), decided once from
the dense architecture, so folding that happens to equalise two widths never changes the graph.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxfold.errors import UserError
from jaxfold.models.base import (
    BatchNorm,
    ModelConfig,
    bn_params,
    conv_init,
    conv_out_size,
    conv_params,
    dense_params,
    register,
)
from jaxfold.models.base import scale as scale_width
from jaxfold.spec import FoldSpec, Group, Member, batchnorm, conv_in, conv_out, conv_window, dense_in

_STAGE_PLANES = (64, 128, 256, 512)
_EXPANSION = {"basic": 1, "bottleneck": 4}


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    # Symmetric padding as in PyTorch; Flax's "SAME" pads stride-2 convs asymmetrically, which breaks parity.
    return ((k // 2, k // 2), (k // 2, k // 2))


@dataclasses.dataclass(frozen=True)
class ResNetConfig(ModelConfig):
    arch = "resnet"

    block: str = "basic"  # "basic" (ResNet18/34) or "bottleneck" (ResNet50+)
    layers: tuple[int, ...] = (2, 2, 2, 2)
    stem: str = "cifar"  # "cifar": 3×3 s1, no max-pool; "imagenet": 7×7 s2 + 3×3 max-pool
    in_channels: int = 3
    num_classes: int = 10
    image_size: int = 32
    stem_width: int = 64
    stream_widths: tuple[int, ...] = (64, 128, 256, 512)
    inner_widths: tuple[tuple[int, ...], ...] = ((64,), (64,), (128,), (128,), (256,), (256,), (512,), (512,))
    projections: tuple[bool, ...] = (False, False, True, False, True, False, True, False)

    def __post_init__(self) -> None:
        if self.block not in _EXPANSION:
            raise UserError(f"block must be 'basic' or 'bottleneck', got {self.block!r}")
        if self.stem not in ("cifar", "imagenet"):
            raise UserError(f"stem must be 'cifar' or 'imagenet', got {self.stem!r}")
        n_blocks = sum(self.layers)
        n_inner = 1 if self.block == "basic" else 2
        if len(self.stream_widths) != len(self.layers):
            raise UserError(f"stream_widths needs {len(self.layers)} entries (one per stage), "
                            f"got {self.stream_widths}")
        if len(self.inner_widths) != n_blocks or any(len(w) != n_inner for w in self.inner_widths):
            raise UserError(f"inner_widths needs {n_blocks} tuples of {n_inner} widths, got {self.inner_widths}")
        if len(self.projections) != n_blocks:
            raise UserError(f"projections needs {n_blocks} booleans, got {self.projections}")
        for (cin, cout, _, proj), name in zip(self._block_io(), self.block_names(), strict=True):
            if not proj and cin != cout:
                raise UserError(f"{name} has an identity shortcut but input width {cin} != output width {cout}")

    def block_names(self) -> list[str]:
        return [f"layer{s + 1}_{b}" for s, n in enumerate(self.layers) for b in range(n)]

    def _block_io(self) -> list[tuple[int, int, int, bool]]:
        """(input width, output width, stride, projection) per block."""
        out, cin, i = [], self.stem_width, 0
        for s, n in enumerate(self.layers):
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                out.append((cin, self.stream_widths[s], stride, self.projections[i]))
                cin, i = self.stream_widths[s], i + 1
        return out

    def module(self) -> nn.Module:
        return ResNet(self)

    def fold_spec(self) -> FoldSpec:
        return fold_spec(self)

    def flops(self) -> int:
        s = self.image_size
        if self.stem == "cifar":
            macs = s * s * 9 * self.in_channels * self.stem_width
        else:
            s = conv_out_size(s, 7, 2, 3)
            macs = s * s * 49 * self.in_channels * self.stem_width
            s = conv_out_size(s, 3, 2, 1)
        for (cin, cout, stride, proj), inner in zip(self._block_io(), self.inner_widths, strict=True):
            out = conv_out_size(s, 3, stride, 1)
            if self.block == "basic":
                macs += out * out * 9 * (cin * inner[0] + inner[0] * cout)
            else:
                macs += s * s * cin * inner[0] + out * out * (9 * inner[0] * inner[1] + inner[1] * cout)
            if proj:
                macs += out * out * cin * cout
            s = out
        return 2 * (macs + self.stream_widths[-1] * self.num_classes)

    def param_count(self) -> int:
        k = 3 if self.stem == "cifar" else 7
        total = conv_params(self.in_channels, self.stem_width, k, False) + bn_params(self.stem_width)
        for (cin, cout, _, proj), inner in zip(self._block_io(), self.inner_widths, strict=True):
            if self.block == "basic":
                (w,) = inner
                total += conv_params(cin, w, 3, False) + bn_params(w) + conv_params(w, cout, 3, False) + bn_params(cout)
            else:
                w1, w2 = inner
                total += conv_params(cin, w1, 1, False) + bn_params(w1)
                total += conv_params(w1, w2, 3, False) + bn_params(w2)
                total += conv_params(w2, cout, 1, False) + bn_params(cout)
            if proj:
                total += conv_params(cin, cout, 1, False) + bn_params(cout)
        return total + dense_params(self.stream_widths[-1], self.num_classes)


def _make(block: str, layers: Sequence[int], stem: str, in_channels: int, num_classes: int, width: float,
          image_size: int | None) -> ResNetConfig:
    exp = _EXPANSION[block]
    planes = [scale_width(p, width) for p in _STAGE_PLANES]
    stem_width = scale_width(64, width)
    streams = tuple(p * exp for p in planes)
    inner, proj, cin = [], [], stem_width
    for s, n in enumerate(layers):
        for b in range(n):
            stride = 2 if (s > 0 and b == 0) else 1
            inner.append((planes[s],) if block == "basic" else (planes[s], planes[s]))
            proj.append(stride != 1 or cin != streams[s])  # torchvision/kuangliu rule, evaluated once, densely
            cin = streams[s]
    return ResNetConfig(block=block, layers=tuple(layers), stem=stem, in_channels=in_channels,
                        num_classes=num_classes, image_size=image_size or (32 if stem == "cifar" else 224),
                        stem_width=stem_width, stream_widths=streams, inner_widths=tuple(inner),
                        projections=tuple(proj))


def resnet18(stem: str = "cifar", in_channels: int = 3, num_classes: int = 10, width: float = 1.0,
             image_size: int | None = None) -> ResNetConfig:
    return _make("basic", (2, 2, 2, 2), stem, in_channels, num_classes, width, image_size)


def resnet50(stem: str = "cifar", in_channels: int = 3, num_classes: int = 10, width: float = 1.0,
             image_size: int | None = None) -> ResNetConfig:
    return _make("bottleneck", (3, 4, 6, 3), stem, in_channels, num_classes, width, image_size)


register(ResNetConfig)


class Block(nn.Module):
    """Basic (two 3×3) or bottleneck (1×1, 3×3, 1×1) residual block; torchvision v1.5 stride placement."""

    kind: str
    inner: tuple[int, ...]
    out_width: int
    stride: int
    projection: bool

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        bn = lambda name: BatchNorm(use_running_average=not train, name=name)
        if self.kind == "basic":
            convs = [(self.inner[0], 3, self.stride), (self.out_width, 3, 1)]
        else:
            convs = [(self.inner[0], 1, 1), (self.inner[1], 3, self.stride), (self.out_width, 1, 1)]
        y = x
        for i, (width, k, stride) in enumerate(convs, start=1):
            y = nn.Conv(width, (k, k), (stride, stride), padding=_pad(k), use_bias=False, kernel_init=conv_init,
                        name=f"conv{i}")(y)
            y = bn(f"bn{i}")(y)
            if i < len(convs):
                y = nn.relu(y)
        if self.projection:
            x = nn.Conv(self.out_width, (1, 1), (self.stride, self.stride), padding="VALID", use_bias=False,
                        kernel_init=conv_init, name="shortcut_conv")(x)
            x = bn("shortcut_bn")(x)
        return nn.relu(y + x)


class ResNet(nn.Module):
    config: ResNetConfig

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        cfg = self.config
        if cfg.stem == "cifar":
            x = nn.Conv(cfg.stem_width, (3, 3), padding=_pad(3), use_bias=False, kernel_init=conv_init,
                        name="conv1")(x)
        else:
            x = nn.Conv(cfg.stem_width, (7, 7), (2, 2), padding=_pad(7), use_bias=False, kernel_init=conv_init,
                        name="conv1")(x)
        x = nn.relu(BatchNorm(use_running_average=not train, name="bn1")(x))
        if cfg.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for name, (_, cout, stride, proj), inner in zip(cfg.block_names(), cfg._block_io(), cfg.inner_widths,
                                                        strict=True):
            x = Block(cfg.block, tuple(inner), cout, stride, proj, name=name)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(cfg.num_classes, name="fc")(x)


def fold_spec(cfg: ResNetConfig) -> FoldSpec:
    """One group per residual stream (every tensor reading or writing it) and per block-internal width.

    For ResNet18 that is 12 groups: 4 streams (the stem joins stream 1 through layer1_0's identity shortcut) and
    8 inner widths. A stream that a block reads through a projection shortcut stays separate from its output.
    """
    members: dict[str, list[Member]] = {}
    fields: dict[str, list[tuple]] = {}
    alias: dict[str, str] = {}

    def resolve(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    def add(group: str, items: list[Member], field: tuple | None = None) -> None:
        group = resolve(group)
        members.setdefault(group, []).extend(items)
        if field is not None:
            fields.setdefault(group, []).append(field)

    unfoldable = [("params/conv1/kernel", 0), ("params/conv1/kernel", 1), ("params/conv1/kernel", 2),
                  ("params/fc/kernel", 1), ("params/fc/bias", 0)]
    # the stem's output joins stream 1 when the first block has an identity shortcut
    if not cfg.projections[0]:
        alias["stem"] = "stream1"
    add("stem", conv_out("conv1") + batchnorm("bn1"), ("stem_width",))
    norms = [("conv1", "bn1")]
    current = "stem"
    n_convs = 2 if cfg.block == "basic" else 3
    stage_of = [s for s, n in enumerate(cfg.layers) for _ in range(n)]
    for i, (name, proj) in enumerate(zip(cfg.block_names(), cfg.projections, strict=True)):
        stream = f"stream{stage_of[i] + 1}"
        if not proj and resolve(current) != resolve(stream):
            alias[resolve(stream)] = resolve(current)  # identity shortcut: input and output are one stream
        add(current, conv_in(f"{name}/conv1"))
        for j in range(1, n_convs):
            add(f"{name}.inner{j}", conv_out(f"{name}/conv{j}") + batchnorm(f"{name}/bn{j}") +
                conv_in(f"{name}/conv{j + 1}"), ("inner_widths", i, j - 1))
        add(stream, conv_out(f"{name}/conv{n_convs}") + batchnorm(f"{name}/bn{n_convs}"))
        if proj:
            add(current, conv_in(f"{name}/shortcut_conv"))
            add(stream, conv_out(f"{name}/shortcut_conv") + batchnorm(f"{name}/shortcut_bn"))
            unfoldable += conv_window(f"{name}/shortcut_conv")
        if i == 0 or stage_of[i] != stage_of[i - 1]:
            add(stream, [], ("stream_widths", stage_of[i]))
        unfoldable += [w for j in range(1, n_convs + 1) for w in conv_window(f"{name}/conv{j}")]
        norms += [(f"{name}/conv{j}", f"{name}/bn{j}") for j in range(1, n_convs + 1)]
        if proj:
            norms.append((f"{name}/shortcut_conv", f"{name}/shortcut_bn"))
        current = stream
    add(current, dense_in("fc"))
    groups = tuple(Group(g, tuple(m), tuple(fields.get(g, ()))) for g, m in members.items() if m)
    return FoldSpec(groups, tuple(unfoldable), tuple(norms))
