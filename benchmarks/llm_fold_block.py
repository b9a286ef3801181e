#!/usr/bin/env python
"""One SmolLM2 MLP block (block 10: 1536 neurons, features [gate ‖ up ‖ down]) at the recipe's 40 % ratio: the
official LLM clustering (sklearn PCA + Ward) vs jaxfold k-means, seconds and inertia, same process.

    .venv/bin/python benchmarks/llm_fold_block.py
"""
import json
import time

import jax
import numpy as np
from sklearn.cluster import AgglomerativeClustering
from sklearn.decomposition import PCA

from jaxfold import tree
from jaxfold.fold import _inertia, group_features
from jaxfold.kmeans import kmeans_labels
from jaxfold.llm import load_language_model


def timed(fn):
    t = time.perf_counter()
    labels = np.asarray(fn())
    return time.perf_counter() - t, labels


def main() -> None:
    model = load_language_model("smollm2")
    flat = {p: np.asarray(a) for p, a in tree.flatten(model.variables).items()}
    x = np.asarray(group_features(flat, model.config.fold_spec().group("block10.mlp"), 1536), np.float64)
    k = round(1536 * 0.6)
    out = {"n": 1536, "d": x.shape[1], "k": k}

    def ward():
        z = PCA(n_components=min(x.shape)).fit_transform(x)
        return AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(z)

    runs = {"ward": ward}
    for n_init, max_iter in [(1, 50), (3, 100), (10, 300)]:
        runs[f"kmeans_{n_init}x{max_iter}"] = (
            lambda n_init=n_init, max_iter=max_iter: kmeans_labels(x.astype(np.float32), k, key=jax.random.key(0),
                                                                   n_init=n_init, max_iter=max_iter))
    for name, fn in runs.items():
        results = [timed(fn) for _ in range(2)]
        out[f"{name}_seconds"] = [round(s, 2) for s, _ in results]
        out[f"{name}_inertia"] = round(_inertia(x, results[-1][1], k), 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
