"""Resume on Flower: the clients' states on their nodes' disks, across SuperLink and SuperNode restarts.

The first tests run the real FlowerEngine and ClientApp through an in-memory Grid
(`tests.test_flower_client.LoopbackGrid`): a crash is an exception, a SuperNode restart is a new
node id with a fresh `context.state`, and each run takes seconds. Every run compresses its uploads
(int8, with error-feedback residuals) and runs FedCMOO (server state, two round trips), so client
state that were lost or taken from the wrong round would change the final adapter. The last test
does it for real on a loopback cluster: SIGKILL the SuperLink during a round after a checkpoint,
start it again, `firm train --resume`; SIGKILL a SuperNode and start it again during the resumed run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Message
from safetensors.torch import load_file

from firm.config import Config
from firm.engines.flower import apps, local
from firm.engines.flower.engine import FlowerEngine
from firm.engines.flower.node_state import ClientStateStore, NodeStateMissing, run_key
from firm.engines.flower.submit import submit
from firm.train import RunResult, run
from tests.conftest import as_flower_task, tiny_config
from tests.test_flower_client import LoopbackGrid, Tamper

STATEFUL = ["algorithm.name=fedcmoo", "compression.kind=int8", "federation.rounds=4", "output.checkpoint_every=2"]
"""FedCMOO with int8 uploads: server state, client state (residuals) and the probe's adapter between the trips."""


@pytest.fixture(autouse=True)
def _in_a_flower_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's messages take their run id from the process's task identity, set by Flower in a real ServerApp."""
    as_flower_task(monkeypatch)
    monkeypatch.setattr(apps, "_RUNTIME", None)


def _config(root: Path, name: str, *overrides: str) -> Config:
    # round_timeout only matters for a node that is gone: the in-memory Grid answers at once
    return tiny_config(root, "engine=flower", "engine.round_timeout=1", *STATEFUL, f"output.name={name}", *overrides)


def _run(config: Config, tamper: Tamper | None = None, resume: bool = False) -> RunResult:
    run_dir = Path(config.output.dir) / config.output.name
    engine = partial(FlowerEngine, LoopbackGrid(config, tamper))
    return run(config, engine=engine, resume_from=run_dir if resume else None)  # type: ignore[arg-type]


def _final(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final_adapter" / "adapter_model.safetensors")


def _versions(config: Config, client_id: int) -> list[int]:
    return ClientStateStore(Path(config.output.dir) / "nodes" / str(client_id), run_key(config), client_id).versions()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, dict[str, torch.Tensor]]:
    """The uninterrupted run every test compares its final adapter with."""
    with pytest.MonkeyPatch.context() as mp:
        as_flower_task(mp)
        config = _config(tmp_path_factory.mktemp("flower"), "uninterrupted")
        result = _run(config)
    assert any(bool((t != 0).any()) for k, t in result.final_adapter.items() if "lora_B" in k)  # it trained
    return config, _final(result.run_dir)


def test_node_state_versions_are_pruned_before_the_latest_checkpoint(
    uninterrupted: tuple[Config, dict[str, torch.Tensor]],
) -> None:
    """checkpoint_every=2: round 4's messages keep what a resume from checkpoint 2 names (round 2 on), no older."""
    config, _ = uninterrupted
    for client_id in (0, 1):
        assert _versions(config, client_id) == [2, 3, 4]


def test_a_crash_after_a_checkpoint_resumes_from_the_checkpoints_node_state(
    tmp_path: Path, uninterrupted: tuple[Config, dict[str, torch.Tensor]]
) -> None:
    """The server dies in round 4 after the nodes ran rounds 3 and 4; its last checkpoint is round 2.

    The resumed run is a new Flower run (every node gets a fresh context.state) and must start
    each client from its state after round 2, although its node holds newer ones (3 and 4).
    """

    def lose_the_server(grid: LoopbackGrid, client_id: int, round_idx: int, stage: str, reply: Message) -> Message:
        if round_idx == 4 and stage == "train" and client_id == 1:
            raise RuntimeError("the SuperLink went away")
        return reply

    config = _config(tmp_path, "crashed")
    run_dir = Path(config.output.dir) / config.output.name
    with pytest.raises(RuntimeError, match="went away"):
        _run(config, lose_the_server)
    shutil.rmtree(run_dir / "checkpoints" / "round_0003")  # what a SIGKILL leaves: the run saved round 3 on its way out
    assert [int(p.name[-4:]) for p in sorted((run_dir / "checkpoints").iterdir())] == [2]
    assert _versions(config, 0)[-1] == 4 and _versions(config, 1)[-1] == 4  # the nodes ran past the checkpoint
    result = _run(config, resume=True)
    assert result.summary["resumed_from_round"] == 2 and result.summary["status"] == "completed"
    assert [r["round"] for r in result.metrics] == [1, 2, 3, 4]
    assert _same(_final(run_dir), uninterrupted[1])


def test_a_supernode_restart_mid_round_retries_the_round_from_its_disk_state(
    tmp_path: Path, uninterrupted: tuple[Config, dict[str, torch.Tensor]]
) -> None:
    """Client 1's SuperNode dies in round 3 after writing its round-3 state, before replying, and comes
    back under a new node id with a fresh context. The round fails (every client is needed), the
    retry finds the new node and starts client 1 from its state after round 2, not 3."""
    restarted: list[int] = []

    def crash_node_1(grid: LoopbackGrid, client_id: int, round_idx: int, stage: str, reply: Message) -> Message | None:
        if (client_id, round_idx, stage) == (1, 3, "train") and not restarted:
            restarted.append(round_idx)
            grid.restart(1)
            return None
        return reply

    config = _config(tmp_path, "node-restart")
    result = _run(config, crash_node_1)
    assert restarted == [3]
    assert [r["attempts"] for r in result.metrics] == [1, 1, 2, 1]
    assert all(r["dropped"] == {} for r in result.metrics)
    assert _same(_final(result.run_dir), uninterrupted[1])


def test_the_node_state_store_prunes_and_names_a_missing_version(tmp_path: Path) -> None:
    """A node whose state directory was lost cannot continue its client's error feedback: it says so."""
    store = ClientStateStore(tmp_path, "run-0123", 1)
    for round_idx in (1, 2, 3, 4):
        store.save(round_idx, {"compression.residual.0.w": torch.full((2,), float(round_idx)), "seen": round_idx})
    store.prune(3)
    assert store.versions() == [3, 4]
    assert store.load(3)["seen"] == 3 and torch.equal(store.load(4)["compression.residual.0.w"], torch.full((2,), 4.0))
    assert store.load(0) == {}
    with pytest.raises(NodeStateMissing, match=r"after round 2, but .*round_0002\.safetensors is missing .*\[3, 4\]"):
        store.load(2)
    store.save_probe_adapter(5, {"a": torch.ones(3)})
    with pytest.raises(NodeStateMissing, match="no probe of that round"):
        store.load_probe_adapter(6)
    assert torch.equal(store.load_probe_adapter(5)["a"], torch.ones(3))


# --------------------------------------------------------------------------- on a loopback cluster


def _crash(pid: int) -> None:
    """SIGKILL a process and every process under it (a host crash: no handler runs, nothing is saved)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    for member in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _rows(run_dir: Path) -> list[int]:
    """The rounds in metrics.jsonl (a line being appended right now is skipped)."""
    path = run_dir / "metrics.jsonl"
    rounds = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(json.JSONDecodeError):
            rounds.append(json.loads(line)["round"])
    return rounds


@pytest.fixture(scope="module")
def restarts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One cluster (2 SuperNodes with warm workers), int8 uploads, 4 rounds, checkpoints every 2 rounds:

    1. a run; once round 3 is in metrics.jsonl (checkpoint 2 on disk, the nodes past it), the
       server host crashes (SIGKILL: SuperLink, its SuperExec and the ServerApp) and so does client
       1's SuperNode; both are started again (the SuperNode gets a new node id and a fresh
       context.state; its warm worker lives on and reconnects);
    2. `firm train --resume` of that directory (a new Flower run) and, at the same time, an
       uninterrupted run of the same config, to compare with.
    """
    root = tmp_path_factory.mktemp("restarts")
    out: dict[str, Any] = {}
    with local.local_cluster(root / "state", 2, superlink=f"127.0.0.1:{local.free_port()}", database=True) as c:
        overrides = [
            "engine=flower",
            f'engine.superlink="{c.superlink}"',
            "engine.round_timeout=60",  # the resumed run's discovery may wait for a node's stale task (worker.py)
            "compression.kind=int8",
            "federation.rounds=4",
            "output.checkpoint_every=2",
        ]
        config = tiny_config(root, *overrides, "output.name=restarted")
        run_dir = out["run_dir"] = Path(config.output.dir) / "restarted"

        def first_session() -> None:
            try:
                submit(config, quiet=True)
            except BaseException as err:
                out["first_error"] = err

        thread = threading.Thread(target=first_session)
        thread.start()
        deadline = time.monotonic() + 300
        while len(_rows(run_dir)) < 3 and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # round 4's messages are out: the restarted SuperLink still holds them for the nodes
        _crash(c.pid("superlink"))
        _crash(c.pid("supernode-1"))
        thread.join(timeout=120)
        out["rows_at_crash"] = _rows(run_dir)
        out["checkpoints_at_crash"] = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        stores = [ClientStateStore(c.state_dir / f"node-{i}" / "firm-client-state", run_key(config), i) for i in (0, 1)]
        out["node_versions_at_crash"] = [store.versions() for store in stores]
        local.start_again(c, "superlink")
        local.start_again(c, "supernode-1")
        uninterrupted = threading.Thread(
            target=lambda: out.update(
                uninterrupted=submit(tiny_config(root, *overrides, "output.name=uninterrupted"), quiet=True)
            )
        )
        uninterrupted.start()
        resume = subprocess.run(
            [sys.executable, "-m", "firm", "train", "--resume", str(run_dir)], capture_output=True, text=True, timeout=600
        )
        out["resume_code"], out["resume_log"] = resume.returncode, resume.stdout + resume.stderr
        uninterrupted.join(timeout=600)
        out["node_1_log"] = (c.state_dir / "supernode-1.log").read_text()
    return out


@pytest.mark.slow  # a real loopback cluster killed and restarted: 3-5 min; `make test-slow`
def test_a_server_crash_then_resume_gives_the_uninterrupted_adapter(restarts: dict[str, Any]) -> None:
    """The ServerApp died with its SuperLink after checkpoint 2 and after the nodes ran round 3;
    `firm train --resume` continues from checkpoint 2, with each client's state of round 2."""
    run_dir = restarts["run_dir"]
    assert "first_error" in restarts  # the first session died with its SuperLink
    assert restarts["rows_at_crash"] == [1, 2, 3] and restarts["checkpoints_at_crash"] == ["round_0002"]
    assert all(3 in versions for versions in restarts["node_versions_at_crash"])  # the nodes ran past the checkpoint
    assert restarts["resume_code"] == 0, restarts["resume_log"][-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from_round"] == 2
    assert _rows(run_dir) == [1, 2, 3, 4]
    assert _same(_final(run_dir), _final(restarts["uninterrupted"]))


@pytest.mark.slow  # a real loopback cluster killed and restarted: 3-5 min; `make test-slow`
def test_a_restarted_supernode_continues_from_its_disk(restarts: dict[str, Any]) -> None:
    """Client 1's SuperNode came back under a new node id with an empty context.state: the resumed
    run found it, and its error feedback continued from its state directory (the adapter is the same)."""
    assert restarts["resume_code"] == 0, restarts["resume_log"][-3000:]
    node_ids = {line.rsplit(" ", 1)[-1] for line in restarts["node_1_log"].splitlines() if "SuperNode ID:" in line}
    assert len(node_ids) == 2, restarts["node_1_log"][-2000:]
    assert "2 of 2 clients connected" in restarts["resume_log"]
    rows = [json.loads(line) for line in (restarts["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    assert all(row["dropped"] == {} for row in rows)
    assert _same(_final(restarts["run_dir"]), _final(restarts["uninterrupted"]))
