"""Benchmarks that compare jaxfold with a reference implementation in the same process/run.

``jaxfold bench train`` — train/eval throughput vs PyTorch eager (:mod:`jaxfold.bench.train`);
``jaxfold bench fold``  — fold time and inertia vs the paper's sklearn PCA + KMeans pipeline
(:mod:`jaxfold.bench.fold`). Results and the exact commands: docs/benchmarks.md.
"""

from __future__ import annotations

import json

BENCHMARKS = ("train", "fold")


def emit(result: dict, out: str) -> int:
    """Print the result as one JSON line and, if asked, write it atomically to ``out``."""
    from jaxfold.files import write_text_atomic

    line = json.dumps(result)
    print(line)
    if out:
        write_text_atomic(out, line + "\n")
    return 0


def main(what: str, argv: list[str]) -> int:
    if what == "train":
        from jaxfold.bench import train

        return train.main(argv)
    if what == "fold":
        from jaxfold.bench import fold

        return fold.main(argv)
    raise ValueError(f"unknown benchmark {what!r}; known: {', '.join(BENCHMARKS)}")
