"""Packaged tasks: named config files shipped with firm, usable wherever a config file is.

`firm train --config <name>` (and sweep, compare, palette, the benchmarks) reads
`firm/tasks/<name>.toml` when `<name>` is not a file: a task is an ordinary config file, so
`firm config show --config <name>` prints it and a copy of it is a starting point for a new one.
Each task's docstring (the comment at the top of its file) says what it measures and why; the
measured conflict of its objectives is in docs/tasks.md.
"""

from __future__ import annotations

from pathlib import Path

TASK_DIR = Path(__file__).resolve().parent


def task_names() -> list[str]:
    """The packaged task names, sorted."""
    return sorted(p.stem for p in TASK_DIR.glob("*.toml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path that exists is returned as is; a bare name of a packaged task gives that task's file.

    Raises FileNotFoundError naming the packaged tasks when it is neither (the config reader turns
    a missing file into a one-line ConfigError).
    """
    path = Path(name_or_path)
    if path.exists() or path.suffix:
        return path
    task = TASK_DIR / f"{name_or_path}.toml"
    if task.is_file():
        return task
    raise FileNotFoundError(f"{name_or_path}: no such config file or packaged task; tasks: {', '.join(task_names()) or 'none'}")
