"""The correction registry: a variance correction is a named pair of pure functions around the fold.

* ``prepare(ctx) -> (variables, spec)`` runs *before* clustering and may re-parametrise the model or change which
  members are features (Fold-AR fuses BatchNorm into its producer); default: unchanged. It may return a third
  item, ``(variables, spec)`` to cluster on instead (Fold-AR clusters the original weights by default).
* ``apply(ctx) -> variables`` runs *after* the merge and returns the corrected folded variables (REPAIR
  recomputes statistics, Fold-AR rescales BN scales); default: unchanged.

Registering one from user code is a decorator away (see docs/corrections.md)::

    @register_correction("halfway", description="scale BN γ half-way back to the original norm")
    def halfway(ctx):
        ...
        return new_variables
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from jaxfold.errors import UserError
from jaxfold.spec import FoldSpec

if TYPE_CHECKING:
    from jaxfold.models.base import ModelConfig

Batches = Callable[[], Iterable[np.ndarray]]  # () -> normalised input batches (N, H, W, C) float32


@dataclasses.dataclass(frozen=True)
class CorrectionContext:
    """Everything a correction may read. ``prepared`` is what was clustered and merged (``variables`` unless
    ``prepare`` changed it); ``folded``/``folded_config``/``labels`` are filled in for ``apply``."""

    config: ModelConfig
    variables: dict[str, Any]
    spec: FoldSpec
    key: jax.Array
    prepared: dict[str, Any] | None = None
    folded_config: ModelConfig | None = None
    folded: dict[str, Any] | None = None
    labels: dict[str, np.ndarray] | None = None
    data: Batches | None = None  # training-data batches, for data-driven corrections
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)  # apply may add to it: merged into the report

    def require_data(self, who: str) -> Batches:
        if self.data is None:
            raise UserError(f"correction {who!r} needs training data: pass data=… (a dataset or a function "
                            "returning batches) or choose a data-free correction (none, fold_ar, fold_dir)")
        return self.data

    def require_fold(self, who: str) -> dict[str, np.ndarray]:
        """The fold's labels; a pruned model (channels mapped to −1) or no labels at all is refused."""
        labels = self.labels
        if labels is None or any(np.min(lab) < 0 for lab in labels.values() if np.size(lab)):
            raise UserError(f"{who} corrects a fold (it merges clusters); this compression has no clusters (a pruned "
                            "model removes channels). Use jaxfold.compress.fold_model(..., correction=…) instead")
        return labels


Prepare = Callable[[CorrectionContext], tuple[Any, ...]]  # (variables, spec[, (cluster-on variables, spec)])
Apply = Callable[[CorrectionContext], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Correction:
    name: str
    apply: Apply
    prepare: Prepare | None = None
    data_free: bool = True
    description: str = ""
    inputs: str = "any"  # what models it corrects: "images" (CNN/MLP classifiers), "tokens" (LLaMA-style), "any"

    def check_inputs(self, inputs: str, where: str) -> None:
        """Refuse a correction for a model fed with other inputs, naming where it was asked for."""
        if self.inputs not in ("any", inputs):
            kind = {"images": "image classifiers (CNN/MLP)", "tokens": "language models (LLaMA-style decoders)"}
            raise UserError(f"{where}: correction {self.name!r} corrects {kind[self.inputs]}, not "
                            f"{kind[inputs].split(' (')[0]}; choose one of "
                            f"{sorted(n for n, c in CORRECTIONS.items() if c.inputs in ('any', inputs))}")


CORRECTIONS: dict[str, Correction] = {}


def register_correction(name: str, *, prepare: Prepare | None = None, data_free: bool = True,
                        description: str = "", inputs: str = "any") -> Callable[[Apply], Apply]:
    """Decorator: register ``apply`` (and optionally ``prepare``) under ``name``; re-registering replaces.
    ``inputs`` says what models it corrects ("images", "tokens" or "any"), so sweeps and ``jaxfold fold`` refuse
    it for the others before any work."""
    if inputs not in ("any", "images", "tokens"):
        raise ValueError(f"register_correction inputs must be 'any', 'images' or 'tokens', got {inputs!r}")

    def wrap(apply: Apply) -> Apply:
        CORRECTIONS[name] = Correction(name, apply, prepare, data_free, description or (apply.__doc__ or "").strip(),
                                       inputs)
        return apply
    return wrap


def get_correction(correction: str | Correction) -> Correction:
    if isinstance(correction, Correction):
        return correction
    if correction not in CORRECTIONS:
        raise UserError(f"unknown correction {correction!r}; valid: {sorted(CORRECTIONS)} (or register one with "
                        "jaxfold.corrections.register_correction)")
    return CORRECTIONS[correction]


def correction_chain(names: str | Sequence[str], where: str, inputs: str | None = None) -> tuple[str, ...]:
    """Corrections applied in order, as a sequence or one string joined by '+' (``act_cluster+refit``; ``none``
    dropped), checked against the registry: every name known, each for models fed with ``inputs`` ("images",
    "tokens"; None: not checked), and one that changes what is clustered (``prepare``) only first, since it is the
    fold's own. ``where`` names what asked for them in the errors."""
    chain = tuple(c for c in (names.split("+") if isinstance(names, str) else names) if c != "none")
    for i, name in enumerate(chain):
        if name not in CORRECTIONS:
            raise UserError(f"unknown correction {name!r} in {where}: use names from {sorted(CORRECTIONS)} joined by "
                            "'+'")
        if inputs is not None:
            CORRECTIONS[name].check_inputs(inputs, where)
        if i > 0 and CORRECTIONS[name].prepare is not None:
            raise UserError(f"{where}: correction {name!r} changes what is clustered, so it comes first in the chain "
                            f"{'+'.join(chain)} (e.g. act_cluster+refit)")
    return chain


@register_correction("none", description="Fold-Naive: no correction (BN statistics averaged in the merge)")
def _none(ctx: CorrectionContext) -> dict[str, Any]:
    return ctx.folded  # type: ignore[return-value]
