"""The clustering step of folding, pluggable: a clusterer maps a group's features (n, d), k and a PRNG key to
labels (n,) in [0, k). ``fold`` takes one by name or as a function.

Named: ``kmeans`` (the default: jaxfold's jitted k-means), and the alternatives of the paper's clustering ablation
(Fig. 3), through scikit-learn (``pip install 'jaxfold[clustering]'``): ``ward`` (also the official LLM code's
choice), ``single``, ``complete`` and ``average`` agglomerative linkages, and ``spectral``. The paper's fifth
method, iterative greedy merging, is the ``ifm`` baseline (:mod:`jaxfold.baselines.ifm`): it merges on the weights
the merged network would have, so it is a method of its own rather than a clusterer of fixed features.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxfold.errors import UserError
from jaxfold.kmeans import check_k, host_rng, kmeans_labels

Clusterer = Callable[[jax.Array, int, jax.Array], Any]  # (features (n, d), k, key) -> labels (n,)


def kmeans_clusterer(n_init: int = 10, max_iter: int = 300) -> Clusterer:
    return lambda x, k, key: kmeans_labels(x, k, key=key, n_init=n_init, max_iter=max_iter)


def _sklearn_cluster() -> Any:
    try:
        import sklearn.cluster
    except ImportError as e:
        raise ImportError("this clusterer needs scikit-learn: pip install 'jaxfold[clustering]' "
                          "(or pip install scikit-learn)") from e
    return sklearn.cluster


def _trivial(x: np.ndarray, k: int) -> np.ndarray | None:
    """Labels for k = 1 and k = n, which every method agrees on (and some sklearn estimators refuse)."""
    n = x.shape[0]
    check_k(k, n)
    if k == 1:
        return np.zeros(n, np.int64)
    return np.arange(n) if k == n else None


def _agglomerative(linkage: str) -> Clusterer:
    def cluster(x: Any, k: int, key: jax.Array) -> np.ndarray:
        del key  # deterministic
        x = np.asarray(x, np.float64)
        trivial = _trivial(x, k)
        if trivial is not None:
            return trivial
        model = _sklearn_cluster().AgglomerativeClustering(n_clusters=k, linkage=linkage)
        return model.fit_predict(x)

    cluster.__name__ = f"{linkage}_clusterer"
    cluster.__doc__ = (f"Agglomerative clustering with {linkage} linkage on Euclidean distances (scikit-learn); "
                       "deterministic, every one of the k clusters non-empty.")
    return cluster


ward_clusterer = _agglomerative("ward")


def spectral_clusterer(x: Any, k: int, key: jax.Array) -> np.ndarray:
    """Spectral clustering (scikit-learn) on a Gaussian affinity exp(−||x_i − x_j||² / s), with s the median squared
    distance between distinct rows: weight scales differ by orders of magnitude between layers, and sklearn's fixed
    default (s = 1) leaves a layer's affinity matrix either all ones or the identity. Seeded from ``key``."""
    x = np.asarray(x, np.float64)
    trivial = _trivial(x, k)
    if trivial is not None:
        return trivial
    sq = np.sum(x * x, axis=1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    off = dist[~np.eye(len(x), dtype=bool)]
    scale = np.median(off[off > 0]) if np.any(off > 0) else 1.0
    seed = int(host_rng(key).integers(2**31 - 1))  # sklearn's random_state
    model = _sklearn_cluster().SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed,
                                                  assign_labels="kmeans", n_init=10)
    return model.fit_predict(np.exp(-dist / scale))


CLUSTERERS: dict[str, Callable[..., Clusterer]] = {
    "kmeans": kmeans_clusterer,
    "ward": lambda **_: ward_clusterer,
    "single": lambda **_: _agglomerative("single"),
    "complete": lambda **_: _agglomerative("complete"),
    "average": lambda **_: _agglomerative("average"),
    "spectral": lambda **_: spectral_clusterer,
}


def get_clusterer(clusterer: str | Clusterer, **options: Any) -> Clusterer:
    """A clusterer by name (``options`` go to k-means: n_init, max_iter) or the function itself."""
    if callable(clusterer):
        return clusterer
    if clusterer not in CLUSTERERS:
        raise UserError(f"unknown clusterer {clusterer!r}; known: {sorted(CLUSTERERS)} (or pass a function "
                        "(features, k, key) -> labels)")
    return CLUSTERERS[clusterer](**options)
