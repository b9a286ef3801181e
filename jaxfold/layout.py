"""Where a model's parameters and statistics live, for linen and NNX alike: the one place that knows it.

A linen model's state is a dict of *collections*: ``'params'`` holds the trainable arrays, every other collection
(``'batch_stats'``, ``'cache'``, …) holds non-trainable ones. An NNX model keeps the same arrays in
``nnx.Variable`` objects whose *type* says what they are: ``nnx.Param`` (and its subclasses, e.g. LoRA's) is
trainable, ``nnx.BatchStat`` and every other variable type is not. :func:`to_variables` turns either into the
linen form — plain nested dicts under collection names, NNX variable types named as Flax names them (``Param`` →
``'params'``, ``BatchStat`` → ``'batch_stats'``, ``Cache`` → ``'cache'``) — so code that reads, counts or
rewrites variables (the spec checker, corrections, reports) is written once, on dicts; :func:`from_variables`
puts new arrays back into the NNX module. Keys are strings (an ``nnx.List`` index 0 becomes ``'0'``), so the
'/'-joined paths of :mod:`jaxfold.tree` address every leaf.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx, traverse_util

from jaxfold import tree as tree_lib

TRAINABLE = "params"  # the trainable collection; every other collection holds statistics or state


@dataclasses.dataclass(frozen=True, eq=False)
class NNXHandle:
    """What :func:`to_variables` keeps of an NNX model besides its arrays: the graph definition (``None`` when a
    bare ``nnx.State`` was given) and the state with every value abstract (shape/dtype), which remembers each
    variable's type and metadata so :func:`from_variables` can rebuild it."""

    graphdef: Any
    state: nnx.State


def is_nnx(x: Any) -> bool:
    """An NNX module or state (as opposed to a linen variables dict)."""
    return isinstance(x, nnx.Module | nnx.State)


def collection_of(variable_type: type) -> str:
    """The linen collection name of an NNX variable type: 'params' for ``nnx.Param`` and its subclasses,
    'batch_stats' for ``nnx.BatchStat`` and its subclasses, Flax's registered name otherwise ('cache',
    'intermediates'), else the type's name in snake case (``RngKey`` → 'rng_key')."""
    if issubclass(variable_type, nnx.Param):
        return TRAINABLE
    if issubclass(variable_type, nnx.BatchStat):
        return "batch_stats"
    try:
        return nnx.variable_name_from_type(variable_type)
    except ValueError:  # unregistered: name it without registering it (the registry is global)
        return re.sub(r"(?<!^)(?=[A-Z])", "_", variable_type.__name__).lower()


def _path(keys: tuple[Any, ...]) -> str:
    return tree_lib.SEP.join(str(k) for k in keys)


def to_variables(model: Any) -> tuple[NNXHandle | None, dict[str, Any]]:
    """``(handle, {collection: nested dict of arrays})`` of an NNX module or state; a linen variables dict comes
    back as ``(None, plain dict copy)``. Arrays are shared, not copied."""
    if not is_nnx(model):
        if not isinstance(model, Mapping):
            raise TypeError(f"expected linen variables (a dict of collections), an nnx.Module or an nnx.State; got "
                            f"{type(model).__name__}")
        return None, {name: dict(c) if isinstance(c, Mapping) else c for name, c in model.items()}
    graphdef, state = (None, model) if isinstance(model, nnx.State) else nnx.split(model)
    values = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    flat: dict[str, dict[str, Any]] = {}
    for keys, variable in nnx.to_flat_state(state):
        flat.setdefault(collection_of(type(variable)), {})[_path(keys)] = values[tuple(keys)]
    abstract = nnx.from_flat_state([(keys, variable.replace(_abstract(values[tuple(keys)])))
                                    for keys, variable in nnx.to_flat_state(state)])
    return NNXHandle(graphdef, abstract), {name: tree_lib.unflatten(f) for name, f in flat.items()}


def _abstract(value: Any) -> Any:
    return jax.ShapeDtypeStruct(value.shape, value.dtype) if hasattr(value, "shape") else value


def from_variables(handle: NNXHandle | None, variables: Mapping[str, Any]) -> Any:
    """Inverse of :func:`to_variables`: the NNX module (or state) with the arrays of ``variables``; with handle
    ``None`` the variables dict itself. Every variable of the handle must be present and nothing else; shapes may
    differ (a folded model), but an NNX module's static attributes (``in_features`` …) are not updated — rebuild
    a smaller model from its constructor for that. Traceable (works inside ``jax.jit``)."""
    if handle is None:
        return dict(variables)
    flat = {name: tree_lib.flatten(c) for name, c in variables.items()}
    wanted = {(collection_of(type(v)), _path(keys)) for keys, v in nnx.to_flat_state(handle.state)}
    extra = sorted(f"{name}/{p}" for name, c in flat.items() for p in c if (name, p) not in wanted)
    missing = sorted(f"{name}/{p}" for name, p in wanted if p not in flat.get(name, {}))
    if extra or missing:
        raise ValueError(f"variables do not match the NNX model: missing {missing[:5]}, unexpected {extra[:5]}")
    state = nnx.from_flat_state([(keys, v.replace(flat[collection_of(type(v))][_path(keys)]))
                                 for keys, v in nnx.to_flat_state(handle.state)])
    return state if handle.graphdef is None else nnx.merge(handle.graphdef, state)


def variables_of(model: Any) -> dict[str, Any]:
    """``{collection: nested dict}`` of linen variables, an NNX module or an NNX state."""
    return to_variables(model)[1]


def trainable(model: Any) -> dict[str, Any]:
    """The trainable arrays: linen's 'params' collection, NNX's ``nnx.Param`` variables ({} if none)."""
    return variables_of(model).get(TRAINABLE, {})


def statistics(model: Any) -> dict[str, Any]:
    """Every non-trainable collection (``{'batch_stats': …, …}``): linen's other collections, NNX's
    ``nnx.BatchStat`` and other non-Param variables."""
    return {name: c for name, c in variables_of(model).items() if name != TRAINABLE}
