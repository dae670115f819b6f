"""Plumbing: what a checkpoint holds and how a run resumes from one (`firm train --resume RUN_DIR`).

`checkpoints/round_NNNN/` (written atomically by `RunDir.write_checkpoint`, a temp dir renamed):
- `adapter_config.json`, `adapter_model.safetensors`: the global adapter in the PEFT layout;
- `global.safetensors`: the same tensors under the engine's names, bit for bit;
- `state.safetensors` + `state.json`: the round, algorithm, seed, the initial evaluation, the
  algorithm's server state (e.g. FedCMOO's warm-start weights) and each client's state, with
  every tensor moved to the safetensors file and referenced from the JSON.

Nothing else is needed to continue: every random stream is derived from (seed, round, client,
step) (`firm.seeding`), local optimizers are created afresh each round, and `metrics.jsonl` is cut
back to the checkpoint's round on resume, so a run killed at any point and resumed ends with the
same adapter as an uninterrupted one, with each round's row written once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from firm.atomic import ASIDE, recover_replaced
from firm.codec import Adapter

TENSOR = "__tensor__"
ROUND_DIR = re.compile(r"^round_(\d{4,})$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not match the run; the message says what."""


def pack(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able copy of `value` with every tensor moved into `tensors` and replaced by a reference."""
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().to("cpu").contiguous()
        return {TENSOR: key}
    if isinstance(value, dict):
        return {str(k): pack(v, tensors) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [pack(v, tensors) for v in value]
    return value


def unpack(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `pack`."""
    if isinstance(value, dict):
        if set(value) == {TENSOR}:
            return tensors[value[TENSOR]]
        return {k: unpack(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [unpack(v, tensors) for v in value]
    return value


def write_state(directory: Path, global_adapter: Adapter, state: dict[str, Any]) -> None:
    """global.safetensors, state.safetensors and state.json into a checkpoint directory being built."""
    tensors: dict[str, torch.Tensor] = {}
    packed = pack(state, tensors)
    safetensors.torch.save_file(
        {n: t.detach().to("cpu").contiguous() for n, t in global_adapter.items()}, directory / "global.safetensors"
    )
    safetensors.torch.save_file(tensors, directory / "state.safetensors")
    (directory / "state.json").write_text(json.dumps(packed, indent=2), encoding="utf-8")


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    path: Path
    round: int
    global_adapter: Adapter
    state: dict[str, Any]


def latest(run_dir: Path) -> Path:
    """The newest checkpoint directory of a run (temp dirs of an interrupted write are ignored)."""
    root = run_dir / "checkpoints"
    if root.is_dir():  # a crash while a checkpoint was being replaced: put the old one back
        for name in {p.name[1:].split(ASIDE)[0] for p in root.glob(f".round_*{ASIDE}*")}:
            recover_replaced(root / name)
    found = (
        sorted((int(m.group(1)), p) for p in root.glob("round_*") if (m := ROUND_DIR.match(p.name)) and p.is_dir())
        if root.is_dir()
        else []
    )
    if not found:
        raise CheckpointError(f"{run_dir}: no checkpoint to resume from (checkpoints/round_NNNN/ is written after each round)")
    return found[-1][1]


def load(path: Path) -> Checkpoint:
    """Read a checkpoint directory; CheckpointError names the file that is missing or unreadable."""
    files = {name: path / name for name in ("state.json", "state.safetensors", "global.safetensors")}
    for name, file in files.items():
        if not file.is_file():
            raise CheckpointError(f"{path}: {name} is missing; this is not a complete checkpoint")
    try:
        packed = json.loads(files["state.json"].read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{files['state.json']}: unreadable ({err})") from None
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for name in ("state.safetensors", "global.safetensors"):
        try:
            tensors[name] = safetensors.torch.load_file(str(files[name]))
        except Exception as err:  # safetensors raises several types for truncated or foreign files
            raise CheckpointError(f"{files[name]}: unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(packed, dict) or not isinstance(packed.get("round"), int):
        raise CheckpointError(f"{files['state.json']}: no round number; this is not a FIRM checkpoint")
    try:
        state = unpack(packed, tensors["state.safetensors"])
    except KeyError as err:
        raise CheckpointError(f"{files['state.json']}: refers to tensor {err} missing from state.safetensors") from None
    return Checkpoint(path, int(packed["round"]), tensors["global.safetensors"], state)


def check_matches(ckpt: Checkpoint, reference: Adapter, algorithm: str, seed: int, rounds: int) -> None:
    """CheckpointError unless the checkpoint belongs to this run: algorithm, seed, round range, adapter layout."""
    where = ckpt.path
    if ckpt.state.get("algorithm") != algorithm:
        raise CheckpointError(
            f"{where}: written by algorithm {ckpt.state.get('algorithm')!r}, but the run's config says {algorithm!r}"
        )
    if ckpt.state.get("seed") != seed:
        raise CheckpointError(f"{where}: written with seed {ckpt.state.get('seed')}, but the run's config says {seed}")
    if not 1 <= ckpt.round <= rounds:
        raise CheckpointError(f"{where}: round {ckpt.round} is outside the run's 1..{rounds}")
    adapter = ckpt.global_adapter
    if adapter.keys() != reference.keys():
        missing, extra = sorted(reference.keys() - adapter.keys()), sorted(adapter.keys() - reference.keys())
        raise CheckpointError(f"{where}: adapter tensors do not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, ref in reference.items():
        t = adapter[name]
        if tuple(t.shape) != tuple(ref.shape) or t.dtype != ref.dtype:
            raise CheckpointError(
                f"{where}: {name} is {t.dtype} {tuple(t.shape)} but the model's LoRA expects {ref.dtype} {tuple(ref.shape)} "
                "(different lora.r, lora.target_modules or model?)"
            )
