"""VGG11-BN (torchvision layout, ImageNet head at 10 classes, as the paper's code) on CIFAR-10 — Fig. 6 (bottom left).

Data: a path you provide (not fetchable on these machines). On a GPU:

    jaxfold sweep --config configs/vgg11_cifar10.py --workdir workdirs/sweep_vgg11_cifar10 \
        --config.data.path=/path/to/cifar-10-batches-py/..
"""

import ml_collections

from jaxfold.sweep import cv_sweep_section


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = dict(name="vgg11_bn", head="imagenet", in_channels=3, num_classes=10, width=1.0, image_size=32)
    c.data = dict(name="cifar10", path="", crop_padding=4, hflip=True)
    c.train = dict(epochs=60, batch_size=128, lr=0.05, momentum=0.9, nesterov=False, weight_decay=5e-4,
                   warmup_epochs=0.0, seed=0, eval_every=1, eval_batch_size=500)
    # repair uses a fixed subset of the training images; the paper used a full epoch (CIFAR) or 256 images (ImageNet)
    c.sweep = cv_sweep_section("workdirs/vgg11_cifar10/checkpoint", train_if_missing=True,
                               ratios=(0.05, 0.1, 0.15, 0.25, 0.35, 0.45, 0.5, 0.55, 0.65, 0.75))
    return c
