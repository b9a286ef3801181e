"""Fold any Flax model without writing a spec: the spec derived from the traced forward pass
(:mod:`~jaxfold.trace.derive`), the folded forward rebuilt from the program (:mod:`~jaxfold.trace.rebuild`),
linen through ``fold_traced`` and NNX modules through ``fold_nnx``."""

from jaxfold.trace.derive import TraceError, derive_spec
from jaxfold.trace.nnx_fold import WIDTH_UPDATERS, fold_nnx
from jaxfold.trace.traced_fold import TracedFold, fold_traced

__all__ = ["WIDTH_UPDATERS", "TraceError", "TracedFold", "derive_spec", "fold_nnx", "fold_traced"]
