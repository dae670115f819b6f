"""Plumbing: the run directory (docs/design.md section 7): everything a run leaves behind, written safely.

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
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from firm.atomic import recover_replaced, replace_dir_atomic, write_atomic
from firm.codec import Adapter
from firm.config import Config, config_to_toml


def default_run_name(prefix: str) -> str:
    """`<prefix>-YYYYmmdd-HHMMSS` in local time: the name of a run, sweep or palette given no output.name."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_name(config: Config, prefix: str | None = None) -> str:
    """`output.name`, or else a timestamped name after `prefix` (default: the algorithm's name)."""
    return config.output.name or default_run_name(prefix or config.algorithm.name)


class RunDirError(RuntimeError):
    """The run directory cannot be used (exists and is not empty, not writable...)."""


class RunDir:
    """Creates and fills one run directory."""

    @classmethod
    def reopen(cls, path: Path, keep_rounds: int) -> tuple[RunDir, list[dict[str, Any]]]:
        """An existing run directory to resume: metrics.jsonl is cut back to rounds <= keep_rounds (atomically).

        Returns the directory and the rows kept. Rows after the checkpoint (a crash between the
        metrics append and the checkpoint) are dropped, so the resumed rounds write them once.
        """
        self = cls.__new__(cls)
        self.path = path
        self.metrics_path = path / "metrics.jsonl"
        recover_replaced(path / "final_adapter")
        rows: list[dict[str, Any]] = []
        if self.metrics_path.exists():
            text = self.metrics_path.read_text(encoding="utf-8")
            lines = text.splitlines()
            for lineno, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    if lineno == len(lines) and not text.endswith("\n"):
                        # a crash in the middle of an append: only the last row can be cut short
                        print(
                            f"firm: {self.metrics_path}:{lineno}: dropping an incomplete last row "
                            f"({len(line)} characters, cut short by a crash); that round runs again",
                            file=sys.stderr,
                        )
                        continue
                    raise RunDirError(f"{self.metrics_path}:{lineno}: not a JSON row") from None
                if row.get("round", 0) <= keep_rounds:
                    rows.append(row)
        if [r["round"] for r in rows] != list(range(1, keep_rounds + 1)):
            raise RunDirError(
                f"{self.metrics_path}: rounds {[r['round'] for r in rows]} do not match the checkpoint's 1..{keep_rounds}"
            )
        write_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
        return self, rows

    def __init__(self, config: Config, version: str) -> None:
        out = config.output
        name = run_name(config)
        path = Path(out.dir) / name
        try:
            if out.name:
                if path.exists() and any(path.iterdir()):
                    raise RunDirError(f"run directory {path} already exists and is not empty; choose another output.name")
                path.mkdir(parents=True, exist_ok=True)
            else:
                # Auto names: mkdir without exist_ok claims the name atomically, so two runs started in
                # the same second (a sweep) never share a directory.
                Path(out.dir).mkdir(parents=True, exist_ok=True)
                suffix = 1
                while True:
                    try:
                        path.mkdir()
                        break
                    except FileExistsError:
                        suffix += 1
                        path = Path(out.dir) / f"{name}-{suffix}"
        except OSError as err:
            raise RunDirError(f"cannot create run directory {path}: {err.strerror}") from None
        self.path = path
        self.metrics_path = path / "metrics.jsonl"
        write_atomic(path / "config.toml", f"# resolved config, firm {version}\n" + config_to_toml(config))

    def append_metrics(self, row: dict[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def write_checkpoint(
        self, round_idx: int, save_adapter: Callable[[Path], None], global_adapter: Adapter, state: dict[str, Any]
    ) -> Path:
        """checkpoints/round_NNNN/ (firm.checkpoint), built in a temp dir then renamed: never half written."""
        from firm.checkpoint import write_state

        def fill(directory: Path) -> None:
            save_adapter(directory)
            write_state(directory, global_adapter, state)

        return replace_dir_atomic(self.path / "checkpoints" / f"round_{round_idx:04d}", fill)

    def write_final_adapter(self, save_adapter: Callable[[Path], None]) -> Path:
        return replace_dir_atomic(self.path / "final_adapter", save_adapter)

    def write_jsonl(self, name: str, rows: list[dict[str, Any]]) -> None:
        """A whole JSONL file (e.g. samples.jsonl), written atomically."""
        write_atomic(self.path / name, "".join(json.dumps(row) + "\n" for row in rows))

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        write_atomic(self.path / name, json.dumps(data, indent=2) + "\n")

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_atomic(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")
