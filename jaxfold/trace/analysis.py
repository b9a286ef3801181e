"""Follow channel indices through a traced program: which axes of which variables move together, and how each
variable's axes meet the flow of activations (their role).

One pass over the jaxpr (and every program nested in it: jit, custom_jvp/custom_vjp, remat, scan, while, cond)
gives every value an atom per axis (:mod:`jaxfold.trace.atoms`). A value is an *activation* when it depends on a
model input; otherwise it is *parameter-derived*, and then it remembers which variable axes each of its axes
comes from (its *origins*), so that where it meets an activation the variable's axis gets a role:

* contracted against an activation in ``dot_general`` / ``conv_general_dilated`` → ``consumer``;
* the output feature (or batch) axis of such a product, or the row a ``gather`` reads out → ``producer``;
* combined element-wise with an activation (bias, norm scale/shift, running statistics) → ``vector``.

Anything a rule does not understand along an axis poisons that axis's atoms with the reason, so the derived spec
says why a group cannot fold instead of being silently wrong. Primitive rules live in :mod:`jaxfold.trace.rules`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from jax.extend import core

from jaxfold.trace.atoms import Atoms

Origins = tuple[tuple[str, tuple[tuple[int, ...], ...]], ...]  # (variable path, variable axes behind each axis)


@dataclasses.dataclass(frozen=True)
class Value:
    """What the analysis knows about one value of the program."""

    dims: tuple[int, ...]  # one atom per axis
    act: bool  # depends on a model input
    origins: Origins = ()  # for parameter-derived values
    produced_by: str | None = None  # the kernel whose product made this activation (through bias adds, casts)

    @property
    def ndim(self) -> int:
        return len(self.dims)


Rule = Callable[["Analysis", Any, list[Value]], list[Value]]


class Analysis:
    """The state of one trace's analysis; :func:`analyse` fills it."""

    def __init__(self, rules: dict[str, Rule]) -> None:
        self.atoms = Atoms()
        self.rules = rules
        self.values: dict[Any, Value] = {}
        self.params: dict[str, tuple[Any, tuple[int, ...]]] = {}  # path → (invar, shape)
        self.roles: dict[tuple[str, int], set[str]] = {}
        self.norms: list[tuple[str, str]] = []
        self.epsilons: dict[str, float] = {}  # norm module → the constant added to its running variance
        self.normalised: list[tuple[Any, int, str]] = []  # (eqn, activation operand, stat path) of x − running mean
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []

    # --- values -------------------------------------------------------------------------------------------------
    def read(self, v: Any) -> Value:
        if isinstance(v, core.Literal):
            shape = getattr(v.aval, "shape", ())
            return Value(tuple(self.atoms.new(s) for s in shape), False)
        return self.values[v]

    def fresh(self, shape: Sequence[int], act: bool, poison: str | None = None) -> Value:
        return Value(tuple(self.atoms.new(s, poison if s > 1 else None) for s in shape), act)

    def union_axes(self, a: int, b: int) -> None:
        self.atoms.union(a, b)

    def poison_axis(self, value: Value, axis: int, reason: str) -> None:
        self.atoms.poison(value.dims[axis], reason)

    def poison_all(self, values: Sequence[Value], reason: str) -> None:
        for value in values:
            for atom in value.dims:
                self.atoms.poison(atom, reason)

    # --- roles --------------------------------------------------------------------------------------------------
    def role(self, value: Value, axis: int, role: str) -> None:
        """``value``'s ``axis`` meets the flow as ``role``: every variable axis behind it gets the role."""
        for path, axes in value.origins:
            for param_axis in axes[axis]:
                self.roles.setdefault((path, param_axis), set()).add(role)

    def norm(self, kernel: str, stat_path: str) -> None:
        pair = (_module(kernel), _module(stat_path))
        if pair not in self.norms:
            self.norms.append(pair)


def _module(path: str) -> str:
    """'params/layer1/conv/kernel' → 'layer1/conv' (collection and leaf name dropped)."""
    return "/".join(path.split("/")[1:-1])


def mapped(value: Value, sources: Sequence[Sequence[int]]) -> Origins:
    """``value``'s origins carried to a new value whose axis j comes from ``value``'s axes ``sources[j]``."""
    return tuple((path, tuple(tuple(sorted({a for s in src for a in axes[s]})) for src in sources))
                 for path, axes in value.origins)


def analyse_program(analysis: Analysis, jaxpr: Any, consts: Sequence[Value], args: Sequence[Value]) -> list[Value]:
    """Analyse an (open) jaxpr given what is known of its constants and arguments; returns its outputs."""
    for var, value in zip(jaxpr.constvars, consts, strict=True):
        analysis.values[var] = value
    for var, value in zip(jaxpr.invars, args, strict=True):
        analysis.values[var] = value
    for eqn in jaxpr.eqns:
        ins = [analysis.read(v) for v in eqn.invars]
        rule = analysis.rules.get(eqn.primitive.name)
        if rule is None:
            from jaxfold.trace.rules import unknown

            outs = unknown(analysis, eqn, ins)
        else:
            outs = rule(analysis, eqn, ins)
        for var, value in zip(eqn.outvars, outs, strict=True):
            if len(value.dims) != len(getattr(var.aval, "shape", ())):
                raise AssertionError(f"internal: rule for {eqn.primitive.name} gave {len(value.dims)} axes for a "
                                     f"value of shape {var.aval.shape}")
            analysis.values[var] = value
    return [analysis.read(v) for v in jaxpr.outvars]


def analyse_closed(analysis: Analysis, closed: Any, args: Sequence[Value]) -> list[Value]:
    """A closed jaxpr: its captured constants are values the fold cannot resize (poisoned)."""
    consts = [analysis.fresh(getattr(c, "shape", ()), False, "a constant captured by the program has this axis "
                             "(the fold cannot resize it)") for c in closed.consts]
    return analyse_program(analysis, closed.jaxpr, consts, args)


def analyse(closed: Any, param_paths: Sequence[str | None], rules: dict[str, Rule]) -> Analysis:
    """Analyse ``closed`` whose leading invars are the variables (``param_paths``; None for a leaf that is not a
    variable, e.g. a model input) and whose remaining invars are the model inputs."""
    analysis = Analysis(rules)
    args = []
    invars = closed.jaxpr.invars
    for i, var in enumerate(invars):
        shape = tuple(var.aval.shape)
        path = param_paths[i] if i < len(param_paths) else None
        if path is None:
            value = analysis.fresh(shape, True, "comes from the model's input")
            analysis.inputs.append(value)
        else:
            value = Value(tuple(analysis.atoms.new(s) for s in shape), False,
                          ((path, tuple((a,) for a in range(len(shape)))),))
            analysis.params[path] = (var, shape)
        args.append(value)
    outs = analyse_closed(analysis, closed, args)
    for value in outs:
        for atom in value.dims:
            analysis.atoms.poison(atom, "reaches the model's output")
    analysis.outputs = outs
    return analysis
