"""Variance corrections, selected by name: ``none`` (Fold-Naive), ``repair`` (Fold-R, data), ``fold_ar``
(Fold-AR, data-free), ``fold_dir`` (Fold-DIR, data-free), ``refit`` (transformer consumers re-solved on calibration
tokens). See :mod:`jaxfold.corrections.registry` for how to add one."""

from jaxfold.corrections.registry import (
    CORRECTIONS,
    Batches,
    Correction,
    CorrectionContext,
    correction_chain,
    get_correction,
    register_correction,
)

__all__ = ["CORRECTIONS", "Batches", "Correction", "CorrectionContext", "correction_chain", "get_correction",
           "register_correction"]

# built-in corrections register themselves on import
from jaxfold.corrections import activation_aware, fold_ar, fold_dir, norm_restore, norm_tune, refit, repair  # noqa: F401
