"""VGG11-BN (CIFAR head: 1×1 pool, two hidden Linears) with 1 input channel on Fashion-MNIST.

    jaxfold data fetch fashion_mnist
    jaxfold train --config configs/vgg11_fmnist.py --workdir workdirs/vgg11_fmnist
    jaxfold fold --config configs/vgg11_fmnist.py --workdir workdirs/vgg11_fmnist_fold45 --config.fold.ratio=0.45
"""

import ml_collections

from jaxfold.fold_run import cv_fold_section
from jaxfold.sweep import cv_sweep_section


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = dict(name="vgg11_bn", head="cifar", in_channels=1, num_classes=10, width=0.25, image_size=28)
    c.data = dict(name="fashion_mnist", path="", crop_padding=2, hflip=True)
    c.train = dict(epochs=20, batch_size=128, lr=0.05, momentum=0.9, nesterov=False, weight_decay=5e-4,
                   warmup_epochs=0.0, seed=0, eval_every=1, eval_batch_size=500)
    # `jaxfold fold`: the checkpoint, the channel ratio, the correction, the clusterer (see configs/resnet18_fmnist.py)
    c.fold = cv_fold_section("workdirs/vgg11_fmnist/checkpoint")
    # `jaxfold sweep`: every CV method × correction × channel ratio on the checkpoint (trained first if missing)
    c.sweep = cv_sweep_section("workdirs/vgg11_fmnist/checkpoint")
    if arg == "full":  # full-width VGG11-BN, for a GPU
        c.model.width = 1.0
        c.train.epochs = 60
    return c
