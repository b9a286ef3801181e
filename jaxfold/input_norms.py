"""Per-feature input statistics of a model's ``nn.Dense`` layers over calibration data: Σ_t x_tj² of input feature
j over every row t (token or example) a layer sees, hence ‖x_j‖₂ and its RMS. Wanda-sp scores channels with them
(|W|·‖x‖, :mod:`jaxfold.baselines.wanda`); the activation-aware corrections cluster and merge with them
(:mod:`jaxfold.corrections.activation_aware`).

Inputs are read with a Flax method interceptor on the layers' ``nn.Dense`` calls, so any Flax linen model whose
layers of interest are Dense works; every requested layer is read in the same pass over the data.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Collection, Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxfold.errors import UserError
from jaxfold.spec import FoldSpec

ApplyFn = Callable[[Any, jax.Array], Any]  # (variables, batch) -> outputs


@dataclasses.dataclass(frozen=True)
class InputStats:
    """``energy[module]`` = Σ_t x_tj² per input feature j (float64), summed over ``rows[module]`` rows."""

    energy: dict[str, np.ndarray]
    rows: dict[str, int]

    def norms(self) -> dict[str, np.ndarray]:
        """‖x_j‖₂ per module."""
        return {path: np.sqrt(e) for path, e in self.energy.items()}

    def rms(self) -> dict[str, np.ndarray]:
        """‖x_j‖₂ / √rows per module: the per-feature root mean square."""
        return {path: np.sqrt(e / max(self.rows[path], 1)) for path, e in self.energy.items()}


def kernel_modules(spec: FoldSpec, roles: Collection[str]) -> set[str]:
    """Module paths (under ``params``, e.g. ``block_0/mlp/down``) of the spec's members with one of ``roles``."""
    return {m.path.removeprefix("params/").removesuffix("/kernel") for g in spec.groups for m in g.members
            if m.role in roles}


@functools.lru_cache(maxsize=8)
def _energy_step(apply_fn: ApplyFn, modules: frozenset[str]) -> Callable[[Any, jax.Array], Any]:
    """One jitted pass per (model function, layers): an activation-aware fold reads the data twice (before
    clustering and after merging) with one compilation."""

    @jax.jit
    def step(variables: Any, x: jax.Array) -> dict[str, tuple[jax.Array, jax.Array]]:
        found: dict[str, tuple[jax.Array, jax.Array]] = {}

        def record(next_fun, args, kwargs, context):
            path = "/".join(context.module.path)
            if isinstance(context.module, nn.Dense) and context.method_name == "__call__" and path in modules:
                h = jnp.asarray(args[0], jnp.float32)
                h = h.reshape(-1, h.shape[-1])
                energy, rows = found.get(path, (0.0, 0))  # a layer called twice: both calls count
                found[path] = (energy + jnp.sum(h**2, axis=0), rows + jnp.int32(h.shape[0]))
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            apply_fn(variables, x)
        return found

    return step


def dense_input_stats(apply_fn: ApplyFn, variables: Any, modules: Collection[str], batches: Iterable[Any], *,
                      who: str = "the input statistics") -> InputStats:
    """Σ_t x_tj² for the inputs of the ``nn.Dense`` layers named in ``modules`` over every batch (``apply_fn``
    applied to each). A named layer that is never called as a Dense (a convolution, a typo) is a
    :class:`UserError` naming ``who`` needed it."""
    step = _energy_step(apply_fn, frozenset(modules))
    variables = jax.tree.map(jnp.asarray, variables)  # once, not per batch
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    seen = False
    for x in batches:
        seen = True
        for path, (value, rows) in step(variables, jnp.asarray(x)).items():
            sums[path] = sums.get(path, 0.0) + np.asarray(value, np.float64)
            counts[path] = counts.get(path, 0) + int(rows)
    if not seen:
        raise UserError(f"{who} got no calibration batches: the data is empty (give at least one batch)")
    missing = sorted(set(modules) - set(sums))
    if missing:
        raise UserError(f"{who} reads the inputs of nn.Dense layers; no Dense call seen for {missing} "
                        "(convolutional or other non-Dense layers are not supported)")
    return InputStats(sums, counts)


def dense_input_norms(apply_fn: ApplyFn, variables: Any, modules: Collection[str], batches: Iterable[Any], *,
                      who: str = "the input norms") -> dict[str, np.ndarray]:
    """``{module path: ‖x_j‖₂ over all calibration rows}`` per input feature j of each named Dense layer."""
    return dense_input_stats(apply_fn, variables, modules, batches, who=who).norms()
