"""Experiment configs: Python files exposing ``get_config(arg=None) -> ml_collections.ConfigDict`` (big_vision
style), loaded by path (``configs/x.py`` or ``configs/x.py:arg``) with ``--config.a.b=value`` overrides.

An override must name an existing field; otherwise the error lists the valid ones. Values are parsed as Python
literals and must keep the field's type (an int field accepts ``3``, not ``"three"``).
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from jaxfold.errors import MissingFile, UserError


def load_module(path: str | Path) -> Any:
    """The config file at ``path`` as a module (configs are files, not a package): how a config builds on a
    sibling, e.g. ``load_module(Path(__file__).with_name("resnet18_fmnist.py")).get_config()``."""
    file = Path(path)
    if not file.is_file():
        raise MissingFile(f"config file {path} does not exist (configs live in configs/*.py)")
    module_spec = importlib.util.spec_from_file_location(f"jaxfold_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load(spec: str) -> ml_collections.ConfigDict:
    """Load ``path.py`` or ``path.py:arg`` and call its ``get_config``."""
    path, _, arg = spec.partition(":")
    module = load_module(path)
    if not hasattr(module, "get_config"):
        raise UserError(f"config file {path} defines no get_config()")
    config = module.get_config(arg) if arg else module.get_config()
    return config


def _valid_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k, v in config.items():
        out.extend(_valid_keys(v, f"{prefix}{k}.") if isinstance(v, ml_collections.ConfigDict) else [prefix + k])
    return out


def _literal(raw: str) -> Any:
    try:
        return ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        return raw.strip()


def _parse(raw: str, current: Any, key: str) -> Any:
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # bare strings: --config.model.name=vgg11_bn
    if current is None or value is None:
        return value
    if isinstance(current, (list, tuple)) and not isinstance(value, (list, tuple)):
        # a list field from a comma-separated value: --config.sweep.variants=fold:none,ifm:none, ratios=0.5
        value = tuple(_literal(part) for part in raw.split(",")) if isinstance(value, str) else (value,)
    if isinstance(current, bool) and not isinstance(value, bool):
        raise UserError(f"--config.{key} expects True/False, got {raw!r}")
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(current)(value)
    if type(value) is not type(current):
        raise UserError(f"--config.{key} expects a {type(current).__name__} (now {current!r}), got {raw!r}")
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """A copy of ``config`` with ``a.b=value`` (or ``--config.a.b=value``) overrides applied."""
    config = ml_collections.ConfigDict(config.to_dict())
    valid = _valid_keys(config)
    for item in overrides:
        text = item.removeprefix("--").removeprefix("config.")
        key, sep, raw = text.partition("=")
        if not sep:
            raise UserError(f"override {item!r} must look like --config.{key}=VALUE")
        parent, _, leaf = key.rpartition(".")
        node = config
        for part in parent.split(".") if parent else []:
            node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise UserError(f"unknown config key {key!r}; valid keys: {', '.join(valid)}")
        if isinstance(node[leaf], ml_collections.ConfigDict):
            raise UserError(f"{key!r} is a section; override one of its fields: "
                            f"{', '.join(k for k in valid if k.startswith(key + '.'))}")
        with node.unlocked():
            node[leaf] = _parse(raw, node[leaf], key)
    return config


def load_with_overrides(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    return apply_overrides(load(spec), overrides)
