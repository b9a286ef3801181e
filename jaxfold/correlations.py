"""Channel redundancy measured on data: per layer, the Pearson correlations of greedily matched channel pairs (the
paper's Figs. 2, 8 and 10, its evidence that trained networks hold near-duplicate channels that folding can merge).

Each layer's channels are paired greedily without replacement: the most correlated pair of two unmatched channels
first, then the next, until fewer than two remain (ZipIt!'s matching, within one network). High pair correlations
mean merging a pair loses little. Layers are those of :mod:`jaxfold.corrections.layers` — each group's BatchNorm
output (or a BN-free producer's output), i.e. the channels folding merges — optionally passed through a
nonlinearity first (``jax.nn.relu``: the post-activation features that ZipIt! matches).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxfold.corrections.layers import capture, layers
from jaxfold.errors import UserError
from jaxfold.models.base import ModelConfig


def correlation_matrix(cov: np.ndarray, *, rtol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """The (n, n) Pearson correlations from a covariance matrix, and a mask of the channels that vary (std >
    ``rtol`` × the layer's largest std). A constant channel has no correlation: its row and column are 0, and
    :func:`greedy_matching` leaves it out."""
    cov = np.asarray(cov, np.float64)
    std = np.sqrt(np.maximum(np.diag(cov), 0.0))
    live = std > rtol * max(float(std.max(initial=0.0)), 1e-30)
    both = np.outer(live, live)
    corr = np.where(both, cov / np.where(both, np.outer(std, std), 1.0), 0.0)
    return np.clip(corr, -1.0, 1.0), live


def _combine(a: tuple[float, np.ndarray, np.ndarray], b: tuple[float, np.ndarray, np.ndarray]
             ) -> tuple[float, np.ndarray, np.ndarray]:
    """(count, mean, centred Σ(x−μ)(x−μ)ᵀ) of two sets of samples joined (Chan et al.'s pairwise update): batches
    are centred on their own mean, so a channel with a large mean and a tiny spread keeps its variance exact."""
    (na, ma, sa), (nb, mb, sb) = a, b
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), sa + sb + np.outer(delta, delta) * (na * nb / n)


def greedy_matching(corr: np.ndarray, live: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(m, 2)`` of distinct channels and their correlations ``(m,)``, best first: repeatedly the most
    correlated pair of two unmatched channels among ``live`` ones (all by default); with an odd count, one channel
    stays unmatched. Ties go to the lower indices (a stable sort), so the result is deterministic."""
    corr = np.asarray(corr, np.float64)
    n = corr.shape[0]
    if corr.shape != (n, n):
        raise ValueError(f"need a square correlation matrix, got {corr.shape}")
    idx = np.flatnonzero(np.ones(n, bool) if live is None else np.asarray(live, bool))
    rows, cols = np.triu_indices(len(idx), 1)
    rows, cols = idx[rows], idx[cols]
    values = corr[rows, cols]
    order = np.argsort(-values, kind="stable")
    matched = np.zeros(n, bool)
    pairs, found, wanted = [], [], len(idx) // 2
    for t in order:
        i, j = rows[t], cols[t]
        if not (matched[i] or matched[j]):
            matched[i] = matched[j] = True
            pairs.append((i, j))
            found.append(values[t])
            if len(pairs) == wanted:
                break
    return np.asarray(pairs, np.int64).reshape(-1, 2), np.asarray(found, np.float64)


@functools.cache
def _moments_fn(config: ModelConfig, modules: tuple[str, ...],
                nonlinearity: Callable[[jax.Array], jax.Array] | None) -> Callable[[Any, jax.Array], dict]:
    """A jitted ``(variables, x) -> {module: (count, mean, Σ(x−μ)(x−μ)ᵀ)}`` over every position of each module's
    eval-mode output (batch and spatial axes are samples; channels last); one per (config, modules, nonlinearity)."""
    module = config.module()

    def moments(variables: Any, x: jax.Array) -> dict[str, tuple[jax.Array, jax.Array, jax.Array]]:
        out = {}
        for name, a in capture(module, variables, x, modules).items():
            a = a.reshape(-1, a.shape[-1]).astype(jnp.float32)
            if nonlinearity is not None:
                a = nonlinearity(a)
            mean = a.mean(0)
            centred = a - mean[None, :]
            out[name] = (jnp.asarray(a.shape[0], jnp.float32), mean, centred.T @ centred)
        return out

    return jax.jit(moments)


def matched_correlations(config: ModelConfig, variables: Any, batches: Iterable[np.ndarray], *,
                         nonlinearity: Callable[[jax.Array], jax.Array] | None = None) -> list[dict[str, Any]]:
    """Per layer in forward order, the greedily matched pairs of its channels and their correlations over every
    sample of ``batches`` (normalised model inputs; all positions of a conv map count as samples): ``{'layer',
    'group', 'channels', 'constant' (channels left out: no variance), 'pairs' (m, 2), 'correlations' (m,),
    best first, 'mean', 'median'}``. Pure: reads the variables, returns new arrays."""
    found = layers(config.fold_spec())
    modules = tuple(layer.module for layer in found)
    fn = _moments_fn(config, modules, nonlinearity)
    sums: dict[str, tuple[float, np.ndarray, np.ndarray]] = {}
    for x in batches:
        for name, (count, mean, m2) in fn(variables, jnp.asarray(x)).items():
            part = (float(count), np.asarray(mean, np.float64), np.asarray(m2, np.float64))
            sums[name] = _combine(sums[name], part) if name in sums else part
    if not sums:
        raise UserError("matched_correlations got no data: pass at least one batch of model inputs")
    rows = []
    for layer in found:
        count, _, m2 = sums[layer.module]
        corr, live = correlation_matrix(m2 / count)
        pairs, values = greedy_matching(corr, live)
        empty = not len(values)
        rows.append({"layer": layer.module, "group": layer.group, "channels": int(corr.shape[0]),
                     "constant": int((~live).sum()), "pairs": pairs, "correlations": values,
                     "mean": float("nan") if empty else float(values.mean()),
                     "median": float("nan") if empty else float(np.median(values))})
    return rows
