"""Where firm keeps derived files it can rebuild (e.g. the humor classifier's coefficients).

`$FIRM_CACHE_DIR` if set, else `${XDG_CACHE_HOME:-~/.cache}/firm/`. Everything in it may be
deleted at any time; whoever writes there keys the file name by what it was derived from and
writes atomically (temporary file + `os.replace`), so concurrent processes never read half a file.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The firm cache directory, created if missing."""
    override = os.environ.get("FIRM_CACHE_DIR")
    if override:
        path = Path(override).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "firm"
    path.mkdir(parents=True, exist_ok=True)
    return path
