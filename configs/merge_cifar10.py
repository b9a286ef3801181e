"""Model merging (the paper's Tables 1–2) on CIFAR-10: two full-width ResNet18s (CIFAR stem) — ``:vgg11``: two
VGG11-BNs (torchvision layout, as configs/vgg11_cifar10.py) — merged into one by weight matching, ZipIt! and
folding, each followed by REPAIR, against the two endpoints and their ensemble (averaged logits).

Settings as configs/merge_fmnist.py: ``same`` — two seeds trained on all 10 classes (Table 2); ``split`` — one model
on classes 0–4, the other on 5–9 (Table 1), each with the full 10-way head, the merged head joined by averaging the
logits; ``split_by_task`` — the split's endpoints, the heads joined by task (jaxfold/merge_run.py says why). Each
endpoint trains as configs/resnet18_cifar10.py (configs/vgg11_cifar10.py): 60 epochs. REPAIR (and ZipIt!'s
correlations) read a full epoch of training images, 50,000, as the paper's CIFAR runs.

Data: a path you provide (not fetchable on these machines). On a GPU:

    jaxfold merge --config configs/merge_cifar10.py --workdir workdirs/merge_cifar10/resnet18 \
        --config.data.path=/path/to/cifar-10-batches-py/..
    jaxfold merge --config configs/merge_cifar10.py:vgg11 --workdir workdirs/merge_cifar10/vgg11 \
        --config.data.path=/path/to/cifar-10-batches-py/..

Endpoints are trained and cached under <workdir>/endpoints/, the results in <workdir>/results.json.
"""

import ml_collections

from jaxfold.errors import UserError
from jaxfold.merge_run import merge_section

# What configs/merge_fmnist.py (the CPU stand-in) reduces: Fashion-MNIST, the MLP or a ResNet18 at width 0.0625,
# 5–8 epochs and 10,000 REPAIR images, so that four endpoints train and merge in minutes on a 2-core CPU.
FULL_EPOCH = 50_000  # CIFAR-10's training images


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "resnet18", "vgg11"):
        raise UserError(f"configs/merge_cifar10.py takes no argument (ResNet18), :resnet18 or :vgg11, got {arg!r}")
    c = ml_collections.ConfigDict()
    c.model = dict(name="resnet18", stem="cifar", in_channels=3, num_classes=10, width=1.0, image_size=32)
    # classes: the endpoints' label subsets are set per setting by the merge runner (empty: every class)
    c.data = dict(name="cifar10", path="", crop_padding=4, hflip=True, classes=())
    c.train = dict(epochs=60, batch_size=128, lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
                   warmup_epochs=0.0, seed=0, eval_every=1, eval_batch_size=500)
    c.merge = merge_section(repair_examples=FULL_EPOCH)
    if arg == "vgg11":  # the paper's other merged model: torchvision's VGG11-BN at 10 classes
        c.model = dict(name="vgg11_bn", head="imagenet", in_channels=3, num_classes=10, width=1.0, image_size=32)
        c.train.lr = 0.05
    return c
