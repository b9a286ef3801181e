"""``norm_restore``: a data-free correction for folded transformers, the LLM counterpart of Fold-AR.

Merging a cluster averages its producer rows (a SwiGLU neuron's gate and up columns, a head's q/k/v block), and
the mean of vectors that are not parallel is shorter than they are: ‖mean_i w_i‖ = mean_i ‖w_i‖ only when all
point the same way. Under the assumption Fold-AR makes (inputs uncorrelated and of equal variance, so a
pre-activation's scale is ‖w‖ times the input's), the merged channel is that much quieter than any of its
members — the variance collapse of the paper's §4, here without a BatchNorm to rescale. ``norm_restore`` multiplies
every merged producer row by mean_i ‖w_i‖ / ‖w̄‖ over its cluster, read from the weights alone: no samples.
With unit-norm members the factor is Fold-AR's √(N/(1+(N−1)·E[cos])) exactly. Singletons keep factor 1, so
k = n is the identity and a fold of duplicated channels stays lossless.

**Measured, it hurts** (SmolLM2-135M, ``recipe_mlp`` at 20 %, first 8 test windows; docs/results.md): plain fold
585.49, fold + norm_restore 1.26e10 (merged-row factors: median 1.61, max 9.4); after ``act_cluster`` and before
``refit`` it changes little (67.51 vs 67.02). The variance argument restores the merged neuron's *scale*, not its
*direction*: under the same isotropic-input assumption the plain mean is already the least-squares scale of the
merged row for predicting its members (Σ_i ⟨w̄, w_i⟩ / (N‖w̄‖²) = 1), and SmolLM2's merged neurons are nearly
orthogonal, so restoring their variance mostly amplifies error, which the pre-norm residual stream adds up over
28 blocks without renormalising it. It is kept as the measured counterpart of Fold-AR, not as a recommendation.

Options: ``producers``, the module names (``mlp/up``, ``attn/v``: suffixes of a producer kernel's path) whose
merged rows are rescaled; default every producer of every folded group. Rows are rescaled after whatever merge
the fold used (plain or weighted), so it chains after ``act_cluster`` and before ``refit``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxfold import tree as tree_lib
from jaxfold.corrections.registry import CorrectionContext, register_correction
from jaxfold.errors import UserError
from jaxfold.placement import on_host, placed_like


def restore_factors(rows: np.ndarray, merged: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """mean ‖row‖ of each cluster over the norm of its merged row (1 for a singleton or a zero merged row)."""
    rows, merged = np.asarray(rows, np.float64), np.asarray(merged, np.float64)
    k = len(merged)
    sizes = np.bincount(labels, minlength=k)
    mean_norm = np.bincount(labels, weights=np.linalg.norm(rows, axis=1), minlength=k) / np.maximum(sizes, 1)
    merged_norm = np.linalg.norm(merged, axis=1)
    return np.where((sizes > 1) & (merged_norm > 0), mean_norm / np.where(merged_norm > 0, merged_norm, 1.0), 1.0)


def _wanted(path: str, producers: Any) -> bool:
    if producers in (None, "all"):
        return True
    return any(path.endswith(f"/{name.strip('/')}/kernel") for name in producers)


@register_correction("norm_restore", inputs="tokens",
                     description="data-free: each merged producer row rescaled to its cluster's mean row norm "
                                 "(Fold-AR's variance argument without a BatchNorm)")
def norm_restore(ctx: CorrectionContext) -> dict[str, Any]:
    labels = ctx.require_fold("norm_restore")
    producers = ctx.options.get("producers", "all")
    if isinstance(producers, str) and producers != "all":
        raise UserError(f"norm_restore option producers={producers!r}: give a list of module names such as "
                        "['mlp/up'] or 'all'")
    original = tree_lib.flatten(ctx.variables)
    flat = {path: on_host(a) for path, a in tree_lib.flatten(ctx.folded).items()}
    new_flat = dict(flat)
    factors = []
    for group in ctx.spec.groups:
        lab = np.asarray(labels[group.name])
        k = int(lab.max()) + 1 if lab.size else 0
        if k == len(lab):
            continue
        merged_clusters = np.bincount(lab, minlength=k) > 1  # the factors reported (singletons keep 1)
        for m in group.members:
            if m.role != "producer" or not _wanted(m.path, producers):
                continue
            rows = m.channel_first(np.asarray(on_host(original[m.path])), len(lab))
            merged_kernel = np.asarray(flat[m.path])
            merged = m.channel_first(merged_kernel, k)
            factor = restore_factors(rows, merged, lab)
            scaled = np.asarray(merged, np.float64) * factor[:, None]
            new_flat[m.path] = m.from_channel_first(scaled, merged_kernel.shape, k).astype(merged_kernel.dtype)
            factors.append(factor[merged_clusters])
    if producers not in (None, "all") and not factors:
        raise UserError(f"norm_restore option producers={list(producers)}: no producer of a folded group matches; "
                        "name modules as in the parameter paths (e.g. 'mlp/up', 'mlp/gate', 'attn/v')")
    if factors:
        every = np.concatenate(factors)
        ctx.notes["norm_restore_factor"] = {"median": float(np.median(every)), "max": float(every.max())}
    return placed_like(ctx.folded, new_flat, flat)
