"""jaxfold: data-free, fine-tuning-free model folding in JAX/Flax.

Layers (each imports only those above it): tree → kmeans → spec → fold → models → data → io → eval → compress →
train → cli. The public API below is pure: pytrees in, new pytrees out, explicit PRNG keys.
"""

__version__ = "0.1.0"

from jaxfold.compress import FoldedModel, fold_model
from jaxfold.fold import FoldResult, duplicate_channels, fold, permute_group
from jaxfold.kmeans import KMeansResult, kmeans
from jaxfold.spec import FoldSpec, Group, Member

__all__ = ["FoldResult", "FoldSpec", "FoldedModel", "Group", "KMeansResult", "Member", "__version__",
           "duplicate_channels", "fold", "fold_model", "kmeans", "permute_group"]
