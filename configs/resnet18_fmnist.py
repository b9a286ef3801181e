"""ResNet18 (CIFAR stem, 1 input channel) on Fashion-MNIST — the CPU stand-in for the paper's ResNet18/CIFAR-10.

Width 0.125 (stream widths 8/16/32/64) is the widest whose training fits ~45 min on a 2-core CPU; use
``--config.model.width=1.0`` on a GPU for the full-width model.

    jaxfold data fetch fashion_mnist
    jaxfold train --config configs/resnet18_fmnist.py --workdir workdirs/resnet18_fmnist
    jaxfold fold --config configs/resnet18_fmnist.py --workdir workdirs/resnet18_fmnist_fold45 \
        --config.fold.ratio=0.45 --config.fold.correction=fold_ar
    jaxfold sweep --config configs/resnet18_fmnist.py:clustering --workdir workdirs/clustering_resnet18_fmnist
"""

import ml_collections

from jaxfold.fold_run import cv_fold_section
from jaxfold.sweep import CLUSTERING_VARIANTS, cv_sweep_section


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = dict(name="resnet18", stem="cifar", in_channels=1, num_classes=10, width=0.125, image_size=28)
    c.data = dict(name="fashion_mnist", path="", crop_padding=2, hflip=True)
    c.train = dict(epochs=25, batch_size=128, lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
                   warmup_epochs=0.0, seed=0, eval_every=1, eval_batch_size=500)
    # `jaxfold fold`: the checkpoint to fold (the train command's output above), the channel ratio, the correction
    # (none, fold_ar, fold_dir, repair: training images as in sweeps), the clusterer; evaluates on the test set
    c.fold = cv_fold_section("workdirs/resnet18_fmnist/checkpoint")
    # `jaxfold sweep`: every CV method × correction × channel ratio on the checkpoint (trained first if missing)
    c.sweep = cv_sweep_section("workdirs/resnet18_fmnist/checkpoint")
    if arg == "full":  # the paper-width model, for a GPU
        c.model.width = 1.0
        c.train.epochs = 60
    if arg == "demo":  # `make demo`: a shorter training run and the main corrections at three ratios (~16 min CPU)
        c.train.epochs = 8
        c.sweep.variants = ("fold:none", "fold:fold_ar", "fold:repair", "sp_l2:none", "sp_l2:repair")
        c.sweep.ratios = (0.1, 0.25, 0.45)
        # one clustering is one draw (several points apart on the steep part): folds at 3 seeds, mean ± std in the
        # tables; SP-L2 takes no key (sweep.deterministic), so it runs once
        c.sweep.seeds = (0, 1, 2)
        c.sweep.variance_ratio_at = (0.45,)
    if arg == "clustering":  # the paper's clustering ablation (Fig. 3): each clusterer's folds, repaired with data
        c.sweep.variants = CLUSTERING_VARIANTS
        c.sweep.variance_ratio_at = ()
    if arg == "tiny":  # seconds-long smoke run for tests
        c.model.width = 0.0625
        c.train.epochs = 1
    return c
