"""``fold_dir`` (Fold-DIR, data-free): REPAIR with a DeepInversion batch instead of real data.

The batch is synthesised once from the *uncompressed* model (matching its BN running statistics) and cached on
disk, keyed by the model, its weights, the options and the seed, so a sweep over ratios and corrections pays for
it once. Statistics are then recomputed with the whole batch in one pass, as the official code does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax

from jaxfold.corrections.deep_inversion import DeepInversionOptions, cached_synthesize
from jaxfold.corrections.registry import CorrectionContext, register_correction
from jaxfold.corrections.repair import repair_variables
from jaxfold.errors import UserError
from jaxfold.paths import cache_root


def deep_inversion_options(options: dict[str, Any]) -> DeepInversionOptions:
    """``DeepInversionOptions`` from a correction's options (``di_steps=…``, ``di_batch_size=…``, …)."""
    fields = {f.name for f in dataclasses.fields(DeepInversionOptions)}
    chosen = {k.removeprefix("di_"): v for k, v in options.items() if k.startswith("di_") and k != "di_seed"}
    unknown = sorted(set(chosen) - fields)
    if unknown:
        raise UserError(f"unknown DeepInversion options {['di_' + u for u in unknown]}; valid: "
                        f"{sorted('di_' + f for f in fields)} and di_seed")
    return DeepInversionOptions(**chosen)


@register_correction("fold_dir", inputs="images",
                     description="Fold-DIR: REPAIR on a cached DeepInversion batch of the original model")
def fold_dir(ctx: CorrectionContext) -> dict[str, Any]:
    if not ctx.variables.get("batch_stats"):  # before anything reads an image shape the model may not have
        raise UserError(f"fold_dir synthesises images that match BatchNorm running statistics; {ctx.config.arch} "
                        "has none (use a correction that does not need them)")
    options = deep_inversion_options(ctx.options)
    cache_dir = Path(ctx.options.get("cache_dir") or cache_root() / "deep_inversion")
    key = jax.random.key(int(ctx.options.get("di_seed", 0)))
    images = cached_synthesize(ctx.config, ctx.variables, key, options, cache_dir)
    return repair_variables(ctx.config, ctx.variables, ctx.folded_config, ctx.folded, ctx.labels, lambda: [images])
