"""Opt-in persistent XLA compilation cache for the command-line tools.

A fold compiles a handful of k-means executables (one per distinct group width) and each costs seconds on a
small CPU; with the cache a later process loads them from disk instead. The library never turns this on by
itself (it is process-global JAX configuration); the ``jaxfold`` command does, unless
``JAXFOLD_COMPILE_CACHE=0``. Location: ``$JAXFOLD_COMPILE_CACHE`` or ``<data dir>/xla-cache``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path | None:
    value = os.environ.get("JAXFOLD_COMPILE_CACHE", "")
    if value == "0":
        return None
    if value:
        return Path(value).expanduser()
    from jaxfold.data.fetch import data_dir

    return data_dir() / "xla-cache"


def enable(directory: str | os.PathLike | None = None) -> Path | None:
    """Point JAX's persistent compilation cache at ``directory`` (default :func:`cache_dir`); cache everything."""
    import jax

    path = Path(directory) if directory is not None else cache_dir()
    if path is None:
        return None
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
