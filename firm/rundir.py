"""The run directory (DESIGN.md section 6): everything a run leaves behind, written safely.

    <output.dir>/<output.name>/
        config.toml                 resolved config (loads back with `firm train --config`)
        metrics.jsonl               one JSON object per round (fields in the README)
        summary.json                final figures, totals, version, paths
        checkpoints/round_NNNN/     adapter_config.json, adapter_model.safetensors, state.json
        final_adapter/              adapter_config.json, adapter_model.safetensors (PEFT layout)

Files are written to a temporary name and renamed into place, so a crash never leaves a
half-written file behind; metrics rows are appended and flushed one round at a time. A run never
writes into an existing non-empty directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from firm.config import Config, config_to_toml


class RunDirError(RuntimeError):
    """The run directory cannot be used (exists and is not empty, not writable...)."""


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunDir:
    """Creates and fills one run directory."""

    def __init__(self, config: Config, version: str) -> None:
        out = config.output
        name = out.name or f"{config.algorithm.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path = Path(out.dir) / name
        if not out.name:
            suffix = 1
            while path.exists():  # auto names never collide with an earlier run
                suffix += 1
                path = Path(out.dir) / f"{name}-{suffix}"
        if path.exists() and any(path.iterdir()):
            raise RunDirError(f"run directory {path} already exists and is not empty; choose another output.name")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunDirError(f"cannot create run directory {path}: {err.strerror}") from None
        self.path = path
        self.metrics_path = path / "metrics.jsonl"
        _write_atomic(path / "config.toml", f"# resolved config, firm {version}\n" + config_to_toml(config))

    def append_metrics(self, row: dict[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def write_checkpoint(self, round_idx: int, save_adapter: Callable[[Path], None], state: dict[str, Any]) -> Path:
        """checkpoints/round_NNNN/ = PEFT adapter + state.json, built in a temp dir then renamed."""
        root = self.path / "checkpoints"
        root.mkdir(exist_ok=True)
        final = root / f"round_{round_idx:04d}"
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".round_{round_idx:04d}."))
        try:
            save_adapter(tmp)
            (tmp / "state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def write_final_adapter(self, save_adapter: Callable[[Path], None]) -> Path:
        final = self.path / "final_adapter"
        tmp = Path(tempfile.mkdtemp(dir=self.path, prefix=".final_adapter."))
        try:
            save_adapter(tmp)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def write_summary(self, summary: dict[str, Any]) -> None:
        _write_atomic(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")
