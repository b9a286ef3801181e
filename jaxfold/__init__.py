"""jaxfold: data-free, fine-tuning-free model folding in JAX/Flax.

Layers (each imports only those above it): tree → models → data → io → eval → train → cli.
"""

__version__ = "0.1.0"
