"""Where a leaf is merged: on the host (numpy, no compilation per new width) or on its device (jax.numpy, for
large or sharded leaves), and putting the result back where the input was. Shared by folding and pruning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxfold import tree as tree_lib
from jaxfold.kmeans import host_resident

# Accelerator-resident leaves up to this size are merged on the host (see on_host), larger ones on their device:
# every CNN leaf of the zoo is below it (ResNet18's largest, 9.4 MB), LLaMA-7B's attention (32 MiB in bf16) and
# MLP matrices above it, where same-shaped leaves of many layers share one compiled merge.
HOST_STAGING_BYTES = 16 * 2**20


def on_host(array: Any) -> Any:
    """The form a leaf is merged in. CPU-resident arrays become numpy (zero-copy). Accelerator-resident ones up to
    :data:`HOST_STAGING_BYTES` (not sharded) are copied to the host too: every device-side merge produces a new
    (k, …) shape, so each new ratio compiles a handful of small executables per leaf (≈ 170 for a ResNet18 fold,
    seconds) where the host merges in milliseconds; :func:`placed_like` puts them back. Larger or sharded leaves
    (LLM weights) stay on their device, where merging them is worth a compilation."""
    if not isinstance(array, jax.Array):
        return array
    if host_resident(array) or (array.sharding.is_fully_replicated and array.nbytes <= HOST_STAGING_BYTES):
        return np.asarray(array)
    return array


def placed_like(variables: Mapping[str, Any], new_flat: Mapping[str, Any], staged: Mapping[str, Any]
                ) -> dict[str, Any]:
    """The compressed variables (nested) from their flat leaves, placed like ``variables``: leaves that
    :func:`on_host` copied off an accelerator (``staged``) go back to its devices, untouched ones as the original
    arrays, merged ones by a transfer to the original sharding (no compilation). CPU leaves stay numpy."""
    original = tree_lib.flatten(variables)
    out = dict(new_flat)
    for path, value in new_flat.items():
        before = original.get(path)
        if isinstance(value, np.ndarray) and isinstance(before, jax.Array) and not host_resident(before):
            out[path] = before if value is staged[path] else jax.device_put(value, before.sharding)
    return tree_lib.unflatten(out)


def array_module(*arrays: Any) -> Any:
    """numpy if every array is a numpy array, else jax.numpy."""
    return np if all(isinstance(a, np.ndarray) for a in arrays) else jnp
