"""The paper's Fig. 11 on the Fashion-MNIST ResNet18 stand-in: train with an L1 or an L2 penalty on the kernels,
then sweep structured magnitude pruning (± REPAIR) against folding (Fold-AR, Fold-DIR, Fold-R).

The paper finds pruning ahead only after L1 (sparsity-inducing) training. Width 0.125 as configs/resnet18_fmnist.py,
but 3 epochs (≈ 15 min on a loaded 2-core CPU) and no weight decay: the penalty is the only regulariser
(``train.l1`` / ``train.l2``, jaxfold/train.py). Coefficients are not tuned: l2 = 2.5e-4 is the default training's
weight decay 5e-4 (gradient 2·l2·w) restricted to kernels; l1 = 1e-4 shrinks every kernel weight by lr·l1 per step.

    jaxfold sweep --config configs/regularisation_fmnist.py:l2 --workdir workdirs/regularisation_fmnist/sweep_l2
    jaxfold sweep --config configs/regularisation_fmnist.py:l1 --workdir workdirs/regularisation_fmnist/sweep_l1

Each trains its checkpoint first when missing (workdirs/regularisation_fmnist/<arg>/checkpoint).
"""

import ml_collections

from jaxfold.fold_run import cv_fold_section
from jaxfold.sweep import cv_sweep_section

PENALTIES = {"l1": dict(l1=1e-4, l2=0.0), "l2": dict(l1=0.0, l2=2.5e-4)}
# fold_dir last: its DeepInversion batch is the slowest part of a sweep on a CPU, so the rest finishes first
VARIANTS = ("sp_l1:none", "sp_l1:repair", "sp_l2:none", "sp_l2:repair", "fold:fold_ar", "fold:repair",
            "fold:fold_dir")


def get_config(arg: str = "l2") -> ml_collections.ConfigDict:
    if arg not in PENALTIES:
        raise ValueError(f"configs/regularisation_fmnist.py takes :l1 or :l2, got {arg!r}")
    c = ml_collections.ConfigDict()
    c.model = dict(name="resnet18", stem="cifar", in_channels=1, num_classes=10, width=0.125, image_size=28)
    c.data = dict(name="fashion_mnist", path="", crop_padding=2, hflip=True)
    c.train = dict(epochs=3, batch_size=128, lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0,
                   warmup_epochs=0.0, seed=0, eval_every=3, eval_batch_size=500, **PENALTIES[arg])
    ckpt = f"workdirs/regularisation_fmnist/{arg}/checkpoint"
    c.fold = cv_fold_section(ckpt)
    c.sweep = cv_sweep_section(ckpt, variants=VARIANTS, ratios=(0.25, 0.5, 0.75), variance_ratio_at=())
    return c
