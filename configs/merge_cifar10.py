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

from pathlib import Path

import ml_collections

from jaxfold import config as config_lib
from jaxfold.errors import UserError
from jaxfold.merge_run import merge_section

# What configs/merge_fmnist.py (the CPU stand-in) reduces: Fashion-MNIST, the MLP or a ResNet18 at width 0.0625,
# 5–8 epochs and 10,000 REPAIR images, so that four endpoints train and merge in minutes on a 2-core CPU.
FULL_EPOCH = 50_000  # CIFAR-10's training images
TRAINED_AS = {"resnet18": "resnet18_cifar10.py", "vgg11": "vgg11_cifar10.py"}  # each endpoint's training config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", *TRAINED_AS):
        raise UserError(f"configs/merge_cifar10.py takes no argument (ResNet18), :resnet18 or :vgg11, got {arg!r}")
    trained = config_lib.load_module(Path(__file__).with_name(TRAINED_AS[arg or "resnet18"])).get_config()
    c = ml_collections.ConfigDict()
    c.model, c.train = trained.model.to_dict(), trained.train.to_dict()
    # classes: the endpoints' label subsets are set per setting by the merge runner (empty: every class)
    c.data = {**trained.data.to_dict(), "classes": ()}
    c.merge = merge_section(repair_examples=FULL_EPOCH)
    return c
