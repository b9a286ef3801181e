"""jaxfold: data-free, fine-tuning-free model folding in JAX/Flax.

Layers (each imports only those above it): tree, files, paths, errors → layout → measure → kmeans → spec →
clustering → plans → placement → merge → reports → result → folding → trace → batch_stats → corrections → models →
data → io → eval → compress → baselines → diagnostics → merging → train → fold_run → merge_run → sweep → cli. The
public API below is pure: pytrees in, new pytrees out, explicit PRNG keys; every compression (and every merge of two
models) returns one :class:`Compressed`.
"""

__version__ = "0.1.0"

from jaxfold.compress import CompressedModel, FoldedModel, correct, fold_model
from jaxfold.corrections import CORRECTIONS, register_correction
from jaxfold.diagnostics import variance_ratios
from jaxfold.folding import FoldResult, fold
from jaxfold.kmeans import KMeansResult, kmeans
from jaxfold.merge import duplicate_channels, permute_group
from jaxfold.merging import merge_by_folding, merge_by_weight_matching, merge_by_zipit, merge_models
from jaxfold.result import Compressed, CompressionReport, GroupReport
from jaxfold.spec import FoldSpec, Group, Member
from jaxfold.trace import TracedFold, TraceError, derive_spec, fold_nnx, fold_traced

# CompressedModel, FoldedModel, FoldResult and TracedFold: former names of Compressed, kept importable
__all__ = ["CORRECTIONS", "Compressed", "CompressedModel", "CompressionReport", "FoldResult", "FoldSpec",
           "FoldedModel", "Group", "GroupReport", "KMeansResult", "Member", "TraceError", "TracedFold", "__version__",
           "correct", "derive_spec", "duplicate_channels", "fold", "fold_model", "fold_nnx", "fold_traced", "kmeans",
           "merge_by_folding", "merge_by_weight_matching", "merge_by_zipit", "merge_models", "permute_group",
           "register_correction", "variance_ratios"]
