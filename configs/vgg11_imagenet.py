"""torchvision VGG11-BN on ImageNet — Fig. 6 (bottom right). Import the torchvision weights first.

Data: a path you provide (not fetchable on these machines). On a GPU:

    jaxfold import torch --config configs/vgg11_imagenet.py --state-dict vgg11_bn.pth --out \
        workdirs/vgg11_imagenet/checkpoint
    jaxfold sweep --config configs/vgg11_imagenet.py --workdir workdirs/sweep_vgg11_imagenet \
        --config.data.path=/path/to/imagenet
"""

import ml_collections

from jaxfold.sweep import cv_sweep_section


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = dict(name="vgg11_bn", head="imagenet", in_channels=3, num_classes=1000, width=1.0, image_size=224)
    c.data = dict(name="imagefolder", path="", crop_padding=0, hflip=False, image_size=224)
    c.train = dict(epochs=1, batch_size=128, lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
                   warmup_epochs=0.0, seed=0, eval_every=1, eval_batch_size=500)
    # repair uses a fixed subset of the training images; the paper used a full epoch (CIFAR) or 256 images (ImageNet)
    c.sweep = cv_sweep_section("workdirs/vgg11_imagenet/checkpoint", train_if_missing=False,
                               ratios=(0.05, 0.1, 0.15, 0.25, 0.35, 0.45, 0.5, 0.55, 0.65, 0.75))
    return c
