"""The non-federated references: centralized (pooled prompts) and local (every client alone)."""

from __future__ import annotations

import json
from pathlib import Path

import firm
from tests.conftest import tiny_config


def test_centralized_pools_the_prompts_and_sends_nothing(tmp_path: Path) -> None:
    # min_clients and a norm-screen setting of the federation must not break its single learner (they once did)
    args = ["algorithm.name=centralized", "algorithm.reference_rule=firm", "federation.min_clients=2"]
    result = firm.run(tiny_config(tmp_path, *args, "aggregation.max_norm_ratio=5", "output.name=c"))
    assert result.summary["reference"] == "centralized" and result.summary["status"] == "completed"
    for row in result.metrics:
        assert row["clients"] == [0]
        assert row["comm"] == {"upload_bytes": 0, "download_bytes": 0}
        # Same samples per round as the federation: clients_per_round (2) x K (2) local steps.
        assert len(row["local"]["0"]) == 2 * 2
    assert json.loads((result.run_dir / "summary.json").read_text())["reference"] == "centralized"


def test_local_trains_every_client_alone(tmp_path: Path) -> None:
    result = firm.run(tiny_config(tmp_path, "algorithm.name=local", "algorithm.reference_rule=fedavg", "output.name=l"))
    root = result.run_dir
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["client_00", "client_01"]
    rows = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert row["comm"] == {"upload_bytes": 0, "download_bytes": 0}  # local uploads nothing
        spread = row["eval"]["positiveness"]
        assert spread["min"] <= spread["mean"] <= spread["max"] and spread["std"] >= 0
    summary = json.loads((root / "summary.json").read_text())
    client_finals = [
        json.loads((root / c / "summary.json").read_text())["final_eval"]["positiveness"] for c in ("client_00", "client_01")
    ]
    assert summary["final_eval"]["positiveness"]["mean"] == sum(client_finals) / 2
    for c in ("client_00", "client_01"):
        client_rows = [json.loads(line) for line in (root / c / "metrics.jsonl").read_text().splitlines()]
        assert all(r["comm"]["upload_bytes"] == 0 for r in client_rows)
