"""A trained preference predictor on disk: what `firm reward train` writes and `learned:<path>` loads.

    <run>/model/
        predictor.json          {"format": "firm-reward-predictor", "version": 1, "spec": PredictorSpec,
                                 "embedding": {"model": ..., "dim": 384}, "attribute": ..., "levels": 10,
                                 "context": C, "groups": [names], "default_group": name, "firm": version}
        predictor.safetensors   the predictor's state_dict
        contexts.safetensors    per group g: "<g>.x" [C, D] embeddings and "<g>.y" [C] ratings, the few
                                rated examples the predictor is conditioned on when it scores for g

The contexts are the groups' own rated items (in a real deployment each site keeps its own and
scores locally; in this single-machine simulation they sit beside the model so that every client
of a `firm train` run can score with its own group's). Every problem loading a directory raises
`LearnedModelError` with one line saying what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from firm.atomic import replace_dir_atomic
from firm.rewards.episodes import GroupData
from firm.rewards.predictor import PredictorSpec, build_predictor

FORMAT = "firm-reward-predictor"
VERSION = 1


class LearnedModelError(ValueError):
    """A model directory that is missing, corrupt, or trained for something else."""


@dataclass
class LearnedModel:
    path: Path
    model: nn.Module
    spec: PredictorSpec
    meta: dict[str, Any]
    contexts: dict[str, tuple[torch.Tensor, torch.Tensor]]  # group -> (x [C, D], y [C])


def save_model(target: Path, model: nn.Module, spec: PredictorSpec, contexts: dict[str, GroupData], meta: dict[str, Any]) -> Path:
    """Write the model directory atomically (a temp dir renamed into place)."""

    def fill(directory: Path) -> None:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        safetensors.torch.save_file(state, str(directory / "predictor.safetensors"))
        tensors: dict[str, torch.Tensor] = {}
        for name, ctx in contexts.items():
            tensors[f"{name}.x"] = ctx.x.contiguous()
            tensors[f"{name}.y"] = ctx.y.contiguous()
        safetensors.torch.save_file(tensors, str(directory / "contexts.safetensors"))
        info = {"format": FORMAT, "version": VERSION, "spec": spec.to_dict(), "groups": sorted(contexts), **meta}
        (directory / "predictor.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    return replace_dir_atomic(target, fill)


def load_model(path: str | Path, *, embedding_model: str, embedding_dim: int, device: torch.device | str = "cpu") -> LearnedModel:
    """Load and check a model directory (or a run directory holding `model/`) for the given embedding."""
    root = Path(path)
    if (root / "model" / "predictor.json").is_file():
        root = root / "model"
    info_path = root / "predictor.json"
    if not root.is_dir():
        raise LearnedModelError(
            f"learned reward model {path}: no such directory (expected a `firm reward train` run or its model/)"
        )
    if not info_path.is_file():
        raise LearnedModelError(
            f"learned reward model {root}: predictor.json is missing; not a `firm reward train` model directory"
        )
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LearnedModelError(f"learned reward model {info_path}: unreadable ({err})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise LearnedModelError(f"learned reward model {info_path}: not a {FORMAT} file")
    if info.get("version") != VERSION:
        raise LearnedModelError(
            f"learned reward model {info_path}: format version {info.get('version')!r}, this firm reads {VERSION}"
        )
    emb = info.get("embedding") or {}
    if emb.get("model") != embedding_model or emb.get("dim") != embedding_dim:
        raise LearnedModelError(
            f"learned reward model {root}: trained on embeddings of {emb.get('model')!r} (dim {emb.get('dim')}), "
            f"but this firm embeds with {embedding_model!r} (dim {embedding_dim})"
        )
    try:
        spec = PredictorSpec.from_dict(info["spec"])
    except (KeyError, TypeError, ValueError) as err:
        raise LearnedModelError(f"learned reward model {info_path}: bad predictor spec ({err})") from None
    tensors = {}
    for name in ("predictor.safetensors", "contexts.safetensors"):
        try:
            tensors[name] = safetensors.torch.load_file(str(root / name))
        except Exception as err:  # safetensors raises several types for missing, truncated or foreign files
            raise LearnedModelError(f"learned reward model {root / name}: unreadable ({type(err).__name__}: {err})") from None
    model = build_predictor(spec)
    try:
        model.load_state_dict(tensors["predictor.safetensors"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise LearnedModelError(f"learned reward model {root}: weights do not fit its spec ({first})") from None
    model.to(torch.device(device)).eval()
    contexts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for group in info.get("groups", []):
        x, y = tensors["contexts.safetensors"].get(f"{group}.x"), tensors["contexts.safetensors"].get(f"{group}.y")
        if x is None or y is None:
            raise LearnedModelError(f"learned reward model {root}: contexts.safetensors has no context for group {group!r}")
        contexts[group] = (x, y)
    return LearnedModel(root, model, spec, info, contexts)
