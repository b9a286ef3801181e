"""Results over seeds: mean ± standard deviation per point, the one aggregation every table and figure uses.

One k-means clustering per point is one draw, and on the steep part of an accuracy curve draws differ by several
points; across CPU types even the trained weights and the labels for one key differ (README, "What reproduces
exactly"). So a sweep's tables (:func:`jaxfold.sweep.summary_table`) and the figures of ``paper_figs/`` report,
per row and ratio, the mean over the seeds run, the sample standard deviation (ddof=1: the seeds are a sample of
the clusterings one could have drawn) and how many seeds there were. One seed shows its value alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

DDOF = 1  # sample standard deviation over seeds


@dataclasses.dataclass(frozen=True)
class SeedStats:
    """``mean`` and ``std`` (ddof=1; 0.0 for one seed) of one quantity over ``n`` seeds."""

    mean: float
    std: float
    n: int

    def format(self, scale: float = 1.0, digits: str = ".2f", show_n: bool = False) -> str:
        """``"90.90 ± 1.23"`` (values times ``scale``), just ``"90.90"`` for one seed; ``show_n`` appends
        ``" (n=3)"``."""
        text = f"{scale * self.mean:{digits}}"
        if self.n > 1:
            text += f" ± {scale * self.std:{digits}}"
        return text + (f" (n={self.n})" if show_n else "")


def seed_stats(values: Sequence[float]) -> SeedStats:
    """Mean and sample standard deviation of one quantity's values, one per seed."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("seed_stats needs at least one value")
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - DDOF)) if n > DDOF else 0.0
    return SeedStats(mean, std, n)


def aggregate_seeds(records: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], Hashable],
                    value: str = "value") -> dict[Hashable, SeedStats]:
    """Records grouped by ``key(record)`` (e.g. row name and ratio: everything but the seed), each group's
    ``record[value]`` aggregated; groups in the order they first appear."""
    groups: dict[Hashable, list[float]] = {}
    for r in records:
        groups.setdefault(key(r), []).append(r[value])
    return {k: seed_stats(v) for k, v in groups.items()}
