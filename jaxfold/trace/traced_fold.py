"""``fold_traced``: fold any model given its apply function, variables and an example input — the spec derived
from the traced program, the folded forward function rebuilt from it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np

from jaxfold.folding import fold
from jaxfold.plans import Plan
from jaxfold.spec import FoldSpec, Group
from jaxfold.trace.analysis import Rule
from jaxfold.trace.derive import derive
from jaxfold.trace.rebuild import FoldedApply


@dataclasses.dataclass(frozen=True)
class TracedFold:
    """A folded model without a config: ``apply_fn(variables, *args)`` runs it at the new widths.

    ``module`` is the folded ``nnx.Module`` when the input was one (see :func:`jaxfold.trace.nnx.fold_nnx`), and
    ``module_note`` says why it is None where the module's widths could not be updated.
    """

    variables: dict[str, Any]
    apply_fn: Callable[..., Any]
    spec: FoldSpec
    widths: dict[str, int]
    labels: dict[str, np.ndarray]
    report: dict[str, Any]
    module: Any = None
    module_note: str | None = None


def fold_traced(apply_fn: Callable[..., Any], variables: Mapping[str, Any], plan: Plan, key: jax.Array,
                *example_args: Any, rules: Mapping[str, Rule] | None = None,
                unfoldable: Iterable[tuple[str, int]] = (), overrides: Mapping[str, Group | None] | None = None,
                verify: bool | None = None, **fold_options: Any) -> TracedFold:
    """Fold ``variables`` of the model ``apply_fn(variables, *example_args)`` to the widths ``plan`` asks for (a
    ratio, a {group: ratio} dict over the derived group names, or f(group, n) -> k).

    The spec is :func:`~jaxfold.trace.derive.derive_spec`'s (``rules``, ``unfoldable``, ``overrides`` and
    ``verify`` go to it); ``fold_options`` go to :func:`jaxfold.fold` (clusterer, n_init, max_iter). The result's
    ``apply_fn`` is the folded forward, called like ``apply_fn`` with the result's ``variables``.
    """
    t0 = time.perf_counter()
    key_verify, key_fold = jax.random.split(key)
    spec, traced = derive(apply_fn, variables, example_args, rules=rules, unfoldable=unfoldable,
                          overrides=overrides, verify=verify, key=key_verify)
    derive_seconds = time.perf_counter() - t0
    result = fold(variables, spec, plan, key_fold, **fold_options)
    folded = FoldedApply(apply_fn, variables, spec, result.widths, rules, first=(example_args, traced))
    report = dict(result.report, derive_seconds=round(derive_seconds, 4), groups_derived=len(spec.groups),
                  axes_unfoldable=len(spec.unfoldable))
    return TracedFold(result.variables, folded, spec, result.widths, result.labels, report)
