"""benchmarks/evidence.py's records archive: completed runs' small files saved, restored, and guarded."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _evidence() -> ModuleType:
    spec = importlib.util.spec_from_file_location("evidence_script", ROOT / "benchmarks" / "evidence.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["evidence_script"] = module
    spec.loader.exec_module(module)
    return module


def _run_dir(path: Path, status: str) -> None:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({"status": status}), encoding="utf-8")
    (path / "metrics.jsonl").write_text('{"round": 1}\n', encoding="utf-8")
    (path / "config.toml").write_text("[federation]\nseed = 0\n", encoding="utf-8")
    (path / "checkpoints").mkdir()
    (path / "checkpoints" / "adapter.safetensors").write_bytes(b"\0" * 64)


def test_completed_runs_round_trip_and_nothing_else(tmp_path: Path) -> None:
    ev = _evidence()
    out, archive, key = tmp_path / "out", tmp_path / "runs.json.gz", {"profile": "full", "task": {"a": 1}}
    _run_dir(out / "sweep" / "firm-p00-s0", "completed")
    _run_dir(out / "sweep" / "firm-p01-s0", "running")  # cut short: not recorded, redone on resume
    (out / "sweep" / "sweep.json").write_text('{"key": 1}', encoding="utf-8")
    assert ev.save_records(out, archive, key) == 1

    fresh = tmp_path / "fresh"
    assert ev.restore_records(fresh, archive, key) == 1
    restored = sorted(p.relative_to(fresh).as_posix() for p in fresh.rglob("*") if p.is_file())
    assert restored == ["sweep/firm-p00-s0/config.toml", "sweep/firm-p00-s0/metrics.jsonl",
                        "sweep/firm-p00-s0/summary.json", "sweep/sweep.json"]  # fmt: skip
    assert (fresh / "sweep" / "firm-p00-s0" / "metrics.jsonl").read_text(encoding="utf-8") == '{"round": 1}\n'
    # an existing file is never overwritten, and a later save keeps what only the archive holds
    (fresh / "sweep" / "sweep.json").write_text('{"key": 2}', encoding="utf-8")
    assert ev.restore_records(fresh, archive, key) == 0
    assert (fresh / "sweep" / "sweep.json").read_text(encoding="utf-8") == '{"key": 2}'
    _run_dir(fresh / "sweep" / "fedavg-p00-s0", "completed")
    assert ev.save_records(fresh / "nothing-here", archive, key) == 1  # merged: the old run stays recorded
    assert ev.save_records(fresh, archive, key) == 2


def test_an_archive_of_another_task_is_refused(tmp_path: Path) -> None:
    ev = _evidence()
    out, archive = tmp_path / "out", tmp_path / "runs.json.gz"
    _run_dir(out / "tuning" / "firm-lr0.002", "completed")
    ev.save_records(out, archive, {"profile": "full", "task": {"a": 1}})
    with pytest.raises(SystemExit, match="another task or profile"):
        ev.restore_records(tmp_path / "fresh", archive, {"profile": "full", "task": {"a": 2}})
    assert ev.restore_records(tmp_path / "fresh", tmp_path / "missing.json.gz", {}) == 0
