"""``fold_ar`` (Fold-AR, data-free; the paper's Algorithm 1).

Before clustering, every BatchNorm's normalisation is fused into its producer: kernel and bias are divided by
√(var+ε), the running mean becomes μ/√(var+ε) and the running variance 1 − ε, so the BN then computes
γ·(W'x + b' − μ') + β — the same function, exactly. The fused mean (the official code's fused conv bias) becomes
a clustering feature and is averaged like a bias.

**Which weights are clustered (a change from the paper, measured):** ``fold_ar`` clusters the *raw* weights —
the same clusters as Fold-Naive — and merges the fused ones; ``fold_ar_fused`` clusters the fused weights as the
paper's Algorithm 1 does (the official code adds a RobustScaler we do not use). On the trained
Fashion-MNIST ResNet18 (docs/results.md) raw clusters gave 91.6 / 84.9 % at r = 0.05 / 0.25 against 80.6 /
54.7 % for fused ones. Not the cause: outlier rows (fused row norms spread no more than raw ones there). Likely
cause, not yet verified: dividing by √var (var ≈ 0.01–0.1 in that model) scales the producer block 3–10× against
the consumer columns, so the fused features weigh the producer side almost alone.

After the merge, each merged BN scale is multiplied by √(N_c / (1 + (N_c − 1)·E[c])), where E[c] is the mean
pairwise cosine similarity of the fused producer rows of cluster c: the variance a mean of N_c unit-variance
channels with that correlation would lose, assuming uncorrelated inputs. Decisions where the paper's Algorithm 1
(App. F.1) and the official code differ or are silent: the cosine uses the producer kernel rows only (Algorithm 1;
not biases, BN or consumers); in a residual-stream group every BN gets the factor computed from *its own*
producer's rows, since each normalises its own branch; the denominator is clamped at ``min_denominator`` (a
cluster of strongly anti-correlated rows would otherwise divide by ≤ 0). Producers without a BatchNorm are merged
without correction, as in the paper.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxfold import tree as tree_lib
from jaxfold.batch_stats import batchnorm_epsilons
from jaxfold.corrections.registry import CorrectionContext, register_correction
from jaxfold.errors import UserError
from jaxfold.spec import FoldSpec, Group, Member

MIN_DENOMINATOR = 1e-3


def _producer(spec: FoldSpec, producer: str) -> tuple[Group, Member]:
    path = f"params/{producer}/kernel"
    for group in spec.groups:
        for m in group.members:
            if m.path == path and m.role == "producer":
                return group, m
    raise ValueError(f"norm pair names {producer!r}, but no group has {path} as a producer")


def fuse_batchnorm(variables: dict[str, Any], spec: FoldSpec, epsilons: dict[str, float]) -> dict[str, Any]:
    """Fold each BN's normalisation into its producer (see the module docstring); the function is unchanged.
    ``epsilons`` gives each BN's ε by module path (:func:`jaxfold.batch_stats.batchnorm_epsilons`)."""
    flat = {p: np.asarray(a) for p, a in tree_lib.flatten(variables).items()}
    for producer, bn in spec.norms:
        _, member = _producer(spec, producer)
        n = member.width(flat[member.path].shape)
        epsilon = epsilons[bn]
        inv = 1.0 / np.sqrt(flat[f"batch_stats/{bn}/var"].astype(np.float64) + epsilon)
        kernel = flat[member.path]
        rows = member.channel_first(kernel.astype(np.float64), n) * inv[:, None]
        flat[member.path] = member.from_channel_first(rows, kernel.shape, n).astype(kernel.dtype)
        bias = f"params/{producer}/bias"
        if bias in flat:
            flat[bias] = (flat[bias] * inv).astype(flat[bias].dtype)
        mean, var = flat[f"batch_stats/{bn}/mean"], flat[f"batch_stats/{bn}/var"]
        flat[f"batch_stats/{bn}/mean"] = (mean * inv).astype(mean.dtype)
        flat[f"batch_stats/{bn}/var"] = np.full_like(var, 1.0 - epsilon)
    return tree_lib.unflatten(flat)


def _fused_mean_as_feature(spec: FoldSpec) -> FoldSpec:
    means = {f"batch_stats/{bn}/mean" for _, bn in spec.norms}
    groups = tuple(dataclasses.replace(g, members=tuple(dataclasses.replace(m, role="vector") if m.path in means
                                                        else m for m in g.members)) for g in spec.groups)
    return dataclasses.replace(spec, groups=groups)


def cluster_factors(rows: np.ndarray, labels: np.ndarray, k: int,
                    min_denominator: float = MIN_DENOMINATOR) -> np.ndarray:
    """√(N_c / (1 + (N_c − 1)·E[c])) per cluster, E[c] = mean cosine over ordered pairs i ≠ j of ``rows`` in c.

    With unit rows u_i, Σ_{i≠j} u_i·u_j = ||Σ u_i||² − Σ ||u_i||²; an all-zero row counts as uncorrelated.
    Singletons get exactly 1."""
    rows = np.asarray(rows, np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    unit = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
    sums = np.zeros((k, rows.shape[1]))
    np.add.at(sums, labels, unit)
    sizes = np.bincount(labels, minlength=k).astype(np.float64)
    self_dots = np.bincount(labels, weights=(unit**2).sum(1), minlength=k)
    pairs = (sums**2).sum(1) - self_dots
    mean_cos = np.divide(pairs, sizes * (sizes - 1), out=np.zeros(k), where=sizes > 1)
    denominator = np.maximum(1.0 + (sizes - 1.0) * mean_cos, min_denominator)
    return np.where(sizes > 1, np.sqrt(sizes / denominator), 1.0)


def _fuse(ctx: CorrectionContext) -> tuple[dict[str, Any], FoldSpec]:
    if not ctx.spec.norms:
        name = ctx.config.arch if ctx.config is not None else "this model"
        raise UserError(f"fold_ar needs BatchNorm layers to correct; {name} has none in its fold spec "
                        "(use 'repair' for BN-free networks)")
    epsilons = ctx.options.get("epsilons")  # a traced model's, read off its program
    if epsilons is None:
        epsilons = batchnorm_epsilons(ctx.config.module(), ctx.variables, ctx.config.input_shape)
    return fuse_batchnorm(ctx.variables, ctx.spec, epsilons), _fused_mean_as_feature(ctx.spec)


def _prepare_raw_clusters(ctx: CorrectionContext) -> tuple[Any, ...]:
    return (*_fuse(ctx), (ctx.variables, ctx.spec))


@register_correction("fold_ar_fused", inputs="images", prepare=_fuse,
                     description="Fold-AR as in the paper's Algorithm 1: clusters of the BN-fused weights")
def fold_ar_fused(ctx: CorrectionContext) -> dict[str, Any]:
    return fold_ar(ctx)


@register_correction("fold_ar", inputs="images", prepare=_prepare_raw_clusters,
                     description="Fold-AR: clusters of the raw weights, BN-fused merge, merged BN scales rescaled")
def fold_ar(ctx: CorrectionContext) -> dict[str, Any]:
    flat = tree_lib.flatten(ctx.folded)
    prepared = tree_lib.flatten(ctx.prepared)
    min_denominator = ctx.options.get("min_denominator", MIN_DENOMINATOR)
    for producer, bn in ctx.spec.norms:
        group, member = _producer(ctx.spec, producer)
        labels = ctx.labels[group.name]
        k = int(labels.max()) + 1
        if k == len(labels):
            continue
        rows = member.channel_first(np.asarray(prepared[member.path]), len(labels))
        factor = cluster_factors(rows, labels, k, min_denominator)
        scale = np.asarray(flat[f"params/{bn}/scale"])
        flat[f"params/{bn}/scale"] = (scale * factor).astype(scale.dtype)
    return tree_lib.unflatten(flat)
