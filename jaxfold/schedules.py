"""Per-block compression schedules for transformer stacks (plans whose ratio depends on the block), and the
calibration of a schedule to a target fraction of parameters removed.

A schedule maps a scale s to a plan: every group named ``block{i}.attn`` / ``block{i}.mlp`` keeps
round(n·(1 − s·ratio)) units (the paper's LLM convention, ``round``, not the CV ``floor``), at least 1.
The paper's LLaMA-7B recipe, written as fractions of depth so it applies to any depth: blocks in [11/32, 22/32)
lose 10 % of heads and 40 % of MLP neurons, blocks in [22/32, 30/32) 20 % and 50 %, the rest nothing
(→ 19.4 % of LLaMA-7B's parameters).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from jaxfold.errors import UserError

PAPER_LLAMA_RECIPE = ((11 / 32, 22 / 32, 0.10, 0.40), (22 / 32, 30 / 32, 0.20, 0.50))
_GROUP = re.compile(r"block(\d+)\.(attn|mlp)$")

Plan = Callable[[str, int], int]


def block_ratios(num_layers: int, ranges: Sequence[tuple[float, float, float, float]]
                 ) -> list[tuple[float, float]]:
    """(attention ratio, MLP ratio) per block from (start, stop, attn, mlp) depth fractions; a block i is in
    [start, stop) when round(start·L) ≤ i < round(stop·L)."""
    out = [(0.0, 0.0)] * num_layers
    for start, stop, attn, mlp in ranges:
        for i in range(round(start * num_layers), round(stop * num_layers)):
            out[i] = (attn, mlp)
    return out


def block_plan(ratios: Sequence[tuple[float, float]], scale: float = 1.0) -> Plan:
    """A plan from per-block (attn, mlp) ratios × ``scale``; groups that are not per-block keep their width."""
    def plan(group: str, n: int) -> int:
        match = _GROUP.match(group)
        if not match:
            return n
        ratio = min(0.999, scale * ratios[int(match.group(1))][0 if match.group(2) == "attn" else 1])
        return max(1, min(n, round(n * (1.0 - ratio))))
    return plan


def uniform(num_layers: int, attn: float = 1.0, mlp: float = 1.0) -> list[tuple[float, float]]:
    return [(attn, mlp)] * num_layers


def paper_recipe(num_layers: int) -> list[tuple[float, float]]:
    return block_ratios(num_layers, PAPER_LLAMA_RECIPE)


def paper_recipe_mlp(num_layers: int) -> list[tuple[float, float]]:
    """The recipe's MLP ratios with every attention head kept: an ablation for models with few KV groups, where
    folding whole groups is coarse (SmolLM2: 3 per block, so one fold removes a third of a block's attention)."""
    return [(0.0, mlp) for _, mlp in paper_recipe(num_layers)]


SCHEDULES: dict[str, Callable[[int], list[tuple[float, float]]]] = {
    "uniform": uniform, "recipe": paper_recipe, "recipe_mlp": paper_recipe_mlp}


def group_widths(config: Any) -> dict[str, int]:
    """Every group's width, from the shapes alone (no arrays allocated)."""
    return config.fold_spec().widths(config.abstract_variables())


def sparsity(config: Any, plan: Plan, widths: dict[str, int] | None = None) -> float:
    """Fraction of parameters a plan removes (analytic: the rebuilt config's count)."""
    widths = widths or group_widths(config)
    new = config.with_widths({g: plan(g, n) for g, n in widths.items()})
    return 1.0 - new.param_count() / config.param_count()


def calibrate(config: Any, schedule: str, target: float, tolerance: float = 0.005) -> tuple[Plan, float, float]:
    """The plan of ``schedule`` (scaled) removing ≈ ``target`` of the parameters: (plan, scale, achieved).

    Bisection on the scale; widths are integers, so the achieved fraction is the closest reachable one from
    below or above within the search (reported, not assumed)."""
    if schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {schedule!r}; known: {sorted(SCHEDULES)}")
    if not 0.0 < target < 1.0:
        raise UserError(f"target sparsity must be in (0, 1), got {target}")
    ratios = SCHEDULES[schedule](config.num_layers)
    widths = group_widths(config)
    lo, hi = 0.0, 1.0 / max(max(a, m) for a, m in ratios)
    best = (float("inf"), 0.0, 0.0)
    for _ in range(40):
        mid = (lo + hi) / 2
        achieved = sparsity(config, block_plan(ratios, mid), widths)
        best = min(best, (abs(achieved - target), mid, achieved))
        if abs(achieved - target) <= tolerance / 4:
            break
        lo, hi = (mid, hi) if achieved < target else (lo, mid)
    if best[0] > tolerance:
        raise UserError(f"schedule {schedule!r} cannot reach {target:.3f} of the parameters within {tolerance} "
                        f"(closest {best[2]:.4f})")
    return block_plan(ratios, best[1]), best[1], best[2]
