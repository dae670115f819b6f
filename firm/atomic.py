"""Plumbing: crash-safe writes. A file goes to a temp name and is renamed into place; a directory
is built beside its target and swapped in by renames, the old one kept aside until the new one is
in (`recover_replaced` undoes a swap a crash interrupted). Both get the modes a plain create gives.
`deferred_interrupt` holds a Ctrl-C back while a few statements must happen all or not at all.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Run the block with SIGINT held back: a Ctrl-C that arrives inside it raises KeyboardInterrupt as
    the block ends, so the block's statements happen all or not at all. Outside the main thread (where
    Python cannot set a handler), or when SIGINT is not Python's default handler, the block runs as is.

    Python delivers a signal between two bytecodes, so without this a Ctrl-C may land between writing a
    round's metrics row and publishing the round as the state to checkpoint (firm.train)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
