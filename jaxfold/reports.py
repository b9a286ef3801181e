"""The numbers a compression reports (per-group entries, parameter counts and sparsity, clustering inertia),
computed the same way by folding and by the baselines so their reports compare.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxfold import tree as tree_lib
from jaxfold.merge import merge_rows


def unchanged_group_report(name: str, n: int) -> dict[str, Any]:
    """The report entry of a group left at its width (k = n: the identity)."""
    return {"group": name, "n": n, "k": n, "channel_ratio": 0.0, "inertia": 0.0, "seconds": 0.0}


def size_report(variables: Mapping[str, Any], new_variables: Mapping[str, Any]) -> dict[str, Any]:
    """Parameter counts before/after (weights, biases, BN scale/bias; no running stats) and the sparsity."""
    before, after = tree_lib.count(variables.get("params", {})), tree_lib.count(new_variables.get("params", {}))
    return {"params_before": before, "params_after": after, "param_sparsity": 1.0 - after / before if before else 0.0}


def group_inertia(x: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Σ_i ||x_i − mean of its cluster||² on the host (the report's number, clusterer-independent): cluster means as
    the merge computes them (:func:`merge_rows`; every cluster is non-empty by now), residuals taken before squaring
    (no cancellation), summed in float64."""
    residual = x - merge_rows(x, labels, k, "producer")[labels]
    return float(np.einsum("ij,ij->", residual, residual, dtype=np.float64))
