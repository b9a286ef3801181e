"""Fold specs: which (tensor, axis) pairs share one foldable width, and how each is merged.

A :class:`FoldSpec` is declarative data in the spirit of git-re-basin's permutation spec: group name → members.
A member is one axis of one variable and a role:

* ``producer`` — the axis is the tensor's output axis (kernels): clustered on, merged by **mean**;
* ``vector``   — a per-channel vector (biases, BN scale/bias): clustered on, merged by **mean**;
* ``stat``     — a per-channel running statistic (BN mean/var): *not* a clustering feature (as in the official
  code), merged by mean (Fold-Naive; corrections may recompute it);
* ``consumer`` — the axis is the next layer's input axis: clustered on, merged by **sum** (the merged channel
  carries the activation of every channel it replaced, so the next layer must add their contributions).

The group axis may be *blocked* (``block`` > 1: channel c owns entries [c·block, (c+1)·block), e.g. an attention
head of head_dim rows) or *interleaved* (``repeat`` > 1: channel c owns entries c, c+n, c+2n, …, e.g. VGG's first
classifier input after an NHWC flatten, where the channel is the fastest axis).

``config_fields`` tell how a group's width maps back onto the model config (``("stream_widths", 0)`` means
``config.stream_widths[0]``), so a folded model is rebuilt from a config rather than patched. ``field_scales``
(optional, one per field) multiply the width first: a GQA attention group whose unit is a whole KV group of r query
heads sets ``num_kv_heads[i] = width`` and ``num_heads[i] = r · width``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from jaxfold import tree as tree_lib

ROLES = ("producer", "vector", "stat", "consumer")
FieldRef = tuple[Any, ...]  # (field name, index, index, …)


@dataclasses.dataclass(frozen=True)
class Member:
    path: str
    axis: int
    role: str
    block: int = 1
    repeat: int = 1

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"{self.path}: role must be one of {ROLES}, got {self.role!r}")
        if self.block > 1 and self.repeat > 1:
            raise ValueError(f"{self.path}: a member is either blocked or interleaved, not both")

    @property
    def in_features(self) -> bool:
        return self.role != "stat"

    def channel_first(self, array: Any, n: int) -> Any:
        """``array`` viewed as (n, rest): the group axis in front, one row per channel."""
        x = _move(array, self.axis)
        rest = x.shape[1:]
        if self.block > 1:
            return x.reshape(n, self.block * _prod(rest))
        if self.repeat > 1:
            x = x.reshape(self.repeat, n, *rest)
            return _swap01(x).reshape(n, self.repeat * _prod(rest))
        return x.reshape(n, _prod(rest))

    def from_channel_first(self, rows: Any, like_shape: tuple[int, ...], k: int) -> Any:
        """Inverse of :meth:`channel_first` for ``k`` channels; ``like_shape`` is the original array's shape."""
        axis = self.axis % len(like_shape)
        rest = like_shape[:axis] + like_shape[axis + 1:]
        if self.block > 1:
            x = rows.reshape(k * self.block, *rest)
        elif self.repeat > 1:
            x = _swap01(rows.reshape(k, self.repeat, *rest)).reshape(self.repeat * k, *rest)
        else:
            x = rows.reshape(k, *rest)
        return _unmove(x, axis)

    def width(self, shape: tuple[int, ...]) -> int:
        """The group width this member implies for an array of ``shape``."""
        size = shape[self.axis]
        unit = self.block * self.repeat
        if size % unit:
            raise ValueError(f"{self.path}: axis {self.axis} has size {size}, not a multiple of {unit}")
        return size // unit


def _prod(shape: Iterable[int]) -> int:
    return int(np.prod(tuple(shape), dtype=np.int64))


def _move(x: Any, axis: int) -> Any:
    return x if axis in (0, -x.ndim) else _moveaxis(x, axis, 0)


def _unmove(x: Any, axis: int) -> Any:
    return x if axis == 0 else _moveaxis(x, 0, axis)


def _moveaxis(x: Any, src: int, dst: int) -> Any:
    import jax.numpy as jnp

    return jnp.moveaxis(x, src, dst) if not isinstance(x, np.ndarray) else np.moveaxis(x, src, dst)


def _swap01(x: Any) -> Any:
    return _moveaxis(x, 1, 0)


@dataclasses.dataclass(frozen=True)
class Group:
    name: str
    members: tuple[Member, ...]
    config_fields: tuple[FieldRef, ...] = ()
    field_scales: tuple[int, ...] = ()  # config value = width × scale, per field; empty: all 1

    def __post_init__(self) -> None:
        if self.field_scales and len(self.field_scales) != len(self.config_fields):
            raise ValueError(f"group {self.name!r}: {len(self.field_scales)} field_scales for "
                             f"{len(self.config_fields)} config_fields")

    def field_values(self, width: int) -> list[tuple[FieldRef, int]]:
        """(config field, value) pairs that a width of this group sets."""
        scales = self.field_scales or (1,) * len(self.config_fields)
        return [(ref, int(width) * int(s)) for ref, s in zip(self.config_fields, scales, strict=True)]


@dataclasses.dataclass(frozen=True)
class FoldSpec:
    """Groups of jointly folded axes, plus axes declared never to fold (inputs, class outputs, kernel windows).

    ``reasons`` say why each unfoldable axis cannot fold (specs derived by tracing fill it in).

    ``norms`` pairs each producer module with the BatchNorm that normalises its output, as module paths under
    ``params`` (``("layer1_0/conv1", "layer1_0/bn1")``): corrections that fuse or re-estimate normalisation
    (Fold-AR, REPAIR) and the variance-ratio diagnostic read them.
    """

    groups: tuple[Group, ...]
    unfoldable: tuple[tuple[str, int], ...] = ()
    norms: tuple[tuple[str, str], ...] = ()
    reasons: tuple[tuple[str, int, str], ...] = ()  # (path, axis, why it cannot fold), for derived specs

    def reason(self, path: str, axis: int) -> str | None:
        """Why ``path``'s ``axis`` is unfoldable, where the spec says (derived specs do for every such axis)."""
        for p, a, why in self.reasons:
            if (p, a) == (path, axis):
                return why
        return None

    def __post_init__(self) -> None:
        names = [g.name for g in self.groups]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"fold spec has duplicate group names {dupes}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no group {name!r} in the fold spec; groups: {list(self.names)}")

    def widths(self, variables: Mapping[str, Any]) -> dict[str, int]:
        """Current width of every group, read off the arrays (checked for consistency by :meth:`check`)."""
        flat = tree_lib.flatten(variables)
        return {g.name: g.members[0].width(np.shape(flat[g.members[0].path])) for g in self.groups}

    def check(self, variables: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` unless every axis of every variable is in exactly one group or declared unfoldable,
        every member exists, and all members of a group agree on its width."""
        flat = tree_lib.flatten(variables)
        problems: list[str] = []
        owner: dict[tuple[str, int], str] = {}

        def claim(path: str, axis: int, who: str) -> None:
            if path not in flat:
                problems.append(f"{who}: no variable {path}")
                return
            ndim = np.ndim(flat[path])
            if not -ndim <= axis < ndim:
                problems.append(f"{who}: {path} has {ndim} axes, no axis {axis}")
                return
            key = (path, axis % ndim)
            if key in owner:
                problems.append(f"{path} axis {key[1]} is claimed by both {owner[key]} and {who}")
            owner[key] = who

        for g in self.groups:
            sizes = {}
            for m in g.members:
                claim(m.path, m.axis, f"group {g.name!r}")
                if m.path in flat:
                    try:
                        sizes[m.path] = m.width(np.shape(flat[m.path]))
                    except (ValueError, IndexError) as e:
                        problems.append(f"group {g.name!r}: {e}")
            if len(set(sizes.values())) > 1:
                problems.append(f"group {g.name!r}: members disagree on the width: {sizes}")
            if not g.members:
                problems.append(f"group {g.name!r} has no members")
        for path, axis in self.unfoldable:
            claim(path, axis, "unfoldable")
        for producer, norm in self.norms:
            for path in (f"params/{producer}/kernel", f"params/{norm}/scale", f"batch_stats/{norm}/mean"):
                if path not in flat:
                    problems.append(f"norm pair ({producer!r}, {norm!r}): no variable {path}")
        for path, value in flat.items():
            for axis in range(np.ndim(value)):
                if (path, axis) not in owner:
                    problems.append(f"{path} axis {axis} (size {np.shape(value)[axis]}) is in no group and not "
                                    "declared unfoldable")
        if problems:
            head = "\n  ".join(problems[:25]) + (f"\n  … and {len(problems) - 25} more" if len(problems) > 25 else "")
            raise ValueError(f"fold spec does not match the variables:\n  {head}")


# --- builders used by the per-architecture specs --------------------------------------------------------------
def conv_out(path: str, bias: bool = False) -> list[Member]:
    """A Flax Conv producing the group's channels (kernel HWIO: output axis 3)."""
    members = [Member(f"params/{path}/kernel", 3, "producer")]
    return [*members, Member(f"params/{path}/bias", 0, "vector")] if bias else members


def dense_out(path: str, bias: bool = True) -> list[Member]:
    members = [Member(f"params/{path}/kernel", 1, "producer")]
    return [*members, Member(f"params/{path}/bias", 0, "vector")] if bias else members


def batchnorm(path: str) -> list[Member]:
    return [Member(f"params/{path}/scale", 0, "vector"), Member(f"params/{path}/bias", 0, "vector"),
            Member(f"batch_stats/{path}/mean", 0, "stat"), Member(f"batch_stats/{path}/var", 0, "stat")]


def conv_in(path: str) -> list[Member]:
    return [Member(f"params/{path}/kernel", 2, "consumer")]


def dense_in(path: str, repeat: int = 1) -> list[Member]:
    return [Member(f"params/{path}/kernel", 0, "consumer", repeat=repeat)]


def conv_window(path: str) -> list[tuple[str, int]]:
    """The spatial axes of a conv kernel never fold."""
    return [(f"params/{path}/kernel", 0), (f"params/{path}/kernel", 1)]
