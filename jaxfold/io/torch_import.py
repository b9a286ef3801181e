"""Import PyTorch state dicts into jaxfold variables: torchvision ResNet18/50 and VGG11-BN, and the paper's
kuangliu-style CIFAR ResNet (``shortcut`` / ``linear`` names).

This lets weights trained in PyTorch (the paper's own checkpoints included) be folded and evaluated here. The
import is strict: every torch tensor must land in exactly one Flax variable of the config's shape and every Flax
variable must be filled, so a checkpoint of another width or depth fails loudly instead of half-loading. torch is
imported only by :func:`load_torch_file`; state dicts of numpy arrays work without it.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from jaxfold import tree as tree_lib
from jaxfold.errors import MissingFile, UserError
from jaxfold.models.base import ModelConfig
from jaxfold.models.resnet import ResNetConfig
from jaxfold.models.vgg import VGGConfig

RESNET_NAMINGS = ("torchvision", "kuangliu")
_IGNORED = ".num_batches_tracked"  # BN step counter: Flax has no counterpart and nothing reads it in eval

# A layout converts a torch tensor to the Flax layout and gives the torch shape a Flax shape implies.
Layout = tuple[Callable[[np.ndarray], np.ndarray], Callable[[tuple[int, ...]], tuple[int, ...]]]
_SAME: Layout = (lambda w: w, lambda s: s)
_CONV: Layout = (lambda w: w.transpose(2, 3, 1, 0), lambda s: (s[3], s[2], s[0], s[1]))  # OIHW → HWIO
_DENSE: Layout = (lambda w: w.T, lambda s: (s[1], s[0]))  # (out, in) → (in, out)


def _nchw_dense(p: int) -> Layout:
    """First Linear after a p×p pool: torch flattens NCHW (in-index c·p² + h·p + w), Flax NHWC ((h·p + w)·C + c)."""

    def to_flax(w: np.ndarray) -> np.ndarray:
        out, n = w.shape
        return w.reshape(out, n // (p * p), p, p).transpose(2, 3, 1, 0).reshape(n, out)

    return to_flax, _DENSE[1]


Rule = tuple[str, str, Layout]  # (torch key, Flax path, layout)


def _conv(t: str, f: str, bias: bool = False) -> list[Rule]:
    rules = [(f"{t}.weight", f"params/{f}/kernel", _CONV)]
    return [*rules, (f"{t}.bias", f"params/{f}/bias", _SAME)] if bias else rules


def _bn(t: str, f: str) -> list[Rule]:
    return [(f"{t}.weight", f"params/{f}/scale", _SAME), (f"{t}.bias", f"params/{f}/bias", _SAME),
            (f"{t}.running_mean", f"batch_stats/{f}/mean", _SAME), (f"{t}.running_var", f"batch_stats/{f}/var", _SAME)]


def _dense(t: str, f: str, layout: Layout = _DENSE) -> list[Rule]:
    return [(f"{t}.weight", f"params/{f}/kernel", layout), (f"{t}.bias", f"params/{f}/bias", _SAME)]


def resnet_rules(cfg: ResNetConfig, naming: str) -> list[Rule]:
    """torchvision (``downsample``, ``fc``) or kuangliu (``shortcut``, ``linear``); both name blocks ``layerS.B``."""
    if naming not in RESNET_NAMINGS:
        raise UserError(f"unknown ResNet naming {naming!r}; choose one of {RESNET_NAMINGS}")
    proj = "downsample" if naming == "torchvision" else "shortcut"
    rules = _conv("conv1", "conv1") + _bn("bn1", "bn1")
    n_convs = 2 if cfg.block == "basic" else 3
    for name, projection in zip(cfg.block_names(), cfg.projections, strict=True):
        t = name.replace("_", ".")  # layer1_0 → layer1.0
        for i in range(1, n_convs + 1):
            rules += _conv(f"{t}.conv{i}", f"{name}/conv{i}") + _bn(f"{t}.bn{i}", f"{name}/bn{i}")
        if projection:
            rules += _conv(f"{t}.{proj}.0", f"{name}/shortcut_conv") + _bn(f"{t}.{proj}.1", f"{name}/shortcut_bn")
    return rules + _dense("fc" if naming == "torchvision" else "linear", "fc")


def vgg_rules(cfg: VGGConfig) -> list[Rule]:
    """torchvision ``features`` indices (conv, BN, ReLU[, MaxPool]) and ``classifier`` (Linear, ReLU, Dropout)."""
    rules, idx = [], 0
    for i in range(len(cfg.conv_widths)):
        rules += _conv(f"features.{idx}", f"features_{i}", bias=True) + _bn(f"features.{idx + 1}", f"bn_{i}")
        idx += 4 if i in cfg.pools_after else 3
    for j in range(len(cfg.classifier_widths) + 1):
        rules += _dense(f"classifier.{3 * j}", f"classifier_{j}", _nchw_dense(cfg.pool_size) if j == 0 else _DENSE)
    return rules


def detect_naming(state_dict: Mapping[str, Any], model_config: ModelConfig) -> str:
    """The naming convention a state dict uses, from tell-tale keys."""
    if isinstance(model_config, VGGConfig):
        return "torchvision"
    keys = set(state_dict)
    kuangliu = "linear.weight" in keys or any(".shortcut." in k for k in keys)
    torchvision = "fc.weight" in keys or any(".downsample." in k for k in keys)
    if kuangliu == torchvision:
        found = "both" if kuangliu else "neither"
        raise UserError(f"cannot tell the ResNet naming: found {found} of 'fc.weight'/'.downsample.' (torchvision) "
                        f"and 'linear.weight'/'.shortcut.' (kuangliu); pass naming= one of {RESNET_NAMINGS}")
    return "kuangliu" if kuangliu else "torchvision"


def _to_numpy(key: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; duck-typed so this module never needs torch
        value = value.detach().cpu()
        value = (value.float() if value.is_floating_point() else value).numpy()  # bf16 has no numpy dtype
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise UserError(f"{key}: expected a tensor or numeric array, got {type(value).__name__} ({arr.dtype})")
    return arr.astype(np.float32)


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(getattr(value, "shape", np.shape(value)))


def import_state_dict(state_dict: Mapping[str, Any], model_config: ModelConfig, naming: str | None = None) -> dict:
    """``{'params': …, 'batch_stats': …}`` (float32 numpy, plain dicts) for ``model_config`` from a torch state dict.

    ``naming`` is 'torchvision' or 'kuangliu' for ResNets (auto-detected when None); VGG is torchvision only.
    Any missing, leftover (other than ``num_batches_tracked``) or mis-shaped key raises ValueError naming it.
    """
    if not isinstance(state_dict, Mapping):
        raise UserError(f"expected a state dict (mapping of name → tensor), got {type(state_dict).__name__}")
    sd = dict(state_dict)
    if sd and all(isinstance(k, str) and k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}  # saved from a DataParallel wrapper
    if isinstance(model_config, ResNetConfig):
        naming = naming or detect_naming(sd, model_config)
        rules = resnet_rules(model_config, naming)
    elif isinstance(model_config, VGGConfig):
        if naming not in (None, "torchvision"):
            raise UserError(f"VGG supports only torchvision naming, got naming={naming!r}")
        naming, rules = "torchvision", vgg_rules(model_config)
    else:
        raise UserError(f"no PyTorch importer for {type(model_config).__name__} (arch {model_config.arch!r}); "
                        "supported: resnet (ResNetConfig), vgg (VGGConfig)")

    abstract = model_config.abstract_variables()
    expected = {p: s for p, (s, _) in tree_lib.shapes(abstract).items()}
    flat: dict[str, np.ndarray] = {}
    used: set[str] = set()
    problems: list[str] = []
    for key, path, (to_flax, torch_shape) in rules:
        if path not in expected:
            problems.append(f"{key}: the model has no variable {path}")
            continue
        want = torch_shape(expected[path])
        if key not in sd:
            problems.append(f"missing {key}: expected shape {want} (for {path})")
            continue
        used.add(key)
        w = _to_numpy(key, sd[key])
        if w.shape != want:
            problems.append(f"{key}: expected shape {want} (for {path}), got {w.shape}")
            continue
        flat[path] = np.ascontiguousarray(to_flax(w), dtype=np.float32)
    problems += [f"unexpected {k}: shape {_shape(v)}" for k, v in sd.items()
                 if k not in used and not str(k).endswith(_IGNORED)]
    variables = tree_lib.unflatten(flat)
    if not problems:
        problems = tree_lib.compare(abstract, variables)
    if problems:
        head = "\n  ".join(problems[:20]) + (f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise UserError(f"PyTorch state dict does not match {model_config.arch} ({naming} naming):\n  {head}")
    return variables


def _unwrap(obj: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict")
    for key in ("state_dict", "model"):  # common training-script wrappers
        if isinstance(obj.get(key), Mapping):
            return obj[key]
    return obj


def load_torch_file(path: str | os.PathLike, model_config: ModelConfig, naming: str | None = None) -> dict:
    """:func:`import_state_dict` on a ``torch.save``d state dict (or a dict wrapping it as 'state_dict'/'model')."""
    try:
        import torch
    except ImportError as e:
        raise ImportError("loading a PyTorch checkpoint needs torch: pip install torch") from e
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFile(f"no PyTorch checkpoint at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"{path} is not a plain state dict (torch.load(weights_only=True) refused it); "
                        f"save model.state_dict() instead: {e}") from e
    return import_state_dict(_unwrap(obj, path), model_config, naming)
