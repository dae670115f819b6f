"""firm.records: completed runs' small files saved, restored, and guarded by key (benchmarks/evidence.py and
benchmarks/privacy_tradeoff.py resume from it in a fresh checkout)."""

from __future__ import annotations

import gzip
import json
import threading
from pathlib import Path

import pytest

from firm.records import RecordSaver, RecordsError, read_records, restore_records, resume_from, save_records

PLANS = ("sweep/sweep.json",)


def _run_dir(path: Path, status: str) -> None:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({"status": status}), encoding="utf-8")
    (path / "metrics.jsonl").write_text('{"round": 1}\n', encoding="utf-8")
    (path / "config.toml").write_text("[federation]\nseed = 0\n", encoding="utf-8")
    (path / "checkpoints").mkdir()
    (path / "checkpoints" / "adapter.safetensors").write_bytes(b"\0" * 64)


def test_completed_runs_round_trip_and_nothing_else(tmp_path: Path) -> None:
    out, archive, key = tmp_path / "out", tmp_path / "runs.json.gz", {"profile": "full", "task": {"a": 1}}
    _run_dir(out / "sweep" / "firm-p00-s0", "completed")
    _run_dir(out / "sweep" / "firm-p01-s0", "running")  # cut short: not recorded, redone on resume
    (out / "sweep" / "sweep.json").write_text('{"key": 1}', encoding="utf-8")
    assert save_records(out, archive, key, PLANS) == 1

    fresh = tmp_path / "fresh"
    assert restore_records(fresh, archive, key) == 1
    restored = sorted(p.relative_to(fresh).as_posix() for p in fresh.rglob("*") if p.is_file())
    assert restored == ["sweep/firm-p00-s0/config.toml", "sweep/firm-p00-s0/metrics.jsonl",
                        "sweep/firm-p00-s0/summary.json", "sweep/sweep.json"]  # fmt: skip
    assert (fresh / "sweep" / "firm-p00-s0" / "metrics.jsonl").read_text(encoding="utf-8") == '{"round": 1}\n'
    # an existing file is never overwritten, and a later save keeps what only the archive holds
    (fresh / "sweep" / "sweep.json").write_text('{"key": 2}', encoding="utf-8")
    assert restore_records(fresh, archive, key) == 0
    assert (fresh / "sweep" / "sweep.json").read_text(encoding="utf-8") == '{"key": 2}'
    _run_dir(fresh / "sweep" / "fedavg-p00-s0", "completed")
    assert save_records(fresh / "nothing-here", archive, key) == 1  # merged: the old run stays recorded
    assert save_records(fresh, archive, key) == 2


def test_an_archive_of_another_task_is_refused(tmp_path: Path) -> None:
    out, archive = tmp_path / "out", tmp_path / "runs.json.gz"
    _run_dir(out / "tuning" / "firm-lr0.002", "completed")
    save_records(out, archive, {"profile": "full", "task": {"a": 1}})
    with pytest.raises(RecordsError, match="another task or profile"):
        restore_records(tmp_path / "fresh", archive, {"profile": "full", "task": {"a": 2}})
    assert restore_records(tmp_path / "fresh", tmp_path / "missing.json.gz", {}) == 0


def test_saves_are_deterministic_and_plans_only_when_named(tmp_path: Path) -> None:
    out, key = tmp_path / "out", {"profile": "full"}
    _run_dir(out / "grid" / "firm-s0", "completed")
    (out / "grid" / "plan.json").write_text("{}", encoding="utf-8")
    a, b = tmp_path / "a.json.gz", tmp_path / "b.json.gz"
    save_records(out, a, key)
    save_records(out, b, key)
    assert a.read_bytes() == b.read_bytes()  # gzip mtime 0, sorted keys: an unchanged tree commits no diff
    data = read_records(a)
    assert data is not None and "grid/plan.json" not in data["files"]
    assert json.loads(gzip.decompress(a.read_bytes()))["key"] == key
    assert read_records(tmp_path / "missing.json.gz") is None
    (tmp_path / "junk.json.gz").write_bytes(b"not gzip")
    assert read_records(tmp_path / "junk.json.gz") is None


def test_an_archive_of_another_key_is_replaced_on_save_not_merged(tmp_path: Path) -> None:
    out, archive = tmp_path / "out", tmp_path / "runs.json.gz"
    _run_dir(out / "sweep" / "old-s0", "completed")
    save_records(out, archive, {"task": 1})
    new = tmp_path / "new"
    _run_dir(new / "sweep" / "new-s0", "completed")
    assert save_records(new, archive, {"task": 2}) == 1
    data = read_records(archive)
    assert data is not None and all(rel.startswith("sweep/new-s0/") for rel in data["files"])


def test_the_saver_saves_in_the_background_and_on_exit(tmp_path: Path) -> None:
    out, archive = tmp_path / "out", tmp_path / "runs.json.gz"
    _run_dir(out / "sweep" / "a-s0", "completed")
    with RecordSaver(out, archive, {"k": 1}, every=0.05):
        for _ in range(200):
            if archive.exists():
                break
            threading.Event().wait(0.01)
        assert archive.exists()  # the background save, before the exit
        _run_dir(out / "sweep" / "b-s0", "completed")
    data = read_records(archive)
    assert data is not None and "sweep/b-s0/summary.json" in data["files"]  # the save on exit
    with RecordSaver(out, None, {"k": 1}):  # no archive: nothing written, no thread
        pass


def test_a_key_with_tuples_matches_its_saved_self(tmp_path: Path) -> None:
    out, archive = tmp_path / "out", tmp_path / "runs.json.gz"
    key = {"learning_rates": {"firm": ("adam", 5e-3)}, "sigmas": (0.5, 2.0)}  # JSON turns the tuples into lists
    _run_dir(out / "grid" / "firm-s0", "completed")
    save_records(out, archive, key)
    assert restore_records(tmp_path / "fresh", archive, key) == 1
    assert save_records(tmp_path / "fresh", archive, key) == 1  # the same key: merged, not replaced


def test_resume_from_restores_or_stops_with_the_benchmarks_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, archive = tmp_path / "out", tmp_path / "runs.json.gz"
    _run_dir(out / "grid" / "firm-s0", "completed")
    save_records(out, archive, {"k": 1})
    resume_from(tmp_path / "fresh", archive, {"k": 1}, "privacy")
    assert "privacy: 1 completed runs restored" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"^privacy: .*another task or profile"):
        resume_from(tmp_path / "other", archive, {"k": 2}, "privacy")
    resume_from(tmp_path / "none", None, {"k": 1}, "privacy")  # no archive: nothing happens
    assert not (tmp_path / "none").exists()
