"""Where jaxfold keeps what it fetches or generates: ``$JAXFOLD_DATA``, else ``$XDG_CACHE_HOME/jaxfold``
(default ``~/.cache/jaxfold``). Ground floor: imports nothing from jaxfold."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    if os.environ.get("JAXFOLD_DATA"):
        return Path(os.environ["JAXFOLD_DATA"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "jaxfold"
