"""jaxfold: data-free, fine-tuning-free model folding in JAX/Flax.

Layers (each imports only those above it): tree, files, paths → kmeans → spec → fold → batch_stats →
corrections → models → data → io → eval → compress → baselines → diagnostics → train → sweep → cli. The public
API below is pure: pytrees in, new pytrees out, explicit PRNG keys.
"""

__version__ = "0.1.0"

from jaxfold.compress import CompressedModel, FoldedModel, correct, fold_model
from jaxfold.corrections import CORRECTIONS, register_correction
from jaxfold.diagnostics import variance_ratios
from jaxfold.fold import FoldResult, duplicate_channels, fold, permute_group
from jaxfold.kmeans import KMeansResult, kmeans
from jaxfold.spec import FoldSpec, Group, Member

__all__ = ["CORRECTIONS", "CompressedModel", "FoldResult", "FoldSpec", "FoldedModel", "Group", "KMeansResult",
           "Member", "__version__", "correct", "duplicate_channels", "fold", "fold_model", "kmeans", "permute_group",
           "register_correction", "variance_ratios"]
