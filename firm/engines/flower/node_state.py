"""Plumbing: a client's algorithm state on its SuperNode's disk, one version per round, so a run survives restarts.

What it holds: `ClientUpdate.client_state` after each round the client trained in, with the
error-feedback residuals of compressed uploads (firm.compression); and, between a probing
algorithm's two round trips (`RoundShape.probes`), the adapter that came with the probe. Why on disk: Flower gives every run a fresh
`context.state` on every node, a SuperNode that restarts loses it, and a resumed FIRM run is a
new Flower run. Why not on the server: the residuals are adapter-sized and never travel
(docs/compression.md); sending them up every round, and back down, would count several times
the compressed upload in `comm.upload_bytes`.

Layout, under the node config `state-dir` (default `$FLWR_HOME/firm-client-state`):

    <state-dir>/<run key>/client-<id>/round_NNNN.safetensors   the state after round NNNN
    <state-dir>/<run key>/client-<id>/probe.safetensors         the adapter of the last probe

each written atomically (temp file + rename), tensors in the safetensors body and the rest as
JSON in its metadata (`firm.checkpoint.pack`). The run key (`run_key`) names the run directory
on the server, so it is the same for a run and its resumptions and differs between runs.

Which version a round starts from is the server's call, not the node's: every `train` message
names the round of the client's state (`state_round`: the last round whose update the server
received from it, kept in the server's checkpoints, rolled back with a failed round's retry) and
the oldest version a resume from the server's latest checkpoint can still name (`keep_from`).
So a node that ran rounds after the checkpoint a resume starts from, or whose reply came too
late to count, starts from the version the server names, never from its own newest; and versions
older than `keep_from` are deleted.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import safe_open

from firm.checkpoint import pack, unpack
from firm.codec import Adapter
from firm.config import Config
from firm.rundir import write_atomic

VERSION = re.compile(r"^round_(\d{4,})\.safetensors$")

STATE_ROUND = "node_state_round"
"""The server's record of a client's current state (`FlowerEngine.client_states`, checkpointed): its round."""


class NodeStateMissing(RuntimeError):
    """The server named a state version this node does not have (its state directory was lost or pruned)."""


def run_key(config: Config) -> str:
    """The directory of a run's client states: its name and a hash of its run directory on the server."""
    run_dir = str(Path(config.output.dir) / config.output.name)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", config.output.name)[:64] or "run"
    return f"{name}-{hashlib.sha256(run_dir.encode('utf-8')).hexdigest()[:12]}"


class ClientStateStore:
    """One client's state versions for one run, in `root/<run key>/client-<id>/` (module docstring)."""

    def __init__(self, root: Path, key: str, client_id: int) -> None:
        self.dir = Path(root) / key / f"client-{client_id}"
        self.client_id = client_id

    def _path(self, round_idx: int) -> Path:
        return self.dir / f"round_{round_idx:04d}.safetensors"

    def versions(self) -> list[int]:
        """The rounds this node holds a state version of, ascending."""
        if not self.dir.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.dir.iterdir() if (m := VERSION.match(p.name)))

    def load(self, round_idx: int) -> dict[str, Any]:
        """The state after round `round_idx`; empty for 0 (the client has not trained yet)."""
        if round_idx == 0:
            return {}
        path = self._path(round_idx)
        if not path.is_file():
            raise NodeStateMissing(
                f"client {self.client_id}: the server resumes its state after round {round_idx}, but {path} is missing "
                f"(this node holds rounds {self.versions()}); was the node's state-dir lost or changed?"
            )
        return _read(path)

    def save(self, round_idx: int, state: dict[str, Any]) -> None:
        """Write the state after round `round_idx` (replacing a version a failed attempt of the round left)."""
        _write(self._path(round_idx), state)

    def prune(self, keep_from: int) -> None:
        """Delete the versions before round `keep_from`: no resume from the server's checkpoints can name them."""
        for round_idx in self.versions():
            if round_idx < keep_from:
                self._path(round_idx).unlink(missing_ok=True)

    def save_probe_adapter(self, round_idx: int, adapter: Adapter) -> None:
        """Keep the adapter a probe came with: the round's second trip trains from it."""
        _write(self.dir / "probe.safetensors", {"round": round_idx, "adapter": adapter})

    def load_probe_adapter(self, round_idx: int) -> Adapter:
        """The adapter of round `round_idx`'s probe; NodeStateMissing if this node did not probe that round."""
        path = self.dir / "probe.safetensors"
        saved = _read(path) if path.is_file() else {}
        if saved.get("round") != round_idx:
            raise NodeStateMissing(
                f"client {self.client_id}: round {round_idx}'s second trip, but this node holds no probe of that round "
                f"(it has {saved.get('round', 'none')}); did the node restart between the round's two trips?"
            )
        adapter: Adapter = saved["adapter"]
        return adapter


def _write(path: Path, value: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    packed = pack(value, tensors)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, safetensors.torch.save(tensors, metadata={"firm.state": json.dumps(packed)}))


def _read(path: Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        packed = json.loads(f.metadata()["firm.state"])
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    state: dict[str, Any] = unpack(packed, tensors)
    return state
