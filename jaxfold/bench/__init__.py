"""Benchmarks that compare jaxfold with a reference implementation in the same process/run.

``jaxfold bench train`` — train/eval throughput vs PyTorch eager (:mod:`jaxfold.bench.train`);
``jaxfold bench fold``  — fold time and inertia vs the paper's sklearn PCA + KMeans pipeline
(:mod:`jaxfold.bench.fold`). Results and the exact commands: docs/benchmarks.md.
"""

from __future__ import annotations

BENCHMARKS = ("train", "fold")


def main(what: str, argv: list[str]) -> int:
    if what == "train":
        from jaxfold.bench import train

        return train.main(argv)
    if what == "fold":
        from jaxfold.bench import fold

        return fold.main(argv)
    raise ValueError(f"unknown benchmark {what!r}; known: {', '.join(BENCHMARKS)}")
