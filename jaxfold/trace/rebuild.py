"""The folded forward function of a traced model: its program re-evaluated at the folded widths.

A folded model's arrays are smaller, but its ``apply_fn`` still holds the old widths wherever shapes are static
(``reshape(q, (b, t, 8, 64))``, a broadcast, an iota, a depthwise conv's ``feature_group_count``), so calling it
on the folded variables fails or, worse, computes something else. Instead, the original program is traced (on
abstract original variables, so nothing is allocated), its analysis gives every axis as a product of atoms, the
folded groups' atoms take their new widths, and the program is evaluated primitive by primitive with those
static shapes substituted. Nested programs (jit, custom derivatives, remat) are inlined; scan, while and cond are
rebuilt around re-evaluated bodies. One trace and one compiled function per distinct input shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core

from jaxfold.errors import UserError
from jaxfold.spec import FoldSpec
from jaxfold.trace.analysis import Analysis, Rule
from jaxfold.trace.derive import Traced, split_static, trace
from jaxfold.trace.rules import CALLS, inner_program


def group_sizes(analysis: Analysis, spec: FoldSpec, widths: Mapping[str, int]) -> dict[int, int]:
    """Atom class → folded width, for every group of ``spec`` found in this analysis by its first member."""
    atoms = analysis.atoms
    sizes: dict[int, int] = {}
    for group in spec.groups:
        if group.name not in widths:
            continue
        member = group.members[0]
        var, shape = analysis.params[member.path]
        outer, found = 1, None
        for leaf in atoms.leaves(analysis.values[var].dims[member.axis % len(shape)]):
            if outer == member.repeat and atoms.size(leaf) * member.block * outer == shape[member.axis]:
                found = leaf
                break
            outer *= atoms.size(leaf)
        if found is None:
            raise UserError(f"group {group.name!r}: its unit is not an axis factor of {member.path} in this trace "
                             "(was the spec derived from this model?)")
        sizes[atoms.find(found)] = int(widths[group.name])
    return sizes


class Evaluator:
    """Evaluates the analysed program with the atoms' folded sizes."""

    def __init__(self, analysis: Analysis, sizes: Mapping[int, int]) -> None:
        self.analysis, self.sizes = analysis, sizes

    def shape(self, var: Any) -> tuple[int, ...]:
        atoms = self.analysis.atoms
        value = self.analysis.values[var]
        return tuple(math.prod(self.sizes.get(leaf, atoms.size(leaf)) for leaf in atoms.leaves(atom))
                     for atom in value.dims)

    def closed(self, closed: Any, args: Sequence[Any]) -> list[Any]:
        return self.program(closed.jaxpr, closed.consts, args)

    def program(self, jaxpr: Any, consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
        env: dict[Any, Any] = {}

        def read(v: Any) -> Any:
            return v.val if isinstance(v, core.Literal) else env[v]

        for var, value in zip(jaxpr.constvars, consts, strict=True):
            env[var] = value
        for var, value in zip(jaxpr.invars, args, strict=True):
            env[var] = value
        for eqn in jaxpr.eqns:
            outs = self.equation(eqn, [read(v) for v in eqn.invars])
            for var, value in zip(eqn.outvars, outs, strict=True):
                env[var] = value
        return [read(v) for v in jaxpr.outvars]

    def equation(self, eqn: Any, ins: list[Any]) -> list[Any]:
        name, params = eqn.primitive.name, dict(eqn.params)
        if name in CALLS:
            inner = inner_program(params)
            return self.closed(inner, ins) if hasattr(inner, "consts") else self.program(inner, [], ins)
        if name == "scan":
            return self._scan(params, ins)
        if name == "while":
            return self._while(params, ins)
        if name == "cond":
            branches = [lambda *ops, b=b: self.closed(b, ops) for b in params["branches"]]
            return list(jax.lax.switch(ins[0], branches, *ins[1:]))
        out_shape = self.shape(eqn.outvars[0]) if eqn.outvars else ()
        old_in = [tuple(getattr(v.aval, "shape", ())) for v in eqn.invars]
        if name == "reshape":
            params["new_sizes"] = out_shape
        elif name in ("broadcast_in_dim", "iota", "random_bits"):
            params["shape"] = out_shape
        elif name == "slice":
            new_in = np.shape(ins[0])
            strides = params["strides"] or (1,) * len(new_in)
            params["limit_indices"] = tuple(
                new_in[a] if (s == 0 and e == old_in[0][a] and st == 1) else e
                for a, (s, e, st) in enumerate(zip(params["start_indices"], params["limit_indices"], strides,
                                                   strict=True)))
        elif name in ("dynamic_slice", "gather"):
            new_in = np.shape(ins[0])
            params["slice_sizes"] = tuple(new_in[a] if size == old_in[0][a] else size
                                          for a, size in enumerate(params["slice_sizes"]))
        elif name == "conv_general_dilated" and params["feature_group_count"] > 1:
            dn = params["dimension_numbers"]
            params["feature_group_count"] = np.shape(ins[0])[dn.lhs_spec[1]] // np.shape(ins[1])[dn.rhs_spec[1]]
        out = eqn.primitive.bind(*ins, **params)
        return list(out) if eqn.primitive.multiple_results else [out]

    def _scan(self, params: dict[str, Any], ins: list[Any]) -> list[Any]:
        nc, ncarry = params["num_consts"], params["num_carry"]
        consts, init, xs = ins[:nc], ins[nc:nc + ncarry], ins[nc + ncarry:]

        def body(carry: Any, x: Any) -> tuple[Any, Any]:
            outs = self.closed(params["jaxpr"], [*consts, *carry, *x])
            return list(outs[:ncarry]), list(outs[ncarry:])

        carry, ys = jax.lax.scan(body, list(init), list(xs), length=params["length"], reverse=params["reverse"],
                                 unroll=params["unroll"])
        return [*carry, *ys]

    def _while(self, params: dict[str, Any], ins: list[Any]) -> list[Any]:
        cn, bn = params["cond_nconsts"], params["body_nconsts"]
        cond_consts, body_consts, init = ins[:cn], ins[cn:cn + bn], ins[cn + bn:]
        return list(jax.lax.while_loop(lambda c: self.closed(params["cond_jaxpr"], [*cond_consts, *c])[0],
                                       lambda c: tuple(self.closed(params["body_jaxpr"], [*body_consts, *c])),
                                       tuple(init)))


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


class FoldedApply:
    """``apply_fn`` at the folded widths, called exactly like it: ``folded(folded_variables, *args)``.

    The first call for each input shape traces the original model (abstract variables) and compiles the
    re-evaluated program; later calls with that shape reuse it.
    """

    def __init__(self, apply_fn: Callable[..., Any], original_variables: Any, spec: FoldSpec,
                 widths: Mapping[str, int], rules: Mapping[str, Rule] | None = None,
                 first: tuple[Sequence[Any], Traced] | None = None) -> None:
        self.apply_fn, self.spec, self.widths, self.rules = apply_fn, spec, dict(widths), rules
        self.original = _abstract(original_variables)
        self._compiled: dict[Any, tuple[Callable[..., Any], Traced]] = {}
        if first is not None:
            args, traced = first
            self._compiled[self._key(args)] = (self._compile(traced), traced)

    @staticmethod
    def _key(args: Sequence[Any]) -> Any:
        return tuple((np.shape(a), str(getattr(a, "dtype", ""))) if hasattr(a, "shape") else ("static", repr(a))
                     for a in args)

    def _compile(self, traced: Traced) -> Callable[..., Any]:
        evaluator = Evaluator(traced.analysis, self.sizes_for(traced))

        def run(flat_variables: list[Any], dynamic: list[Any]) -> Any:
            outs = evaluator.closed(traced.closed, [*flat_variables, *jax.tree_util.tree_leaves(dynamic)])
            return jax.tree_util.tree_unflatten(traced.out_tree, outs)

        return jax.jit(run)

    def traced_for(self, args: Sequence[Any]) -> Traced:
        """The original model's trace for inputs shaped like ``args`` (traced and compiled on first use)."""
        key = self._key(args)
        if key not in self._compiled:
            traced = trace(self.apply_fn, self.original, args, self.rules)
            self._compiled[key] = (self._compile(traced), traced)
        return self._compiled[key][1]

    def sizes_for(self, traced: Traced) -> dict[int, int]:
        """The folded width of every atom class of ``traced`` that a group folds."""
        return group_sizes(traced.analysis, self.spec, self.widths)

    def __call__(self, variables: Any, *args: Any) -> Any:
        self.traced_for(args)
        run, _ = self._compiled[self._key(args)]
        dynamic = split_static(args)[1]
        leaves, treedef = jax.tree_util.tree_flatten(variables)
        expected = jax.tree_util.tree_structure(self.original)
        if treedef != expected:
            raise UserError(f"the folded function takes variables structured like the model's ({expected}); got "
                             f"{treedef}")
        return run(leaves, dynamic)
