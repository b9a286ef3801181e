"""Model zoo: one architecture per module, each a frozen config dataclass (every foldable width a field)
plus its Flax module. ``build(name, **kwargs)`` makes a config from a family name."""

from __future__ import annotations

from typing import Any

from jaxfold.errors import UserError
from jaxfold.models.base import ModelConfig, config_from_dict, known_archs
from jaxfold.models.lenet import LeNetConfig, lenet5
from jaxfold.models.llama import LlamaConfig, llama
from jaxfold.models.mlp import MLPConfig, mlp
from jaxfold.models.resnet import ResNetConfig, resnet18, resnet50
from jaxfold.models.vgg import VGGConfig, vgg11_bn

FAMILIES = {"resnet18": resnet18, "resnet50": resnet50, "vgg11_bn": vgg11_bn, "mlp": mlp, "lenet5": lenet5,
            "llama": llama}


def build(name: str, **kwargs: Any) -> ModelConfig:
    """Config for a model family, e.g. ``build('resnet18', stem='cifar', in_channels=1, width=0.125)``."""
    if name not in FAMILIES:
        raise UserError(f"unknown model {name!r}; known: {sorted(FAMILIES)}")
    try:
        return FAMILIES[name](**kwargs)
    except TypeError as e:
        import inspect

        valid = sorted(inspect.signature(FAMILIES[name]).parameters)
        raise UserError(f"bad arguments for model {name!r}: {e}; valid: {valid}") from None


__all__ = ["FAMILIES", "LeNetConfig", "LlamaConfig", "MLPConfig", "ModelConfig", "ResNetConfig", "VGGConfig", "build",
           "config_from_dict", "known_archs", "lenet5", "llama", "mlp", "resnet18", "resnet50", "vgg11_bn"]
