"""The persistent XLA compilation cache of the command-line tools: on by default, off with
``JAXFOLD_COMPILE_CACHE=0``.

A fold compiles a handful of k-means executables (one per distinct group width) and each costs seconds on a
small CPU; every ``jaxfold`` call is a fresh process, so without the cache each one compiles them again. With it
a later process loads them from disk (docs/benchmarks.md, "Fold time"). The ``jaxfold`` command (and so every
sweep) turns it on before anything compiles; the library never does by itself, as it is process-global JAX
configuration (call :func:`enable` to opt in from Python). Location: ``$JAXFOLD_COMPILE_CACHE`` if it names a
directory, else ``<cache root>/xla-cache`` (``$JAXFOLD_DATA``, default ``~/.cache/jaxfold``). Entries are keyed
by the computation, the JAX/XLA version and the device, so a stale entry is never used; delete the directory to
reclaim its space.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from jaxfold.paths import cache_root


def cache_dir() -> Path | None:
    """Where the cache lives, or None when ``JAXFOLD_COMPILE_CACHE=0`` turns it off."""
    value = os.environ.get("JAXFOLD_COMPILE_CACHE", "").strip()
    if value == "0":
        return None
    if value:
        return Path(value).expanduser()
    return cache_root() / "xla-cache"


def enable(directory: str | os.PathLike | None = None) -> Path | None:
    """Point JAX's persistent compilation cache at ``directory`` (default :func:`cache_dir`); cache everything."""
    import jax

    path = Path(directory) if directory is not None else cache_dir()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # an optimisation only: run without it rather than fail
        print(f"jaxfold: warning: no compilation cache ({e}); set JAXFOLD_COMPILE_CACHE=DIR or =0", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
