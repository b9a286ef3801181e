"""Baselines folding is compared against, returning the same :class:`jaxfold.result.Compressed` as folding:
structured magnitude pruning (SP-L1, SP-L2: remove the weakest channels), IFM (greedy pairwise merging) and
Wanda-sp (|W|·‖x‖ with calibration data; needs data, so it is not in ``BASELINES``).

``BASELINES[name](model_config, variables, plan)`` runs one by name, so sweeps treat them like folding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from jaxfold.baselines.ifm import consumer_columns, ifm, ifm_labels, ifm_model
from jaxfold.baselines.pruning import PruneResult, channel_scores, keep_top, prune, prune_model
from jaxfold.baselines.wanda import consumer_input_norms, wanda_scores, wanda_sp_model
from jaxfold.result import Compressed

Baseline = Callable[[Any, dict[str, Any], Any], Compressed]  # (model_config, variables, plan)

BASELINES: dict[str, Baseline] = {
    "sp_l1": functools.partial(prune_model, norm=1),
    "sp_l2": functools.partial(prune_model, norm=2),
    "ifm": ifm_model,
}

__all__ = [
    "BASELINES",
    "Baseline",
    "PruneResult",
    "channel_scores",
    "consumer_columns",
    "consumer_input_norms",
    "ifm",
    "ifm_labels",
    "ifm_model",
    "keep_top",
    "prune",
    "prune_model",
    "wanda_scores",
    "wanda_sp_model",
]
