"""Fold any Flax model without writing a spec: derive it from the traced forward pass."""

from jaxfold.trace.derive import TraceError, derive_spec

__all__ = ["TraceError", "derive_spec"]
