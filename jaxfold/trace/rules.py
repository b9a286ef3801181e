"""Per-primitive rules: how each JAX primitive moves channel indices from its inputs to its outputs.

A rule takes the analysis, the equation and what is known of its inputs (:class:`~jaxfold.trace.analysis.Value`)
and returns what is known of its outputs, unioning axes that carry the same index, giving variable axes their
roles, and poisoning the axes it cannot follow. :data:`RULES` maps primitive names to rules; users add rules for
their own primitives through ``derive_spec(..., rules={name: rule})``. A primitive without a rule poisons every
axis it touches (the fold stays correct, only less of the model folds).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxfold.trace.analysis import Analysis, Rule, Value, analyse_closed, analyse_program, mapped


def _shape(var: Any) -> tuple[int, ...]:
    return tuple(getattr(var.aval, "shape", ()))


def unknown(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    reason = (f"passes through `{eqn.primitive.name}`, which the tracer has no rule for "
              f"(give one with derive_spec(..., rules={{'{eqn.primitive.name}': rule}}))")
    an.poison_all(ins, reason)
    act = any(v.act for v in ins)
    return [an.fresh(_shape(o), act, reason) for o in eqn.outvars]


# --- element-wise ---------------------------------------------------------------------------------------------------
def elementwise(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    """Same-rank operands (rank-0 scalars and size-1 axes broadcast): equal axes carry the same index. A
    parameter-derived operand combined with an activation is a per-channel vector on its non-trivial axes."""
    out_shape = _shape(eqn.outvars[0])
    ranked = [(v, _shape(var)) for v, var in zip(ins, eqn.invars, strict=True)]
    dims = list(an.fresh(out_shape, False).dims)
    for value, shape in ranked:
        if len(shape) != len(out_shape):
            continue
        for axis, size in enumerate(shape):
            if size == out_shape[axis] and size > 1:
                an.union_axes(value.dims[axis], dims[axis])
    act = any(v.act for v in ins)
    produced_by = None
    if act:
        actives = [v for v in ins if v.act]
        if len(actives) == 1:
            produced_by = actives[0].produced_by
        for value, shape in ranked:
            if value.act or len(shape) != len(out_shape):
                continue
            for axis, size in enumerate(shape):
                if size > 1:
                    an.role(value, axis, "vector")
            if eqn.primitive.name == "sub":
                for path, _ in value.origins:
                    if not path.startswith("params/"):  # a running statistic subtracted from an activation
                        an.normalised.append((eqn, next(i for i, v in enumerate(ins) if v.act), path))
                        if produced_by is not None:  # … from a kernel's output: a norm pair
                            an.norm(produced_by, path)
        return [Value(tuple(dims), True, (), produced_by) for _ in eqn.outvars]
    if eqn.primitive.name == "add":  # ε of a norm: a scalar constant added to a running variance
        literals = [v.val for v in eqn.invars if hasattr(v, "val") and not getattr(v.aval, "shape", ())]
        stats = [p for value in ins for p, _ in value.origins if not p.startswith("params/")]
        if len(literals) == 1 and len(stats) == 1:
            an.epsilons.setdefault("/".join(stats[0].split("/")[1:-1]), float(literals[0]))
    origins = tuple(o for value, shape in ranked if len(shape) == len(out_shape)
                    for o in mapped(value, [[a] if shape[a] == out_shape[a] and shape[a] > 1 else []
                                            for a in range(len(shape))]))
    return [Value(tuple(dims), False, origins) for _ in eqn.outvars]


# --- layout ---------------------------------------------------------------------------------------------------------
def _layout(value: Value, dims: Sequence[int], sources: Sequence[Sequence[int]]) -> Value:
    """A value that rearranges ``value`` (axis j made of ``value``'s axes ``sources[j]``)."""
    if value.act:
        return Value(tuple(dims), True, (), value.produced_by)
    return Value(tuple(dims), False, mapped(value, sources))


def transpose(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    perm = eqn.params["permutation"]
    return [_layout(ins[0], [ins[0].dims[p] for p in perm], [[p] for p in perm])]


def broadcast_in_dim(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    shape, bdims = eqn.params["shape"], eqn.params["broadcast_dimensions"]
    src_shape = _shape(eqn.invars[0])
    out = list(an.fresh(shape, ins[0].act).dims)
    sources: list[list[int]] = [[] for _ in shape]
    for i, j in enumerate(bdims):
        if src_shape[i] == shape[j]:
            out[j] = ins[0].dims[i]
            sources[j] = [i]
    return [_layout(ins[0], out, sources)]


def squeeze(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    drop = {d % ins[0].ndim for d in eqn.params["dimensions"]}
    keep = [a for a in range(ins[0].ndim) if a not in drop]
    return [_layout(ins[0], [ins[0].dims[a] for a in keep], [[a] for a in keep])]


def expand_dims(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    out_shape = _shape(eqn.outvars[0])
    new = {d % len(out_shape) for d in eqn.params["dimensions"]}
    src = iter(range(ins[0].ndim))
    dims, sources = [], []
    for j in range(len(out_shape)):
        if j in new:
            dims.append(an.atoms.new(1))
            sources.append([])
        else:
            i = next(src)
            dims.append(ins[0].dims[i])
            sources.append([i])
    return [_layout(ins[0], dims, sources)]


def _blocks(a: Sequence[int], b: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Runs of axes with equal products in two shapes of equal size; size-1 axes belong to no run."""
    ia, jb = [i for i, n in enumerate(a) if n != 1], [j for j, n in enumerate(b) if n != 1]
    out, i, j = [], 0, 0
    while i < len(ia) and j < len(jb):
        run_a, run_b, pa, pb = [ia[i]], [jb[j]], a[ia[i]], b[jb[j]]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb:
                run_a.append(ia[i])
                pa *= a[ia[i]]
                i += 1
            else:
                run_b.append(jb[j])
                pb *= b[jb[j]]
                j += 1
        out.append((run_a, run_b))
    return out


def reshape(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    src_shape, out_shape = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    if eqn.params.get("dimensions") is not None:
        return unknown(an, eqn, ins)
    if 0 in src_shape:
        return unknown(an, eqn, ins)
    out = list(an.fresh(out_shape, ins[0].act).dims)
    sources: list[list[int]] = [[] for _ in out_shape]
    for ia, jb in _blocks(src_shape, out_shape):
        an.atoms.union(an.atoms.composite([ins[0].dims[i] for i in ia]), an.atoms.composite([out[j] for j in jb]))
        for j in jb:
            sources[j] = ia
    return [_layout(ins[0], out, sources)]


def tile(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    reps = eqn.params["reps"]
    dims, sources = [], []
    for axis, rep in enumerate(reps):
        dims.append(an.atoms.composite([an.atoms.new(rep), ins[0].dims[axis]]) if rep > 1 else ins[0].dims[axis])
        sources.append([axis])
    return [_layout(ins[0], dims, sources)]


def unary(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    return [_layout(ins[0], ins[0].dims, [[a] for a in range(ins[0].ndim)]) for _ in eqn.outvars]


# --- products -------------------------------------------------------------------------------------------------------
def _product_roles(an: Analysis, side: Value, contract: Sequence[int], other: Value) -> None:
    """Roles of a parameter-derived operand of a product with an activation."""
    if side.act or not other.act:
        return
    for axis in range(side.ndim):
        an.role(side, axis, "consumer" if axis in contract else "producer")


def _kernel(value: Value) -> str | None:
    paths = [p for p, _ in value.origins if p.startswith("params/")]
    return paths[0] if len(paths) == 1 else None


def dot_general(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = ins
    for a, b in zip(lc, rc, strict=True):
        an.union_axes(lhs.dims[a], rhs.dims[b])
        if lhs.act and rhs.act:
            an.poison_axis(lhs, a, "contracted between two activations (e.g. attention scores over head_dim)")
        elif not lhs.act and not rhs.act:
            an.poison_axis(lhs, a, "contracted between two parameter-derived values")
    for a, b in zip(lb, rb, strict=True):
        an.union_axes(lhs.dims[a], rhs.dims[b])
    _product_roles(an, lhs, lc, rhs)
    _product_roles(an, rhs, rc, lhs)
    free_l = [a for a in range(lhs.ndim) if a not in lc and a not in lb]
    free_r = [b for b in range(rhs.ndim) if b not in rc and b not in rb]
    dims = [lhs.dims[a] for a in lb] + [lhs.dims[a] for a in free_l] + [rhs.dims[b] for b in free_r]
    act = lhs.act or rhs.act
    if not act:
        return [Value(tuple(dims), False)]
    kernel = _kernel(rhs) if lhs.act and not rhs.act else _kernel(lhs) if rhs.act and not lhs.act else None
    return [Value(tuple(dims), True, (), kernel)]


def conv_general_dilated(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    dn = eqn.params["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    groups, batch_groups = eqn.params["feature_group_count"], eqn.params["batch_group_count"]
    lhs, rhs = ins
    out_shape = _shape(eqn.outvars[0])
    out = list(an.fresh(out_shape, lhs.act or rhs.act).dims)
    if batch_groups != 1 or not lhs.act or rhs.act:
        reason = ("a convolution with batch_group_count > 1" if batch_groups != 1 else
                  "a convolution whose kernel is computed from activations or whose input is not")
        an.poison_all([lhs, rhs], reason)
        return [Value(tuple(out), lhs.act or rhs.act)]
    an.union_axes(lhs.dims[lhs_spec[0]], out[out_spec[0]])
    for axis in lhs_spec[2:]:
        an.poison_axis(lhs, axis, "convolved over (a spatial axis)")
    for axis in out_spec[2:]:
        an.atoms.poison(out[axis], "a spatial axis of a convolution's output")
    for axis in rhs_spec[2:]:
        an.poison_axis(rhs, axis, "a convolution kernel's window")
    lf, ri, ro, of = lhs.dims[lhs_spec[1]], rhs.dims[rhs_spec[1]], rhs.dims[rhs_spec[0]], out[out_spec[1]]
    if groups == 1:
        an.union_axes(lf, ri)
    else:  # grouped/depthwise: input features = [group, per-group input], kernel outputs = [group, per-group output]
        lhs_parts = an.atoms.split(lf, [groups, an.atoms.size(lf) // groups])
        out_parts = an.atoms.split(ro, [groups, an.atoms.size(ro) // groups])
        if lhs_parts is None or out_parts is None:
            an.poison_all([lhs, rhs], "a grouped convolution whose groups do not align with the channels")
        else:
            an.union_axes(lhs_parts[0], out_parts[0])
            an.union_axes(lhs_parts[1], ri)
    an.union_axes(ro, of)
    _product_roles(an, rhs, [rhs_spec[1]], lhs)
    return [Value(tuple(out), True, (), _kernel(rhs))]


# --- reductions, slicing, indexing ---------------------------------------------------------------------------------
def _reduce(an: Analysis, eqn: Any, ins: list[Value], axes: Sequence[int], what: str) -> list[Value]:
    value = ins[0]
    axes = {a % max(value.ndim, 1) for a in axes}
    for a in axes:
        an.poison_axis(value, a, f"reduced over by `{eqn.primitive.name}` ({what})")
    keep = [a for a in range(value.ndim) if a not in axes]
    return [_layout(value, [value.dims[a] for a in keep], [[a] for a in keep]) for _ in eqn.outvars]


def reduce(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    return _reduce(an, eqn, ins, eqn.params["axes"], "e.g. a mean over features such as LayerNorm's or RMSNorm's")


def argreduce(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    return _reduce(an, eqn, ins, eqn.params["axes"], "an arg-max/min picks one channel")


def cumulative(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    an.poison_axis(ins[0], eqn.params["axis"], f"accumulated along by `{eqn.primitive.name}`")
    return unary(an, eqn, ins)


def _along(an: Analysis, eqn: Any, ins: list[Value], cut: Sequence[bool], reason: str) -> list[Value]:
    """An op that keeps axes where ``cut`` is False and cuts the others (poisoned, fresh in the output)."""
    value = ins[0]
    out_shape = _shape(eqn.outvars[0])
    dims, sources = [], []
    for axis in range(value.ndim):
        if cut[axis]:
            an.poison_axis(value, axis, reason)
            dims.append(an.atoms.new(out_shape[axis], reason if out_shape[axis] > 1 else None))
            sources.append([])
        else:
            dims.append(value.dims[axis])
            sources.append([axis])
    return [_layout(value, dims, sources)]


def slice_(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    shape = _shape(eqn.invars[0])
    strides = eqn.params["strides"] or (1,) * len(shape)
    cut = [not (s == 0 and e == n and st == 1) for s, e, st, n in
           zip(eqn.params["start_indices"], eqn.params["limit_indices"], strides, shape, strict=True)]
    return _along(an, eqn, ins, cut, "sliced along (slice)")


def dynamic_slice(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    shape = _shape(eqn.invars[0])
    cut = [size != n for size, n in zip(eqn.params["slice_sizes"], shape, strict=True)]
    return _along(an, eqn, ins[:1], cut, "sliced along (dynamic_slice)")


def dynamic_update_slice(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    operand, update = ins[0], ins[1]
    shape, ushape = _shape(eqn.invars[0]), _shape(eqn.invars[1])
    for axis in range(operand.ndim):
        if shape[axis] == ushape[axis]:
            an.union_axes(operand.dims[axis], update.dims[axis])
        else:
            an.poison_axis(operand, axis, "updated in part (dynamic_update_slice)")
            an.poison_axis(update, axis, "updated in part (dynamic_update_slice)")
    act = operand.act or update.act
    return [Value(operand.dims, act) if act else _layout(operand, operand.dims, [[a] for a in range(operand.ndim)])]


def pad(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    cut = [tuple(cfg) != (0, 0, 0) for cfg in eqn.params["padding_config"]]
    return _along(an, eqn, ins[:1], cut, "padded along (pad)")


def rev(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    axes = set(eqn.params["dimensions"])
    return _along(an, eqn, ins, [a in axes for a in range(ins[0].ndim)], "reversed along (rev)")


def reduce_window(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    window, strides = eqn.params["window_dimensions"], eqn.params["window_strides"]
    padding = eqn.params["padding"]
    cut = [not (w == 1 and s == 1 and tuple(p) == (0, 0)) for w, s, p in zip(window, strides, padding, strict=True)]
    return _along(an, eqn, ins[:1], cut, f"pooled over ({eqn.primitive.name})")


def concatenate(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    axis = eqn.params["dimension"]
    out_shape = _shape(eqn.outvars[0])
    reason = "concatenated along (concatenate: a fold cannot resize the parts)"
    dims = list(an.fresh(out_shape, any(v.act for v in ins)).dims)
    for value in ins:
        an.poison_axis(value, axis, reason)
        for a in range(value.ndim):
            if a != axis:
                an.union_axes(value.dims[a], dims[a])
    an.atoms.poison(dims[axis], reason)
    return [Value(tuple(dims), any(v.act for v in ins))]


def stack(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    """``jnp.stack``: equal operands side by side along a new axis (which carries no channel)."""
    axis = eqn.params["axis"]
    for value in ins[1:]:
        for a in range(value.ndim):
            an.union_axes(value.dims[a], ins[0].dims[a])
    dims = list(ins[0].dims)
    dims.insert(axis, an.atoms.new(len(ins), "the axis jnp.stack creates"))
    return [Value(tuple(dims), any(v.act for v in ins))]


def split(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    axis = eqn.params["axis"]
    reason = "split along (split)"
    an.poison_axis(ins[0], axis, reason)
    outs = []
    for var in eqn.outvars:
        shape = _shape(var)
        dims = [ins[0].dims[a] if a != axis else an.atoms.new(shape[a], reason) for a in range(len(shape))]
        outs.append(_layout(ins[0], dims, [[a] if a != axis else [] for a in range(len(shape))]))
    return outs


def sort(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    axis = eqn.params["dimension"]
    for value in ins:
        an.poison_axis(value, axis, "sorted along (sort)")
        for a in range(value.ndim):
            an.union_axes(value.dims[a], ins[0].dims[a])
    return [Value(ins[0].dims, any(v.act for v in ins)) for _ in eqn.outvars]


def gather(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    """Indexing: the operand's indexed axes are poisoned; the axes it slices whole (an embedding's features) flow
    to the output's offset axes, where a parameter operand is a producer."""
    operand, indices = ins
    dn = eqn.params["dimension_numbers"]
    sizes = eqn.params["slice_sizes"]
    shape = _shape(eqn.invars[0])
    out_shape = _shape(eqn.outvars[0])
    if dn.operand_batching_dims:
        return unknown(an, eqn, ins)
    out = list(an.fresh(out_shape, operand.act or indices.act).dims)
    indexed = set(dn.collapsed_slice_dims) | set(dn.start_index_map)
    offset_axes = [a for a in range(len(shape)) if a not in dn.collapsed_slice_dims]
    for a in indexed:
        an.poison_axis(operand, a, "indexed (gather: e.g. an embedding's vocabulary)")
    sources: list[list[int]] = [[] for _ in out_shape]
    for a, j in zip(offset_axes, dn.offset_dims, strict=True):
        if a not in indexed and sizes[a] == shape[a]:
            an.union_axes(operand.dims[a], out[j])
            sources[j] = [a]
            if indices.act and not operand.act:
                an.role(operand, a, "producer")
        else:
            an.poison_axis(operand, a, "sliced along (gather)")
    batch_out = [j for j in range(len(out_shape)) if j not in dn.offset_dims]
    for i, j in zip(range(indices.ndim - 1), batch_out, strict=False):
        an.union_axes(indices.dims[i], out[j])
    act = operand.act or indices.act
    if act:
        return [Value(tuple(out), True)]
    return [Value(tuple(out), False, mapped(operand, sources))]


def iota(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    return [an.fresh(_shape(eqn.outvars[0]), False)]


def random_bits(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    return [an.fresh(_shape(eqn.outvars[0]), True)]


# --- programs inside programs ---------------------------------------------------------------------------------------
# primitives that call one inner program with their operands (the rebuild inlines them too)
CALLS = ("jit", "pjit", "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr", "remat2", "checkpoint",
         "closed_call", "core_call")


def inner_program(params: dict[str, Any]) -> Any:
    """The program a :data:`CALLS` primitive runs (a closed or an open jaxpr)."""
    for name in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        if name in params:
            return params[name]
    raise KeyError("no inner program")


def call(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    """jit, custom_jvp_call, custom_vjp_call, remat, closed_call: the inner program, as if inlined."""
    inner = inner_program(eqn.params)
    if hasattr(inner, "consts"):
        return analyse_closed(an, inner, ins)
    return analyse_program(an, inner, [], ins)


def _union_values(an: Analysis, a: Sequence[Value], b: Sequence[Value]) -> None:
    """Values that are one another's (a loop's carry in and out, a cond's branch outputs): axis by axis."""
    for x, y in zip(a, b, strict=True):
        for p, q in zip(x.dims, y.dims, strict=True):
            an.union_axes(p, q)


def _loop_body(an: Analysis, body: Any, consts: list[Value], carry: list[Value], xs: list[Value]
               ) -> tuple[list[Value], list[Value]]:
    """A loop body's (carry, other outputs), its carry tied to its inputs; analysed a second time when the carry
    turns out to be an activation."""
    for _ in range(2):
        outs = analyse_closed(an, body, [*consts, *carry, *xs])
        _union_values(an, carry, outs[:len(carry)])
        new_carry = [Value(a.dims, True) if (a.act or b.act) else a for a, b in zip(carry, outs, strict=False)]
        if [c.act for c in new_carry] == [c.act for c in carry]:
            break
        carry = new_carry
    return new_carry, outs[len(carry):]


def scan(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    """A scanned layer stack: the stacked axis is poisoned; every other axis is the body's (one group spans all
    layers, which keep equal widths, as a scan needs)."""
    nc, ncarry = eqn.params["num_consts"], eqn.params["num_carry"]
    consts, carry, xs = ins[:nc], ins[nc:nc + ncarry], ins[nc + ncarry:]
    reason = "the axis a scan iterates over"
    for x in xs:
        an.poison_axis(x, 0, reason)
    body_xs = [Value(x.dims[1:], x.act, mapped(x, [[a] for a in range(1, x.ndim)]) if not x.act else (),
                     x.produced_by) for x in xs]
    new_carry, ys = _loop_body(an, eqn.params["jaxpr"], consts, carry, body_xs)
    return [*new_carry, *(Value((an.atoms.new(eqn.params["length"], reason), *y.dims), y.act) for y in ys)]


def while_loop(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    cn, bn = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
    cond_consts, body_consts, carry = ins[:cn], ins[cn:cn + bn], ins[cn + bn:]
    new_carry, _ = _loop_body(an, eqn.params["body_jaxpr"], body_consts, carry, [])
    analyse_closed(an, eqn.params["cond_jaxpr"], [*cond_consts, *new_carry])
    return new_carry


def cond(an: Analysis, eqn: Any, ins: list[Value]) -> list[Value]:
    operands = ins[1:]
    results = [analyse_closed(an, branch, operands) for branch in eqn.params["branches"]]
    outs = results[0]
    for other in results[1:]:
        _union_values(an, outs, other)
    act = ins[0].act or any(v.act for v in operands)
    return [Value(v.dims, True) if act else v for v in outs]


_UNARY = (
    "neg", "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "sin", "cos", "tan", "asin", "acos", "atan",
    "sinh", "cosh", "asinh", "acosh", "atanh", "sqrt", "rsqrt", "cbrt", "abs", "sign", "floor", "ceil", "round",
    "is_finite", "not", "erf", "erfc", "erf_inv", "lgamma", "digamma", "integer_pow", "square",
    "convert_element_type", "copy", "copy_p", "reduce_precision", "real", "imag", "conj", "bitcast_convert_type",
    "population_count", "clz", "stop_gradient", "optimization_barrier",
)
_BINARY = (
    "add", "sub", "mul", "div", "rem", "pow", "max", "min", "atan2", "nextafter", "and", "or", "xor", "eq", "ne",
    "lt", "le", "gt", "ge", "shift_left", "shift_right_logical", "shift_right_arithmetic", "add_any", "clamp",
    "igamma", "igammac", "polygamma", "zeta",
)
RULES: dict[str, Rule] = {
    **dict.fromkeys(_UNARY, unary), **dict.fromkeys((*_BINARY, "select_n"), elementwise),
    "transpose": transpose, "broadcast_in_dim": broadcast_in_dim, "squeeze": squeeze, "expand_dims": expand_dims,
    "reshape": reshape, "tile": tile, "dot_general": dot_general, "conv_general_dilated": conv_general_dilated,
    **dict.fromkeys(["reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
                     "reduce_xor"], reduce),
    "argmax": argreduce, "argmin": argreduce,
    **dict.fromkeys(["cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"], cumulative),
    "slice": slice_, "dynamic_slice": dynamic_slice, "dynamic_update_slice": dynamic_update_slice, "pad": pad,
    "rev": rev, "concatenate": concatenate, "stack": stack, "split": split, "sort": sort, "gather": gather,
    "iota": iota, "random_bits": random_bits,
    **dict.fromkeys(["reduce_window_max", "reduce_window_min", "reduce_window_sum", "reduce_window"], reduce_window),
    **dict.fromkeys(CALLS, call),
    "scan": scan, "while": while_loop, "cond": cond,
}

