"""Derive a :class:`~jaxfold.spec.FoldSpec` from a model's traced forward pass: no hand-written spec.

``derive_spec(apply_fn, variables, *example_args)`` traces ``apply_fn(variables, *example_args)`` to a jaxpr
(abstract inputs are enough: ``jax.ShapeDtypeStruct`` leaves allocate nothing), follows the channel indices
through it (:mod:`jaxfold.trace.analysis`) and turns every atom class that some variable's axis carries into a
group, when it is foldable:

* no rule poisoned it (reduced over, sliced, reaches the model's input or output, …);
* every variable axis in it has one clear role (producer, vector/stat, consumer) and at least one is a producer;
* on an axis that is a product of several foldable units (a query projection is [KV group, head in group,
  head_dim]) the outermost one folds, as whole blocks; the inner ones are left (one unit per axis);
* permuting its channels at random leaves the outputs unchanged (checked when the inputs are concrete arrays).

Every other variable axis is declared unfoldable, with the reason on the spec (``spec.reason(path, axis)``).
Group names come from the module path of the group's first producer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxfold import tree as tree_lib
from jaxfold.errors import UserError
from jaxfold.kmeans import host_rng
from jaxfold.merge import permute_group
from jaxfold.spec import FoldSpec, Group, Member
from jaxfold.trace.analysis import Analysis, Rule, analyse
from jaxfold.trace.rules import RULES


class TraceError(UserError):
    """The model could not be traced or analysed as given (the message says how to fix it)."""


def _path(keypath: Sequence[Any]) -> str:
    parts = []
    for k in keypath:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | jax.ShapeDtypeStruct) or (
        hasattr(x, "shape") and hasattr(x, "dtype"))


def split_static(args: Sequence[Any]) -> tuple[dict[int, Any], list[Any]]:
    """(non-array arguments by position — flags, None: closed over as static values —, the array arguments)."""
    static = {i: a for i, a in enumerate(args) if not _is_array(a)}
    return static, [a for i, a in enumerate(args) if i not in static]


def _with_static(apply_fn: Callable[..., Any], static: Mapping[int, Any], n_args: int) -> Callable[..., Any]:
    """``apply_fn`` as a function of (variables, *array arguments), the static ones put back in place."""
    def call(v: Any, *dynamic: Any) -> Any:
        it = iter(dynamic)
        return apply_fn(v, *[static[i] if i in static else next(it) for i in range(n_args)])

    return call


def trace(apply_fn: Callable[..., Any], variables: Mapping[str, Any], example_args: Sequence[Any],
          rules: Mapping[str, Rule] | None = None) -> Traced:
    """The jaxpr of ``apply_fn(variables, *example_args)`` and its analysis. Non-array example arguments (flags,
    None) are closed over as static values."""
    static, dynamic = split_static(example_args)
    call = _with_static(apply_fn, static, len(example_args))
    paths = [_path(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(variables)[0]]
    try:
        closed, out_shapes = jax.make_jaxpr(call, return_shape=True)(variables, *dynamic)
    except Exception as e:  # the user's model did not trace: say so, with the cause
        raise TraceError(f"tracing apply_fn(variables, *example_args) failed: {type(e).__name__}: {e}\n"
                         "Check that apply_fn takes (variables, *example_args) and that the example inputs have the "
                         "shapes and dtypes the model expects.") from e
    n_leaves = len(jax.tree_util.tree_leaves(dynamic))
    if len(closed.jaxpr.invars) != len(paths) + n_leaves:
        raise TraceError("internal: the traced program's inputs do not match the variables and example inputs")
    analysis = analyse(closed, paths, {**RULES, **(rules or {})})
    return Traced(analysis, closed, jax.tree_util.tree_structure(out_shapes), static)


@dataclasses.dataclass(frozen=True)
class Traced:
    """A traced forward pass: its analysis, the program, the output structure and the static (closed-over) example
    arguments by position."""

    analysis: Analysis
    closed: Any
    out_tree: Any
    static: dict[int, Any]


def _role(analysis: Analysis, path: str, axis: int) -> tuple[str | None, str | None]:
    """(role, None) or (None, why not)."""
    roles = analysis.roles.get((path, axis), set())
    if roles == {"consumer"}:
        return "consumer", None
    if roles == {"producer"}:
        return "producer", None
    if roles == {"vector"}:
        return ("vector" if path.startswith("params/") else "stat"), None
    if not roles:
        return None, f"{path} axis {axis} meets the activations in no way the tracer recognises"
    return None, f"{path} axis {axis} is used as {' and as '.join(sorted(roles))}"


@dataclasses.dataclass(frozen=True)
class _Choice:
    root: int
    repeat: int
    block: int


def build_spec(analysis: Analysis, *, unfoldable: Iterable[tuple[str, int]] = (),
               overrides: Mapping[str, Group | None] | None = None) -> FoldSpec:
    """The fold spec an analysis implies (see the module docstring), before the permutation check."""
    atoms = analysis.atoms
    shapes = {path: shape for path, (_, shape) in analysis.params.items()}  # in the variables' flatten order
    axis_atoms = {}
    for path, (var, shape) in analysis.params.items():
        dims = analysis.values[var].dims
        for axis in range(len(shape)):
            axis_atoms[(path, axis)] = dims[axis]
    for path, axis in unfoldable:
        if (path, axis % max(len(shapes.get(path, ())), 1)) not in axis_atoms:
            raise UserError(f"unfoldable names {path!r} axis {axis}, which is not a variable axis; variables: "
                             f"{sorted(shapes)[:20]}")
        atoms.poison(axis_atoms[(path, axis % len(shapes[path]))], "marked unfoldable by the user")

    demoted: dict[int, str] = {}
    while True:
        choice: dict[tuple[str, int], _Choice] = {}
        losers: dict[int, str] = {}
        for (path, axis), atom in axis_atoms.items():
            leaves = atoms.leaves(atom)
            outer = 1
            chosen = None
            for leaf in leaves:
                size = atoms.size(leaf)
                if atoms.reason(leaf) is None and leaf not in demoted:
                    if chosen is None:
                        chosen = _Choice(leaf, outer, math.prod(atoms.size(x) for x in leaves) // (outer * size))
                    elif leaf not in losers:
                        losers[leaf] = (f"shares {path} axis {axis} with a unit outside it, which folds there "
                                        "(one unit per axis)")
                outer *= size
            if chosen is not None:
                choice[(path, axis)] = chosen
        groups: dict[int, list[tuple[str, int, _Choice]]] = {}
        for (path, axis), c in choice.items():
            groups.setdefault(c.root, []).append((path, axis, c))
        # A variable producing along several axes in different groups (per-head value weights (d, heads,
        # head_dim)): its output unit is the outermost one, as for a flattened (heads·head_dim) axis.
        first_producer: dict[str, int] = {}
        for (path, axis), c in sorted(choice.items(), key=lambda kv: kv[0]):
            if _role(analysis, path, axis)[0] != "producer":
                continue
            if path not in first_producer:
                first_producer[path] = c.root
            elif c.root != first_producer[path] and c.root not in losers:
                losers[c.root] = (f"{path} produces along an outer axis in another group, which folds it as whole "
                                  "units (one unit per output)")
        new = dict(losers)
        for root, members in groups.items():
            if root in new:
                continue
            roles = []
            for path, axis, c in members:
                role, why = _role(analysis, path, axis)
                if why is None and c.block > 1 and c.repeat > 1:
                    why = f"{path} axis {axis} holds the unit both blocked and interleaved"
                if why is not None:
                    new[root] = why
                    break
                roles.append(role)
            else:
                if "producer" not in roles:
                    new[root] = "no variable produces these channels (no producer)"
        new = {r: w for r, w in new.items() if r not in demoted}
        if not new:
            break
        demoted.update(new)

    order = {path: i for i, path in enumerate(shapes)}
    built: list[Group] = []
    owner: dict[tuple[str, int], str] = {}
    for _root, members in sorted(groups.items(), key=lambda kv: min((order[p], a) for p, a, _ in kv[1])):
        members = sorted(members, key=lambda m: (order[m[0]], m[1]))
        group_members = []
        for path, axis, c in members:
            role, _ = _role(analysis, path, axis)
            group_members.append(Member(path, axis, role, block=c.block, repeat=c.repeat))
        first = next(m for m in group_members if m.role == "producer")
        name = _name(first, {g.name for g in built})
        built.append(Group(name, tuple(group_members)))
        for m in group_members:
            owner[(m.path, m.axis)] = name
    for name, replacement in (overrides or {}).items():
        names = [g.name for g in built]
        if name not in names:
            raise UserError(f"overrides name group {name!r}, which the derived spec does not have; groups: {names}")
        i = names.index(name)
        if replacement is None:
            for m in built[i].members:
                demoted_axis = (m.path, m.axis)
                owner.pop(demoted_axis, None)
            built.pop(i)
        else:
            built[i] = replacement
            for m in replacement.members:
                owner[(m.path, m.axis)] = replacement.name

    dropped = {name for name, g in (overrides or {}).items() if g is None}
    unfold, reasons = [], []
    for (path, axis), atom in axis_atoms.items():
        if (path, axis) in owner:
            continue
        size = shapes[path][axis]
        if size == 1:
            why = "size 1"
        else:
            whys = []
            for leaf in atoms.leaves(atom):
                w = atoms.reason(leaf) or demoted.get(leaf) or (f"its group was dropped by overrides {sorted(dropped)}"
                                                               if dropped else "not foldable")
                if w not in whys:
                    whys.append(w)
            why = "; ".join(whys) or "not foldable"
        unfold.append((path, axis))
        reasons.append((path, axis, why))
    norms = tuple((k, n) for k, n in analysis.norms
                  if f"params/{k}/kernel" in shapes and f"params/{n}/scale" in shapes
                  and f"batch_stats/{n}/mean" in shapes)
    return FoldSpec(tuple(built), tuple(unfold), norms, tuple(reasons))


def _name(member: Member, taken: set[str]) -> str:
    parts = member.path.split("/")
    base = "/".join(parts[1:-1]) or parts[-1]
    name, i = base, 2
    while name in taken:
        name, i = f"{base}#{i}", i + 1
    return name


def verify_permutations(spec: FoldSpec, apply_fn: Callable[..., Any], variables: Mapping[str, Any],
                        example_args: Sequence[Any], key: jax.Array, rtol: float = 1e-4) -> dict[str, str]:
    """Groups whose random channel permutation changes the outputs (group → why): a spec that is wrong there."""
    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(variables)
    paths = [_path(kp) for kp, _ in leaves_with_paths]
    host = tree_lib.unflatten({p: np.asarray(x) for p, (_, x) in zip(paths, leaves_with_paths, strict=True)})
    static, dynamic = split_static(example_args)
    call = _with_static(apply_fn, static, len(example_args))

    @jax.jit
    def run(leaves: list[Any], dyn: list[Any]) -> Any:
        return call(jax.tree_util.tree_unflatten(treedef, leaves), *dyn)

    def outputs(nested: Mapping[str, Any]) -> list[Any]:  # numpy leaves: permute_group compiles nothing
        flat = tree_lib.flatten(nested)
        return jax.tree_util.tree_leaves(run([flat[p] for p in paths], dynamic))

    reference = outputs(host)
    widths = spec.widths(host)
    failed = {}
    rng = host_rng(key)
    for group in spec.groups:
        outs = outputs(permute_group(host, group, rng.permutation(widths[group.name])))
        for ref, out in zip(reference, outs, strict=True):
            ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
            scale = float(np.max(np.abs(ref))) if ref.size else 0.0
            if ref.shape != out.shape or not np.allclose(out, ref, rtol=rtol, atol=rtol * max(scale, 1e-6)):
                err = float(np.max(np.abs(out - ref))) if ref.shape == out.shape else float("inf")
                failed[group.name] = (f"permuting its channels changed the outputs (max |Δ| {err:.3g} at output scale "
                                      f"{scale:.3g}): the tracer's rules got this group wrong")
                break
    return failed


def derive_spec(apply_fn: Callable[..., Any], variables: Mapping[str, Any], *example_args: Any,
                rules: Mapping[str, Rule] | None = None, unfoldable: Iterable[tuple[str, int]] = (),
                overrides: Mapping[str, Group | None] | None = None, verify: bool | None = None,
                key: jax.Array | None = None) -> FoldSpec:
    """The fold spec of ``apply_fn(variables, *example_args)``, derived from its traced program.

    ``rules`` add or replace primitive rules (:mod:`jaxfold.trace.rules`); ``unfoldable`` marks (path, axis) pairs
    that must never fold (their whole group then stays); ``overrides`` replace a derived group by name with your
    own :class:`~jaxfold.spec.Group`, or drop it (``None``). ``verify`` runs the permutation check (default: when
    the variables and inputs are concrete arrays); a group that fails it is declared unfoldable with the reason.
    """
    return derive(apply_fn, variables, example_args, rules=rules, unfoldable=unfoldable, overrides=overrides,
                  verify=verify, key=key)[0]


def derive(apply_fn: Callable[..., Any], variables: Mapping[str, Any], example_args: Sequence[Any], *,
           rules: Mapping[str, Rule] | None = None, unfoldable: Iterable[tuple[str, int]] = (),
           overrides: Mapping[str, Group | None] | None = None, verify: bool | None = None,
           key: jax.Array | None = None) -> tuple[FoldSpec, Traced]:
    """:func:`derive_spec` that also returns the trace (the traced model's rebuild needs it)."""
    traced = trace(apply_fn, variables, example_args, rules)
    spec = build_spec(traced.analysis, unfoldable=unfoldable, overrides=overrides)
    concrete = all(not isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves((variables,
                                                                                              example_args)))
    if verify is None:
        verify = concrete
    if verify:
        if not concrete:
            raise UserError("verify=True needs concrete variables and example inputs (not jax.ShapeDtypeStruct)")
        failed = verify_permutations(spec, apply_fn, variables, example_args,
                                     key if key is not None else jax.random.key(0))
        if failed:
            spec = _demote(spec, failed)
    return spec, traced


def _demote(spec: FoldSpec, failed: Mapping[str, str]) -> FoldSpec:
    groups = tuple(g for g in spec.groups if g.name not in failed)
    extra = [(m.path, m.axis, failed[g.name]) for g in spec.groups if g.name in failed for m in g.members]
    return dataclasses.replace(spec, groups=groups, unfoldable=spec.unfoldable + tuple((p, a) for p, a, _ in extra),
                               reasons=spec.reasons + tuple(extra))
