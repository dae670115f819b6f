"""Plumbing: crash-safe writes. A file goes to a temp name and is renamed into place; a directory
is built beside its target and swapped in by renames, the old one kept aside until the new one is
in (`recover_replaced` undoes a swap a crash interrupted). Both get the modes a plain create gives.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_public(path: Path) -> None:
    """Give a temp file (0600) or temp dir (0700) the modes a normal create would (0666 / 0777 minus umask).

    mkstemp / mkdtemp create private entries and a rename keeps the mode, so without this a run's
    outputs would be unreadable by teammates or a serving process running as another user.
    """
    mask = _umask()
    if path.is_dir():
        for sub in [path, *path.rglob("*")]:
            sub.chmod((0o777 if sub.is_dir() else 0o666) & ~mask)
    else:
        path.chmod(0o666 & ~mask)


ASIDE = ".replaced."
"""Infix of the name an old directory is renamed to while `replace_dir_atomic` swaps in the new one."""


def replace_dir_atomic(target: Path, fill: Callable[[Path], None]) -> Path:
    """Build a directory in a temp folder beside `target` with `fill`, then swap it in by rename.

    The old `target` is renamed aside (`.<name>.replaced.*`) before the new one is renamed in and
    removed only after: a crash between the two renames leaves the old directory aside, never
    neither of them; `recover_replaced` puts it back.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        fill(tmp)
        make_public(tmp)
        aside: Path | None = None
        if target.exists():
            aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}{ASIDE}"))
            os.replace(target, aside)  # onto the empty placeholder: a directory rename, atomic
        try:
            os.replace(tmp, target)
        except BaseException:
            if aside is not None and not target.exists():
                os.replace(aside, target)  # the swap failed: the old directory comes back
            raise
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def recover_replaced(target: Path) -> bool:
    """After a crash inside `replace_dir_atomic`: put the old directory back if `target` is missing.

    Returns True if it did. Leftover asides beside an existing `target` (a crash after the swap,
    before the old one was removed) are deleted. Call it only where no other process is swapping
    `target` at the same time (a run's own checkpoints and final adapter).
    """
    asides = sorted(target.parent.glob(f".{target.name}{ASIDE}*"), key=lambda p: p.stat().st_mtime)
    restored = False
    if asides and not target.exists():
        os.replace(asides.pop(), target)
        restored = True
    for leftover in asides:
        shutil.rmtree(leftover, ignore_errors=True)
    return restored


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file via a temp name + rename (text as UTF-8), so a crash never leaves half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        make_public(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
