"""Plans: how many channels every group keeps. Separate from folding because every compression (folding, pruning,
IFM, Wanda-sp, the per-block schedules) takes the same plans.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

Plan = float | Mapping[str, float] | Callable[[str, int], int]


def k_for_ratio(n: int, ratio: float) -> int:
    """Channels kept at channel ratio ``ratio``: floor(n·(1 − ratio)), at least 1 (the paper's convention)."""
    if not 0.0 <= ratio < 1.0 or math.isnan(ratio):
        raise ValueError(f"channel ratio must be in [0, 1), got {ratio}")
    return max(1, math.floor(n * (1.0 - ratio) + 1e-9))


def resolve_plan(plan: Plan, widths: Mapping[str, int]) -> dict[str, int]:
    """Target k for every group: a uniform ratio, a {group: ratio} dict (others untouched), or f(group, n) -> k."""
    if isinstance(plan, int | float) and not isinstance(plan, bool):
        return {g: k_for_ratio(n, float(plan)) for g, n in widths.items()}
    if isinstance(plan, Mapping):
        unknown = sorted(set(plan) - set(widths))
        if unknown:
            raise ValueError(f"plan names unknown groups {unknown}; groups: {list(widths)}")
        return {g: k_for_ratio(n, float(plan[g])) if g in plan else n for g, n in widths.items()}
    if callable(plan):
        ks = {}
        for g, n in widths.items():
            k = plan(g, n)
            if not isinstance(k, int | np.integer) or not 1 <= k <= n:
                raise ValueError(f"plan function gave k={k!r} for group {g!r} of width {n}; need an int in [1, {n}]")
            ks[g] = int(k)
        return ks
    raise TypeError(f"plan must be a ratio, a dict of ratios or a function (group, n) -> k; got {type(plan)}")
