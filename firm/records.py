"""Records: a long benchmark's completed runs kept in one small archive, so it resumes in a fresh checkout.

A benchmark's run tree (`<out>/<stage>/<run>/`) holds adapters and checkpoints far too big to commit.
What a resumable sweep needs to skip a completed run (firm.sweep.run_point reads `summary.json`) and
what a report needs to compute every figure is small: `RUN_FILES`. `save_records` writes those files
of every completed run, plus the named plan files (`plans`, paths under `<out>`), into one gzip JSON
archive, merged with what it already holds and replaced atomically; `restore_records` writes back
every archived file missing under `<out>`, never overwriting one. The archive carries a `key` (what
the runs were made for: the task, the profile); a restore into another key is refused, so the runs of
one configuration never resume another. `RecordSaver` saves every two minutes from a background
thread and once more on exit, so a session cut short loses at most the runs of its last minutes.

    {"key": {...}, "files": {"<stage>/<run>/summary.json": "<text>", "<plan>": "<text>", ...}}

A run counts as completed when its summary says `"status": "completed"` (firm.train writes it last);
a run cut short is not recorded and is redone from its start on resume.
"""

from __future__ import annotations

import gzip
import json
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from firm.atomic import write_atomic

RUN_FILES = ("summary.json", "metrics.jsonl", "config.toml")
"""What a run directory keeps in the archive: enough for a sweep to skip the run and for a report to
compute every figure from it (no adapters, checkpoints, plots or reports)."""


class RecordsError(ValueError):
    """An archive that cannot be restored here: made for another key."""


def _normal(key: dict[str, Any]) -> Any:
    """The key as the archive stores it (JSON: tuples become lists), so a key compares equal to its saved self."""
    return json.loads(json.dumps(key, sort_keys=True))


def _completed(run_dir: Path) -> bool:
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(summary, dict) and summary.get("status") == "completed"


def read_records(archive: Path) -> dict[str, Any] | None:
    """The archive's {"key", "files"}, or None when it is missing or unreadable."""
    try:
        data = json.loads(gzip.decompress(archive.read_bytes()).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else None


def save_records(out: Path, archive: Path, key: dict[str, Any], plans: Iterable[str] = ()) -> int:
    """Write the completed runs' `RUN_FILES` under `out/*/*/` and the `plans` files into `archive`, merged
    with what it holds for the same key, atomically. Returns the number of run directories recorded."""
    files: dict[str, str] = {}
    key = _normal(key)
    old = read_records(archive)
    if old is not None and old.get("key") == key:
        files.update(old["files"])
    for rel in plans:
        if (out / rel).is_file():
            files[rel] = (out / rel).read_text(encoding="utf-8")
    for summary in sorted(out.glob("*/*/summary.json")):
        run_dir = summary.parent
        if not _completed(run_dir):
            continue
        for name in RUN_FILES:
            if (run_dir / name).is_file():
                files[(run_dir / name).relative_to(out).as_posix()] = (run_dir / name).read_text(encoding="utf-8")
    archive.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"key": key, "files": files}, sort_keys=True).encode("utf-8")
    write_atomic(archive, gzip.compress(payload, mtime=0))  # mtime=0: the same runs give the same bytes
    return sum(rel.endswith("/summary.json") for rel in files)


def restore_records(out: Path, archive: Path, key: dict[str, Any]) -> int:
    """Write back every archived file missing under `out` (a new checkout resumes where the archive ends).

    Raises RecordsError for an archive made for another key. Returns the number of run directories restored."""
    data = read_records(archive)
    if data is None:
        return 0
    if data.get("key") != _normal(key):
        raise RecordsError(f"{archive} holds the runs of another task or profile; give another records archive")
    restored = 0
    for rel, text in data["files"].items():
        path = out / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            restored += rel.endswith("/summary.json")
    return restored


def resume_from(out: Path, archive: Path | None, key: dict[str, Any], label: str) -> None:
    """A benchmark's first step: `restore_records` and say how many runs came back; an archive of another
    key stops the benchmark with its message (SystemExit). `archive` None: nothing to restore."""
    if archive is None:
        return
    try:
        restored = restore_records(out, archive, key)
    except RecordsError as err:
        raise SystemExit(f"{label}: {err}") from err
    print(f"{label}: {restored} completed runs restored from {archive}", file=sys.stderr)


class RecordSaver:
    """Saves the records every `every` seconds in a background thread, and once more on exit; a context manager.

    `archive` None makes it do nothing, so a caller can use it unconditionally."""

    def __init__(
        self, out: Path, archive: Path | None, key: dict[str, Any], plans: Iterable[str] = (), every: float = 120.0,
        label: str = "records",
    ) -> None:  # fmt: skip
        self.out, self.archive, self.key, self.plans, self.label = out, archive, key, tuple(plans), label
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, args=(every,), daemon=True)

    def _loop(self, every: float) -> None:
        while not self.stop_event.wait(every):
            self.save()

    def save(self) -> None:
        """Save now (and say how many runs the archive holds)."""
        if self.archive is not None:
            count = save_records(self.out, self.archive, self.key, self.plans)
            print(f"{self.label}: {count} completed runs recorded in {self.archive}", file=sys.stderr, flush=True)

    def __enter__(self) -> RecordSaver:
        if self.archive is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.archive is not None:
            self.stop_event.set()
            self.thread.join()
            self.save()
