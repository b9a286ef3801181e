"""Fold a model of your own — no spec, no config class: the model is named by import path and its fold spec is
derived by tracing (docs/tracing.md). The default is the NNX CNN of experiments/own_models.py; point
``--config.model`` at your own ``package.module:function`` returning ``(model, example_args)`` (linen or NNX) or
``(model, example_args, variables)``.

    jaxfold fold --config configs/own_model.py --workdir workdirs/own_cnn --config.fold.ratio=0.5
    jaxfold fold --config configs/own_model.py --workdir workdirs/own_vit \\
        --config.model=experiments.own_models:build_vit --config.model_args.width=2
    jaxfold fold --config configs/own_model.py:repair --workdir workdirs/own_cnn_repair   # REPAIR on Fashion-MNIST
    jaxfold sweep --config configs/own_model.py --workdir workdirs/own_cnn_sweep   # ratios x corrections, one spec

A sweep's metric is test accuracy when the config has a ``data`` section (``:repair`` adds Fashion-MNIST), else the
folded outputs' relative error against the dense model's on the example input (``output_error``).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = "experiments.own_models:build_nnx_cnn"
    c.model_args = dict(width=2)
    # variables: '' = the builder's (NNX: the module's own weights; linen: a random init unless the builder
    # returns variables) or an .npz of '/'-joined paths; verify: the permutation check (None: when concrete)
    c.fold = dict(ratio=0.5, correction="none", clusterer="kmeans", n_init=10, max_iter=300, seed=0, variables="",
                  verify=None, repair_examples=2000)
    if arg == "repair":  # REPAIR's statistics from Fashion-MNIST training images (jaxfold data fetch fashion_mnist)
        c.model_args = dict(width=2, in_channels=1)
        c.data = dict(name="fashion_mnist", path="", crop_padding=0, hflip=False)
        c.fold.correction = "repair"
    c.sweep = dict(variants=("fold:none", "fold:fold_ar", "fold:repair") if arg == "repair" else
                   ("fold:none", "fold:fold_ar"), ratios=(0.25, 0.5), seeds=(0,), imports=(), n_init=10,
                   max_iter=300, clusterer="kmeans", verify=None, repair_examples=2000)
    return c
