"""Wanda-sp (structured Wanda, the LLM baseline of the paper's Tables 3–4): a channel's score is Σ |W|·‖x‖ over
its consumer weights, with ‖x‖ the L2 norm of that input feature over calibration data; the lowest-scoring
channels are removed (same k, hence same parameter count, as folding).

For an LLM's MLP neuron that is Σ_out |W_down[i, out]|·‖h_i‖ (h = the down projection's input); for a head, the
same summed over the head's rows of o_proj. Inputs are read with a Flax method interceptor on the consumers'
``nn.Dense`` calls (:mod:`jaxfold.input_norms`), so any Flax model whose consumers are Dense layers works.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from jaxfold import tree as tree_lib
from jaxfold.baselines.pruning import prune
from jaxfold.compress import rebuild
from jaxfold.input_norms import ApplyFn, dense_input_norms, kernel_modules
from jaxfold.plans import Plan
from jaxfold.result import Compressed
from jaxfold.spec import FoldSpec


def consumer_input_norms(apply_fn: ApplyFn, variables: Any, spec: FoldSpec,
                         batches: Iterable[Any]) -> dict[str, np.ndarray]:
    """``{consumer module path: ‖x_j‖₂ over all calibration tokens/examples}`` per input feature j."""
    return dense_input_norms(apply_fn, variables, kernel_modules(spec, ("consumer",)), batches, who="Wanda-sp")


def wanda_scores(variables: Mapping[str, Any], spec: FoldSpec, norms: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Per group, Σ over its consumer members of |W|·‖x‖ summed over each channel's rows."""
    flat = tree_lib.flatten(variables)
    widths = spec.widths(variables)
    scores = {}
    for group in spec.groups:
        total = np.zeros(widths[group.name])
        for m in group.members:
            if m.role != "consumer":
                continue
            kernel = np.abs(np.asarray(flat[m.path], np.float64))
            weighted = kernel * norms[m.path.removeprefix("params/").removesuffix("/kernel")][:, None]
            total += np.asarray(m.channel_first(weighted, widths[group.name])).sum(1)
        scores[group.name] = total
    return scores


def wanda_sp_model(model_config: Any, variables: dict[str, Any], plan: Plan, batches: Iterable[Any],
                   apply_fn: ApplyFn) -> Compressed:
    """Wanda-sp at the widths ``plan`` asks for; ``batches`` are calibration inputs for ``apply_fn(variables, x)``."""
    spec = model_config.fold_spec()
    scores = wanda_scores(variables, spec, consumer_input_norms(apply_fn, variables, spec, batches))
    result = prune(variables, spec, plan, scores=scores)
    report = dict(result.report, method="wanda_sp")
    return rebuild(model_config, result.variables, result.widths, result.channel_map, report)
